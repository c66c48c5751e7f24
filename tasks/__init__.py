"""Prefect tasks, one pipeline stage each. Light: the model runtime is imported inside task bodies."""
