"""Everything that touches torch and the Wan2.2-S2V model.

This package's __init__ imports nothing heavy: `request`, `layout` and `client` are light; torch and
diffsynth are imported by the modules that need them (loader, generate, tiny_checkpoint, server).
"""
