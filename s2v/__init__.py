"""Light core of the S2V pipeline: errors, settings and the `s2v` CLI. Imports no torch."""
