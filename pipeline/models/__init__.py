"""Registry of retouchers: every model the job, the ledger, `rerender`, `eval`, `bench` and `train` know by name.

A retoucher is a ``torch.nn.Module`` class registered under a ``name`` and a ``version`` that declares, in one place:

- ``params``: its named, ranged parameters (``Param``), in the order it predicts them and the ledger stores them
  (the ledger's ``operators`` and ``strengths`` columns; ``rerender --set/--shift`` and edits files use the names);
- ``rendering``: how a full-resolution image is made for given parameters. ``"lut"`` for a global colour function
  (baked once per image into a 3D LUT, ``render_pixels`` being the exact function); any other value names a model
  that brings its own ``retoucher_class()`` (pipeline.render.Retoucher subclass) with its own prepare and apply;
- ``default_weights``: the checkpoint shipped in pipeline/weights for ``run --model NAME`` (None: none shipped);

and implements

- ``predict_strengths(thumbnail (B, 3, h, w)) -> (B, K)`` the parameters from a small image,
- ``forward(image) -> (output, strengths)`` for training and evaluation on whole images.

Models with ``rendering = "lut"`` also implement ``render_pixels(rgb (N, 3), strengths (K,)) -> (N, 3)``.
Models that can learn their operators from the standard ones (``train`` without ``--init``) implement
``initialize_operators(photos, iters, rng, log)`` and ``parameter_groups()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Type

import torch


@dataclass(frozen=True)
class Param:
    """One named slider of a retoucher: what the ledger stores and a person edits."""

    name: str  # short, stable: the ledger's operator name, the key of --set/--shift and of edits files
    label: str  # for people: "exposure"
    low: float = -1.0
    high: float = 1.0
    default: float = 0.0  # the value that leaves the image as the operator found it (or the neutral setting)
    unit: str = ""  # what one step means, for help texts ("" = a learned operator's own scale)

    def clip(self, value: float) -> float:
        return min(max(float(value), self.low), self.high)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


_REGISTRY: dict[str, Type[torch.nn.Module]] = {}


def register(cls: Type[torch.nn.Module]) -> Type[torch.nn.Module]:
    """Class decorator: make a model loadable by its ``name``; checks the declaration is complete."""
    name = getattr(cls, "name", None)
    if not name or name in _REGISTRY:
        raise ValueError(f"model class {cls.__name__} needs a unique `name` (got {name!r})")
    params = getattr(cls, "params", None)
    if not params or not all(isinstance(p, Param) for p in params):
        raise ValueError(f"model {name!r} must declare `params` as a tuple of Param")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"model {name!r} declares a parameter twice: {names}")
    for p in params:
        if not p.low <= p.default <= p.high:
            raise ValueError(f"model {name!r}: default of {p.name!r} is outside [{p.low}, {p.high}]")
    if getattr(cls, "rendering", None) is None:
        raise ValueError(f"model {name!r} must declare `rendering` ('lut' or its own)")
    cls.operators = tuple(names)
    _REGISTRY[name] = cls
    return cls


def model_class(name: str) -> Type[torch.nn.Module]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def registered_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def params_of(name: str) -> tuple[Param, ...]:
    """The declared parameters of the model registered as ``name``."""
    return tuple(model_class(name).params)


DEFAULT_RANGE = (-1.0, 1.0)  # for a ledger whose model is no longer registered


def parameter_ranges(model: str | None, operators: list[str]) -> dict[str, tuple[float, float]]:
    """Each operator's (low, high) as the named retoucher declares them (DEFAULT_RANGE for unknown ones)."""
    try:
        declared = {p.name: (p.low, p.high) for p in params_of(model or "")}
    except KeyError:
        declared = {}
    return {op: declared.get(op, DEFAULT_RANGE) for op in operators}


def _load_builtin() -> None:
    from . import aesthetic, bilateral, coarse_to_fine, deep_symmetric, neurop, style_look  # noqa: F401  (register themselves)
