"""What `retouch-batch models` shows: every registered retoucher, its parameters and its shipped weights."""
from __future__ import annotations

from dataclasses import asdict

from .checkpoint import WEIGHTS_DIR
from .models import model_class, registered_models


def catalogue() -> list[dict]:
    out = []
    for name in registered_models():
        cls = model_class(name)
        weights = getattr(cls, "default_weights", None)
        out.append({"model": name, "version": cls.version, "rendering": cls.rendering,
                    "summary": (cls.__doc__ or __import__("sys").modules[cls.__module__].__doc__ or "").strip()
                    .splitlines()[0],
                    "params": [asdict(p) for p in cls.params],
                    "shipped_weights": weights if weights and (WEIGHTS_DIR / weights).is_file() else None})
    return out


def format_catalogue(entries: list[dict]) -> str:
    lines = []
    for e in entries:
        shipped = e["shipped_weights"] or "none shipped (train one)"
        lines.append(f"{e['model']} v{e['version']} ({e['rendering']} rendering; weights: {shipped})")
        lines.append(f"  {e['summary']}")
        name_width = max(len(p["name"]) for p in e["params"])
        label_width = max(len(p["label"]) for p in e["params"])
        for p in e["params"]:
            unit = f"; {p['unit']}" if p["unit"] else ""
            lines.append(f"  {p['name']:<{name_width}} {p['label']:<{label_width}} [{p['low']:g}, {p['high']:g}] "
                         f"default {p['default']:g}{unit}")
    return "\n".join(lines)
