"""Runs whose host died become Crashed: Prefect's flow-run heartbeats and one proactive automation.

A flow run on a GPU host, and a fleet's parent run on the control pool (scale-out, the nightly batch),
sends a heartbeat every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (30, the least Prefect allows;
prefect.yaml sets it for both pools; their watched deployments carry GPU_TAG or PARENT_TAG). When such
a run goes silent for HEARTBEAT_TIMEOUT_S after it started or last beat, without reaching a final
state, the automation below marks it Crashed, so the UI tells the truth, a parent hands a dead row run's row to another worker, and a dead
parent frees the nightly deployment's one slot: the next night takes its manifest up again.
Prefect evaluates proactive triggers every 5 s, so a dead host's run is Crashed within about
HEARTBEAT_TIMEOUT_S + 5 s of its last heartbeat.
"""
from __future__ import annotations

import logging
from datetime import timedelta

# Kept as first named, so servers that hold the older definition get it replaced, not a second automation.
AUTOMATION_NAME = "s2v: crash GPU flow runs whose host stopped sending heartbeats"
GPU_TAG = "s2v-gpu"  # every deployment of the GPU pool carries it (prefect.yaml)
PARENT_TAG = "s2v-fleet-parent"  # scale-out and the nightly batch carry it (prefect.yaml)
HEARTBEAT_S = 30
HEARTBEAT_TIMEOUT_S = 90  # three missed heartbeats

log = logging.getLogger(__name__)


def zombie_automation():
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    final = {f"prefect.flow-run.{name}" for name in ("Completed", "Failed", "Cancelled", "Crashed")}
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=f"A flow run that started or sent a heartbeat and then none for {HEARTBEAT_TIMEOUT_S} s lost its host "
                    "(killed, out of memory, power): mark it Crashed so its work is handed out again.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "tag",
                           "prefect.resource.id": [f"prefect.tag.{GPU_TAG}", f"prefect.tag.{PARENT_TAG}"]},
            # Running too: a host killed in the seconds between a run starting and its first heartbeat
            # would otherwise leave the run Running for ever (seen in tests/test_fleet.py).
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Running"},
            expect={"prefect.flow-run.heartbeat", *final},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=HEARTBEAT_TIMEOUT_S),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {HEARTBEAT_TIMEOUT_S} s: its worker or host is gone",
        )],
    )


def ensure_zombie_automation() -> bool:
    """Create the automation on the Prefect server unless it is there as defined here; True when created."""
    from prefect.client.orchestration import get_client

    wanted = zombie_automation()
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(AUTOMATION_NAME)
        if any(_same(found, wanted) for found in existing):
            return False
        for outdated in existing:  # an older definition: replaced, so one automation watches the runs
            client.delete_automation(outdated.id)
        client.create_automation(wanted)
    log.info("created the automation %r", AUTOMATION_NAME)
    return True


def _same(found, wanted) -> bool:
    # Python mode, not JSON: the trigger's `expect` is a set, and a JSON dump lists a set in an order that
    # depends on the process's hash seed and on how the set was built, so a JSON comparison of the same
    # automation read back from the server fails in about one process in five.
    fields = {"trigger", "actions", "enabled"}
    return found.model_dump(include=fields) == wanted.model_dump(include=fields)
