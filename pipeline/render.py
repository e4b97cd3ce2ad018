"""The retoucher interface: predict an image's parameters from a thumbnail, prepare, render at full resolution.

The parameters are predicted on an antialiased thumbnail (long side ``prediction_size``, as the training photos),
so they do not depend on the resolution of the source. Global colour functions render through a baked 3D LUT
(``LutRetoucher``); local retouchers (pipeline.bilateral) bring their own prepare and apply. ``render_exact`` runs
the model's own maths on the whole image, for verification.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import LoadedModel
from .lut import (DEFAULT_LUT_SIZE, apply_lut_torch, apply_lut_u16, bake_lut, bake_table, box_average_u16,
                  exact_is_cheaper)

EXACT_STRIP_PIXELS = 1 << 18


def box_factor(height: int, width: int, long_side: int) -> int:
    """The whole-number box that shrinks an image to about twice ``long_side`` before the antialiased resize
    (at most 256, so uint16 block sums stay in 32 bits)."""
    return max(1, min(max(height, width) // (2 * long_side), min(height, width), 256))


def thumbnail(pixels: np.ndarray, long_side: int) -> torch.Tensor:
    """(H, W, 3) uint16 -> (1, 3, h, w) float32 in [0, 1] with long side ``long_side`` (box-filtered).

    An image already that small is used as it is (so 512-pixel evaluation photos are seen exactly).
    A whole-number box average first shrinks big images cheaply; an antialiased resize finishes the job.
    """
    h, w = pixels.shape[:2]
    if max(h, w) <= long_side:
        return torch.from_numpy(pixels.astype(np.float32) / 65535.0).permute(2, 0, 1).unsqueeze(0)
    k = box_factor(h, w, long_side)
    if k > 1:
        small = np.empty((h // k, w // k, 3), np.float32)
        box_average_u16(np.ascontiguousarray(pixels), k, small)
    else:
        small = pixels.astype(np.float32) / 65535.0
    return resize_long_side(torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1).unsqueeze(0), long_side)


def resize_long_side(image: torch.Tensor, long_side: int) -> torch.Tensor:
    scale = long_side / max(image.shape[-2:])
    size = (max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale)))
    return F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def shrink_long_side(image: torch.Tensor, long_side: int) -> torch.Tensor:
    """``resize_long_side`` for images larger than ``long_side``; smaller ones as they are (differentiable)."""
    return image if max(image.shape[-2:]) <= long_side else resize_long_side(image, long_side)


def pad_to_multiple(image: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad (..., H, W) on the bottom and right, repeating the edge, to multiples of ``stride`` (strided networks)."""
    h, w = image.shape[-2:]
    return F.pad(image, (0, -w % stride, 0, -h % stride), mode="replicate")


def thumbnail_tensor(image: torch.Tensor, long_side: int) -> torch.Tensor:
    """``thumbnail`` for an image already on a device: (1, 3, H, W) float in [0, 1] -> (1, 3, h, w).

    The same box-then-antialiased-resize as ``thumbnail``, in torch, so a GPU-resident image never comes back.
    """
    h, w = image.shape[-2:]
    if max(h, w) <= long_side:
        return image
    k = box_factor(h, w, long_side)
    return resize_long_side(F.avg_pool2d(image, k) if k > 1 else image, long_side)


class Retoucher:
    """A loaded model ready to retouch images: predict -> prepare -> apply.

    - ``view(pixels)``: the small image the model looks at (an antialiased thumbnail, long side
      ``prediction_size``), on the model's device;
    - ``predict(view)``: the image's parameters, named by ``params`` (``operators`` are their names);
    - ``prepare(view, strengths)``: what rendering needs for those parameters (a LUT, a set of grids);
    - ``apply(pixels, prepared, out)``: full resolution, uint16 in and uint16 out (in place with ``out=pixels``), in
      bounded memory: a compiled CPU kernel, or torch in strips on a GPU.

    ``open_retoucher`` picks the subclass a model declares (``rendering``); global colour functions use
    ``LutRetoucher``.
    """

    def __init__(self, loaded: LoadedModel, lut_size: int = DEFAULT_LUT_SIZE, device: str = "cpu"):
        self.loaded = loaded
        self.model = loaded.model.to(device)
        self.info = loaded.info
        self.lut_size = lut_size
        self.device = device

    @property
    def params(self):
        return tuple(self.model.params)

    @property
    def operators(self) -> tuple[str, ...]:
        return tuple(self.info.operators)

    def view(self, pixels: np.ndarray) -> torch.Tensor:
        return thumbnail(pixels, self.info.prediction_size).to(self.device)

    def _as_view(self, pixels_or_view) -> torch.Tensor:
        return self.view(pixels_or_view) if isinstance(pixels_or_view, np.ndarray) else pixels_or_view

    @torch.inference_mode()
    def predict(self, pixels_or_view) -> np.ndarray:
        """(K,) float32 parameters, from the pixels (H, W, 3) uint16 or their ``view``."""
        view = self._as_view(pixels_or_view)
        return self.model.predict_strengths(view, self.lut_size)[0].float().cpu().numpy()

    def prediction_details(self) -> dict:
        """What the last ``predict`` wants on the record besides the parameters (the aesthetic model: its guide and
        the guide's scores before and after); {} for most retouchers."""
        details = getattr(self.model, "prediction_details", None)
        return details() if details else {}

    def prepare(self, pixels_or_view, strengths):
        raise NotImplementedError

    def prepare_image(self, view: torch.Tensor, strengths, shape: tuple[int, ...]):
        """``prepare`` for one image of ``shape`` (H, W, 3) from its ``view``: a retoucher may choose by size."""
        return self.prepare(view, strengths)

    def apply(self, pixels: np.ndarray, prepared, out: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def render(self, pixels: np.ndarray, strengths, out: np.ndarray | None = None, prepared=None) -> np.ndarray:
        """prepare + apply for given strengths: uint16 in, uint16 out (may be in place: ``out=pixels``)."""
        prepared = self.prepare(pixels, strengths) if prepared is None else prepared
        return self.apply(pixels, prepared, out)

    def retouch_tensor(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict and render an image that is already on the model's device, without it leaving the device.

        image (1, 3, H, W) float in [0, 1] -> (rendered image, same shape, clamped; strengths (K,)).
        """
        raise NotImplementedError

    @torch.inference_mode()
    def render_exact(self, pixels: np.ndarray, strengths) -> np.ndarray:
        """The model's own float maths on the whole image (float32 result in [0, 1]), to verify ``apply``."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """Compile the kernels and let torch allocate once, so the first real image is not slower than the rest."""
        probe = np.full((64, 96, 3), 30000, np.uint16)
        self.render(probe, self.predict(probe), out=probe)


@dataclass(frozen=True)
class ExactColours:
    """Prepared for an image with fewer pixels than a LUT has entries: there the model's own colour function on
    every pixel costs less than baking the table (0.7 ms against 13 ms for 64 x 48 pixels at 33^3), and is exact."""
    strengths: tuple[float, ...]


class LutRetoucher(Retoucher):
    """A global colour function for fixed strengths: prepared as one baked 3D LUT per image (or, for images smaller
    than the table, as the function itself: ``ExactColours``)."""

    def prepare(self, pixels_or_view, strengths) -> np.ndarray:
        return self.lut(strengths)

    def prepare_image(self, view: torch.Tensor, strengths, shape: tuple[int, ...]):
        if exact_is_cheaper(shape[0] * shape[1], self.lut_size):
            return ExactColours(tuple(float(x) for x in strengths))
        return self.lut(strengths)

    def lut(self, strengths) -> np.ndarray:
        return bake_lut(self.model, strengths, self.lut_size)

    def apply(self, pixels: np.ndarray, prepared, out: np.ndarray | None = None) -> np.ndarray:
        """On a CPU a compiled trilinear loop; on a GPU torch's grid_sample, in strips of rows so that GPU memory
        holds a strip, not the image. ``ExactColours``: the network on each pixel (small images only)."""
        if isinstance(prepared, ExactColours):
            rendered = self.render_exact(pixels, prepared.strengths)
            out = np.empty_like(pixels) if out is None else out
            scale = 65535.0 if pixels.dtype == np.uint16 else 1.0
            out[...] = rendered * scale + 0.5 if scale > 1 else rendered
            return out
        if self.device == "cpu":
            return apply_lut_u16(pixels, prepared, out)
        return render_lut_torch(pixels, prepared, self.device, out)

    @torch.inference_mode()
    def retouch_tensor(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        strengths = self.model.predict_strengths(thumbnail_tensor(image, self.info.prediction_size),
                                                 self.lut_size)[0]
        return apply_lut_torch(image, bake_table(self.model, strengths, self.lut_size)), strengths

    @torch.inference_mode()
    def render_exact(self, pixels: np.ndarray, strengths) -> np.ndarray:
        """The network on every pixel (float32 result in [0, 1]); strips keep memory bounded."""
        s = torch.as_tensor(np.asarray(strengths, dtype=np.float32), device=self.device)
        flat = pixels.reshape(-1, 3)
        out = np.empty(flat.shape, dtype=np.float32)
        scale = 65535.0 if pixels.dtype == np.uint16 else 1.0
        for i in range(0, flat.shape[0], EXACT_STRIP_PIXELS):
            chunk = torch.from_numpy(flat[i:i + EXACT_STRIP_PIXELS].astype(np.float32) / scale).to(self.device)
            out[i:i + EXACT_STRIP_PIXELS] = self.model.render_pixels(chunk, s).cpu().numpy()
        return out.reshape(pixels.shape)


def configure_model(model: torch.nn.Module, options: dict | None) -> dict:
    """Apply a run's model options (``--guide``, ``--search-steps`` ...) to a model that takes them; returns the
    options as a run records them (a guide file pinned by its hash), {} when none."""
    if not options:
        return {}
    if not hasattr(model, "configure"):
        given = ", ".join("--" + k.replace("_", "-") for k in sorted(options))
        raise ValueError(f"{given}: model {model.name!r} takes no such option")
    return model.configure(**options)


def open_retoucher(loaded: LoadedModel, lut_size: int = DEFAULT_LUT_SIZE, device: str = "cpu",
                   options: dict | None = None) -> Retoucher:
    """The retoucher for a loaded checkpoint: the LUT path for global colour functions, else the model's own;
    ``options`` configure the model for a run (see ``configure_model``)."""
    model = loaded.model
    configure_model(model, options)
    cls = LutRetoucher if model.rendering == "lut" else model.retoucher_class()
    return cls(loaded, lut_size=lut_size, device=device)


GPU_STRIP_PIXELS = 1 << 23


@torch.inference_mode()
def render_strips_torch(pixels: np.ndarray, device: str, render, strip_pixels: int = GPU_STRIP_PIXELS,
                        out: np.ndarray | None = None) -> np.ndarray:
    """uint16 (H, W, 3) through ``render(strip (1, 3, h, W) float in [0, 1] on ``device``, its first row)`` a strip
    of rows at a time (up through pinned memory on CUDA), back to uint16: device memory holds a strip, not the
    image. May write in place (``out=pixels``)."""
    out = np.empty_like(pixels) if out is None else out
    rows = max(1, strip_pixels // max(1, pixels.shape[1]))
    pin = device.startswith("cuda")
    for y in range(0, pixels.shape[0], rows):
        strip = torch.from_numpy(pixels[y:y + rows].astype(np.int32))
        strip = (strip.pin_memory() if pin else strip).to(device, non_blocking=pin)
        res = render((strip.float() / 65535.0).permute(2, 0, 1).unsqueeze(0), y)[0].permute(1, 2, 0)
        out[y:y + rows] = (res * 65535.0 + 0.5).to(torch.int32).cpu().numpy().astype(np.uint16)
    return out


def render_lut_torch(pixels: np.ndarray, lut: np.ndarray, device: str, out: np.ndarray | None = None) -> np.ndarray:
    """The LUT applied with torch on ``device`` (the GPU path), strip by strip, uint16 in and out."""
    table = torch.from_numpy(lut).to(device)
    return render_strips_torch(pixels, device, lambda img, _: apply_lut_torch(img, table), out=out)
