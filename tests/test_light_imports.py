"""Workers, the UI's parameter schema and `--help` must not pay seconds of torch import."""
from tests.conftest import TORCH_STACK, heavy_imports_after

_WALK = """
import importlib, pkgutil
import {packages}
for package in ({packages},):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
"""


def test_flows_tasks_records_and_cli_import_without_torch():
    code = _WALK.format(packages="flows, tasks, records, cli") + "import model_runtime.request, model_runtime.layout"
    assert not heavy_imports_after(code) & TORCH_STACK


def test_cli_help_imports_neither_prefect_nor_torch():
    code = (
        "import contextlib, io\nfrom cli.main import app\nshown = io.StringIO()\n"
        "with contextlib.redirect_stdout(shown):\n    try:\n        app(['--help'])\n    except SystemExit:\n        pass\n"
        "assert 'generate' in shown.getvalue(), shown.getvalue()"
    )
    assert heavy_imports_after(code, timeout=120) == set()


def test_runpod_handler_records_and_storage_import_neither_prefect_nor_torch():
    """The handler answers jobs with the storage layer and the model server's client alone; the records
    layer (manifest, ledger, claims) is read by the CLI before any flow starts."""
    code = _WALK.format(packages="s2v.storage, records") + "import deployments.runpod.handler, cli.local_api, model_runtime.client"
    assert heavy_imports_after(code, timeout=120) == set()
