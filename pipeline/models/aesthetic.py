"""The aesthetic-guided retoucher (after PIEA, ../shared/seeds/piea-aesthetic-guided.md): no training pairs.

For each image the named filters of pipeline.filters start at the identity (exposure a stop brighter on a very dark
image, as the seed does) and take ``search_steps`` gradient steps (Eq. 5 of the seed: plain gradient descent at
``search_lr``, SEARCH_LR) on a thumbnail, to lower (10 - S)^2 where S is an aesthetic guide's score (pipeline.guide). The
result is a list of slider values a person reads ("exposure +0.4 EV, contrast +0.12"), which the ledger stores and
``rerender`` edits. The search is deterministic: no randomness, the same image and settings give the same values.

Steps are taken in each parameter's own range (a step of 1 crosses the whole range), and the parameters are kept
inside their declared ranges after every step. For fixed parameters the filters are one global colour function,
so full resolution goes through the baked 3D LUT as NeurOp's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import filters
from ..guide import MAX_SCORE, RankingGuide, load_guide, state_sha256
from ..render import shrink_long_side
from ..operators import srgb_to_linear
from . import register

SEARCH_STEPS = 20  # M in the seed
# lambda. The seed's 1e-3 (with NIMA) overshoots with the project's guide, whose gradients are far larger: on the
# FiveK pairs 20 steps at 1e-3 fall from 20.27 to 7.42 dB while the guide's score falls too; 3e-5 was the best
# measured rate (20.59 dB; benchmarks/aesthetic-quality.md, leave-one-out choice of the rate -0.25 dB [-1.24, +0.75])
SEARCH_LR = 3e-5
DARK_LUMINANCE = 0.05  # mean linear luminance under which the search starts exposure brighter
DARK_START_EV = 1.0  # the seed "roughly initializes the exposure filter with 1.0 to get out of the too dark condition"


@dataclass(frozen=True)
class SearchResult:
    params: torch.Tensor  # (B, K) in the filters' own units
    score_before: torch.Tensor  # (B,) the guide's score of the image as it came
    score_after: torch.Tensor  # (B,) of the image through the found filters


def starting_params(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, K): the identity, with exposure at DARK_START_EV for very dark images."""
    start = filters.default_params(image.shape[0], image.dtype, image.device)
    lum = srgb_to_linear(image.clamp(0, 1)).mul(torch.tensor([0.2126, 0.7152, 0.0722], dtype=image.dtype,
                                                             device=image.device).reshape(1, 3, 1, 1)).sum(1)
    dark = lum.mean((1, 2)) < DARK_LUMINANCE
    start[:, filters.FILTER_NAMES.index("exposure")] = torch.where(dark, DARK_START_EV, 0.0).to(image.dtype)
    return start


def search_filters(guide: nn.Module, image: torch.Tensor, steps: int = SEARCH_STEPS,
                   lr: float = SEARCH_LR) -> SearchResult:
    """The seed's progressive enhancement on ``image`` (B, 3, H, W) in [0, 1], ``guide`` frozen; the filters render
    a copy at the guide's input size (they are per-pixel, so its statistics are the full image's)."""
    # the caller may be in inference mode (eval, the worker): tensors for autograd are made outside it
    with torch.inference_mode(False), torch.enable_grad():
        small = filters_input(image.clone(), guide.input_size)
        low, high = filters.param_bounds(small.dtype, small.device)
        span = high - low
        params = starting_params(small)
        before = guide(small).detach()
        for _ in range(steps):
            unit = ((params - low) / span).requires_grad_(True)  # each parameter in its range's units
            score = guide(filters.apply_filters(small, low + unit * span))
            loss = ((MAX_SCORE - score) ** 2).sum()
            (grad,) = torch.autograd.grad(loss, unit)
            params = torch.minimum(torch.maximum(low + (unit.detach() - lr * grad) * span, low), high)
        after = guide(filters.apply_filters(small, params)).detach()
    return SearchResult(params.detach(), before, after)


def filters_input(image: torch.Tensor, size: int) -> torch.Tensor:
    return shrink_long_side(image.float(), size).clamp(0, 1)


@register
class AestheticFilters(nn.Module):
    """The filter bank of pipeline.filters with its parameters searched per image under an aesthetic guide."""

    name = "aesthetic"
    version = "1"
    params = filters.FILTER_PARAMS
    rendering = "lut"
    default_weights = "aesthetic-default.pt"

    def __init__(self):
        super().__init__()
        self.guide = RankingGuide()
        self.search_steps = SEARCH_STEPS
        self.search_lr = SEARCH_LR
        self.guide_name = "aesthetic-default"  # what the ledger records; load_guide replaces both
        self.guide_sha256 = ""
        self.last_search: SearchResult | None = None

    def set_guide(self, guide: nn.Module, name: str, sha256: str) -> None:
        """Search under another guide (a user's NIMA, say): ``name`` and ``sha256`` go into the ledger."""
        self.guide = guide.eval()
        self.guide_name, self.guide_sha256 = name, sha256

    def configure(self, search_steps: int | None = None, search_lr: float | None = None,
                  guide: str | None = None, guide_sha256: str | None = None, **unknown) -> dict:
        """Per-run settings (``run``/``eval`` options): the search's steps and learning rate, a user's guide file
        (``guide_sha256``, when given, pins its contents). Returns them as a run records them, the guide's hash
        included."""
        if unknown:
            raise ValueError(f"the aesthetic model has no option {', '.join(sorted(unknown))}")
        if search_steps is not None:
            if search_steps < 0:
                raise ValueError("search steps must be >= 0")
            self.search_steps = int(search_steps)
        if search_lr is not None:
            if not search_lr >= 0:
                raise ValueError("the search's learning rate must be >= 0")
            self.search_lr = float(search_lr)
        if guide:
            loaded = load_guide(guide)
            if guide_sha256 and loaded.sha256 != guide_sha256:
                raise ValueError(f"{guide}: the guide changed since the run started (its hash differs)")
            self.set_guide(loaded.guide, loaded.name, loaded.sha256)
        pinned = {"guide": guide, "guide_sha256": self.guide_sha256 if guide else None,
                  "search_steps": search_steps, "search_lr": search_lr}
        return {k: v for k, v in pinned.items() if v is not None}

    def search(self, thumbnail: torch.Tensor) -> SearchResult:
        self.guide.eval()
        result = search_filters(self.guide, thumbnail, self.search_steps, self.search_lr)
        self.last_search = result
        return result

    def predict_strengths(self, thumbnail: torch.Tensor, lut_size: int | None = None) -> torch.Tensor:
        """thumbnail (B, 3, H, W) -> the searched filter parameters (B, K)."""
        return self.search(thumbnail).params

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.predict_strengths(image)
        return self.render(image, params), params

    def render(self, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return filters.apply_filters(image, params.to(image.dtype))

    def render_pixels(self, rgb: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The colour function for one image's parameters (K,) on a pixel list (N, 3)."""
        image = rgb.T.reshape(1, 3, -1, 1)
        return filters.apply_filters(image, params.reshape(1, -1).to(rgb.dtype))[0, :, :, 0].T

    def prediction_details(self) -> dict:
        """For the ledger: which guide, and its score of the image before and after the search."""
        r = self.last_search
        if not self.guide_sha256:
            self.guide_sha256 = state_sha256(self.guide.state_dict())
        details = {"guide": self.guide_name, "guide_sha256": self.guide_sha256,
                   "search_steps": self.search_steps, "search_lr": self.search_lr}
        if r is not None:
            details.update(score_before=round(float(r.score_before[0]), 4),
                           score_after=round(float(r.score_after[0]), 4))
        return details
