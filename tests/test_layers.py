"""The floors of the code (pyproject's [tool.importlinter]): no package imports one above it, no circles."""
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]


def _lint(tree: Path) -> subprocess.CompletedProcess:
    # lint-imports reads the packages from its working directory, so a copy of the tree is checked as it is.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=300)


def test_the_code_keeps_its_floors():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


def test_an_import_from_the_ground_up_to_the_cli_breaks_the_contract(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "s2v" / "errors.py", "a") as errors:
        errors.write("\nimport cli.main\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert "s2v.errors is not allowed to import" in proc.stdout
