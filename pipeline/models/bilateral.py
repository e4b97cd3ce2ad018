"""Bilateral neural operators: NeurOp's sequential operators, each a small HDRNet-style bilateral grid.

After the bilateral-operators seed: four operators in order, black clipping (bc) -> exposure (ex) -> white balance
(wb) -> vibrance (vb). Each operator

- predicts a bilateral grid of local affine colour maps, (12 coefficients, 8 luma bins, 64 x 64 cells), from a
  256 x 256 low-resolution copy of its input, with its strength v added inside the splat features (as NeurOp adds
  it to its latent code); a global feature (pooled, one linear layer) joins the local ones, so a cell knows the
  whole image's brightness as well as its neighbourhood;
- computes a guide map per pixel (a learned 3 x 3 colour matrix, a piecewise-linear curve per channel, a weighted
  sum, clamped to [0, 1]);
- slices the grid at (x, y, guide) with trilinear interpolation (HDRNet / grid_sample align_corners=False
  convention, ../shared/notes/operators.md) and applies the affine map to the pixel: out = A [r, g, b, 1].

Each operator's output is clamped to [0, 1] and is the next one's input. The grids depend on the image only through
the low-resolution chain: operator k's grid is predicted from the low-resolution image after operators < k, sliced
on that low-resolution image too. So for given strengths, a full-resolution render needs only the four grids and
the four guides' parameters, and is computed pixel by pixel (pipeline.bilateral) without any full-resolution float
image. The strengths are predicted like NeurOp's: a shared image encoder and one head per operator, each head seeing
the low-resolution image as the previous operators left it.

Parameters: 4 operators x 12,200 (grid network 12,136, guide 64) + encoder 13,984 + 4 heads x 97 = 63,172
(the seed's model: 69,012; its exact layer widths are not published).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Param, register
from .neurop import ImageEncoder, StrengthHead, predictor_input

PARAMS = (Param("bc", "black clipping"), Param("ex", "exposure"), Param("wb", "white balance (warmth)"),
          Param("vb", "vibrance"))
OPERATORS = tuple(p.name for p in PARAMS)
LOW_RES = 256  # the square low-resolution copy grids are predicted from
LUMA_BINS = 8
GRID_CELLS = 64  # grid cells per side (LOW_RES / 4: two stride-2 splat convolutions)
GUIDE_POINTS = 8  # knots of each channel's guide curve
COEFFICIENTS = 12  # a 3 x 4 affine colour map per cell
SPLAT_FEATURES = (16, 24)
IDENTITY_AFFINE = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class GuideMap(nn.Module):
    """Per pixel: q = M rgb + b; t_c = sum_j slope_cj * relu(q_c - shift_cj); guide = clamp(w . t + w0, 0, 1).

    Starts as the mean of R, G and B.
    """

    def __init__(self, points: int = GUIDE_POINTS):
        super().__init__()
        self.ccm = nn.Parameter(torch.eye(3))
        self.ccm_bias = nn.Parameter(torch.zeros(3))
        self.shifts = nn.Parameter(torch.linspace(0, 1, points + 1)[:-1].repeat(3, 1))
        slopes = torch.zeros(3, points)
        slopes[:, 0] = 1.0
        self.slopes = nn.Parameter(slopes)
        self.mix = nn.Parameter(torch.full((3,), 1 / 3))
        self.mix_bias = nn.Parameter(torch.zeros(1))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb (..., 3) -> guide (...) in [0, 1]."""
        q = rgb @ self.ccm.T + self.ccm_bias
        t = (F.relu(q.unsqueeze(-1) - self.shifts) * self.slopes).sum(-1)
        return (t @ self.mix + self.mix_bias).clamp(0, 1)

    def packed(self) -> torch.Tensor:
        """The guide's numbers in the order the CPU kernel reads them: ccm (9), ccm_bias (3), shifts (3P),
        slopes (3P), mix (3), mix_bias (1)."""
        return torch.cat([self.ccm.flatten(), self.ccm_bias, self.shifts.flatten(), self.slopes.flatten(), self.mix,
                          self.mix_bias]).detach().float()


class GridNet(nn.Module):
    """Low-resolution image (B, 3, 256, 256) and strength (B,) -> grid (B, 12, LUMA_BINS, 64, 64)."""

    def __init__(self, features: tuple[int, int] = SPLAT_FEATURES):
        super().__init__()
        a, b = features
        self.splat1 = nn.Conv2d(3, a, 3, stride=2, padding=1)
        self.splat2 = nn.Conv2d(a, b, 3, stride=2, padding=1)
        self.local = nn.Conv2d(b, b, 3, padding=1)
        self.global_features = nn.Linear(b, b)
        self.prediction = nn.Conv2d(b, COEFFICIENTS * LUMA_BINS, 1)
        with torch.no_grad():  # start as the identity map in every cell, still able to learn
            self.prediction.weight.mul_(0.01)
            self.prediction.bias.copy_(torch.tensor(IDENTITY_AFFINE).repeat_interleave(LUMA_BINS))

    def forward(self, low_res: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.splat1(low_res) + strength.reshape(-1, 1, 1, 1))
        x = F.relu(self.splat2(x))
        x = F.relu(self.local(x) + self.global_features(x.mean(dim=(2, 3)))[:, :, None, None])
        c = self.prediction(x)
        return c.reshape(c.shape[0], COEFFICIENTS, LUMA_BINS, c.shape[2], c.shape[3])


def slice_grid(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor,
               rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Apply the grid's affine maps: grid (B, 12, D, Hg, Wg), guide (B, H, W) in [0, 1], image (B, 3, H, W) -> same.

    Pixel (i, j) samples the grid at x = (2j + 1)/W - 1, y = (2i + 1)/H - 1, z = 2 guide - 1 (grid_sample,
    align_corners=False, border padding): the grid covers the image edge to edge and every luma bin is used.
    ``rows=(top, height)``: the image is rows top.. of a taller one (strips), and y is the whole image's.
    """
    b, _, h, w = image.shape
    top, height = rows or (0, h)
    ys = (2 * (top + torch.arange(h, device=image.device, dtype=image.dtype)) + 1) / height - 1
    xs = (2 * torch.arange(w, device=image.device, dtype=image.dtype) + 1) / w - 1
    coords = torch.stack([xs.expand(b, h, w), ys[:, None].expand(b, h, w), 2 * guide - 1], dim=-1)
    a = F.grid_sample(grid.to(image.dtype), coords[:, None], mode="bilinear", padding_mode="border",
                      align_corners=False)[:, :, 0]  # (B, 12, H, W)
    a = a.reshape(b, 3, 4, h, w)
    return (a[:, :, :3] * image[:, None]).sum(2) + a[:, :, 3]


class BilateralOperator(nn.Module):
    def __init__(self):
        super().__init__()
        self.grid_net = GridNet()
        self.guide = GuideMap()

    def predict_grid(self, low_res: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        return self.grid_net(low_res, strength)

    def apply(self, grid: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) -> the operator's output, clamped to [0, 1]."""
        guide = self.guide(image.permute(0, 2, 3, 1))
        return slice_grid(grid, guide, image).clamp(0, 1)

    def forward(self, image: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """The operator alone on a whole image (initialization): image (B, 3, H, W), strength (B,)."""
        return self.apply(self.predict_grid(low_resolution(image), strength), image)


def low_resolution(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, 256, 256), antialiased (the aspect ratio is not kept, as the seed's model)."""
    return F.interpolate(image, size=(LOW_RES, LOW_RES), mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)


@register
class BilateralNeurOp(nn.Module):
    name = "bilateral"
    version = "1"
    params = PARAMS
    rendering = "bilateral"
    default_weights = "bilateral-default.pt"

    def __init__(self):
        super().__init__()
        self.image_encoder = ImageEncoder()
        for op in OPERATORS:
            self.add_module(f"{op}_operator", BilateralOperator())
            self.add_module(f"{op}_predictor", StrengthHead())

    def operator(self, op: str) -> BilateralOperator:
        return getattr(self, f"{op}_operator")

    def predictor(self, op: str) -> StrengthHead:
        return getattr(self, f"{op}_predictor")

    @staticmethod
    def retoucher_class():
        from ..bilateral import BilateralRetoucher
        return BilateralRetoucher

    def grids(self, image: torch.Tensor, strengths: torch.Tensor | None = None
              ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The four grids for an image (B, 3, H, W) (a thumbnail is enough), with the given strengths (B, 4) or, when
        None, the predicted ones.

        Two small copies go through the operators: the 256 x 256 one the grids are predicted from, and the one the
        strength heads see (256 high, NeurOp's ``predictor_input``), so each head sees the image as the previous
        operators left it, the way NeurOp's heads do.
        """
        low_res = low_resolution(image)
        view = predictor_input(image).clamp(0, 1) if strengths is None else None
        grids, used = [], []
        for k, op in enumerate(OPERATORS):
            v = self.predictor(op)(self.image_encoder(view)) if strengths is None else strengths[:, k]
            operator = self.operator(op)
            grid = operator.predict_grid(low_res, v)
            grids.append(grid)
            used.append(v)
            if k + 1 < len(OPERATORS):
                low_res = operator.apply(grid, low_res)
                if view is not None:
                    view = operator.apply(grid, view)
        return grids, torch.stack(used, dim=1)

    def render_with(self, image: torch.Tensor, grids: list[torch.Tensor]) -> torch.Tensor:
        for op, grid in zip(OPERATORS, grids):
            image = self.operator(op).apply(grid, image)
        return image

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) in [0, 1] -> (retouched image in [0, 1], strengths (B, 4))."""
        grids, strengths = self.grids(image)
        return self.render_with(image, grids), strengths

    def predict_strengths(self, thumbnail: torch.Tensor, lut_size: int | None = None) -> torch.Tensor:
        return self.grids(thumbnail)[1]

    def render(self, image: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
        """The model with given strengths (B, 4) on whole images (B, 3, H, W)."""
        return self.render_with(image, self.grids(image, strengths)[0])

    def parameter_groups(self) -> dict[str, list[str]]:
        names = [n for n, _ in self.named_parameters()]
        return {"all": names,
                "heads": [n for n in names if "_predictor" in n],
                "predictors": [n for n in names if "_predictor" in n or "image_encoder" in n],
                "operators": [n for n in names if "_operator" in n]}

    def initialize_operators(self, photos, iters: int, rng, log=print, size: int = 192) -> None:
        """Stage 1 of the seed: each operator learns its standard operator (pipeline.operators; Lightroom's
        renditions are not available): L1(op(A, 0), A) + L1(op(A, v), B) for a photo at two random levels A, B of the
        standard operator, v = their difference on the [-1, 1] strength scale."""
        from ..operators import STANDARD
        for op in OPERATORS:
            fn, (lo, hi) = STANDARD[op]
            operator = self.operator(op)
            opt = torch.optim.Adam(operator.parameters(), lr=2e-3, betas=(0.9, 0.99))
            for it in range(iters):
                img = self._crops(photos, rng, size)
                a = torch.tensor([rng.uniform(lo, hi) for _ in range(len(img))])
                b = torch.tensor([rng.uniform(lo, hi) for _ in range(len(img))])
                A, B = fn(img, a).clamp(0, 1), fn(img, b).clamp(0, 1)
                v = (b - a) / (hi - lo)
                loss = F.l1_loss(operator(A, torch.zeros(len(img))), A) + F.l1_loss(operator(A, v), B)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if (it + 1) % max(1, iters // 4) == 0:
                    log(f"init {op}: {it + 1}/{iters} loss {loss.item():.4f}")

    @staticmethod
    def _crops(photos, rng, size: int, count: int = 4) -> torch.Tensor:
        batch = []
        for _ in range(count):
            img = torch.from_numpy(photos[rng.randrange(len(photos))]).permute(2, 0, 1)
            h, w = img.shape[-2:]
            s = min(size, h, w)
            top, left = rng.randrange(h - s + 1), rng.randrange(w - s + 1)
            batch.append(img[:, top:top + s, left:left + s])
        s = min(t.shape[-1] for t in batch)
        return torch.stack([t[:, :s, :s] for t in batch])
