"""Settings from S2V_* variables: list values in plain or JSON form, one-line errors, the checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s2v.errors import ConfigError, S2VError
from s2v.settings import get_settings, load_settings
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("value", "hosts"),
    [("127.0.0.1", ["127.0.0.1"]), ("a.example,b.example", ["a.example", "b.example"]),
     (" a , b ", ["a", "b"]), ('["127.0.0.1", "[::1]"]', ["127.0.0.1", "[::1]"]), ("", [])],
)
def test_allowed_hosts_accepts_plain_comma_separated_and_json(monkeypatch, value, hosts):
    monkeypatch.setenv("S2V_ALLOWED_HOSTS", value)
    assert get_settings().allowed_hosts == hosts


def test_input_roots_accepts_plain_and_json(monkeypatch, tmp_path):
    monkeypatch.setenv("S2V_INPUT_ROOTS", f"{tmp_path}/a,{tmp_path}/b")
    assert get_settings().input_roots == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.setenv("S2V_INPUT_ROOTS", f'["{tmp_path}/c"]')
    assert get_settings().input_roots == [tmp_path / "c"]
    monkeypatch.delenv("S2V_INPUT_ROOTS")
    assert get_settings().input_roots is None and get_settings().local_inputs is False


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("S2V_GENERATION_TIMEOUT_S", "abc", "S2V_GENERATION_TIMEOUT_S='abc': must be a number of seconds > 0"),
        ("S2V_DOWNLOAD_STAGE_TIMEOUT_S", "-5", "S2V_DOWNLOAD_STAGE_TIMEOUT_S='-5': must be a number of seconds > 0"),
        ("S2V_DEVICE", "gpu", "S2V_DEVICE='gpu': must be one of auto, cpu, cuda"),
        ("S2V_LOCAL_INPUTS", "maybe", "S2V_LOCAL_INPUTS='maybe': must be true or false"),
        ("S2V_PRESIGN_SECONDS", "1.5", "S2V_PRESIGN_SECONDS='1.5': must be a whole number of seconds > 0"),
        ("S2V_ALLOWED_HOSTS", '["a"', """S2V_ALLOWED_HOSTS='["a"': must be a comma-separated list (a,b) or a JSON list"""),
    ],
)
def test_a_bad_variable_is_one_config_error_line(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        get_settings()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert isinstance(caught.value, S2VError) and caught.value.name == name


def test_a_bad_override_is_named_by_its_field():
    with pytest.raises(ConfigError, match=r"^generation_timeout_s=-1: must be a number of seconds > 0$"):
        load_settings(generation_timeout_s=-1)


def test_a_bad_setting_ends_a_program_with_one_line_and_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("S2V_")}
    env.update(S2V_GENERATION_TIMEOUT_S="abc", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", "from s2v.settings import get_settings; get_settings()"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["error: S2V_GENERATION_TIMEOUT_S='abc': must be a number of seconds > 0"]


def test_checkpoint_is_a_folder_tiny_or_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("S2V_CHECKPOINT", "tiny")
    assert get_settings().checkpoint == "tiny" and get_settings().checkpoint_path() == "tiny"
    monkeypatch.setenv("S2V_CHECKPOINT", "~/models/Wan2.2-S2V-14B")
    assert get_settings().checkpoint_path() == Path.home() / "models" / "Wan2.2-S2V-14B"
    monkeypatch.setenv("S2V_CHECKPOINT", "")  # empty means unset, not the current folder
    assert get_settings().checkpoint is None and get_settings().checkpoint_path() is None
    assert load_settings(checkpoint=tmp_path).checkpoint == tmp_path
