"""The original server's RunPod serverless endpoint, kept working on top of the pipeline's stages."""
