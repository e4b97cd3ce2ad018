"""Checkpoints: the project's own format (weights + metadata) and the NeurOp authors' files.

Nothing here unpickles arbitrary objects: every file is read with ``torch.load(weights_only=True)``, which only
rebuilds tensors and plain containers.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .models import model_class

FORMAT = "retouch-batch-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "neurop"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "neurop-default.pt"

# How an input must be rendered for a model: a model trained on sRGB photos expects the camera's white balance,
# sRGB primaries and tone curve, no auto-brightening, decoded at 16 bits.
SRGB_RENDITION = {"space": "srgb", "white_balance": "camera", "curve": "srgb", "auto_bright": False, "bits": 16}
PROPHOTO_LINEAR_RENDITION = {"space": "prophoto", "white_balance": "camera", "curve": "linear",
                             "auto_bright": False, "bits": 16}


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class ModelInfo:
    """What a checkpoint says about the model it holds."""

    model: str
    model_version: str
    operators: tuple[str, ...]
    rendition: dict = field(default_factory=lambda: dict(SRGB_RENDITION))
    prediction_size: int = 512  # long side of the thumbnail the strengths are predicted from
    training: dict = field(default_factory=dict)
    source: str = ""  # where the weights came from (a recipe, or an imported file)

    def to_json(self) -> str:
        d = asdict(self)
        d["operators"] = list(self.operators)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        d = json.loads(text)
        d["operators"] = tuple(d["operators"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class LoadedModel:
    model: torch.nn.Module
    info: ModelInfo
    weights_path: str
    weights_sha256: str


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _official_info(path: Path) -> ModelInfo:
    dark = "dark" in path.name
    return ModelInfo(
        model="neurop", model_version="1", operators=("bc", "ex", "vb"),
        rendition=dict(PROPHOTO_LINEAR_RENDITION if dark else SRGB_RENDITION),
        source=f"official NeurOp checkpoint {path.name} (MIT, Wang et al. 2022)",
    )


def shipped_weights(model: str | None = None) -> Path:
    """The checkpoint shipped in the package for a registered model (``None``: the default model)."""
    name = model or DEFAULT_MODEL
    try:
        cls = model_class(name)
    except KeyError as e:
        raise CheckpointError(f"--model: {e.args[0]}") from None
    if not getattr(cls, "default_weights", None):
        raise CheckpointError(f"model {name!r} ships no weights (it is learned per user: retouch-batch train ...); "
                              "pass --weights with one you trained")
    return WEIGHTS_DIR / cls.default_weights


def load_checkpoint(path: str | os.PathLike | None = None, device: str = "cpu", model: str | None = None) -> LoadedModel:
    """Load the project's own checkpoint or an official NeurOp ``.pth``.

    ``path=None`` loads the weights shipped for ``model`` (default: NeurOp's); with both, the checkpoint must hold
    that model (a checkpoint names its model).
    """
    path = Path(path) if path else shipped_weights(model)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, a pickle with code in it, not a torch file at all
        raise CheckpointError(f"{path}: not a loadable weights file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        if blob.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {blob.get('format_version')} is not supported")
        info = ModelInfo.from_json(blob["metadata"])
        state = blob["state_dict"]
    elif isinstance(blob, dict) and "image_encoder.conv1.weight" in blob:
        info, state = _official_info(path), blob
    elif isinstance(blob, dict) and "exposure_block.encoder.weight" in blob:
        raise CheckpointError(f"{path}: an operator-initialization checkpoint (operators only, no strength "
                              "predictors); use it with `retouch-batch train --init`")
    else:
        raise CheckpointError(f"{path}: not a retouch-batch or NeurOp checkpoint")
    try:
        cls = model_class(info.model)
        net = cls.from_info(info) if hasattr(cls, "from_info") else cls()  # a variant recorded in the checkpoint
    except KeyError as e:
        raise CheckpointError(f"{path}: {e.args[0]}") from None
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit model {info.model!r}: {str(e).splitlines()[0]}") from None
    if tuple(net.operators) != tuple(info.operators):
        raise CheckpointError(f"{path}: operators {info.operators} do not match model {info.model!r} {net.operators}")
    if model and info.model != model:
        raise CheckpointError(f"{path}: holds model {info.model!r}, not {model!r} (drop --model or pick other weights)")
    net.eval().requires_grad_(False).to(device)
    return LoadedModel(net, info, str(path.resolve()), file_sha256(path))


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, info: ModelInfo,
                    extra: dict[str, Any] | None = None) -> str:
    """Write weights + metadata atomically; returns the file's sha256. ``extra`` holds tensors/plain data only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": info.to_json(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    if extra:
        blob["extra"] = extra
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return file_sha256(path)


def load_operator_init(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The authors' init_renderer.pth as NeurOp renderer keys (contrast_block is bc, saturation_block is vb)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    names = {"contrast_block": "bc_renderer", "exposure_block": "ex_renderer", "saturation_block": "vb_renderer"}
    out = {}
    for k, v in blob.items():
        block, rest = k.split(".", 1)
        if block not in names:
            raise CheckpointError(f"{path}: unexpected key {k} in an operator-initialization checkpoint")
        out[f"{names[block]}.{rest}"] = v
    return out


def save_training(out: str | os.PathLike, model: torch.nn.Module, info: ModelInfo, report: dict, report_name: str,
                  started: float) -> dict:
    """A training run's results: ``out``/best.pt and the report (with the weights' hash and the run's seconds) as
    ``out``/``report_name``."""
    import time
    os.makedirs(out, exist_ok=True)
    report["weights_sha256"] = save_checkpoint(os.path.join(out, "best.pt"), model, info)
    report["seconds"] = round(time.time() - started, 1)
    with open(os.path.join(out, report_name), "w") as f:
        json.dump(report, f, indent=2)
    return report
