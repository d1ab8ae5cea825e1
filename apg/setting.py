"""One guidance setting: a registered method, its parameters, a sigma interval and a scale, as every front end
(`apg compare`, `apg eval`, the app) builds, labels and records it.

    s = Setting("apg", {"norm_threshold": 2.5}, scale=7.5, interval=(0.28, 5.42))
    s.build()       # APG(guidance_scale=7.5, eta=0.0, norm_threshold=2.5, momentum=-0.5, interval=(0.28, 5.42))
    s.label()       # 'APG w=7.5 η=0 r=2.5 β=-0.5 σ∈(0.28, 5.42]'
    s.to_dict()     # what run.json and the PNG metadata record: exactly s.build().to_dict()
    s.code()        # 'apg.APG(7.5, eta=0.0, norm_threshold=2.5, momentum=-0.5, interval=(0.28, 5.42))'
    Setting.from_dict(s.to_dict()) == s

Generic over the registry: the methods are apg.METHODS, the parameters each class's `parameters`, and the
values are checked by the class's own constructor, so a rule registered with apg.register_method needs no
code here. Pure torch: no Diffusers import.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import guidance as _guidance
from .errors import InputError, InputTypeError

__all__ = ["Setting", "SYMBOLS", "interval_text"]

# How labels write a parameter; one not listed is written by its name.
SYMBOLS = {"guidance_scale": "w", "eta": "η", "norm_threshold": "r", "momentum": "β", "zero_init_steps": "zero-init"}


def _text(value) -> str:
    """A value as labels write it: 7.5, 1, inf; a list as [1,0.5]."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return f"{value:g}"
    return str(value)


def _code(value) -> str:
    """A value as Python source: repr, but a sequence as a list and infinity as float('inf') (no bare `inf`)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_code(v) for v in value) + "]"
    if isinstance(value, float) and math.isinf(value):
        return "float('inf')" if value > 0 else "-float('inf')"
    return repr(value)


def interval_text(interval) -> str:
    """'σ∈(0.28, 5.42]': guidance applies where low < sigma <= high."""
    low, high = interval
    return f"σ∈({_text(low)}, {_text(high)}]"


@dataclass(frozen=True)
class Setting:
    """A method of apg.METHODS with its parameters (missing ones: the class defaults), scale and interval.

    Construction checks everything (apg.errors.InputError / InputTypeError naming the value) and fills in
    the defaults, so two settings that build the same guidance compare equal.
    """

    method: str  # key of apg.METHODS
    params: Mapping = field(default_factory=dict)  # the class's own parameters, by constructor keyword
    scale: float = _guidance.SCALE.default  # guidance scale w
    interval: tuple[float, float] | None = None  # guide only where low < sigma <= high

    __hash__ = None  # params is a dict

    def __post_init__(self):
        if not isinstance(self.method, str) or self.method not in _guidance.METHODS:
            raise InputError(f"method must be one of {', '.join(_guidance.METHODS)}, got {self.method!r}")
        if not isinstance(self.params, Mapping):
            raise InputTypeError(f"params must be a mapping of parameter names to values, got {self.params!r}")
        cls = self.cls
        takes = [p.name for p in cls.parameters]
        unknown = sorted(set(self.params) - set(takes))
        if unknown:
            raise InputError(f"method {self.method!r} takes {', '.join(takes) or 'only a scale'}, "
                             f"not {', '.join(map(str, unknown))}")
        scale = _guidance.SCALE.validate(self.scale)  # one number: per-sample scales are the library's, not a setting's
        guidance = cls(scale, **self.params, interval=self.interval)  # the class's own checks, defaults filled in
        object.__setattr__(self, "params", {name: getattr(guidance, name) for name in takes})
        object.__setattr__(self, "scale", guidance.guidance_scale)
        object.__setattr__(self, "interval", guidance.interval)

    @classmethod
    def from_options(cls, method: str, scale: float = _guidance.SCALE.default, *, preset: str | None = None,
                     interval=None, **params) -> Setting:
        """A setting from front-end options: None means "the class default"; `preset` names apg.PRESETS."""
        given = {name: value for name, value in params.items() if value is not None}
        if preset is not None:
            if preset not in _guidance.PRESETS:
                raise InputError(f"preset must be one of {', '.join(_guidance.PRESETS)}, got {preset!r}")
            if not hasattr(_guidance.METHODS.get(method), "from_preset"):
                raise InputError(f"preset {preset!r} applies to method 'apg', not {method!r}")
            clash = sorted(set(given) & set(_guidance.PRESETS[preset]))
            if clash:
                raise InputError(f"give either preset {preset!r} or {', '.join(clash)}, not both (the preset sets "
                                 f"{', '.join(_guidance.PRESETS[preset])})")
            given.update(_guidance.PRESETS[preset])
        return cls(method, given, scale=scale, interval=interval)

    @property
    def cls(self) -> type[_guidance.Guidance]:
        return _guidance.METHODS[self.method]

    def replace(self, **changes) -> Setting:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def build(self) -> _guidance.Guidance:
        """A fresh guidance object: each run owns its momentum state."""
        return self.cls(self.scale, **self.params, interval=self.interval)

    # -- labels --------------------------------------------------------------------------------------
    def describe(self, *, interval: bool = True) -> str:
        """'η=0 r=2.5 β=-0.5 σ∈(0.28, 5.42]': the parameters (and the interval), without method and scale."""
        parts = [f"{SYMBOLS.get(name, name)}={_text(value)}" for name, value in self.params.items()]
        if interval and self.interval is not None:
            parts.append(interval_text(self.interval))
        return " ".join(parts)

    def label(self, *, scale: bool = True) -> str:
        """'APG w=7.5 η=0 r=2.5 β=-0.5 σ∈(0.28, 5.42]': the one label style of plots, grids, tables and the app."""
        w = f"{SYMBOLS['guidance_scale']}={_text(self.scale)}" if scale else ""
        return " ".join(part for part in (self.cls.label, w, self.describe()) if part)

    # -- records -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able: {"type": class name, "guidance_scale", parameters..., "interval" when set}, as run.json has it."""
        return self.build().to_dict()

    @classmethod
    def from_dict(cls, config: Mapping) -> Setting:
        """Inverse of to_dict; reads every run.json and PNG record apg has written."""
        if not isinstance(config, Mapping) or "type" not in config or "guidance_scale" not in config:
            raise InputError(f"a guidance record must be a dict with 'type' and 'guidance_scale', got {config!r}")
        values = dict(config)
        kind = values.pop("type")
        method = next((name for name, c in _guidance.METHODS.items() if c.__name__ == kind), None)
        if method is None:
            known = ", ".join(c.__name__ for c in _guidance.METHODS.values())
            raise InputError(f"guidance type {kind!r} is not a registered method ({known}); a rule of your own "
                             "needs apg.register_method before its records are read")
        scale, interval = values.pop("guidance_scale"), values.pop("interval", None)
        return cls(method, values, scale=scale, interval=None if interval is None else tuple(interval))

    def code(self) -> str:
        """Python that builds this guidance after `import apg`: 'apg.APG(7.5, eta=0.0, ...)'."""
        name = self.cls.__name__
        import apg

        target = f"apg.{name}" if getattr(apg, name, None) is self.cls else f"apg.METHODS[{self.method!r}]"
        args = [_code(self.scale), *(f"{key}={_code(value)}" for key, value in self.params.items())]
        if self.interval is not None:
            args.append(f"interval=({', '.join(map(_code, self.interval))})")
        return f"{target}({', '.join(args)})"
