"""What a flow run needs to know about where it runs: its settings, and whether it is a production run."""
from __future__ import annotations

from s2v.errors import CheckpointError
from s2v.settings import Settings, load_settings


def in_deployment() -> bool:
    """True in a run a worker started from a deployment (production); False for `s2v run` and tests."""
    from prefect.runtime import deployment

    return deployment.id is not None


def flow_settings(output: str = "", checkpoint: str = "", model_server: str = "", makes_videos: bool = True) -> Settings:
    """Settings from S2V_* variables with the run's parameters on top (an empty parameter = the default).

    A deployment run that makes videos refuses to start without a checkpoint: a GPU host started
    without its model volume would otherwise make a night of noise marked succeeded. Orchestrating
    runs on the control pool (`makes_videos=False`) need none.
    """
    overrides = {name: value for name, value in
                 {"output": output, "checkpoint": checkpoint, "model_server": model_server}.items() if value}
    settings = load_settings(**overrides)
    if makes_videos and settings.checkpoint is None and in_deployment():
        raise CheckpointError(
            f"S2V_CHECKPOINT is not set on worker {settings.worker_name}: set it to the Wan2.2-S2V-14B folder "
            "(or S2V_CHECKPOINT=tiny for the random-weight test model, which makes noise)"
        )
    return settings
