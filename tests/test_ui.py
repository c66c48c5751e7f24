"""The operator's UI as a person sees it: headless Chromium on the Prefect UI of the local API `s2v run` starts.

One batch (one row made, one broken) shared by every check, so the whole file costs one tiny batch and a
few page loads. With S2V_UI_SHOTS=DIR the pages are also saved there as small PNGs (docs/ui/ holds them).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLES, ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed (apt-get install chromium; .ci/run does)"),
]
PAGE_S = 60.0  # the UI draws after its API calls; a busy 2-core machine can take a while


def _browser_class():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from ui_screenshot import Browser
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return Browser


def test_the_local_ui_shows_the_batch_by_name_its_logs_and_its_partial_state(tiny_checkpoint, tmp_path):
    from cli.local_api import stop_local_api
    from s2v.settings import Settings

    api_dir, shots = tmp_path / "local-api", os.environ.get("S2V_UI_SHOTS")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(S2V_CHECKPOINT=str(tiny_checkpoint), S2V_CACHE_DIR=str(tmp_path / "cache"), S2V_DEVICE="cpu",
               S2V_LOCAL_API_DIR=str(api_dir), S2V_LOCAL_INPUTS="true", DISPLAY="")
    manifest = tmp_path / "nightly" / "2026-11-29.csv"
    manifest.parent.mkdir()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"half an upload")
    speech = EXAMPLES / "speech_short.wav"
    manifest.write_text(f"clip_id,image,audio,sample_steps\nanna,{EXAMPLES / 'portrait_anna.jpg'},{speech},15\n"
                        f"broken,{broken},{speech},15\n")
    browser = None
    try:
        s2v = [sys.executable, "-c", "from cli.main import app; app()"]
        done = subprocess.run([*s2v, "run", str(manifest), "--output", str(tmp_path / "out")], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 1, done.stderr  # as documented: 1 when a row failed
        # The terminal stays quiet: the bar and the summary, none of Prefect's INFO lines.
        assert "| INFO" not in done.stderr and "1 succeeded, 1 failed" in done.stderr
        ui = subprocess.run([*s2v, "ui"], env=env, capture_output=True, text=True, timeout=120).stdout.strip()
        api = json.loads((api_dir / "api.json").read_text())["url"]
        assert ui == api.removesuffix("/api")
        # The UI's pages call the API at the address the server was started with (not 127.0.0.1:4200).
        settings = httpx.get(f"{ui}/ui-settings", timeout=10).json()
        assert settings["api_url"] == api, settings
        (run,) = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        assert run["name"] == "nightly/2026-11-29.csv · 2 rows"
        assert run["state"]["type"] == "FAILED" and run["state"]["name"] == "Partial (1 of 2 failed)"

        browser = _browser_class()(CHROMIUM, tmp_path / "chromium", width=1280)
        saved = Path(shots) if shots else None

        if saved:
            saved.mkdir(parents=True, exist_ok=True)

        def page(path: str, *wait_for: str, name: str, click: str | None = None, height: int = 900) -> str:
            return browser.open(f"{ui}{path}", wait_for=wait_for, timeout_s=PAGE_S, height=height, click=click,
                                shot=saved / f"{name}.png" if saved else None, colours=96)

        runs = page("/runs", "nightly/2026-11-29.csv · 2 rows", name="runs")
        assert "Can't connect" not in runs
        assert "nightly/2026-11-29.csv · 2 rows" in runs and "Partial (1 of 2 failed)" in runs
        logs = page(f"/runs/flow-run/{run['id']}", "row 2 (anna) succeeded", name="run-logs", height=1500)
        assert "row 2 (anna) started" in logs and "row 2 (anna) succeeded" in logs and "row 3 (broken) failed" in logs
        assert "ended:" in logs  # the batch's summary line
        if saved:
            page(f"/runs/flow-run/{run['id']}", "ledger", name="run-artifacts", click="Artifacts", height=1400)
            page("/dashboard", "Flow Runs", name="dashboard", height=500)
            cards = httpx.post(f"{api}/artifacts/filter", timeout=10,
                               json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
            shown = {"ledger": "anna", "videos": "anna", "summary": "estimated cost"}  # text once drawn
            for card in cards:
                name = (card["key"] or "-").split("-")[1]
                if name in shown:
                    page(f"/artifacts/artifact/{card['id']}", shown[name], name=f"card-{name}", height=1100)
    finally:
        if browser is not None:
            browser.close()
        stop_local_api(Settings(local_api_dir=api_dir))
