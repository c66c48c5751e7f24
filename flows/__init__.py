"""Prefect flows: batch over a manifest, single clip, retry-failed. Light: no torch at import."""
