"""Speed options that may be missing on a host (CPU): clear refusals for attention libraries that are not
importable, S2V_FP8's old boolean values, and the `auto` rule that picks from measured figures."""
import pytest

from model_runtime import speed
from model_runtime.speed_auto import COSINE_BOUND, REL_L2_BOUND, Measured, pick_options, todays_choice
from s2v.errors import ConfigError
from s2v.settings import Settings

H100 = (9, 0)


def _row(attention="auto", fp8=False, compile=True, step_s=7.0, rel_l2=0.01, cosine=0.9999, capability=H100):
    return Measured(capability, "test GPU", attention, fp8, compile, step_s, rel_l2, cosine, "test")


@pytest.mark.parametrize("choice, names", [("sage", "sageattention==1.0.6"), ("flash-attn-4", "flash-attn-4")])
def test_an_attention_library_that_is_missing_is_refused_with_how_to_install_it(choice, names, monkeypatch):
    monkeypatch.setattr(speed, "_importable", lambda module: False)
    import diffsynth.models.wan_video_dit as wan_dit

    monkeypatch.setattr(wan_dit, "SAGE_ATTN_AVAILABLE", False)
    reason = speed.attention_unavailable(choice)
    assert reason.startswith("that library is not installed") and names in reason
    with pytest.raises(ConfigError, match=f"S2V_ATTENTION='{choice}': that library is not installed"):
        with speed.attention(choice):
            pass
    assert choice not in speed.installed_attention_libraries()


def test_sdpa_choices_need_no_library():
    assert all(speed.attention_unavailable(choice) is None for choice in ("auto", "sdpa", *speed.SDPA_BACKENDS))


def test_fp8_is_refused_on_a_cpu_with_a_reason():
    assert speed.fp8_unavailable("cpu") == "FP8 needs a CUDA GPU"


@pytest.mark.parametrize("value, expected", [("true", "on"), ("0", "off"), ("auto", "auto"), ("off", "off")])
def test_s2v_fp8_takes_auto_on_off_and_its_old_booleans(value, expected, monkeypatch, tmp_path):
    monkeypatch.setenv("S2V_FP8", value)
    monkeypatch.setenv("S2V_CACHE_DIR", str(tmp_path / "cache"))
    assert Settings().fp8 == expected


def test_auto_keeps_todays_choice_without_figures_within_the_bound():
    assert pick_options(H100, cuda=True, measured=()) == todays_choice(True)
    assert todays_choice(True).compile and not todays_choice(False).compile
    unmeasured = (_row(fp8=True, step_s=1.0, rel_l2=None, cosine=None),)
    assert pick_options(H100, cuda=True, measured=unmeasured) == todays_choice(True)
    assert pick_options(None, cuda=False, measured=(_row(),)) == todays_choice(False)


def test_auto_picks_the_fastest_set_within_the_bound_for_this_capability():
    table = (
        _row(step_s=7.4),
        _row(attention="sage", step_s=5.9, rel_l2=REL_L2_BOUND / 2, cosine=COSINE_BOUND + 0.001),
        _row(attention="sage", fp8=True, step_s=4.2, rel_l2=REL_L2_BOUND * 3, cosine=0.99),  # too far off
        _row(fp8=True, step_s=3.0, capability=(8, 9)),  # another GPU's figure
    )
    choice = pick_options(H100, cuda=True, measured=table)
    assert (choice.attention, choice.fp8, choice.compile) == ("sage", False, True)
    assert pick_options((8, 9), cuda=True, measured=table).fp8


def test_resolve_on_cpu_keeps_eager_bf16_and_the_explicit_choices(monkeypatch, tmp_path):
    monkeypatch.setenv("S2V_CACHE_DIR", str(tmp_path / "cache"))
    options = speed.resolve(Settings(), "cpu")
    assert (options.compile, options.fp8, options.attention) == (False, False, "auto")
    explicit = speed.resolve(Settings(compile="on", attention="sdpa-math", fp8="on"), "cpu")
    assert (explicit.compile, explicit.fp8, explicit.attention) == (True, True, "sdpa-math")
