"""Training: operator initialization, then joint training (L1 + 0.1 (TV + colour)), as the NeurOp paper.

Deterministic for a seed; writes checkpoints with metadata, a loss CSV and plot, and resumes from its last
checkpoint. Runs on CPU (small budgets) and on CUDA when present.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import ModelInfo, load_checkpoint, load_operator_init, save_checkpoint
from .evaluate import find_pairs, load_float
from .models import model_class
from .operators import STANDARD

TRAINABLE = ("all", "predictors", "heads", "operators")
DISTORTIONS = ("bc", "ex", "vb")  # what distort-and-recover pairs mis-develop (NeurOp's operators can undo them)


@dataclass
class TrainConfig:
    pairs: list[str]
    out: str
    model: str | None = None  # a registered retoucher to train from scratch; None: --init's, else neurop
    init: str | None = None  # weights to start from (own or official); None: operator initialization first
    init_operators: str | None = None  # official init_renderer.pth as the operators' starting point
    iters: int = 1000
    lr: float = 5e-5
    trainable: str = "all"
    val: int = 0  # pairs held out for validation (the last ones after a seeded shuffle)
    val_ids: list[str] = field(default_factory=list)
    seed: int = 0
    eval_every: int = 100
    init_iters: int = 2000  # operator-initialization iterations per operator (when no init is given)
    photos: list[str] = field(default_factory=list)  # unlabeled photos: synthetic or distilled pairs
    teacher: str | None = None  # with photos: targets are this model's output (distillation)
    real_fraction: float = 0.5  # with photos: share of iterations on real pairs
    baseline: str | None = None  # cross-validation compares against these weights (default: init)
    train_size: int | None = None  # long side the training pairs are shrunk to (validation stays full size)
    device: str = "cpu"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(a: torch.Tensor, b: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop (1-20 px jitter per side, as the reference), flips and rot90; same for input and target."""
    h, w = a.shape[-2:]
    top, left = rng.randint(1, 20), rng.randint(1, 20)
    bottom, right = rng.randint(1, 20), rng.randint(1, 20)
    if h - top - bottom > 32 and w - left - right > 32:
        a = a[..., top:h - bottom, left:w - right]
        b = b[..., top:h - bottom, left:w - right]
    if rng.random() < 0.5:
        a, b = a.flip(-1), b.flip(-1)
    if rng.random() < 0.5:
        a, b = a.flip(-2), b.flip(-2)
    k = rng.randint(0, 3)
    return torch.rot90(a, k, (-2, -1)), torch.rot90(b, k, (-2, -1))


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()


def colour_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(x, y, dim=1, eps=1e-6).mean()


def joint_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(out, target) + 0.1 * (tv_loss(out) + colour_loss(out, target))


def select_trainable(model, which: str) -> list[torch.nn.Parameter]:
    """Freeze all but the parameters ``which`` names (the model's ``parameter_groups``)."""
    groups = model.parameter_groups()
    if which not in groups:
        raise ValueError(f"--trainable must be one of {', '.join(groups)}")
    chosen = set(groups[which])
    for name, p in model.named_parameters():
        p.requires_grad = name in chosen
    return [p for p in model.parameters() if p.requires_grad]


def load_photos(sources: list[str], long_side: int = 512) -> list[np.ndarray]:
    """Unlabeled photos (folders or manifests), at the training resolution, float32 (H, W, 3) in [0, 1]."""
    from manifests.manifest import load_manifest, scan_folder
    from .imageio import decode
    from .render import thumbnail
    paths = []
    for s in sources:
        if os.path.isdir(s):
            paths += scan_folder(s)
        else:
            paths += [e.source for e in load_manifest(s, os.path.dirname(os.path.abspath(s))).entries]
    if not paths:
        raise ValueError(f"no photos found in {', '.join(sources)}")
    return [thumbnail(decode(p).pixels, long_side)[0].permute(1, 2, 0).numpy() for p in paths]


def distort(img: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A plausibly mis-developed version of a photo: 1-3 standard operators at random strengths, random order."""
    ops = rng.sample(list(DISTORTIONS), rng.randint(1, len(DISTORTIONS)))
    for op in ops:
        fn, (lo, hi) = STANDARD[op]
        img = fn(img, rng.uniform(lo, hi) * 0.7).clamp(0, 1)
    return img


def photo_pairs(photos: list[np.ndarray], teacher: str | None) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Distillation pairs (photo, teacher's retouch), or photos whose inputs are distorted on the fly (None)."""
    if teacher is None:
        return [(f"photo{i}", p, None) for i, p in enumerate(photos)]
    model = load_checkpoint(teacher).model
    out = []
    with torch.inference_mode():
        for i, p in enumerate(photos):
            t = model(torch.from_numpy(p).permute(2, 0, 1)[None])[0][0].permute(1, 2, 0).numpy()
            out.append((f"photo{i}", p, np.ascontiguousarray(t)))
    return out


def load_pairs(sources: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for s in sources:
        for image_id, a, b in find_pairs(s):
            out.append((image_id, load_float(a), load_float(b)))
    if not out:
        raise ValueError("no training pairs found")
    return out


def shrink(image: np.ndarray, long_side: int) -> np.ndarray:
    """(H, W, 3) float32 -> long side ``long_side`` (antialiased), unless already that small."""
    if max(image.shape[:2]) <= long_side:
        return image
    from .render import resize_long_side
    t = resize_long_side(torch.from_numpy(image).permute(2, 0, 1)[None], long_side)
    return np.ascontiguousarray(t[0].permute(1, 2, 0).numpy())


def split(pairs, cfg: TrainConfig):
    ids = sorted(p[0] for p in pairs)
    if cfg.val_ids:
        val = set(cfg.val_ids)
    else:
        random.Random(cfg.seed).shuffle(ids)
        val = set(ids[len(ids) - cfg.val:]) if cfg.val else set()
    return [p for p in pairs if p[0] not in val], [p for p in pairs if p[0] in val]


def train(cfg: TrainConfig, log=print) -> dict:
    set_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(cfg.pairs)
    train_pairs, val_pairs = split(pairs, cfg)
    if not train_pairs:
        raise ValueError("every pair is held out for validation; lower --val")
    photo_set = photo_pairs(load_photos(cfg.photos), cfg.teacher) if cfg.photos else []
    if cfg.train_size:
        train_pairs = [(i, shrink(a, cfg.train_size), shrink(b, cfg.train_size)) for i, a, b in train_pairs]
        photo_set = [(i, shrink(a, cfg.train_size), None if b is None else shrink(b, cfg.train_size))
                     for i, a, b in photo_set]
    rng = random.Random(cfg.seed)
    last = out / "last.pt"
    start_it = 0
    if last.is_file():  # resume
        blob = torch.load(last, map_location="cpu", weights_only=True)
        model = load_checkpoint(last).model.train()
        model.requires_grad_(True)
        start_it = int(blob["extra"]["iteration"])
        rng.setstate(_rng_state(blob["extra"]["rng"]))
        torch.set_rng_state(blob["extra"]["torch_rng"])
        log(f"resuming from {last} at iteration {start_it}")
    elif cfg.init:
        model = load_checkpoint(cfg.init, model=cfg.model).model.train()
        model.requires_grad_(True)
    else:
        model = model_class(cfg.model or "neurop")()
        # stage 1 learns on the unlabeled photos when given, else on the training inputs
        pool = lambda: load_photos(cfg.photos) if cfg.photos else [p[1] for p in train_pairs]  # noqa: E731
        if cfg.init_operators and model.name == "neurop":
            model.load_state_dict(load_operator_init(cfg.init_operators), strict=False)
        elif cfg.init_operators:
            raise ValueError(f"--init-operators: model {model.name!r} does not start from other operators")
        else:  # the operators learn the standard ones
            model.initialize_operators(pool(), cfg.init_iters, rng, log)
    model.to(cfg.device)
    params = select_trainable(model, cfg.trainable)
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.99))
    if last.is_file() and "optimizer" in blob["extra"]:
        opt.load_state_dict(blob["extra"]["optimizer"])
    curve_path = out / "loss.csv"
    if start_it == 0:
        curve_path.write_text("iteration,train_loss,val_psnr,val_ssim,val_delta_e,seconds\n")
        if val_pairs:  # the starting point, for comparison
            model.eval()
            v0 = _val_scores(model, val_pairs)
            model.train()
            with open(curve_path, "a") as f:
                f.write(f"0,,{v0[0]:.4f},{v0[1]:.5f},{v0[2]:.4f},0\n")
            log(f"iter 0: val PSNR {v0[0]:.2f} SSIM {v0[1]:.4f} dE {v0[2]:.2f}")
    info = ModelInfo(model=model.name, model_version=model.version, operators=tuple(model.operators),
                     training=_recipe(cfg),
                     source=f"retouch-batch train from {os.path.basename(cfg.init) if cfg.init else 'scratch'}")
    if cfg.iters == 0:  # operator initialization only (the seed's stage 1): its result is the checkpoint
        save_checkpoint(out / "best.pt", model, info)
        save_checkpoint(last, model, info, {"iteration": 0})
        return {"best": {}, "initial": None, "final": None, "seconds": None, "iterations": 0}
    best = -math.inf
    if (out / "best.json").is_file():
        best = json.loads((out / "best.json").read_text())["val_psnr"]
    running, t0 = [], time.monotonic()
    for it in range(start_it, cfg.iters):
        if photo_set and rng.random() >= cfg.real_fraction:
            _, a, b = photo_set[rng.randrange(len(photo_set))]
            if b is None:  # distort-and-recover: the photo itself is the target
                b, a = a, distort(torch.from_numpy(a).permute(2, 0, 1)[None], rng)[0].permute(1, 2, 0).numpy()
        else:
            _, a, b = train_pairs[rng.randrange(len(train_pairs))]
        x, y = augment(torch.from_numpy(a).permute(2, 0, 1)[None], torch.from_numpy(b).permute(2, 0, 1)[None], rng)
        pred, _ = model(x.to(cfg.device))
        loss = joint_loss(pred, y.to(cfg.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        running.append(loss.item())
        if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iters:
            model.eval()
            val = _val_scores(model, val_pairs)
            model.train()
            with open(curve_path, "a") as f:
                f.write(f"{it + 1},{np.mean(running):.6f},{val[0]:.4f},{val[1]:.5f},{val[2]:.4f},"
                        f"{time.monotonic() - t0:.1f}\n")
            log(f"iter {it + 1}/{cfg.iters}: loss {np.mean(running):.4f}"
                + (f", val PSNR {val[0]:.2f} SSIM {val[1]:.4f} dE {val[2]:.2f}" if val_pairs else ""))
            running = []
            extra = {"iteration": it + 1, "optimizer": opt.state_dict(), "rng": _rng_blob(rng),
                     "torch_rng": torch.get_rng_state()}
            save_checkpoint(last, model, info, extra)
            if not val_pairs or val[0] > best:
                best = val[0] if val_pairs else -math.inf
                save_checkpoint(out / "best.pt", model, info)
                (out / "best.json").write_text(json.dumps({"iteration": it + 1, "val_psnr": val[0],
                                                           "val_ssim": val[1], "val_delta_e": val[2]}))
    plot_curve(curve_path, out / "loss.png")
    rows = list(csv.DictReader(open(curve_path)))
    result = {"best": json.loads((out / "best.json").read_text()) if (out / "best.json").is_file() else {},
              "initial": _curve_scores(rows[0]) if rows and rows[0]["iteration"] == "0" else None,
              "final": _curve_scores(rows[-1]) if rows else None,
              "seconds": float(rows[-1]["seconds"]) if rows else None, "iterations": cfg.iters - start_it}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _curve_scores(row: dict) -> dict:
    return {"iteration": int(row["iteration"]), "val_psnr": float(row["val_psnr"]), "val_ssim": float(row["val_ssim"]),
            "val_delta_e": float(row["val_delta_e"])}


def cross_validate(cfg: TrainConfig, folds: int | None = None, repeats: int = 1, log=print) -> dict:
    """Cross-validation of a fine-tuning recipe over every pair (leave-one-out unless ``folds``): the model after
    the fixed iteration budget (not the best-on-validation one) scores each held-out pair, paired with the starting
    weights on the same pair. Writes cv.json with bootstrap intervals of the gains (pipeline.crossval)."""
    from .crossval import cross_validate as run_cv

    if not (cfg.init or cfg.baseline):
        raise ValueError("cross-validation compares against the starting weights: give --init or --baseline")
    pairs = load_pairs(cfg.pairs)
    start = load_checkpoint(cfg.baseline or cfg.init).model

    def fit(train_pairs, fold_out: Path):
        held = sorted({p[0] for p in pairs} - {p[0] for p in train_pairs})
        train(replace(cfg, val=0, val_ids=held, out=str(fold_out), eval_every=cfg.iters), log=lambda *_: None)
        return load_checkpoint(fold_out / "last.pt").model

    return run_cv(pairs, fit, start, cfg.out, folds=folds, repeats=repeats, seed=cfg.seed, log=log)


def _val_scores(model, val_pairs) -> tuple[float, float, float]:
    if not val_pairs:
        return (float("nan"),) * 3
    from .metrics import delta_e76, psnr, ssim
    s = []
    with torch.inference_mode():
        for _, a, b in val_pairs:
            o = model(torch.from_numpy(a).permute(2, 0, 1)[None].to(next(model.parameters()).device))[0]
            o = o[0].permute(1, 2, 0).cpu().numpy()
            s.append((psnr(o, b), ssim(o, b), delta_e76(o, b)))
    return tuple(float(np.mean([x[i] for x in s])) for i in range(3))


def _recipe(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["pairs"] = [os.path.basename(os.path.normpath(p)) for p in cfg.pairs]
    d["init"] = os.path.basename(cfg.init) if cfg.init else None
    d["photos"] = [os.path.basename(os.path.normpath(p)) for p in cfg.photos]
    d["teacher"] = os.path.basename(cfg.teacher) if cfg.teacher else None
    d.pop("out")
    d.pop("device")
    return d


def _rng_blob(rng: random.Random) -> dict:
    version, state, gauss = rng.getstate()
    return {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss}


def _rng_state(blob: dict):
    return (blob["version"], tuple(int(x) for x in blob["state"].tolist()), blob["gauss"])


def plot_curve(csv_path: Path, png_path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    it = [int(r["iteration"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    trained = [r for r in rows if r["train_loss"]]  # the iteration-0 row only scores the starting weights
    ax.plot([int(r["iteration"]) for r in trained], [float(r["train_loss"]) for r in trained], label="train loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    vals = [float(r["val_psnr"]) for r in rows]
    if not all(math.isnan(v) for v in vals):
        ax2 = ax.twinx()
        ax2.plot(it, vals, color="tab:orange", label="val PSNR")
        ax2.set_ylabel("val PSNR (dB)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
