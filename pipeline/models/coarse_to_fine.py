"""Coarse-to-fine colour enhancement, its global stage (after CENet, ../shared/seeds/coarse-to-fine-nonlocal.md).

From a 128-pixel thumbnail a small network predicts one 3 x 3 colour matrix and a bias for the whole image, applied
in linear light: out = M rgb + b. That is what a colour cast or a faded scan needs (a cast is, to a good
approximation, a linear map of the scene's light), and what NeurOp's three operators cannot express. The twelve
values are the ledger's named sliders (``rr`` = red from red ... ``b_bias``), re-editable by ``rerender``; for
fixed values the model is a global colour function, so it renders through the baked 3D LUT.

The seed's backbone is an ImageNet ResNet-50; no ImageNet weights can be had here, so the backbone is small
(four stride-2 3x3 convolutions, 16-64 channels, mean and max pooling) and joined by grey-world statistics (the
log mean and log 99th percentile of each linear channel), which carry most of what a cast is.

The second stage is the seed's PRNet: a residual image for local detail, from the globally corrected image (16
features, two stride-2 convolutions down, one non-local block then three residual blocks, two stride-2 transposed
convolutions up, batch normalization and ReLU after each convolution). Its residual is scaled by the 13th slider,
``refine`` in [0, 1] (0: the global stage alone). The non-local block attends from every position to a memory
pooled to at most 16 x 16 positions; at full resolution that memory comes from the working copy of the whole image
(pipeline.guided), so tiles share it. Full resolution: the refinement runs on the working copy and its change is
carried up by a fitted bilateral grid (``guided``, the default: BENCHMARKS.md measures it against ``tiles``, the
network on every pixel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..operators import linear_to_srgb, srgb_to_linear
from ..render import pad_to_multiple, resize_long_side, shrink_long_side
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


MEMORY_CELLS = 16  # the non-local block's memory: the feature map pooled to at most 16 x 16 positions
REFINE = Param("refine", "local refinement", 0.0, 1.0, 0.0, "share of the refinement's residual")


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al.), its keys and values pooled to a small memory.

    y_i = x_i + W sum_j softmax_j(theta(x_i) . phi(m_j)) g(m_j), m the feature map average-pooled to at most
    MEMORY_CELLS x MEMORY_CELLS positions (the subsampling the non-local paper uses for speed). ``memory(x)`` can
    be computed once on a whole (small) image and given to ``forward`` for its tiles. W starts at zero: the block
    starts as the identity.
    """

    def __init__(self, channels: int, inner: int | None = None, cells: int = MEMORY_CELLS):
        super().__init__()
        inner = inner or max(1, channels // 2)
        self.theta, self.phi, self.g = (nn.Conv2d(channels, inner, 1) for _ in range(3))
        self.out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.cells = cells

    def memory(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> keys and values (B, M, inner), M <= cells^2."""
        pooled = F.adaptive_avg_pool2d(x, (min(self.cells, x.shape[-2]), min(self.cells, x.shape[-1])))
        return self.phi(pooled).flatten(2).transpose(1, 2), self.g(pooled).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        keys, values = self.memory(x) if memory is None else memory
        b, _, h, w = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)  # (B, hw, inner)
        attention = torch.softmax(query @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5, dim=-1)
        y = (attention @ values).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.out(y)


def _conv_bn(cin: int, cout: int, stride: int = 1, transpose: bool = False) -> nn.Sequential:
    conv = (nn.ConvTranspose2d(cin, cout, 3, stride=stride, padding=1, output_padding=stride - 1) if transpose
            else nn.Conv2d(cin, cout, 3, stride=stride, padding=1))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class PRNet(nn.Module):
    """The seed's pixel-wise refinement: image (B, 3, H, W) -> residual (B, 3, H, W).

    Down: 3x3 conv (16), stride-2 conv (32), stride-2 conv (32); one non-local block and three residual blocks at a
    quarter of the resolution; up: two stride-2 transposed convs (32, 16) and a 3x3 conv to RGB (zero at the start).
    Images are padded on the bottom and right to a multiple of 4 (``STRIDE``) and the residual cropped back.
    """

    STRIDE = 4
    MARGIN = 48  # receptive-field radius (40 pixels), rounded up to a multiple of STRIDE: a tile's context

    def __init__(self, features: tuple[int, int, int] = (16, 32, 32), blocks: int = 3):
        super().__init__()
        a, b, c = features
        self.down = nn.Sequential(_conv_bn(3, a), _conv_bn(a, b, 2), _conv_bn(b, c, 2))
        self.non_local = NonLocalBlock(c)
        self.blocks = nn.Sequential(*(ResidualBlock(c) for _ in range(blocks)))
        self.up = nn.Sequential(_conv_bn(c, b, 2, transpose=True), _conv_bn(b, a, 2, transpose=True),
                                nn.Conv2d(a, 3, 3, padding=1))
        nn.init.zeros_(self.up[-1].weight)
        nn.init.zeros_(self.up[-1].bias)

    def memory(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The non-local block's memory for a whole image (pipeline.guided shares it between tiles)."""
        return self.non_local.memory(self.down(pad_to_multiple(image, self.STRIDE) * 2 - 1))

    def forward(self, image: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        h, w = image.shape[-2:]
        x = self.down(pad_to_multiple(image, self.STRIDE) * 2 - 1)
        x = self.blocks(self.non_local(x, memory))
        return self.up(x)[..., :h, :w]


@register
class CoarseToFine(nn.Module):
    """Colour casts and fading: a colour matrix per image (CENet), then a local refinement (PRNet) scaled by refine.
    """

    name = "coarse-to-fine"
    version = "2"
    params = tuple(_matrix_param(n) for n in MATRIX_NAMES) + tuple(
        Param(n, f"{n[0]} offset", -0.5, 0.5, 0.0, "linear light") for n in BIAS_NAMES) + (REFINE,)
    rendering = "network"
    default_weights = "coarse-to-fine-default.pt"
    full_res = "guided"  # how the refinement reaches full resolution (run --full-res)
    margin, align = PRNet.MARGIN, PRNet.STRIDE

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
        self.refinement = PRNet()
        global_params = self.params[:12]
        self.register_buffer("identity", torch.tensor([p.default for p in global_params]))
        self.register_buffer("low", torch.tensor([p.low for p in global_params]))
        self.register_buffer("high", torch.tensor([p.high for p in global_params]))
        # the refinement amount every image is given: chosen on held-out data when the refinement is trained
        self.register_buffer("refine_amount", torch.tensor(REFINE.default))

    @staticmethod
    def retoucher_class():
        from ..guided import NetworkRetoucher
        return NetworkRetoucher

    def configure(self, full_res: str | None = None) -> dict:
        return configure_full_res(self, full_res)

    def predict_strengths(self, thumbnail: torch.Tensor, lut_size: int | None = None) -> torch.Tensor:
        """thumbnail (B, 3, H, W) -> (B, 13): the matrix row by row, the bias (within the declared ranges), refine."""
        x = shrink_long_side(thumbnail.float(), THUMBNAIL)
        f = self.backbone(x * 2 - 1)
        features = torch.cat([f.mean((2, 3)), f.amax((2, 3)), cast_statistics(x)], dim=1)
        matrix = torch.minimum(torch.maximum(self.identity + self.head(features), self.low), self.high)
        return torch.cat([matrix, self.refine_amount.expand(len(matrix), 1)], dim=1)

    def global_stage(self, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, 13) -> the matrix and bias applied, (B, 3, H, W) in [0, 1]."""
        out = colour_matrix(image.permute(0, 2, 3, 1), params[:, None, None, :12])
        return out.permute(0, 3, 1, 2)

    def context(self, image: torch.Tensor, params: torch.Tensor):
        """What every tile of ``image`` (after the global stage) shares: the non-local block's memory."""
        return self.refinement.memory(image)

    def local_stage(self, image: torch.Tensor, params: torch.Tensor, context=None) -> torch.Tensor:
        """The globally corrected image plus ``refine`` times PRNet's residual, clamped."""
        refine = params[:, 12].reshape(-1, 1, 1, 1)
        return (image + refine * self.refinement(image, context)).clamp(0, 1)

    def local_is_identity(self, params: torch.Tensor) -> bool:
        return bool((params[..., 12] == 0).all())

    def render(self, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Both stages on whole images: (B, 3, H, W), (B, 13) -> (B, 3, H, W) in [0, 1]."""
        return self.local_stage(self.global_stage(image, params), params)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.predict_strengths(image)
        return self.render(image, params), params

    def render_pixels(self, rgb: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The global stage as a colour function (baked into the LUT the full-resolution render starts with)."""
        return colour_matrix(rgb, params.reshape(-1)[:12].reshape(1, 12).to(rgb.dtype))


FULL_RES_WAYS = ("guided", "tiles")


def configure_full_res(model: nn.Module, full_res: str | None) -> dict:
    """Set how a network retoucher reaches full resolution; returns the options as a run records them."""
    if full_res is None:
        return {}
    if full_res not in FULL_RES_WAYS:
        raise ValueError(f"--full-res must be one of {', '.join(FULL_RES_WAYS)}, not {full_res!r}")
    model.full_res = full_res
    return {"full_res": full_res}


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


def random_fade(rng) -> tuple[torch.Tensor, float]:
    """An aged print's non-linear fading, beyond any matrix: each dye's own tone curve (a linear-light gamma of up
    to +-0.3 stops of exponent) and lifted blacks (up to 4 %): (gammas (3,), lift)."""
    return torch.tensor([2.0 ** rng.uniform(-0.3, 0.3) for _ in range(3)]), rng.uniform(0.0, 0.04)


def apply_fade(image: torch.Tensor, fade: tuple[torch.Tensor, float]) -> torch.Tensor:
    gammas, lift = fade
    lin = srgb_to_linear(image.clamp(0, 1)) ** gammas.reshape(1, 3, 1, 1)
    return linear_to_srgb(lift + (1 - lift) * lin)


def degrade(image: torch.Tensor, rng) -> torch.Tensor:
    """What the coarse-to-fine model learns to undo: a colour cast, and in 2 of 3 photos non-linear fading too."""
    out = apply_cast(image, random_cast(rng))
    if rng.random() < 2 / 3:
        out = apply_fade(out, random_fade(rng))
    return out.clamp(0, 1)


def _batch(photos: list[torch.Tensor], rng, batch: int, crop: int | None = None, fading: bool = True):
    """(good, degraded) lists of (1, 3, h, w): random photos, flipped half the time, cropped square when asked;
    degraded by a cast and (``fading``) fading."""
    good, bad = [], []
    for _ in range(batch):
        p = photos[rng.randrange(len(photos))]
        if rng.random() < 0.5:
            p = p.flip(-1)
        if crop:
            h, w = p.shape[-2:]
            c = min(crop, h, w)
            top, left = rng.randrange(h - c + 1), rng.randrange(w - c + 1)
            p = p[:, top:top + c, left:left + c]
        good.append(p[None])
        bad.append(degrade(p[None], rng) if fading else apply_cast(p[None], random_cast(rng)).clamp(0, 1))
    return good, bad


def train_global_stage(photos: list[torch.Tensor], steps: int, seed: int = 0, log=print, batch: int = 16,
                       size: int = THUMBNAIL) -> CoarseToFine:
    """The global stage learned from good photos (3, H, W) cast at random: recover the photo (L1, sRGB).

    Casts only: a matrix can undo a cast exactly, while learning to undo fading with a matrix made it darken and
    harden photos that were never faded (0.5 dB below the inputs on the FiveK pairs); fading is the refinement's."""
    import random
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = CoarseToFine()
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("refinement.")], lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    small = [resize_long_side(p[None], size)[0] for p in photos]
    for step in range(1, steps + 1):
        good, bad = _batch(small, rng, batch, fading=False)
        loss = sum(F.l1_loss(model.global_stage(b, model.predict_strengths(b)), g) for g, b in zip(good, bad)) / batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 10) == 0:
            log(f"coarse-to-fine global stage: step {step}/{steps} L1 {loss.item():.4f}")
    return model.eval()


REFINE_CROP = 192


def train_refinement(model: CoarseToFine, photos: list[torch.Tensor], steps: int, seed: int = 0, log=print,
                     batch: int = 8, crop: int = REFINE_CROP) -> CoarseToFine:
    """PRNet learns the residual the (frozen) global stage leaves: MSE against the photo, as the seed trains it."""
    import random
    torch.manual_seed(seed + 1)
    rng = random.Random(seed + 1)
    opt = torch.optim.Adam(model.refinement.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.refinement.train()
    full = torch.ones(1, 1)
    for step in range(1, steps + 1):
        good, bad = _batch(photos, rng, batch, crop)
        with torch.no_grad():
            coarse = torch.cat([model.global_stage(b, model.predict_strengths(b)) for b in bad])
        params = torch.cat([torch.zeros(len(coarse), 12), full.expand(len(coarse), 1)], 1)
        loss = F.mse_loss(model.local_stage(coarse, params), torch.cat(good))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 10) == 0:
            log(f"coarse-to-fine refinement: step {step}/{steps} MSE {loss.item():.5f}")
    return model.eval()


def train_on_casts(photos: list[torch.Tensor], steps: int, seed: int = 0, log=print, batch: int = 16,
                   refine_steps: int = 0) -> CoarseToFine:
    """Both stages on good photos degraded at random (``refine_steps=0``: the global stage only, refine 0)."""
    model = train_global_stage(photos, steps, seed, log, batch)
    if refine_steps:
        train_refinement(model, photos, refine_steps, seed, log)
        model.refine_amount.fill_(1.0)
    return model


VALIDATION_EVERY = 5  # every 5th photo (sorted by path) is held out to measure the model on casts it never saw
VALIDATION_CASTS = 3  # random degradations per held-out photo
REFINE_CHOICES = (0.0, 0.25, 0.5, 0.75, 1.0)


def degraded_validation(photos: list[torch.Tensor], seed: int = 123) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(good (1, 3, H, W), degraded) for VALIDATION_CASTS fixed random degradations of each photo."""
    import random
    rng = random.Random(seed)
    return [(p[None], degrade(p[None], rng)) for p in photos for _ in range(VALIDATION_CASTS)]


def cast_scores(model: nn.Module, photos: list[torch.Tensor], seed: int = 123, refine: float | None = None
                ) -> list[tuple[float, float]]:
    """(input PSNR, output PSNR) against each photo, for VALIDATION_CASTS fixed degradations per photo; ``refine``
    overrides the model's refinement amount (coarse-to-fine only)."""
    from ..metrics import psnr
    rows = []
    with torch.inference_mode():
        for good, bad in degraded_validation(photos, seed):
            if refine is None:
                out = model(bad)[0]
            else:
                params = model.predict_strengths(bad)
                params[:, 12] = refine
                out = model.render(bad, params)
            target = good[0].permute(1, 2, 0).numpy()
            rows.append((psnr(bad[0].permute(1, 2, 0).numpy(), target), psnr(out[0].permute(1, 2, 0).numpy(), target)))
    return rows


WORKING_SIZE = 384  # long side of the copy the refinement works on (training photos, and the run's view)
PAIRS_TOLERANCE_DB = 0.05  # "not worse than the inputs" on the real pairs, within this (13 pairs: noise is larger)


def train_coarse_to_fine(photo_sources: list[str], pair_sources: list[str], out: str, steps: int, seed: int = 0,
                         log=print, refine_steps: int | None = None) -> dict:
    """Train on 4/5 of the photos degraded at random; choose the refinement amount on the held-out fifth (beside
    NeurOp), never above what keeps the pairs (never trained on) at least as good as the global stage alone;
    writes best.pt and casts.json."""
    import time

    import numpy as np

    from ..checkpoint import ModelInfo, load_checkpoint, save_training
    from ..evaluate import evaluate, find_pairs
    from ..train import load_photos
    started = time.time()
    refine_steps = 2 * steps if refine_steps is None else refine_steps
    photos = [torch.from_numpy(p).permute(2, 0, 1).contiguous() for p in load_photos(photo_sources, WORKING_SIZE)]
    held = photos[::VALIDATION_EVERY]
    used = [p for i, p in enumerate(photos) if i % VALIDATION_EVERY]
    if not held or not used:
        raise ValueError(f"--model coarse-to-fine needs at least {VALIDATION_EVERY} photos (one is held out)")
    log(f"coarse-to-fine: {len(used)} photos to learn from, {len(held)} held out; {steps} global steps, "
        f"{refine_steps} refinement steps")
    model = train_on_casts(used, steps, seed, log, refine_steps=refine_steps)
    by_refine = {r: float(np.mean([x[1] for x in cast_scores(model, held, refine=r)]))
                 for r in (REFINE_CHOICES if refine_steps else (0.0,))}
    base = cast_scores(model, held, refine=0.0)
    neurop = cast_scores(load_checkpoint().model.eval(), held)
    report = {"held_out_photos": len(held), "degraded": len(base), "input_psnr": float(np.mean([r[0] for r in base])),
              "global_psnr": by_refine[0.0], "psnr_by_refine": by_refine,
              "neurop_psnr": float(np.mean([r[1] for r in neurop])), "steps": steps, "refine_steps": refine_steps,
              "seed": seed}
    pairs = {s: find_pairs(s) for s in pair_sources}
    allowed = sorted(by_refine)
    for source, found in pairs.items():  # no refinement that makes real pairs worse than their inputs
        for r in allowed:
            model.refine_amount.fill_(r)
            result = evaluate(found, model=model)
            report.setdefault("pairs_psnr_by_refine", {}).setdefault(source, {})[r] = result.psnr
            if result.psnr < result.psnr_input - PAIRS_TOLERANCE_DB:
                allowed = [a for a in allowed if a < r]
                log(f"refine {r}: {source} {result.psnr:.2f} dB < its inputs' {result.psnr_input:.2f} dB; not allowed")
                break
    if not allowed:
        log("warning: even the global stage alone is below the pairs' inputs; refine 0")
        allowed = [0.0]
    chosen = max(allowed, key=lambda r: by_refine[r])
    model.refine_amount.fill_(chosen)
    report["refine"] = chosen
    report["psnr"] = by_refine[chosen]
    log(f"held-out degraded photos: input {report['input_psnr']:.2f} dB, global stage {report['global_psnr']:.2f} dB, "
        f"with refine {chosen} {report['psnr']:.2f} dB, NeurOp {report['neurop_psnr']:.2f} dB")
    for source, found in pairs.items():
        r = evaluate(found, model=model)
        report.setdefault("pairs", {})[source] = {"n": r.n, "psnr": r.psnr, "ssim": r.ssim, "delta_e": r.delta_e,
                                                  "input_psnr": r.psnr_input}
        log(f"{source} (never trained on): {r.psnr:.2f} dB / {r.ssim:.4f} / {r.delta_e:.2f} (input {r.psnr_input:.2f})")
    info = ModelInfo(model=model.name, model_version=model.version, operators=model.operators,
                     prediction_size=WORKING_SIZE,
                     training={k: report[k] for k in ("steps", "refine_steps", "seed", "held_out_photos", "psnr",
                                                      "global_psnr", "neurop_psnr", "refine")}
                     | {"photos": len(used)},
                     source=f"retouch-batch train --model coarse-to-fine ({len(used)} photos, random casts and fading)")
    return save_training(out, model, info, report, "casts.json", started)
