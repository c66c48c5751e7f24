"""The `s2v` command and the local Prefect API it runs against: the top floor, which may import every package."""
