"""Evaluate a checkpoint on before/after pairs with the reference's metrics (PSNR, SSIM, dE76)."""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .render import configure_model
from .imageio import IMAGE_EXTENSIONS, decode
from .metrics import delta_e76, histogram_intersections, psnr, ssim


@dataclass
class PairScore:
    id: str
    psnr: float
    ssim: float
    delta_e: float
    psnr_input: float


@dataclass
class EvalResult:
    weights: str
    n: int
    psnr: float
    ssim: float
    delta_e: float
    psnr_input: float
    per_image: list[PairScore]
    # the aesthetic-guided seed's patch histogram intersections (%) with the targets (pipeline.metrics), of the
    # outputs and of the inputs
    histogram_intersection: dict[str, float] | None = None
    histogram_intersection_input: dict[str, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def find_pairs(source: str) -> list[tuple[str, str, str]]:
    """(id, input, target) from a folder with input/ and target/ subfolders or a CSV with input,target[,id]."""
    p = Path(source)
    if p.is_dir():
        inputs = {f.stem: f for f in sorted((p / "input").glob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS}
        targets = {f.stem: f for f in sorted((p / "target").glob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS}
        if not inputs:
            raise FileNotFoundError(f"{source}: expected images in {p / 'input'} and {p / 'target'}")
        missing = sorted(set(inputs) - set(targets))
        if missing:
            raise FileNotFoundError(f"{source}: no target for {', '.join(missing[:5])}")
        return [(k, str(inputs[k]), str(targets[k])) for k in sorted(inputs)]
    if p.is_file():
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"input", "target"} <= set(rows[0]):
            raise ValueError(f"{source}: a pairs manifest needs 'input' and 'target' columns")
        base = p.resolve().parent
        return [(r.get("id") or Path(r["input"]).stem, str(base / r["input"]), str(base / r["target"])) for r in rows]
    raise FileNotFoundError(f"{source}: no such folder or pairs manifest")


def load_float(path: str) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] at the file's own precision (8-bit files are x / 255 exactly)."""
    from PIL import Image
    if Path(path).suffix.lower() in (".png", ".jpg", ".jpeg"):
        with Image.open(path) as im:
            if im.mode == "RGB":
                return np.asarray(im, dtype=np.float32) / 255.0
    return decode(path).pixels.astype(np.float32) / 65535.0


@torch.inference_mode()
def model_output(model, a: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 through ``model``'s ``forward`` on the whole image -> (H, W, 3) float32."""
    device = next(model.parameters()).device
    out, _ = model(torch.from_numpy(a).permute(2, 0, 1)[None].to(device))
    return out[0].permute(1, 2, 0).float().cpu().numpy()


def score_output(image_id: str, o: np.ndarray, a: np.ndarray, b: np.ndarray) -> PairScore:
    return PairScore(image_id, psnr(o, b), ssim(o, b), delta_e76(o, b), psnr(a, b))


def score_pair(model, image_id: str, a: np.ndarray, b: np.ndarray) -> PairScore:
    """One pair through ``model`` (its ``forward`` on the whole image), scored against the target."""
    return score_output(image_id, model_output(model, a), a, b)


def score_arrays(model, pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> list[PairScore]:
    """Per-pair scores of ``model`` on pairs already in memory ((id, input, target) float32 arrays)."""
    return [score_pair(model, i, a, b) for i, a, b in pairs]


def evaluate(pairs: list[tuple[str, str, str]], weights: str | None = None, model=None,
             retoucher: str | None = None, options: dict | None = None) -> EvalResult:
    """The full image through the exact network, output clamped to [0, 1], no 8-bit rounding (as the reference).

    ``weights`` a checkpoint, or ``retoucher`` a registered model's shipped weights, or ``model`` one in memory;
    ``options`` configure the model as a run's would (aesthetic: guide, search steps and rate).
    """
    if model is None:
        loaded = load_checkpoint(weights, model=retoucher)
        model, name = loaded.model, f"{loaded.info.model}: {loaded.weights_path}"
    else:
        name = weights or "(in memory)"
    configure_model(model, options)
    scores, inputs, outputs, targets = [], [], [], []
    for image_id, inp, tgt in pairs:
        a, b = load_float(inp), load_float(tgt)
        if a.shape != b.shape:
            raise ValueError(f"{inp}: size {a.shape[:2]} differs from its target {b.shape[:2]}")
        o = model_output(model, a)
        scores.append(score_output(image_id, o, a, b))
        inputs.append(a)
        outputs.append(o)
        targets.append(b)
    mean = lambda k: float(np.mean([getattr(s, k) for s in scores]))  # noqa: E731
    return EvalResult(name, len(scores), mean("psnr"), mean("ssim"), mean("delta_e"), mean("psnr_input"), scores,
                      histogram_intersections(outputs, targets), histogram_intersections(inputs, targets))
