"""Coarse-to-fine colour enhancement, its global stage (after CENet, ../shared/seeds/coarse-to-fine-nonlocal.md).

From a 128-pixel thumbnail a small network predicts one 3 x 3 colour matrix and a bias for the whole image, applied
in linear light: out = M rgb + b. That is what a colour cast or a faded scan needs (a cast is, to a good
approximation, a linear map of the scene's light), and what NeurOp's three operators cannot express. The twelve
values are the ledger's named sliders (``rr`` = red from red ... ``b_bias``), re-editable by ``rerender``; for
fixed values the model is a global colour function, so it renders through the baked 3D LUT.

The seed's backbone is an ImageNet ResNet-50; no ImageNet weights can be had here, so the backbone is small
(four stride-2 3x3 convolutions, 16-64 channels, mean and max pooling) and joined by grey-world statistics (the
log mean and log 99th percentile of each linear channel), which carry most of what a cast is. The seed's second
stage (PRNet, a residual refinement with a non-local block) is not built yet.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..operators import linear_to_srgb, srgb_to_linear
from ..render import resize_long_side, shrink_long_side
from . import Param, register

CHANNELS = "rgb"
MATRIX_NAMES = tuple(f"{o}{i}" for o in CHANNELS for i in CHANNELS)  # rr = red out from red in, rg, rb, gr ...
BIAS_NAMES = tuple(f"{c}_bias" for c in CHANNELS)
THUMBNAIL = 128
STATISTICS = 6  # log mean and log 99th percentile of each linear channel


def _matrix_param(name: str) -> Param:
    out, inp = {"r": "red", "g": "green", "b": "blue"}[name[0]], {"r": "red", "g": "green", "b": "blue"}[name[1]]
    return Param(name, f"{out} from {inp}", -1.0, 3.0, 1.0 if name[0] == name[1] else 0.0, "linear-light weight")


def colour_matrix(rgb: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """rgb (..., 3) sRGB in [0, 1], params (..., 12) broadcastable -> (..., 3): M rgb + b in linear light."""
    m = params[..., :9].reshape(*params.shape[:-1], 3, 3)
    lin = srgb_to_linear(rgb.clamp(0, 1))
    return linear_to_srgb((m @ lin.unsqueeze(-1)).squeeze(-1) + params[..., 9:12])


def cast_statistics(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB -> (B, 6): log2 of each linear channel's mean and 99th percentile."""
    lin = srgb_to_linear(image.clamp(0, 1)).flatten(2)
    return torch.cat([torch.log2(lin.mean(2) + 1e-3), torch.log2(torch.quantile(lin, 0.99, dim=2) + 1e-3)], dim=1)


@register
class CoarseToFine(nn.Module):
    """A global colour matrix and bias per image, predicted from a thumbnail (CENet's stage)."""

    name = "coarse-to-fine"
    version = "1"
    params = tuple(_matrix_param(n) for n in MATRIX_NAMES) + tuple(
        Param(n, f"{n[0]} offset", -0.5, 0.5, 0.0, "linear light") for n in BIAS_NAMES)
    rendering = "lut"
    default_weights = "coarse-to-fine-default.pt"

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48, 64), hidden: int = 64):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.LeakyReLU(0.1)]
            c = w
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * c + STATISTICS, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, 12))
        nn.init.zeros_(self.head[-1].weight)  # starts as the identity
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("identity", torch.tensor([p.default for p in self.params]))
        self.register_buffer("low", torch.tensor([p.low for p in self.params]))
        self.register_buffer("high", torch.tensor([p.high for p in self.params]))

    def predict_strengths(self, thumbnail: torch.Tensor, lut_size: int | None = None) -> torch.Tensor:
        """thumbnail (B, 3, H, W) -> (B, 12): the matrix row by row, then the bias, within the declared ranges."""
        x = shrink_long_side(thumbnail.float(), THUMBNAIL)
        f = self.backbone(x * 2 - 1)
        features = torch.cat([f.mean((2, 3)), f.amax((2, 3)), cast_statistics(x)], dim=1)
        return torch.minimum(torch.maximum(self.identity + self.head(features), self.low), self.high)

    def render(self, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, 12) -> (B, 3, H, W) in [0, 1]."""
        out = colour_matrix(image.permute(0, 2, 3, 1), params[:, None, None, :])
        return out.permute(0, 3, 1, 2)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.predict_strengths(image)
        return self.render(image, params), params

    def render_pixels(self, rgb: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return colour_matrix(rgb, params.reshape(1, 12).to(rgb.dtype))


def random_cast(rng) -> torch.Tensor:
    """A plausible colour cast as a (3, 3) linear-light matrix: channel gains up to +-0.6 stops (a white balance
    gone wrong, renormalized to keep grey's luminance) with up to 8 % cross-talk between channels (faded dyes)."""
    gains = torch.tensor([2.0 ** rng.uniform(-0.6, 0.6) for _ in range(3)])
    gains = gains / (0.2126 * gains[0] + 0.7152 * gains[1] + 0.0722 * gains[2])
    mix = torch.eye(3) + torch.tensor([[0.0 if i == j else rng.uniform(-0.08, 0.08) for j in range(3)]
                                       for i in range(3)])
    return torch.diag(gains) @ mix


def apply_cast(image: torch.Tensor, cast: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB through a (3, 3) linear-light matrix."""
    lin = srgb_to_linear(image.clamp(0, 1))
    return linear_to_srgb(torch.einsum("ij,bjhw->bihw", cast, lin))


def train_on_casts(photos: list[torch.Tensor], steps: int, seed: int = 0, log=print, batch: int = 16,
                   size: int = THUMBNAIL) -> CoarseToFine:
    """The global stage learned from good photos (3, H, W) cast at random: recover the photo (L1, sRGB)."""
    import random
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = CoarseToFine()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    small = [resize_long_side(p[None], size)[0] for p in photos]
    for step in range(1, steps + 1):
        good, bad = [], []
        for _ in range(batch):
            p = small[rng.randrange(len(small))]
            if rng.random() < 0.5:
                p = p.flip(-1)
            good.append(p[None])
            bad.append(apply_cast(p[None], random_cast(rng)).clamp(0, 1))
        loss = sum(F.l1_loss(model(b)[0], g) for g, b in zip(good, bad)) / batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 10) == 0:
            log(f"coarse-to-fine: step {step}/{steps} L1 {loss.item():.4f}")
    return model.eval()


VALIDATION_EVERY = 5  # every 5th photo (sorted by path) is held out to measure the model on casts it never saw
VALIDATION_CASTS = 3  # random casts per held-out photo


def cast_scores(model: nn.Module, photos: list[torch.Tensor], seed: int = 123) -> list[tuple[float, float]]:
    """(input PSNR, output PSNR) against each photo, for VALIDATION_CASTS random casts per photo (fixed seed)."""
    import random

    from ..metrics import psnr
    rng = random.Random(seed)
    rows = []
    with torch.inference_mode():
        for p in photos:
            for _ in range(VALIDATION_CASTS):
                cast = apply_cast(p[None], random_cast(rng)).clamp(0, 1)
                out = model(cast)[0]
                target = p.permute(1, 2, 0).numpy()
                rows.append((psnr(cast[0].permute(1, 2, 0).numpy(), target),
                             psnr(out[0].permute(1, 2, 0).numpy(), target)))
    return rows


def train_coarse_to_fine(photo_sources: list[str], pair_sources: list[str], out: str, steps: int, seed: int = 0,
                         log=print) -> dict:
    """Train on 4/5 of the photos cast at random, score on the held-out fifth beside NeurOp, and on the pairs (never
    trained on); writes best.pt and casts.json."""
    import json
    import os
    import time

    import numpy as np

    from ..checkpoint import ModelInfo, load_checkpoint, save_checkpoint
    from ..train import load_photos
    started = time.time()
    photos = [torch.from_numpy(p).permute(2, 0, 1).contiguous() for p in load_photos(photo_sources, 256)]
    held = photos[::VALIDATION_EVERY]
    used = [p for i, p in enumerate(photos) if i % VALIDATION_EVERY]
    if not held or not used:
        raise ValueError(f"--model coarse-to-fine needs at least {VALIDATION_EVERY} photos (one is held out)")
    log(f"coarse-to-fine: {len(used)} photos to learn from, {len(held)} held out, {steps} steps")
    model = train_on_casts(used, steps, seed, log)
    ours = cast_scores(model, held)
    neurop = cast_scores(load_checkpoint().model.eval(), held)
    report = {"held_out_photos": len(held), "casts": len(ours), "input_psnr": float(np.mean([r[0] for r in ours])),
              "psnr": float(np.mean([r[1] for r in ours])), "neurop_psnr": float(np.mean([r[1] for r in neurop])),
              "steps": steps, "seed": seed}
    log(f"held-out casts: input {report['input_psnr']:.2f} dB, coarse-to-fine {report['psnr']:.2f} dB, "
        f"NeurOp {report['neurop_psnr']:.2f} dB")
    from ..evaluate import evaluate, find_pairs
    for source in pair_sources:
        r = evaluate(find_pairs(source), model=model)
        report.setdefault("pairs", {})[source] = {"n": r.n, "psnr": r.psnr, "ssim": r.ssim, "delta_e": r.delta_e,
                                                  "input_psnr": r.psnr_input}
        log(f"{source} (never trained on): {r.psnr:.2f} dB / {r.ssim:.4f} / {r.delta_e:.2f} (input {r.psnr_input:.2f})")
    info = ModelInfo(model=model.name, model_version=model.version, operators=model.operators,
                     training={k: report[k] for k in ("steps", "seed", "held_out_photos", "psnr", "neurop_psnr")}
                     | {"photos": len(used)},
                     source=f"retouch-batch train --model coarse-to-fine ({len(used)} photos, random casts)")
    os.makedirs(out, exist_ok=True)
    report["weights_sha256"] = save_checkpoint(os.path.join(out, "best.pt"), model, info)
    report["seconds"] = round(time.time() - started, 1)
    with open(os.path.join(out, "casts.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
