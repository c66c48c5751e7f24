"""Quality checks without a person watching: a face check of each portrait before the GPU, and a check of each made clip after it."""
