# GPU image: the project on the CUDA build of PyTorch, model weights from a mounted volume.
#
# Base: Python 3.11 slim rather than an nvidia/cuda image, on purpose: torch==2.14.1 on PyPI is the
# CUDA build and brings its CUDA and cuDNN libraries as pinned nvidia-* wheels (see
# requirements/constraints.txt), so the versions that CI tests are the versions that ship, and the
# image needs only the host's NVIDIA driver (NVIDIA Container Toolkit / RunPod). The pytorch/pytorch
# images bring their own (conda) torch, which the constraints would fight. 3.11.7 is CI's Python.
FROM python:3.11.7-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    S2V_CHECKPOINT=/runpod-volume/models/Wan2.2-S2V-14B \
    S2V_MODEL_SERVER=/tmp/wan2_s2v_model_server.sock \
    S2V_DEVICE=cuda \
    S2V_CACHE_DIR=/home/s2v/.cache/s2v \
    S2V_OUTPUT=/home/s2v/s2v-output \
    HANDLER_VERSION=v2

RUN useradd --create-home --uid 1000 s2v
WORKDIR /app

# Dependencies first, from the constraints and pyproject alone: a code change reuses these layers.
# torch alone first: its multi-GB layer survives a change of the other dependencies, and the pin keeps
# pip from resolving some other CUDA build (the same pins as the Makefile and constraints.txt).
COPY requirements/constraints.txt requirements/constraints.txt
RUN pip install -c requirements/constraints.txt torch==2.14.1 torchvision==0.29.1
# The project's dependencies (and the runpod and gpu extras: torchao for S2V_FP8, SageAttention) read from
# pyproject, without the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['runpod'] + p['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
    && pip install -c requirements/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY s2v/ s2v/
COPY records/ records/
COPY model_runtime/ model_runtime/
COPY tasks/ tasks/
COPY flows/ flows/
COPY deployments/ deployments/
COPY cli/ cli/
COPY prefect.yaml ./
RUN pip install --no-deps . && chmod +x deployments/start_warm.sh

USER 1000:1000
# Healthy once the model server answers and its model is loaded; loading takes minutes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 \
    CMD ["sh", "-c", "s2v server-status | grep -Eq '\"status\": \"(ready|busy)\"'"]

# A GPU host of the Prefect pool (PREFECT_API_URL, S2V_WORK_POOL; the model volume at S2V_CHECKPOINT):
#   docker run --gpus all -v /models:/runpod-volume/models -e PREFECT_API_URL=... IMAGE
# The original server's RunPod endpoint instead (its first job starts the model server; HANDLER_VERSION=v1 for cold):
#   docker run --gpus all ... --entrypoint python IMAGE -m deployments.runpod.handler
ENTRYPOINT ["deployments/start_warm.sh"]
