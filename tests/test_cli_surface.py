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
               "mcfg": {"momentum": -0.25, "norm_threshold": 1.0}, "cfg-zero-star": {"zero_init_steps": 3}}


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
    (lambda: apg.Setting("pag"), InputError, "method must be one of cfg, apg, mcfg, cfg-zero-star, got 'pag'"),
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
