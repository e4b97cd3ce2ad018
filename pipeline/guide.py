"""Aesthetic guides: differentiable models that score how good a photo looks, for the aesthetic retoucher's search.

The aesthetic-guided seed uses NIMA (VGG16 / Inception-v2 trained on AVA); its weights cannot be had here (no
package on the registries carries them, and the ones that wrap NIMA download them at run time). So the project
trains its own small guide (``RankingGuide``): a ranking model that learned which of two renditions of a photo is
the better one, from expert targets against their inputs, and good images (the targets, optionally more photos)
against copies of them spoiled by the filters themselves. A user who has NIMA
weights can load them instead (``NimaVgg16``; the file format is in ``load_guide``).

Every guide maps an image (B, 3, H, W), sRGB in [0, 1], to a score (B,) in [1, 10] (NIMA's scale: the search
minimizes (10 - score)^2), looking at a copy with long side ``input_size``.
"""
from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import filters
from .render import resize_long_side, shrink_long_side

GUIDE_FORMAT = "retouch-batch-guide"
MAX_SCORE = 10.0


class GuideError(ValueError):
    pass


LUMINANCE_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
GUIDE_FEATURES = tuple(f"luma q{round(q * 100)}" for q in LUMINANCE_QUANTILES) + (
    "luma mean", "luma std", "local contrast", "saturation mean", "saturation q90", "chroma mean",
    "red - green", "blue - green", "mid-tone red - green", "mid-tone blue - green", "clipped shadows",
    "clipped highlights")


def guide_features(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> (B, len(GUIDE_FEATURES)): tone and colour statistics, differentiable.

    What a retoucher looks at when judging a global edit: where the tones sit (luma quantiles, mean, spread), local
    contrast (luma against a 4x-blurred luma), saturation and chroma, colour casts overall and in the mid-tones,
    and how much is crushed or blown (soft counts)."""
    x = image.clamp(0, 1)
    luma = 0.27 * x[:, 0] + 0.67 * x[:, 1] + 0.06 * x[:, 2]  # (B, H, W)
    flat = luma.flatten(1)
    levels = torch.tensor(LUMINANCE_QUANTILES, dtype=x.dtype, device=x.device)
    quantiles = torch.quantile(flat, levels, dim=1).T
    blurred = F.interpolate(F.avg_pool2d(luma[:, None], 4, ceil_mode=True), size=luma.shape[-2:], mode="bilinear",
                            align_corners=False)[:, 0]
    value, minimum = x.amax(1), x.amin(1)
    sat = ((value - minimum) / value.clamp(min=1e-3)).flatten(1)
    mid = torch.exp(-((luma - 0.5) / 0.2) ** 2).flatten(1)  # weights of the mid-tones
    red_green, blue_green = (x[:, 0] - x[:, 1]).flatten(1), (x[:, 2] - x[:, 1]).flatten(1)
    return torch.cat([
        quantiles,
        flat.mean(1, keepdim=True), flat.std(1, keepdim=True),
        (luma - blurred).abs().flatten(1).mean(1, keepdim=True),
        sat.mean(1, keepdim=True), torch.quantile(sat, 0.9, dim=1)[:, None],
        (value - minimum).flatten(1).mean(1, keepdim=True),
        red_green.mean(1, keepdim=True), blue_green.mean(1, keepdim=True),
        (red_green * mid).sum(1, keepdim=True) / mid.sum(1, keepdim=True).clamp(min=1e-6),
        (blue_green * mid).sum(1, keepdim=True) / mid.sum(1, keepdim=True).clamp(min=1e-6),
        torch.sigmoid((0.02 - flat) * 200).mean(1, keepdim=True),
        torch.sigmoid((flat - 0.98) * 200).mean(1, keepdim=True),
    ], dim=1)


class RankingGuide(nn.Module):
    """The project's guide: tone and colour statistics (``guide_features``), standardized, through a small MLP.

    A ranking model: its raw output is a logit of "the better rendition of this photo", mapped to [1, 10] by a
    sigmoid. Few parameters (1.4k) because it learns from a few dozen photos; statistics rather than
    convolutions because the filters it judges are global."""

    kind = "ranking-stats"
    input_size = 128  # statistics need no more, and the search renders at this size

    def __init__(self, hidden: int = 48):
        super().__init__()
        n = len(GUIDE_FEATURES)
        self.register_buffer("feature_mean", torch.zeros(n))
        self.register_buffer("feature_scale", torch.ones(n))
        self.head = nn.Sequential(nn.Linear(n, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def logit(self, image: torch.Tensor) -> torch.Tensor:
        f = (guide_features(shrink_long_side(image, self.input_size)) - self.feature_mean) / self.feature_scale
        return self.head(f)[:, 0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return 1 + (MAX_SCORE - 1) * torch.sigmoid(self.logit(image))


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NimaVgg16(nn.Module):
    """NIMA on VGG16 (Talebi & Milanfar 2018), as ../shared/notes/operators.md gives it: VGG16 features ->
    global average pool -> Linear(512, 10) -> softmax; score = sum i * p_i. 224 x 224 input, ImageNet
    normalization. Weights only from a user's file: keys ``features.N.*`` as torchvision's ``vgg16().features``,
    ``classifier.weight`` (10, 512) and ``classifier.bias`` (10)."""

    kind = "nima-vgg16"
    input_size = 224

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, 10)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(image, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                          align_corners=False)
        f = self.features((x - self.mean) / self.std).mean((2, 3))
        p = torch.softmax(self.classifier(f), dim=1)
        return (p * torch.arange(1, 11, dtype=p.dtype, device=p.device)).sum(1)


GUIDE_KINDS = {cls.kind: cls for cls in (RankingGuide, NimaVgg16)}


def guide_kind_of(state: dict) -> str:
    """Which architecture a bare state dict is for, from its keys."""
    if "classifier.weight" in state and "features.28.weight" in state:
        return NimaVgg16.kind
    if "head.0.weight" in state and "feature_mean" in state:
        return RankingGuide.kind
    raise GuideError("a state dict of neither known guide (nima-vgg16: features.0..28.*, classifier.*; "
                     "ranking-stats: feature_mean, feature_scale, head.*)")


@dataclass
class LoadedGuide:
    guide: nn.Module
    name: str  # what the ledger records: the file name, or the shipped guide's name
    sha256: str  # of the file (or of the shipped weights' tensors)


def state_sha256(state: dict) -> str:
    """A stable hash of a guide's tensors (names, shapes and bytes), whatever file they came from."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def guide_from_state(state: dict, kind: str | None = None) -> nn.Module:
    kind = kind or guide_kind_of(state)
    if kind not in GUIDE_KINDS:
        raise GuideError(f"unknown guide kind {kind!r}; known: {', '.join(GUIDE_KINDS)}")
    guide = GUIDE_KINDS[kind]()
    try:
        guide.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise GuideError(f"weights do not fit a {kind} guide: {str(e).splitlines()[0][:200]}") from None
    return guide.eval()


def load_guide(path: str | Path) -> LoadedGuide:
    """A guide from a user's file, read with ``torch.load(weights_only=True)`` (a file that would run code is refused).

    Accepted: ``{"format": "retouch-batch-guide", "kind": "nima-vgg16" | "ranking-stats", "state_dict": {...}}``
    (what ``retouch-batch train --model aesthetic`` writes inside its checkpoint), or a bare state dict of either
    architecture, recognized by its keys.
    """
    path = Path(path)
    if not path.is_file():
        raise GuideError(f"{path}: no such guide file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GuideError(f"{path}: not a loadable weights file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from None
    if not isinstance(blob, dict):
        raise GuideError(f"{path}: expected a state dict, got {type(blob).__name__}")
    kind = None
    if blob.get("format") == GUIDE_FORMAT:
        kind, blob = blob.get("kind"), blob.get("state_dict", {})
    try:
        guide = guide_from_state(blob, kind)
    except GuideError as e:
        raise GuideError(f"{path}: {e}") from None
    return LoadedGuide(guide, path.name, state_sha256(guide.state_dict()))


def guide_file_bytes(guide: nn.Module) -> bytes:
    """The documented file format for a guide (what ``load_guide`` reads)."""
    buf = io.BytesIO()
    torch.save({"format": GUIDE_FORMAT, "kind": guide.kind, "state_dict": guide.state_dict()}, buf)
    return buf.getvalue()


# --- training the project's guide -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spoil:
    """One way to make a photo worse with the filters: a parameter pushed this far from its identity, either way."""

    name: str
    low: float  # magnitude range of the push
    high: float
    both_ways: bool = True


# How far from a good rendition a spoiled copy goes: far enough that a person would prefer the original.
SPOILS = (
    Spoil("exposure", 0.6, 2.5),
    Spoil("temperature", 0.12, 0.45),
    Spoil("tint", 0.1, 0.35),
    Spoil("gamma", 0.25, 0.8),  # in log2 of gamma
    Spoil("contrast", 0.5, 1.0),
    Spoil("saturation", 0.6, 1.0),
    Spoil("bw", 0.5, 1.0, both_ways=False),
    Spoil("tone", 0.5, 1.0),  # a random curve, this share of the way to the knots' range
)


def spoil_params(rng: random.Random, count: int) -> torch.Tensor:
    """Filter parameters (len(FILTER_PARAMS),) that spoil a photo in ``count`` random ways."""
    p = filters.default_params()[0]
    names = filters.FILTER_NAMES
    for spoil in rng.sample(SPOILS, count):
        amount = rng.uniform(spoil.low, spoil.high) * (rng.choice((-1, 1)) if spoil.both_ways else 1)
        if spoil.name == "gamma":
            p[names.index("gamma")] = 2.0 ** amount
        elif spoil.name == "tone":
            for i in range(filters.CURVE_POINTS):
                p[names.index(f"tone{i + 1}")] = 2.0 ** (rng.uniform(-1, 1) * abs(amount))
        else:
            p[names.index(spoil.name)] = amount
    return p


LOGIT_DECAY = 1e-3
REAL_SHARE = 0.25  # of each training batch: real pairs (expert target above input), when there are any


@dataclass(frozen=True)
class GuideTrainConfig:
    steps: int = 2000  # Adam steps on the ranking loss
    variants: int = 48  # spoiled copies per good image
    batch: int = 256  # pairs per step
    lr: float = 3e-3
    seed: int = 0
    size: int = RankingGuide.input_size


def guide_batch(photos: list[torch.Tensor], cfg: GuideTrainConfig, rng: random.Random):
    """(good, spoiled) batches: random crops of the photos (3/4 to all of each side), flipped at random, each
    against a copy spoiled in 1-3 ways."""
    good, bad = [], []
    for _ in range(cfg.batch):
        photo = photos[rng.randrange(len(photos))]
        h, w = photo.shape[-2:]
        ch, cw = int(h * rng.uniform(0.75, 1)), int(w * rng.uniform(0.75, 1))
        y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
        crop = photo[:, y:y + ch, x:x + cw]
        crop = F.interpolate(crop[None], size=(cfg.size * 3 // 4, cfg.size), mode="bilinear", antialias=True,
                             align_corners=False).clamp(0, 1)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        good.append(crop)
        bad.append(filters.apply_filters(crop, spoil_params(rng, rng.randint(1, 3))[None]))
    return torch.cat(good), torch.cat(bad)


def ranking_accuracy(guide: nn.Module, better: list[torch.Tensor], worse: list[torch.Tensor]) -> float:
    """Share of pairs whose better rendition the guide scores higher: lists of (1, 3, H, W)."""
    with torch.inference_mode():
        wins = [float(guide(b) > guide(w)) for b, w in zip(better, worse)]
    return sum(wins) / max(1, len(wins))


@dataclass
class GuideData:
    """Statistics (``guide_features``) of the renditions a guide learns to rank: better first, worse second."""

    spoil_good: list[torch.Tensor]  # per good image (variants, F): its crops ...
    spoil_bad: list[torch.Tensor]  # ... and the same crops spoiled
    real_better: torch.Tensor  # (P, F) expert targets
    real_worse: torch.Tensor  # (P, F) their inputs


def guide_data(good_images: list[torch.Tensor], pairs: list[tuple[torch.Tensor, torch.Tensor]],
               cfg: GuideTrainConfig) -> GuideData:
    """good_images (3, H, W) each (the photos, then the pairs' targets); pairs (input, target) (1, 3, h, w) each."""
    rng = random.Random(cfg.seed)
    spoil_good, spoil_bad = [], []
    with torch.no_grad():
        for image in good_images:
            good, bad = guide_batch([image], GuideTrainConfig(batch=cfg.variants, size=cfg.size), rng)
            spoil_good.append(guide_features(good))
            spoil_bad.append(guide_features(bad))
        if pairs:
            better = torch.cat([guide_features(shrink_long_side(t, cfg.size)) for _, t in pairs])
            worse = torch.cat([guide_features(shrink_long_side(i, cfg.size)) for i, _ in pairs])
        else:
            better = worse = torch.zeros(0, len(GUIDE_FEATURES))
    return GuideData(spoil_good, spoil_bad, better, worse)


def fit_guide(data: GuideData, cfg: GuideTrainConfig, images: list[int] | None = None,
              pairs: list[int] | None = None) -> RankingGuide:
    """A RankingGuide from (a subset of) the data: the good images' spoils, and REAL_SHARE of each batch from the
    real pairs. A logistic ranking loss, the logits pulled gently towards 0 so that scores stay off the sigmoid's
    flat ends (where the search would get no gradient)."""
    images = range(len(data.spoil_good)) if images is None else images
    pairs = range(len(data.real_better)) if pairs is None else pairs
    good = torch.cat([data.spoil_good[i] for i in images])
    bad = torch.cat([data.spoil_bad[i] for i in images])
    pairs = torch.as_tensor(list(pairs), dtype=torch.long)
    better, worse = data.real_better[pairs], data.real_worse[pairs]
    torch.manual_seed(cfg.seed)
    guide = RankingGuide()
    both = torch.cat([good, bad, better, worse])
    guide.feature_mean.copy_(both.mean(0))
    guide.feature_scale.copy_(both.std(0).clamp(min=1e-4))
    opt = torch.optim.Adam(guide.head.parameters(), lr=cfg.lr)
    real = int(cfg.batch * REAL_SHARE) if len(better) else 0

    def logit(f):
        return guide.head((f - guide.feature_mean) / guide.feature_scale)[:, 0]
    for _ in range(cfg.steps):
        i = torch.randint(len(good), (cfg.batch - real,))
        a, b = good[i], bad[i]
        if real:
            j = torch.randint(len(better), (real,))
            a, b = torch.cat([a, better[j]]), torch.cat([b, worse[j]])
        la, lb = logit(a), logit(b)
        loss = F.softplus(lb - la).mean() + LOGIT_DECAY * (la ** 2 + lb ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return guide.eval()


def pair_tensors(pairs: list, size: int) -> tuple[list, list]:
    """(inputs, targets) of float (H, W, 3) pairs as (1, 3, h, w) tensors with long side ``size``."""
    def small(a):
        return resize_long_side(torch.from_numpy(a).permute(2, 0, 1)[None], size)
    return [small(a) for _, a, _ in pairs], [small(b) for _, _, b in pairs]


def train_aesthetic(photo_sources: list[str], pair_sources: list[str], out: str, steps: int, seed: int = 0,
                    log=print) -> dict:
    """Train the guide and write an ``aesthetic`` checkpoint (best.pt) and guide.json.

    It learns from the pairs (expert target above input, and the targets above copies of them spoiled by the
    filters) and from the photos, if any (each above its spoiled copies). Its accuracy is measured by leave-one-out
    over the pairs: each pair is ranked by a guide trained without it (nor its target's spoils); the checkpoint is
    then trained on everything."""
    import json
    import os
    import time

    from .checkpoint import ModelInfo, save_checkpoint
    from .models import model_class
    from .train import load_pairs, load_photos
    started = time.time()
    cfg = GuideTrainConfig(steps=steps, seed=seed)
    photos = ([torch.from_numpy(p).permute(2, 0, 1).contiguous() for p in load_photos(photo_sources, 320)]
              if photo_sources else [])
    pairs = load_pairs(pair_sources)
    inputs, targets = pair_tensors(pairs, 320)
    log(f"aesthetic guide: {len(pairs)} pair(s) and {len(photos)} photo(s), {cfg.variants} spoiled copies of each "
        f"good image, {steps} steps")
    data = guide_data(photos + [t[0] for t in targets], list(zip(inputs, targets)), cfg)
    per_pair, wins = {}, 0
    for k, (image_id, _, _) in enumerate(pairs):
        others = [i for i in range(len(pairs)) if i != k]
        guide = fit_guide(data, cfg, images=list(range(len(photos))) + [len(photos) + i for i in others],
                          pairs=others)
        with torch.inference_mode():
            s_in, s_out = float(guide(inputs[k])), float(guide(targets[k]))
        per_pair[image_id] = {"input": round(s_in, 4), "target": round(s_out, 4)}
        wins += int(s_out > s_in)
        log(f"  held out {image_id}: input {s_in:.2f}, target {s_out:.2f}")
    accuracy = wins / len(pairs)
    log(f"leave-one-out ranking accuracy (expert target above input) on {len(pairs)} pair(s): {accuracy:.1%}")
    guide = fit_guide(data, cfg)
    model = model_class("aesthetic")()
    model.guide = guide
    info = ModelInfo(model=model.name, model_version=model.version, operators=model.operators,
                     training={"guide": guide.kind, "steps": steps, "seed": seed, "photos": len(photos),
                               "pairs": len(pairs), "loo_ranking_accuracy": accuracy},
                     source=f"retouch-batch train --model aesthetic ({len(pairs)} pairs, {len(photos)} photos)")
    os.makedirs(out, exist_ok=True)
    sha = save_checkpoint(os.path.join(out, "best.pt"), model, info)
    report = {"ranking_accuracy": accuracy, "scheme": "leave-one-out", "pairs": per_pair, "photos": len(photos),
              "steps": steps, "seed": seed, "seconds": round(time.time() - started, 1), "weights_sha256": sha}
    with open(os.path.join(out, "guide.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
