"""NeurOp: neural colour operators with strengths predicted from a thumbnail (Wang et al., ECCV 2022).

Parameter names and shapes match the authors' checkpoints, so their files load with ``load_state_dict``.
28,108 parameters: 3 operators x 4,611, a shared image encoder of 13,984 and 3 heads of 97.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Param, register

# black clipping -> exposure -> vibrance: the order they are applied in; the strengths are the operators' own
# learned scale in [-1, 1], 0 being what the predictor would call "leave it"
PARAMS = (Param("bc", "black clipping"), Param("ex", "exposure"), Param("vb", "vibrance"))
OPERATORS = tuple(p.name for p in PARAMS)
PREDICTOR_HEIGHT = 256


class NeuralOperator(nn.Module):
    """R(p, v) = D(E(p) + v): a per-pixel colour map whose latent code is shifted by the strength v."""

    def __init__(self, channels: int = 3, features: int = 64):
        super().__init__()
        self.encoder = nn.Conv2d(channels, features, 1)
        self.mid_conv = nn.Conv2d(features, features, 1)
        self.decoder = nn.Conv2d(features, channels, 1)

    def forward(self, image: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W), strength (B,) -> (B, 3, H, W)."""
        code = self.encoder(image) + strength.reshape(-1, 1, 1, 1)
        return self.decoder(F.leaky_relu(self.mid_conv(code), 0.01))

    def forward_pixels(self, rgb: torch.Tensor, strength: torch.Tensor | float) -> torch.Tensor:
        """rgb (N, 3) -> (N, 3) for one scalar strength; the same maths as ``forward`` on a pixel list.

        No activation separates the encoder from the mid layer, so for a given strength the two fold into one
        3 -> 64 affine map: 12x fewer multiply-adds per pixel, equal up to float rounding (tests/test_model.py).
        """
        mid = self.mid_conv.weight.flatten(1)
        weight = mid @ self.encoder.weight.flatten(1)
        bias = mid @ (self.encoder.bias + strength) + self.mid_conv.bias
        hidden = F.leaky_relu(F.linear(rgb, weight, bias), 0.01)
        return F.linear(hidden, self.decoder.weight.flatten(1), self.decoder.bias)


class ImageEncoder(nn.Module):
    """Two strided convs, then [std, mean, max] pooled over the image: a 96-D descriptor."""

    def __init__(self, channels: int = 3, features: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, features, 7, 2)
        self.conv2 = nn.Conv2d(features, features, 3, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(F.pad(image, (1, 1, 1, 1))))
        x = F.relu(self.conv2(F.pad(x, (1, 1, 1, 1))))
        std, mean = std_mean(x.flatten(2))
        return torch.cat([std, mean, x.amax(dim=(2, 3))], dim=1)


def std_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample standard deviation and mean over the last dimension: torch.std_mean's numbers (to float rounding) in
    an eighth of its time on CPU (0.15 against 1.15 ms for 32 x 5,355 values)."""
    mean = x.mean(dim=-1)
    var = (x - mean.unsqueeze(-1)).square().sum(dim=-1) / max(1, x.shape[-1] - 1)
    return var.sqrt(), mean


class StrengthHead(nn.Module):
    def __init__(self, features: int = 96):
        super().__init__()
        self.fc3 = nn.Linear(features, 1)

    def forward(self, descriptor: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc3(descriptor)).squeeze(1)


def predictor_input(image: torch.Tensor) -> torch.Tensor:
    """What a strength predictor sees: the image resized to 256 high, bilinear, no antialias (as the reference)."""
    h, w = image.shape[-2:]
    return F.interpolate(image, size=(PREDICTOR_HEIGHT, int(PREDICTOR_HEIGHT * w / h)), mode="bilinear",
                         align_corners=False)


@register
class NeurOp(nn.Module):
    name = "neurop"
    version = "1"
    params = PARAMS
    rendering = "lut"
    default_weights = "neurop-default.pt"

    def __init__(self):
        super().__init__()
        self.image_encoder = ImageEncoder()
        for op in OPERATORS:
            self.add_module(f"{op}_renderer", NeuralOperator())
            self.add_module(f"{op}_predictor", StrengthHead())

    def renderer(self, op: str) -> NeuralOperator:
        return getattr(self, f"{op}_renderer")

    def predictor(self, op: str) -> StrengthHead:
        return getattr(self, f"{op}_predictor")

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) in [0, 1] -> (retouched image clamped to [0, 1], strengths (B, 3)).

        Each predictor sees the current intermediate image, as in the reference.
        """
        strengths = []
        for op in OPERATORS:
            v = self.predictor(op)(self.image_encoder(predictor_input(image)))
            strengths.append(v)
            image = self.renderer(op)(image, v)
        return image.clamp(0, 1), torch.stack(strengths, dim=1)

    def predict_strengths(self, thumbnail: torch.Tensor, lut_size: int | None = None) -> torch.Tensor:
        """thumbnail (B, 3, H, W) -> strengths (B, 3); the operators run only on the thumbnail.

        With ``lut_size`` the intermediate thumbnails go through one baked LUT per operator instead of the network
        on every thumbnail pixel (17 ms against 328 ms for a 512 x 341 thumbnail on 2 CPU cores; the strengths
        move by ~1e-4, see tests/test_lut.py). A thumbnail with no more pixels than a LUT has entries (a web-size
        image, seen as it is) goes through the network itself: cheaper than baking the table, and exact.
        """
        from ..lut import apply_lut_planar, exact_is_cheaper, identity_grid
        if lut_size is None or exact_is_cheaper(thumbnail.shape[-2] * thumbnail.shape[-1], lut_size):
            return self.forward(thumbnail)[1]
        unit = identity_grid(lut_size).to(thumbnail.device, thumbnail.dtype)
        strengths = []
        for i, op in enumerate(OPERATORS):
            v = self.predictor(op)(self.image_encoder(predictor_input(thumbnail)))
            strengths.append(v)
            if i + 1 < len(OPERATORS):
                outs = []
                for b in range(thumbnail.shape[0]):
                    # intermediates leave [0, 1] (only the output is clamped): span the LUT over their range
                    lo, hi = float(thumbnail[b].min()), float(thumbnail[b].max())
                    hi = max(hi, lo + 1e-3)
                    lut = self.renderer(op).forward_pixels(lo + unit * (hi - lo), v[b])
                    outs.append(apply_lut_planar(thumbnail[b], lut.reshape((lut_size,) * 3 + (3,)), (lo, hi)))
                thumbnail = torch.stack(outs)
        return torch.stack(strengths, dim=1)

    def render(self, image: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
        """The exact network with given strengths (B, 3) on (B, 3, H, W); clamped to [0, 1]."""
        for i, op in enumerate(OPERATORS):
            image = self.renderer(op)(image, strengths[:, i])
        return image.clamp(0, 1)

    def render_pixels(self, rgb: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
        """The exact colour function for one image's strengths (3,) on a pixel list (N, 3); clamped to [0, 1]."""
        for i, op in enumerate(OPERATORS):
            rgb = self.renderer(op).forward_pixels(rgb, strengths[i])
        return rgb.clamp(0, 1)

    def parameter_groups(self) -> dict[str, list[str]]:
        """Which parameter names each ``train --trainable`` choice moves."""
        names = [n for n, _ in self.named_parameters()]
        return {"all": names,
                "heads": [n for n in names if "_predictor" in n],
                "predictors": [n for n in names if "_predictor" in n or "image_encoder" in n],
                "operators": [n for n in names if "_renderer" in n]}

    def initialize_operators(self, photos, iters: int, rng, log=print) -> None:
        """Each operator learns its standard operator (pipeline.operators): L1(R(A, 0), A) + L1(R(A, v), B), where A
        and B are a photo at two random levels of the operator and v their difference on the strength scale."""
        from ..operators import STANDARD
        for op in OPERATORS:
            fn, (lo, hi) = STANDARD[op]
            renderer = self.renderer(op)
            opt = torch.optim.Adam(renderer.parameters(), lr=1e-3, betas=(0.9, 0.99))
            for it in range(iters):
                img = torch.from_numpy(photos[rng.randrange(len(photos))]).permute(2, 0, 1)[None]
                img = img[..., ::4, ::4]
                a, b = rng.uniform(lo, hi), rng.uniform(lo, hi)
                A, B = fn(img, a).clamp(0, 1), fn(img, b).clamp(0, 1)
                v = torch.tensor([(b - a) / (hi - lo)], dtype=torch.float32)
                loss = F.l1_loss(renderer(A, torch.zeros(1)), A) + F.l1_loss(renderer(A, v), B)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if (it + 1) % max(1, iters // 4) == 0:
                    log(f"init {op}: {it + 1}/{iters} loss {loss.item():.4f}")
