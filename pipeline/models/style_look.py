"""A user's style learned from a handful of before/after pairs: per-image standard operators, then a fitted look.

The image first goes through three standard photographic operators with per-image strengths, named as NeurOp's
(bc black clipping -> ex exposure -> vb vibrance, pipeline.operators), then through one fixed global colour LUT: the
style's look. At strength 0 the operators are exactly the identity, so a fixed look is the look LUT alone and the
sliders read as changes before it (`rerender --shift ex=+0.2` brightens the photo as a person would, then the look
applies). The strengths are predicted from a few tone statistics of the image (percentiles of its linear luminance,
its chroma) by a linear map, which a handful of pairs can fit. For fixed strengths the whole model is one colour
function, so full-resolution rendering goes through the same baked LUT as NeurOp. Trained by pipeline.style.

NeurOp's own operators are not used here: the published lite checkpoint's operators are far from the identity at
every strength (23.8 dB at best over the colour cube), and a look fitted after them on a few photos generalized
worse than a plain LUT.
"""
from __future__ import annotations

import torch
from torch import nn

from ..lut import apply_lut_torch, identity_grid
from ..operators import STANDARD, srgb_to_linear
from . import Param, register
from .neurop import OPERATORS  # the same names and order, so ledgers and edits read alike

# strength -1..1 -> the standard operator's own unit: black point (linear), stops, vibrance
STRENGTH_RANGES = {"bc": (-0.1, 0.1), "ex": (-3.0, 3.0), "vb": (-1.0, 1.0)}
# Rec. 709 / sRGB luminance weights of linear RGB
LUMINANCE = (0.2126, 0.7152, 0.0722)
LUMINANCE_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# what each column of image_statistics means, in order
STATISTICS = tuple(f"log2 luminance q{round(q * 100)}" for q in LUMINANCE_QUANTILES) + (
    "log2 mean luminance", "mean chroma", "chroma q90")
LOG_FLOOR = 1e-3  # keeps log2 of black pixels finite (-10)
DEFAULT_LOOK_SIZE = 17
STATISTICS_MAX_PIXELS = 1 << 22


def image_statistics(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB-encoded in [0, 1] -> (B, len(STATISTICS)): the tone statistics strengths are predicted from.

    Logs of linear luminance make an exposure change a shift of the first eight columns; chroma = max - min of RGB.
    """
    rgb = image.clamp(0, 1).flatten(2)  # (B, 3, N)
    if rgb.shape[2] > STATISTICS_MAX_PIXELS:  # torch.quantile's limit; an even subset has the same statistics
        rgb = rgb[:, :, ::-(-rgb.shape[2] // STATISTICS_MAX_PIXELS)]
    weights = torch.tensor(LUMINANCE, dtype=rgb.dtype, device=rgb.device)
    luminance = torch.einsum("bcn,c->bn", srgb_to_linear(rgb), weights)
    levels = torch.tensor(LUMINANCE_QUANTILES, dtype=rgb.dtype, device=rgb.device)
    quantiles = torch.quantile(luminance, levels, dim=1).T  # (B, Q)
    chroma = rgb.amax(1) - rgb.amin(1)
    return torch.cat([
        torch.log2(quantiles + LOG_FLOOR),
        torch.log2(luminance.mean(1, keepdim=True) + LOG_FLOOR),
        chroma.mean(1, keepdim=True),
        torch.quantile(chroma, 0.9, dim=1)[:, None],
    ], dim=1)


def apply_operators(image: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
    """The standard operators in order: image (B, 3, H, W), strengths (B, 3) in [-1, 1] -> (B, 3, H, W) in [0, 1]."""
    for k, op in enumerate(OPERATORS):
        fn = STANDARD[op][0]
        lo, hi = STRENGTH_RANGES[op]
        image = fn(image, lo + (strengths[:, k] + 1) * (hi - lo) / 2).clamp(0, 1)
    return image


def apply_look_pixels(rgb: torch.Tensor, look: torch.Tensor) -> torch.Tensor:
    """rgb (..., 3) in [0, 1] -> (..., 3) through the (S, S, S, 3) look LUT, trilinear."""
    flat = rgb.reshape(1, -1, 1, 3).permute(0, 3, 1, 2)  # (1, 3, N, 1)
    return apply_lut_torch(flat, look)[0, :, :, 0].T.reshape(rgb.shape)


def render_pixel_batches(rgb: torch.Tensor, strengths: torch.Tensor, look: torch.Tensor) -> torch.Tensor:
    """The style's colour function on pixel lists: rgb (M, N, 3), strengths (M, 3) -> (M, N, 3)."""
    image = rgb.permute(0, 2, 1).unsqueeze(-1)  # (M, 3, N, 1)
    return apply_look_pixels(apply_operators(image, strengths).squeeze(-1).permute(0, 2, 1), look)


@register
class StyleLook(nn.Module):
    name = "style-look"
    version = "1"
    # the same slider names as NeurOp's; -1..1 spans STRENGTH_RANGES of the standard operators
    params = (Param("bc", "black point", unit="0.1 of linear white per unit"),
              Param("ex", "exposure", unit="3 EV per unit"),
              Param("vb", "vibrance", unit="darktable vibrance"))
    rendering = "lut"
    default_weights = None  # learned per user: retouch-batch train --pairs ...

    def __init__(self, look_size: int = DEFAULT_LOOK_SIZE):
        super().__init__()
        n, k = len(STATISTICS), len(OPERATORS)
        self.register_buffer("look", identity_grid(look_size).reshape(look_size, look_size, look_size, 3))
        self.register_buffer("statistic_mean", torch.zeros(n))
        self.register_buffer("statistic_scale", torch.ones(n))
        self.strength_weight = nn.Parameter(torch.zeros(k, n), requires_grad=False)
        self.strength_bias = nn.Parameter(torch.zeros(k), requires_grad=False)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "look" in state_dict and state_dict["look"].shape != self.look.shape:  # a look of another size
            self.look = torch.empty_like(state_dict["look"])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def predict_strengths(self, thumbnail: torch.Tensor, lut_size: int | None = None) -> torch.Tensor:
        """thumbnail (B, 3, H, W) -> strengths (B, 3): tanh of a linear map of the standardized statistics."""
        z = (image_statistics(thumbnail) - self.statistic_mean) / self.statistic_scale
        return torch.tanh(z @ self.strength_weight.T + self.strength_bias)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) in [0, 1] -> (styled image, strengths (B, 3))."""
        strengths = self.predict_strengths(image)
        return self.render(image, strengths), strengths

    def render(self, image: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
        """The operators with strengths (B, 3), then the look: (B, 3, H, W) -> (B, 3, H, W) in [0, 1]."""
        return apply_lut_torch(apply_operators(image, strengths), self.look)

    def render_pixels(self, rgb: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
        """The colour function for one image's strengths (3,) on a pixel list (N, 3)."""
        return render_pixel_batches(rgb[None], strengths.reshape(1, -1), self.look)[0]
