"""Standard photographic operators as small pure tensor functions on (B, 3, H, W) sRGB-encoded images in [0, 1].

Used to synthesize training data: operator initialization (each neural operator learns one of these) and
distort-and-recover pairs from photos without targets. Formulas: see the docstrings; strengths are per image (B,).
"""
from __future__ import annotations

import torch


def _per_image(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=like.dtype, device=like.device).reshape(-1, 1, 1, 1)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp(min=1e-8) ** (1 / 2.4) - 0.055)


def exposure(img: torch.Tensor, ev: torch.Tensor | float) -> torch.Tensor:
    """out = in * 2^ev in linear light (Exposure / White-Box)."""
    return linear_to_srgb(srgb_to_linear(img) * 2.0 ** _per_image(ev, img))


def black_clip(img: torch.Tensor, bp: torch.Tensor | float) -> torch.Tensor:
    """out = (in - bp) / (1 - bp) in linear light (darktable basicadj, exposure 0); bp < 0 lifts the blacks."""
    bp = _per_image(bp, img)
    return linear_to_srgb((srgb_to_linear(img) - bp) / (1 - bp))


def vibrance(img: torch.Tensor, vib: torch.Tensor | float) -> torch.Tensor:
    """darktable basicadj: low-saturation colours move more; vib in [-1, 1]."""
    v = _per_image(vib, img) / 1.4
    lin = srgb_to_linear(img)
    avg = lin.mean(dim=1, keepdim=True)
    # the floor keeps the gradients finite at grey pixels (sqrt and 0 ** v at 0), whose output does not depend on p
    d = ((avg - lin) ** 2).sum(dim=1, keepdim=True).clamp(min=1e-12).sqrt()
    p = v * (1 - d.clamp(0, 1) ** v.abs())
    return linear_to_srgb(avg + (1 + p) * (lin - avg))


def white_balance(img: torch.Tensor, warmth: torch.Tensor | float) -> torch.Tensor:
    """Warmer (warmth > 0) or cooler: linear gains (2^w, 1, 2^-w) renormalized so that a grey keeps its luminance
    0.27 R + 0.67 G + 0.06 B (Exposure's ImprovedWhiteBalanceFilter, with red and blue tied to one slider)."""
    w = _per_image(warmth, img)
    gains = torch.cat([2.0 ** w, torch.ones_like(w), 2.0 ** -w], dim=1)
    gains = gains / (0.27 * gains[:, :1] + 0.67 * gains[:, 1:2] + 0.06 * gains[:, 2:])
    return linear_to_srgb(srgb_to_linear(img) * gains)


# name -> (function, strength range): one place for what each neural operator imitates
STANDARD = {
    "bc": (black_clip, (-0.1, 0.1)),
    "ex": (exposure, (-1.5, 1.5)),
    "vb": (vibrance, (-1.0, 1.0)),
    "wb": (white_balance, (-0.5, 0.5)),
}
