"""Learn a user's style from a few before/after pairs (pipeline.models.style_look): per-image standard operators,
then a fitted look LUT.

What `retouch-batch train --pairs MINE --out runs/mine` does with no other option. For each recipe:

1. The "look" recipes keep every strength at 0 and fit the look LUT (pipeline.lutfit) from the inputs to the
   targets: a fixed look, the same for every photo (a smooth 17^3 look, or a fine 33^3 one for sharp curves).
2. The "adaptive" recipes start from exposures that equalize the photos' mean luminance, then alternate, twice:
   fit the look to the inputs as the strengths render them, then find each pair's strengths that best reach its
   target through that look (a few dozen gradient steps on a sample of its pixels, pulled towards 0); then the look
   once more. A ridge regression from the image's tone statistics to the strengths (before tanh) becomes the
   strength predictor.

Leave-one-out cross-validation over the pairs picks the recipe (mean PSNR on the held-out pair, rendered through the
baked LUT as the batch job renders): among all of them from MIN_PAIRS_TO_ADAPT pairs on; among the fixed looks with
2 or 3 pairs, where a per-image adaptation cannot be validated; one pair gets the smooth fixed look.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import SRGB_RENDITION, ModelInfo, load_checkpoint, save_checkpoint
from .lut import DEFAULT_LUT_SIZE as BAKE_SIZE, apply_lut_f32, bake_lut
from .lutfit import fit_lut
from .metrics import psnr
from .render import resize_long_side
from .models.style_look import (DEFAULT_LOOK_SIZE, OPERATORS, STATISTICS, STRENGTH_RANGES, StyleLook,
                                apply_operators, image_statistics, render_pixel_batches)

Pair = tuple[str, np.ndarray, np.ndarray]

MIN_PAIRS_TO_ADAPT = 4
TRAINING_LONG_SIDE = 512
ROUNDS = 2  # strengths <-> look
STRENGTH_STEPS = 40
STRENGTH_LR = 0.05
STRENGTH_PENALTY = 0.01  # per unit of squared strength, against the mean L1 error
SAMPLE_PIXELS = 2048  # per pair, for the strength search
SEARCH_START = 0.02  # bc and vb start here, off vibrance's flat point at 0
STRENGTH_LIMIT = 0.97  # strengths are kept off tanh's flat ends so their inverse stays finite


@dataclass(frozen=True)
class StyleRecipe:
    name: str
    adaptive: bool
    ridge: float = 0.0  # adaptive: ridge penalty on the standardized statistics' weights
    look_size: int = DEFAULT_LOOK_SIZE
    smoothness: float = 1.0  # pipeline.lutfit; real pairs, which no global map fits exactly, want 1-5

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def look_key(self) -> tuple:
        """What the look fit depends on: recipes that share it share one fit."""
        return self.adaptive, self.look_size, self.smoothness


# a coarse smooth look for few or varied photos, a fine one (the baseline LUT's grid) for sharp tone curves
RECIPES = (StyleRecipe("look", adaptive=False),
           StyleRecipe("look-fine", adaptive=False, look_size=33, smoothness=0.05),
           StyleRecipe("adaptive", adaptive=True, ridge=3.0),
           StyleRecipe("adaptive-smooth", adaptive=True, ridge=10.0),
           StyleRecipe("adaptive-fine", adaptive=True, ridge=3.0, look_size=33, smoothness=0.05))


@dataclass
class FittedLook:
    """The look LUT and the per-pair strengths it was fitted with (shared by recipes that differ after it)."""

    look: torch.Tensor
    strengths: torch.Tensor  # (M, 3)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def _sample(images: list[np.ndarray], n: int, seed: int) -> torch.Tensor:
    """(M, n, 3): n pixels of each image, drawn with a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for img in images:
        flat = torch.from_numpy(img).reshape(-1, 3)
        out.append(flat[torch.randint(0, flat.shape[0], (n,), generator=g)])
    return torch.stack(out)


def search_strengths(x: torch.Tensor, y: torch.Tensor, look: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Per image, strengths (M, 3) that take pixels x (M, N, 3) closest to y (L1) through the operators and ``look``,
    pulled towards 0 (STRENGTH_PENALTY) so that a photo the look already fits keeps neutral strengths."""
    u = torch.atanh(start.clamp(-STRENGTH_LIMIT, STRENGTH_LIMIT)).clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=STRENGTH_LR)
    for _ in range(STRENGTH_STEPS):
        v = torch.tanh(u)
        loss = (render_pixel_batches(x, v, look) - y).abs().mean() + STRENGTH_PENALTY * (v ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.tanh(u).detach().clamp(-STRENGTH_LIMIT, STRENGTH_LIMIT)


@torch.no_grad()
def _operated(images: list[np.ndarray], strengths: torch.Tensor) -> list[np.ndarray]:
    """Each image through the operators at its strengths (before the look)."""
    return [apply_operators(_tensor(img), strengths[i:i + 1])[0].permute(1, 2, 0).numpy()
            for i, img in enumerate(images)]


def fit_look(pairs: list[Pair], recipe: StyleRecipe, statistics: torch.Tensor, seed: int = 0) -> FittedLook:
    """The look for the starting strengths, then (adaptive) ROUNDS times: the strengths for the look, the look
    for them. ``statistics``: the inputs' image_statistics, (M, len(STATISTICS))."""
    adaptive, look_size, smoothness = recipe.look_key
    inputs, targets = [p[1] for p in pairs], [p[2] for p in pairs]
    # every second pixel along each axis is plenty for a global colour fit and 4x cheaper
    inputs_fit, targets_fit = [a[::2, ::2] for a in inputs], [b[::2, ::2] for b in targets]
    strengths = equalized_exposures(statistics) if adaptive else torch.zeros(len(pairs), len(OPERATORS))
    look = torch.from_numpy(fit_lut(_operated(inputs_fit, strengths), targets_fit, look_size,
                                    smoothness=smoothness))
    if adaptive:
        x, y = _sample(inputs, SAMPLE_PIXELS, seed), _sample(targets, SAMPLE_PIXELS, seed)
        for _ in range(ROUNDS):
            strengths = search_strengths(x, y, look, strengths)
            look = torch.from_numpy(fit_lut(_operated(inputs_fit, strengths), targets_fit, look_size,
                                            smoothness=smoothness))
    return FittedLook(look, strengths)


def equalized_exposures(statistics: torch.Tensor) -> torch.Tensor:
    """Starting strengths for an adaptive style, from the photos' image_statistics: exposures that bring every
    photo's mean linear luminance to their common (geometric) mean, the usual per-photo correction, which the
    search then refines; small non-zero black point and vibrance, since vibrance has no slope at exactly 0."""
    log_mean = statistics[:, STATISTICS.index("log2 mean luminance")]
    lo, hi = STRENGTH_RANGES["ex"]
    strengths = torch.full((len(statistics), len(OPERATORS)), SEARCH_START)
    strengths[:, OPERATORS.index("ex")] = ((log_mean.mean() - log_mean) * 2 / (hi - lo)).clamp(-0.9, 0.9)
    return strengths


def fit_ridge(features: torch.Tensor, targets: torch.Tensor, ridge: float):
    """Ridge regression on standardized features: (mean, scale, weight (K, F), bias (K,)), in float64."""
    f, t = features.double(), targets.double()
    mean, scale = f.mean(0), f.std(0, unbiased=False).clamp(min=1e-6)
    z = (f - mean) / scale
    bias = t.mean(0)
    weight = torch.linalg.solve(z.T @ z + ridge * torch.eye(z.shape[1], dtype=z.dtype), z.T @ (t - bias)).T
    return mean.float(), scale.float(), weight.float(), bias.float()


@torch.no_grad()
def _statistics(images: list[np.ndarray]) -> torch.Tensor:
    return torch.cat([image_statistics(_tensor(img)) for img in images])


def fit_style(pairs: list[Pair], recipe: StyleRecipe, seed: int = 0, fitted: FittedLook | None = None,
              statistics: torch.Tensor | None = None) -> StyleLook:
    """One recipe fitted on ``pairs`` (``fitted``: its look, ``statistics``: the inputs' image_statistics, when
    already known)."""
    statistics = _statistics([p[1] for p in pairs]) if statistics is None else statistics
    fitted = fitted or fit_look(pairs, recipe, statistics, seed)
    model = StyleLook(fitted.look.shape[0]).requires_grad_(False)
    model.look.copy_(fitted.look)
    if recipe.adaptive and len(pairs) > 1:
        pre = torch.atanh(fitted.strengths)  # what the linear map must produce
        mean, scale, weight, bias = fit_ridge(statistics, pre, recipe.ridge)
        model.statistic_mean.copy_(mean)
        model.statistic_scale.copy_(scale)
        model.strength_weight.copy_(weight)
        model.strength_bias.copy_(bias)
    return model.eval()


def rendered_psnr(model: StyleLook, pair: Pair) -> float:
    """PSNR of the model's rendering of a pair, through the baked LUT as the batch job renders it."""
    _, a, b = pair
    with torch.no_grad():
        strengths = model.predict_strengths(_tensor(a))[0]
    return psnr(apply_lut_f32(a, bake_lut(model, strengths.numpy(), BAKE_SIZE)), b)


def candidates(pairs: int) -> tuple[StyleRecipe, ...]:
    """The recipes cross-validation may choose among for this many pairs: per-image adaptation from
    MIN_PAIRS_TO_ADAPT on, the two fixed looks from 2 on, the smooth fixed look for a single pair."""
    if pairs >= MIN_PAIRS_TO_ADAPT:
        return RECIPES
    fixed = tuple(r for r in RECIPES if not r.adaptive)
    return fixed if pairs >= 2 else fixed[:1]


def choose_recipe(pairs: list[Pair], seed: int = 0, log=print) -> tuple[StyleRecipe, dict]:
    """Leave-one-out over the pairs for every candidate recipe; the best mean held-out PSNR wins."""
    options = candidates(len(pairs))
    if len(pairs) < MIN_PAIRS_TO_ADAPT:
        log(f"{len(pairs)} pair(s): learning a fixed look (per-image adaptation needs {MIN_PAIRS_TO_ADAPT} pairs "
            "or more, to be checked by cross-validation)")
    if len(options) == 1:
        return options[0], {}
    scores: dict[str, list[float]] = {r.name: [] for r in options}
    statistics = _statistics([p[1] for p in pairs])  # once: every fold and recipe needs them
    for i, held in enumerate(pairs):
        rest, rest_statistics = pairs[:i] + pairs[i + 1:], torch.cat([statistics[:i], statistics[i + 1:]])
        looks = {r.look_key: fit_look(rest, r, rest_statistics, seed) for r in options}
        for r in options:
            model = fit_style(rest, r, seed, looks[r.look_key], rest_statistics)
            scores[r.name].append(rendered_psnr(model, held))
        log(f"  held out {held[0]}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in scores.items()))
    summary = {name: float(np.mean(v)) for name, v in scores.items()}
    best = max(options, key=lambda r: summary[r.name])
    log("leave-one-out PSNR per recipe: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items())
        + f" -> {best.name}")
    return best, {"leave_one_out_psnr": summary, "per_pair_psnr": scores}


def at_training_size(pairs: list[Pair], long_side: int = TRAINING_LONG_SIDE) -> list[Pair]:
    """Pairs shrunk (antialiased) to ``long_side``: a look is a colour function, and 512 pixels are what the
    strengths are predicted from at run time; larger pairs only cost time and memory."""
    out = []
    for image_id, a, b in pairs:
        if max(a.shape[:2]) > long_side:
            a, b = (resize_long_side(_tensor(x), long_side)[0].permute(1, 2, 0).contiguous().numpy() for x in (a, b))
        out.append((image_id, a, b))
    return out


def cross_validate_style(pairs: list[Pair], out: str | Path, start: str | None = None, folds: int | None = None,
                         repeats: int = 1, seed: int = 0, log=print) -> dict:
    """The whole style recipe (its own choice included) cross-validated against ``start`` (default: the shipped
    weights), which is what a user gets without training."""
    from .crossval import cross_validate

    def fit(train_pairs: list[Pair], _fold_out: Path) -> StyleLook:
        recipe, _ = choose_recipe(train_pairs, seed, log=lambda *_: None)
        return fit_style(train_pairs, recipe, seed)

    return cross_validate(at_training_size(pairs), fit, load_checkpoint(start).model, out, folds, repeats, seed, log)


def learn_style(pairs: list[Pair], out: str | Path, seed: int = 0, log=print) -> dict:
    """Choose a recipe for these pairs, fit it on all of them and write ``out``/best.pt and style.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    pairs = at_training_size(pairs)
    recipe, selection = choose_recipe(pairs, seed, log)
    model = fit_style(pairs, recipe, seed)
    info = ModelInfo(model=StyleLook.name, model_version=StyleLook.version, operators=OPERATORS,
                     rendition=dict(SRGB_RENDITION),
                     training={"recipe": recipe.to_dict(), "pairs": [p[0] for p in pairs], "seed": seed, **selection},
                     source="retouch-batch train (style)")
    save_checkpoint(out / "best.pt", model, info)
    result = {"recipe": recipe.to_dict(), "pairs": len(pairs), **selection,
              "training_psnr": float(np.mean([rendered_psnr(model, p) for p in pairs])),
              "input_psnr": float(np.mean([psnr(a, b) for _, a, b in pairs])),
              "seconds": round(time.monotonic() - t0, 1), "weights": str(out / "best.pt")}
    (out / "style.json").write_text(json.dumps(result, indent=1))
    return result
