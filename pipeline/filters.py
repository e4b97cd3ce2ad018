"""The aesthetic retoucher's filter bank: named, differentiable photo filters (after EXPOSURE, Hu et al. 2018).

Every filter is a pure torch function of an image (B, 3, H, W), sRGB-encoded in [0, 1], and its parameters
(B,) or (B, n); each is the identity at its declared default, exactly. Exposure and white balance work in linear
light (a photographer's stops and gains), the others on the encoded values, as EXPOSURE's do. ``FILTER_PARAMS``
declares every parameter once (name, label, range, default, unit); ``apply_filters`` runs the bank in
``FILTER_ORDER``. For fixed parameters the whole bank is a global colour function, so full-resolution rendering
bakes it into a 3D LUT like NeurOp's.

Formulas: ../shared/notes/operators.md (EXPOSURE's filters.py; darktable for exposure in linear light).
"""
from __future__ import annotations

import math

import torch

from .models import Param
from .operators import linear_to_srgb, srgb_to_linear

CURVE_POINTS = 8  # knots of the tone curve and of each channel's colour curve (EXPOSURE uses 8)
LUMA = (0.27, 0.67, 0.06)  # EXPOSURE's luminance weights (contrast, black & white, white balance renormalization)
GAMMA_FLOOR = 1e-3  # below it x^g is continued linearly, so gamma = 1 is the identity and gradients stay finite


def _column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=like.dtype, device=like.device).reshape(-1, 1, 1, 1)


def luminance(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W): 0.27 R + 0.67 G + 0.06 B."""
    return LUMA[0] * img[:, :1] + LUMA[1] * img[:, 1:2] + LUMA[2] * img[:, 2:]


def exposure(img: torch.Tensor, ev: torch.Tensor) -> torch.Tensor:
    """out = in * 2^ev in linear light; ev (B,) in stops."""
    return linear_to_srgb(srgb_to_linear(img) * 2.0 ** _column(ev, img))


def white_balance(img: torch.Tensor, temperature: torch.Tensor, tint: torch.Tensor) -> torch.Tensor:
    """Linear gains (2^temperature, 2^tint, 2^-temperature), renormalized so a grey keeps its luminance
    (EXPOSURE's ImprovedWhiteBalanceFilter with its three gains as two sliders). temperature > 0 warms,
    tint > 0 is greener."""
    t, g = _column(temperature, img), _column(tint, img)
    gains = torch.cat([2.0 ** t, 2.0 ** g, 2.0 ** -t], dim=1)
    gains = gains / (LUMA[0] * gains[:, :1] + LUMA[1] * gains[:, 1:2] + LUMA[2] * gains[:, 2:])
    return linear_to_srgb(srgb_to_linear(img) * gains)


def gamma(img: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """out = in^g on the encoded values (g < 1 brightens the mid-tones); linear below GAMMA_FLOOR."""
    g = _column(g, img)
    x = img.clamp(min=0)
    powered = x.clamp(min=GAMMA_FLOOR) ** g
    return torch.where(x > GAMMA_FLOOR, powered, x * GAMMA_FLOOR ** (g - 1))


def curve(x: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """EXPOSURE's monotone piecewise-linear curve: sum_i clip(x - i/n, 0, 1/n) * s_i, s_i = t_i * n / sum(t).

    x (B, C, H, W); knots (B, n) broadcast over C, or (B, C, n) one curve per channel. Maps 0 -> 0 and 1 -> 1;
    equal knots give the identity. Evaluated per pixel from its own segment (the sum of the slopes below it, and
    its own), so memory stays that of the image, not n times it."""
    if knots.dim() == 2:
        knots = knots[:, None, :]
    n = knots.shape[-1]
    b, c = x.shape[:2]
    slopes = (knots * n / knots.sum(-1, keepdim=True)).expand(b, c, n)
    below = (slopes.cumsum(-1) - slopes) / n  # f at each segment's start
    t = x.clamp(0, 1).reshape(b, c, -1)
    segment = (t * n).floor().clamp(max=n - 1).long()
    out = below.gather(2, segment) + (t - segment.to(t.dtype) / n) * slopes.gather(2, segment)
    return out.reshape(x.shape)


def contrast(img: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """EXPOSURE's ContrastFilter: towards an S curve of luminance (-cos(pi L)/2 + 1/2) by ``amount`` in [-1, 1]
    (negative flattens)."""
    lum = luminance(img).clamp(0, 1)
    s_curve = -torch.cos(math.pi * lum) / 2 + 0.5
    target = img / (lum + 1e-6) * s_curve
    return img + _column(amount, img) * (target - img)


def saturation(img: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """EXPOSURE's SaturationPlusFilter: in HSV s' = s + (1 - s)(0.5 - |0.5 - v|) * 0.8 (mid-tones gain most),
    blended by ``amount`` in [-1, 1] (negative desaturates). Hue and value are kept: each channel moves along
    c' = v - (v - c) * s'/s."""
    value = img.amax(1, keepdim=True)
    minimum = img.amin(1, keepdim=True)
    s = (value - minimum) / value.clamp(min=1e-6)
    boosted = s + (1 - s) * (0.5 - (0.5 - value).abs()) * 0.8
    ratio = boosted / s.clamp(min=1e-6)
    enhanced = value - (value - img) * ratio
    return img + _column(amount, img) * (enhanced - img)


def black_and_white(img: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """lerp(img, luminance, amount), amount in [0, 1]."""
    return img + _column(amount, img) * (luminance(img) - img)


def _curve_params(name: str, label: str, low: float, high: float) -> tuple[Param, ...]:
    return tuple(Param(f"{name}{i + 1}", f"{label} {i + 1}/{CURVE_POINTS}", low, high, 1.0, "relative slope")
                 for i in range(CURVE_POINTS))


# One place for every slider: the ledger's operator names, rerender's --set/--shift keys, the search's box.
FILTER_PARAMS: tuple[Param, ...] = (
    Param("exposure", "exposure", -3.5, 3.5, 0.0, "EV"),
    Param("temperature", "white balance, warm (+) / cool (-)", -0.5, 0.5, 0.0, "stops: red up and blue down by this"),
    Param("tint", "white balance, green (+) / magenta (-)", -0.5, 0.5, 0.0, "stops of green"),
    Param("gamma", "gamma (< 1 brightens)", 1 / 3, 3.0, 1.0, "exponent"),
    *_curve_params("tone", "tone curve slope", 0.5, 2.0),
    Param("contrast", "contrast", -1.0, 1.0, 0.0, "S-curve blend"),
    Param("saturation", "saturation", -1.0, 1.0, 0.0, "HSV boost blend"),
    *_curve_params("red", "red curve slope", 0.9, 1.1),
    *_curve_params("green", "green curve slope", 0.9, 1.1),
    *_curve_params("blue", "blue curve slope", 0.9, 1.1),
    Param("bw", "black & white", 0.0, 1.0, 0.0, "blend"),
)
FILTER_NAMES = tuple(p.name for p in FILTER_PARAMS)
FILTER_ORDER = ("exposure", "white balance", "gamma", "tone", "contrast", "saturation", "color", "bw")


def _slice(params: torch.Tensor, first: str, count: int = 1) -> torch.Tensor:
    i = FILTER_NAMES.index(first)
    return params[:, i] if count == 1 else params[:, i:i + count]


def apply_filters(img: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The whole bank in FILTER_ORDER: img (B, 3, H, W) in [0, 1], params (B, len(FILTER_PARAMS)) in their own
    units -> (B, 3, H, W) in [0, 1] (clamped between filters, as an editor's pipeline would)."""
    n = CURVE_POINTS
    x = exposure(img, _slice(params, "exposure")).clamp(0, 1)
    x = white_balance(x, _slice(params, "temperature"), _slice(params, "tint")).clamp(0, 1)
    x = gamma(x, _slice(params, "gamma")).clamp(0, 1)
    x = curve(x, _slice(params, "tone1", n)).clamp(0, 1)
    x = contrast(x, _slice(params, "contrast")).clamp(0, 1)
    x = saturation(x, _slice(params, "saturation")).clamp(0, 1)
    colour = torch.stack([_slice(params, f"{c}1", n) for c in ("red", "green", "blue")], dim=1)  # (B, 3, n)
    x = curve(x, colour).clamp(0, 1)
    return black_and_white(x, _slice(params, "bw")).clamp(0, 1)


def default_params(batch: int = 1, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """(batch, len(FILTER_PARAMS)): every filter at its identity."""
    return torch.tensor([p.default for p in FILTER_PARAMS], dtype=dtype, device=device).repeat(batch, 1)


def param_bounds(dtype=torch.float32, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high), each (len(FILTER_PARAMS),)."""
    return (torch.tensor([p.low for p in FILTER_PARAMS], dtype=dtype, device=device),
            torch.tensor([p.high for p in FILTER_PARAMS], dtype=dtype, device=device))
