"""The automation that marks runs of dead GPU hosts Crashed: created once, replaced when outdated."""
from datetime import timedelta

from flows import zombies


def test_the_automation_is_created_once_and_an_outdated_one_replaced(prefect_harness, monkeypatch):
    from prefect.client.orchestration import get_client

    def names():
        with get_client(sync_client=True) as client:
            return [a.trigger.within for a in client.read_automations_by_name(zombies.AUTOMATION_NAME)]

    assert zombies.ensure_zombie_automation() in (True, False)  # another test may have made it already
    assert zombies.ensure_zombie_automation() is False and names() == [timedelta(seconds=zombies.HEARTBEAT_TIMEOUT_S)]
    with monkeypatch.context() as patch:
        patch.setattr(zombies, "HEARTBEAT_TIMEOUT_S", 120)
        assert zombies.ensure_zombie_automation() is True and names() == [timedelta(seconds=120)]
    assert zombies.ensure_zombie_automation() is True  # back to this version's definition
    trigger = zombies.zombie_automation().trigger.model_dump(mode="json")
    # Only GPU-pool runs (30 s heartbeats) are watched: control runs beat every 180 s by Prefect's default.
    assert trigger["match_related"] == {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.s2v-gpu"}
