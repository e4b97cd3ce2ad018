"""Registry of retouching models.

A retouching model is registered under a name and a version, declares its operator names (the order of the
strengths it predicts and that the ledger stores) and implements:

- ``predict_strengths(thumbnail) -> (B, K)`` strengths in [-1, 1] from a small image,
- ``render_pixels(rgb (N, 3), strengths (K,)) -> (N, 3)`` the exact per-pixel colour function for fixed strengths,
- ``forward(image) -> (output, strengths)`` for training.

Models whose output for fixed strengths is a global colour function (``is_global_colour_function``) are rendered
at full resolution through a baked 3D LUT.
"""
from __future__ import annotations

from typing import Type

import torch

_REGISTRY: dict[str, Type[torch.nn.Module]] = {}


def register(cls: Type[torch.nn.Module]) -> Type[torch.nn.Module]:
    """Class decorator: make a model loadable by its ``name``."""
    name = getattr(cls, "name", None)
    if not name or name in _REGISTRY:
        raise ValueError(f"model class {cls.__name__} needs a unique `name` (got {name!r})")
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


def _load_builtin() -> None:
    from . import neurop, style_look  # noqa: F401  (register themselves)
