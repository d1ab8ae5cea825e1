"""The surface every front end shares: apg.Setting (build, label, record), the typed errors of apg.errors, and
the command-line contract (one line, exit code 2, every value checked before a model loads)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import apg
from apg import runtime
from apg.errors import ApgError, CommandError, InputError, InputTypeError, ModelLoadError, UnsupportedError

# -- Setting ---------------------------------------------------------------------------------------
# Per method: (the class's own non-default values, the direct constructor call with them).
NON_DEFAULT = {"cfg": {}, "apg": {"eta": 0.25, "norm_threshold": 2.5, "momentum": -0.75},
               "mcfg": {"momentum": -0.25, "norm_threshold": 1.0}, "cfg-zero-star": {"zero_init_steps": 3},
               "fdg": {"guidance_scales": (1.0, 0.6, 0.3), "parallel_weights": (0.5, 1.0, 0.25)}, "tcfg": {},
               "mambo-g": {"alpha": 3.0}}


def test_every_method_has_a_non_default_case():
    assert set(NON_DEFAULT) == set(apg.METHODS)


@pytest.mark.parametrize("method", list(NON_DEFAULT))
@pytest.mark.parametrize("interval", [None, (0.28, 5.42), (0.5, math.inf)])
def test_setting_builds_what_the_constructor_builds_and_round_trips(method, interval):
    cls, params = apg.METHODS[method], NON_DEFAULT[method]
    setting = apg.Setting(method, params, scale=6.0, interval=interval)
    direct = cls(6.0, **params, interval=interval)
    assert setting.build() == direct and setting.build() is not setting.build()  # fresh: own momentum state
    assert setting.to_dict() == direct.to_dict()  # what run.json has always recorded
    assert apg.Setting.from_dict(json.loads(json.dumps(setting.to_dict()))) == setting
    assert apg.Setting(method, scale=6.0).build() == cls(6.0)  # missing parameters: the class defaults
    assert eval(setting.code(), {"apg": apg}) == direct  # copy-as-code is valid Python (inf included)


def test_old_run_records_read_back():
    # The guidance record of a run folder written before Setting existed (apg-eval generate, apg compare).
    record = {"type": "APG", "guidance_scale": 4.0, "eta": 0.0, "norm_threshold": 15.0, "momentum": -0.5,
              "interval": [0.28, 5.42]}
    setting = apg.Setting.from_dict(record)
    assert setting == apg.Setting.from_options("apg", 4.0, preset="sdxl", interval=(0.28, 5.42))
    assert setting.to_dict() == record


def test_one_label_style():
    setting = apg.Setting("apg", {"norm_threshold": 2.5}, scale=7.5, interval=(0.28, 5.42))
    assert setting.label() == "APG w=7.5 η=0 r=2.5 β=-0.5 σ∈(0.28, 5.42]"
    assert setting.label(scale=False) == "APG η=0 r=2.5 β=-0.5 σ∈(0.28, 5.42]"
    assert setting.describe(interval=False) == "η=0 r=2.5 β=-0.5"
    assert apg.Setting("cfg", scale=4.0).label() == "CFG w=4"


def test_a_registered_rule_with_a_list_parameter_needs_no_code_in_setting():
    class Levels(apg.CFG):
        """A test rule with a list-valued knob (per-level scales)."""

        label = "Levels"
        parameters = (apg.Param("levels", (1.0, 0.5), 0.0, 1.0, "per-level scales (test rule)"),)

        def __init__(self, guidance_scale, levels=(1.0, 0.5), *, interval=None):
            super().__init__(guidance_scale, interval=interval)
            self.levels = [float(v) for v in levels]

    apg.register_method("levels-test", Levels)
    try:
        setting = apg.Setting("levels-test", {"levels": [0.25, 1.0, 0.0]}, scale=3.0)
        assert setting.label() == "Levels w=3 levels=[0.25,1,0]"
        assert apg.Setting.from_dict(json.loads(json.dumps(setting.to_dict()))) == setting
        assert eval(setting.code(), {"apg": apg}) == setting.build()
    finally:
        del apg.METHODS["levels-test"]


@pytest.mark.parametrize("make, error, message", [
    (lambda: apg.Setting("pag"), InputError, "method must be one of cfg, apg, mcfg, cfg-zero-star, fdg, tcfg, mambo-g, got 'pag'"),
    (lambda: apg.Setting("mcfg", {"eta": 0.5}), InputError, "method 'mcfg' takes momentum, norm_threshold, not eta"),
    (lambda: apg.Setting("apg", {"eta": 2}), InputError, r"eta must be in \[0.0, 1.0\], got 2"),
    (lambda: apg.Setting("apg", {"eta": "x"}), InputTypeError, "eta must be a real number, got 'x'"),
    (lambda: apg.Setting("cfg", scale=-2), InputError, "guidance_scale must be >= 0"),
    (lambda: apg.Setting("cfg", interval=(2, 1)), InputError, "interval must satisfy 0 <= sigma_low < sigma_high"),
    (lambda: apg.Setting.from_options("cfg", preset="sdxl"), InputError, "preset 'sdxl' applies to method 'apg'"),
    (lambda: apg.Setting.from_options("apg", preset="sdxl", eta=0.5), InputError, "give either preset 'sdxl' or eta"),
    (lambda: apg.Setting.from_dict({"type": "Nope", "guidance_scale": 1.0}), InputError, "'Nope' is not a registered"),
])
def test_bad_settings_are_typed_errors_naming_the_value(make, error, message):
    with pytest.raises(error, match=message) as info:
        make()
    assert isinstance(info.value, ApgError)


def test_errors_keep_their_builtin_bases():
    assert issubclass(InputError, ValueError) and issubclass(InputTypeError, TypeError)
    assert issubclass(UnsupportedError, ValueError) and issubclass(ModelLoadError, RuntimeError)
    assert issubclass(CommandError, InputError) and runtime.ModelLoadError is ModelLoadError
    with pytest.raises(InputError):
        runtime.resolve_device("gpu")


def test_import_apg_stays_light():
    code = "import sys, apg; apg.Setting('apg').label(); assert 'diffusers' not in sys.modules, 'diffusers imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- the command-line contract ---------------------------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: every refusal below must come before it."""

    def load_pipeline(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(runtime, "load_pipeline", load_pipeline)


def one_line_exit_2(capsys, main, argv, prog) -> str:
    """Runs a command that must fail; returns its one error line after the asserted prefix."""
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors, in the same style
        code = exit_info.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"{prog}: error: "), err
    return err


COMPARE = ["compare", "--classes", "cat", "--scales", "2", "--steps", "2", "--no-progress"]
EVAL = ["--classes", "cat", "--num-images", "2", "--steps", "2"]


@pytest.mark.parametrize("argv, message", [
    (["--out", "/proc/g.png"], "--out '/proc/g.png': cannot write in '/proc'"),
    (["--out", "TMP"], "--out 'TMP' is a folder; give a file name"),
    (["--scales", "-2"], "guidance_scale must be >= 0.0, got -2.0"),
    (["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (["--interval", "2,1"], "interval must satisfy 0 <= sigma_low < sigma_high"),
    (["--device", "gpu"], "device must be a torch device such as cpu, cuda or cuda:1, got 'gpu'"),
    (["--image", "TMP/none.png"], "--image 'TMP/none.png': cannot read the image"),
])
def test_compare_refuses_before_a_model_loads(argv, message, no_model, tmp_path, capsys):
    from apg.cli import main

    argv, message = [a.replace("TMP", str(tmp_path)) for a in argv], message.replace("TMP", str(tmp_path))
    err = one_line_exit_2(capsys, main, [*COMPARE, "--out", str(tmp_path / "x.png"), *argv], "apg compare")
    assert message in err, err


@pytest.mark.parametrize("argv, message", [
    (["generate", *EVAL, "--scale", "-2", "--out", "OUT"], "guidance_scale must be >= 0.0, got -2.0"),
    (["generate", *EVAL, "--scale", "2", "--steps", "0", "--out", "OUT"], "argument --steps: must be an integer >= 1"),
    (["generate", *EVAL, "--scale", "2", "--interval", "2,1", "--out", "OUT"], "interval must satisfy 0 <= sigma_low"),
    (["generate", *EVAL, "--scale", "2", "--out", "/proc/run"], "--out '/proc/run': cannot write in '/proc'"),
    (["generate", *EVAL, "--scale", "2", "--device", "gpu", "--out", "OUT"], "device must be a torch device"),
    (["sweep", *EVAL, "--scales", "-2", "--out", "OUT"], "guidance_scale must be >= 0.0, got -2.0"),
    (["sweep", *EVAL, "--intervals", "none", "2,1", "--out", "OUT"], "interval must satisfy 0 <= sigma_low"),
    (["sweep", *EVAL, "--metrics", "fid", "--out", "OUT"], "reference is required for fid"),
    (["sweep", *EVAL, "--device", "gpu", "--out", "OUT"], "device must be a torch device"),
    (["sweep", "--prompts-file", "OUT/none.txt", "--num-images", "2", "--out", "OUT"], "--prompts-file"),
])
def test_eval_refuses_before_a_model_loads_or_an_image_is_made(argv, message, no_model, tmp_path, capsys):
    from apg.evaluation.cli import main

    argv = [a.replace("OUT", str(tmp_path / "run")) for a in argv]
    err = one_line_exit_2(capsys, main, argv, f"apg-eval {argv[0]}")
    assert message in err and not list(tmp_path.rglob("*.png")), err


def test_score_and_report_refuse_an_unwritable_output_before_work(tmp_path, capsys, monkeypatch):
    from apg.evaluation import cli, scoring

    monkeypatch.setattr(scoring, "score", lambda *a, **k: pytest.fail("scored before the output was checked"))
    err = one_line_exit_2(capsys, cli.main, ["score", str(tmp_path), "--output", "/proc/s.json"], "apg-eval score")
    assert "--output '/proc/s.json': cannot write in '/proc'" in err
    err = one_line_exit_2(capsys, cli.main, ["report", str(tmp_path), "--output", str(tmp_path)], "apg-eval report")
    assert f"--output '{tmp_path}' is a folder" in err


def test_scoring_an_archive_needs_an_output_and_writes_nothing_beside_it(tmp_path, capsys, monkeypatch):
    """Regression: `score ARCHIVE#sub/` made a folder named 'ARCHIVE#sub' beside the archive for its score.json."""
    from apg.evaluation import cli, scoring

    archive = tmp_path / "images.tar.gz"
    archive.write_bytes(b"")
    monkeypatch.setattr(scoring, "score", lambda *a, **k: pytest.fail("scored before the output was checked"))
    err = one_line_exit_2(capsys, cli.main, ["score", f"{archive}#cifar10/test/"], "apg-eval score")
    assert f"--output is needed: '{archive}#cifar10/test/' is not a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.tar.gz"]


@pytest.mark.parametrize("called, argv, usage", [
    ("apg eval", ["eval", "--help"], "usage: apg eval "),
    ("apg eval", ["eval", "sweep", "--help"], "usage: apg eval sweep "),
    ("apg-eval", ["--help"], "usage: apg-eval "),
])
def test_apg_eval_names_itself_as_called(called, argv, usage, capsys):
    from apg.cli import main as apg_main
    from apg.evaluation.cli import main as eval_main

    with pytest.raises(SystemExit) as exit_info:
        (apg_main if called == "apg eval" else eval_main)(argv)
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith(usage)


def test_eval_errors_name_the_command_as_called(no_model, tmp_path, capsys):
    from apg.cli import main

    one_line_exit_2(capsys, main, ["eval", "sweep", *EVAL, "--scales", "-2", "--out", str(tmp_path)], "apg eval sweep")


@pytest.mark.parametrize("command", [["compare"], ["eval", "generate"], ["eval", "sweep"]])
def test_generating_commands_share_device_and_dtype(command, capsys):
    from apg.cli import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--device DEVICE torch device: cpu, cuda, cuda:1, mps" in text
    assert "--dtype {float32,float16,bfloat16}" in text


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_app_refuses_a_bad_port_in_one_line(port, capsys):
    pytest.importorskip("gradio")
    from apg.app import ui

    err = one_line_exit_2(capsys, ui.main, ["--port", port], "apg app")
    assert "argument --port" in err and port in err


def test_a_user_error_is_one_line_and_traceback_shows_it_whole(no_model, tmp_path, capsys):
    from apg.cli import main

    argv = [*COMPARE, "--scales", "-2", "--out", str(tmp_path / "x.png")]
    one_line_exit_2(capsys, main, argv, "apg compare")
    with pytest.raises(InputError, match="guidance_scale must be >= 0"):
        main([*argv, "--traceback"])


def test_a_bug_is_not_reported_as_bad_input(monkeypatch, tmp_path):
    """An exception that is not an ApgError propagates (Python prints its traceback; exit code 1), not exit 2."""
    from apg import cli, compare

    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(compare, "run", broken)
    with pytest.raises(TypeError, match="a bug"):
        cli.main([*COMPARE, "--out", str(tmp_path / "x.png")])
