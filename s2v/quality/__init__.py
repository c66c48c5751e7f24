"""Quality checks without a person watching: each portrait's face before the GPU, each made clip after it."""
