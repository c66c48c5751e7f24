"""What runs the flows elsewhere: GPU worker start script, RunPod handler, deployment helpers."""
