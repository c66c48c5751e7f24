"""Workers, the UI's parameter schema and `--help` must not pay seconds of torch import."""
import subprocess
import sys

from tests.conftest import ROOT

_CHECK = """
import importlib, pkgutil, sys
import {packages}
for package in ({packages},):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
import model_runtime.request, model_runtime.layout
heavy = sorted(m for m in ("torch", "diffsynth", "transformers", "librosa") if m in sys.modules)
assert not heavy, heavy
"""


def test_flows_tasks_records_and_cli_import_without_torch():
    code = _CHECK.format(packages="flows, tasks, records, cli")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_cli_help_imports_neither_prefect_nor_torch():
    code = (
        "import sys\nfrom cli.main import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'prefect') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "generate" in proc.stdout


def test_runpod_handler_records_and_storage_import_neither_prefect_nor_torch():
    """The handler answers jobs with the storage layer and the model server's client alone; the records
    layer (manifest, ledger, claims) is read by the CLI before any flow starts."""
    code = (
        "import importlib, pkgutil, sys\nimport s2v.storage, records\n"
        "import deployments.runpod.handler, cli.local_api, model_runtime.client\n"
        "for package in (s2v.storage, records):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "heavy = sorted(m for m in ('torch', 'prefect', 'diffsynth') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
