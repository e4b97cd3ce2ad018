"""Deep symmetric network for underexposed photos (../shared/seeds/deep-symmetric-network.md).

An encoder turns the image into features, an invertible feature transformer (IFT: 8 invertible blocks) maps
underexposed features to well-exposed ones, and a decoder that shares the encoder's parameters turns them back
into an image. Trained both ways: forward (dark -> good) and backward (good -> dark, through the IFT's exact
inverse), with L2 losses on both (lambda_H = lambda_L = 1).

Each invertible block splits the features into halves x1, x2 and computes (the seed's equations 3 and 4)
    y1 = (x1 - T3(x2)) / ES(T1(x2)),    y2 = x2 - T2(y1)
    x2 = y2 + T2(y1),                   x1 = y1 * ES(T1(x2)) + T3(x2)
with ES(s) = exp(2 sigmoid(s) - 1) and each T a recurrent residual-attention module (RRAM): a convolution doubling
the channels, t = 3 rounds of residual soft channel attention (RSCA, one set of weights, the hidden state carrying
each round's output into the next), a convolution back.

Where this differs from the seed, and why (a 2-core CPU has to train it):
- the encoder/decoder is not VGG-16's first two convolutions (no ImageNet weights here). Two variants, the same
  size: ``learned``, a 3x3 convolution (3 -> 12) and a stride-2 3x3 convolution (12 -> 12) pretrained as a tied
  autoencoder on the photos (the decoder is their transposed convolutions, the same weights), then frozen; and
  ``haar``, the Haar wavelet transform (3 -> 12 channels at half resolution, exactly invertible), the seed's
  ablation. Both work at half resolution, 12 channels (the seed: full resolution, 64): about 55 k multiply-adds
  per pixel instead of several million;
- crops of 96 pixels (the seed: 180), from photos at 384 pixels on the long side.

The ledger's one parameter is ``blend``: the share of the enhanced image in the output (0: the input as it was).
The attention's global pooling is the only non-local operation; at full resolution it is computed once on the
working copy (pipeline.guided), so tiles share it and the tiled output equals the untiled one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..operators import linear_to_srgb, srgb_to_linear
from ..render import pad_to_multiple
from . import Param, register

FEATURES = 12  # channels after the encoder (half resolution)
BLOCKS = 8
ROUNDS = 3
BLEND = Param("blend", "enhancement", 0.0, 1.0, 0.0, "share of the enhanced image")


class AttentionContext:
    """The channel-attention poolings of one pass, in call order: recorded on the working copy, replayed on its
    tiles (so every tile attends with the whole image's statistics)."""

    def __init__(self, vectors: list[torch.Tensor] | None = None):
        self.recording = vectors is None
        self.vectors = [] if vectors is None else vectors
        self.position = 0

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if self.recording:
            self.vectors.append(x.mean((2, 3), keepdim=True))
            return self.vectors[-1]
        v = self.vectors[self.position]
        self.position += 1
        return v

    def replay(self) -> "AttentionContext":
        return AttentionContext(self.vectors)


class RSCA(nn.Module):
    """Residual soft channel attention: x_h = conv(prelu(conv(x))); M = sigmoid(conv(prelu(conv(pool(x_h)))));
    out = x_h * M + x."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.PReLU(channels),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        hidden = max(1, channels // reduction)
        self.attention = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.PReLU(hidden),
                                       nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, context: AttentionContext | None = None) -> torch.Tensor:
        h = self.body(x)
        pooled = h.mean((2, 3), keepdim=True) if context is None else context.pooled(h)
        return h * self.attention(pooled) + x


class RRAM(nn.Module):
    """Recurrent residual-attention module: x_fi = prelu(conv(x)) (channels doubled); h^1 = 0,
    x_fo^t = RSCA(h^t + x_fi), h^(t+1) = h^t + x_fo^t; out = conv(x_fo^T). The last conv starts at zero, so an
    invertible block starts as the identity."""

    def __init__(self, channels: int, rounds: int = ROUNDS):
        super().__init__()
        self.inp = nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.PReLU(2 * channels))
        self.rsca = RSCA(2 * channels)
        self.out = nn.Conv2d(2 * channels, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.rounds = rounds

    def forward(self, x: torch.Tensor, context: AttentionContext | None = None) -> torch.Tensor:
        fi = self.inp(x)
        hidden = torch.zeros_like(fi)
        for _ in range(self.rounds):
            fo = self.rsca(hidden + fi, context)
            hidden = hidden + fo
        return self.out(fo)


def expsig(s: torch.Tensor) -> torch.Tensor:
    """The seed's ES: a sigmoid followed by the exponent, centred so that ES(0) = 1 (range [1/e, e])."""
    return torch.exp(2 * torch.sigmoid(s) - 1)


class InvertibleBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.half = channels // 2
        self.t1, self.t2, self.t3 = RRAM(self.half), RRAM(self.half), RRAM(channels - self.half)

    def forward(self, x: torch.Tensor, context: AttentionContext | None = None) -> torch.Tensor:
        x1, x2 = x[:, :self.half], x[:, self.half:]
        y1 = (x1 - self.t3(x2, context)) / expsig(self.t1(x2, context))
        y2 = x2 - self.t2(y1, context)
        return torch.cat([y1, y2], 1)

    def inverse(self, y: torch.Tensor, context: AttentionContext | None = None) -> torch.Tensor:
        y1, y2 = y[:, :self.half], y[:, self.half:]
        x2 = y2 + self.t2(y1, context)
        x1 = y1 * expsig(self.t1(x2, context)) + self.t3(x2, context)
        return torch.cat([x1, x2], 1)


class InvertibleFeatureTransformer(nn.Module):
    def __init__(self, channels: int = FEATURES, blocks: int = BLOCKS):
        super().__init__()
        self.blocks = nn.ModuleList(InvertibleBlock(channels) for _ in range(blocks))

    def forward(self, x: torch.Tensor, context: AttentionContext | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, context)
        return x

    def inverse(self, y: torch.Tensor, context: AttentionContext | None = None) -> torch.Tensor:
        for block in reversed(self.blocks):
            y = block.inverse(y, context)
        return y


class LearnedCoder(nn.Module):
    """Encoder: 3x3 conv (3 -> C), leaky ReLU, stride-2 3x3 conv (C -> C). Decoder: the same two convolutions
    transposed, in reverse order (shared weights, own biases)."""

    kind = "learned"

    def __init__(self, channels: int = FEATURES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.dec_bias2 = nn.Parameter(torch.zeros(channels))
        self.dec_bias1 = nn.Parameter(torch.zeros(3))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.leaky_relu(self.conv1(image * 2 - 1), 0.2))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        x = F.conv_transpose2d(features - self.conv2.bias[None, :, None, None], self.conv2.weight, self.dec_bias2,
                               stride=2, padding=1, output_padding=1)
        x = F.leaky_relu(x, 0.2)
        x = F.conv_transpose2d(x - self.conv1.bias[None, :, None, None], self.conv1.weight, self.dec_bias1, padding=1)
        return (x + 1) / 2


class HaarCoder(nn.Module):
    """The Haar wavelet transform (one level, each channel: LL, LH, HL, HH at half resolution) and its inverse."""

    kind = "haar"

    def __init__(self, channels: int = FEATURES):
        super().__init__()
        if channels != 12:
            raise ValueError("the Haar coder gives 12 channels")
        h = torch.tensor([[[1, 1], [1, 1]], [[1, 1], [-1, -1]], [[1, -1], [1, -1]], [[1, -1], [-1, 1]]],
                         dtype=torch.float32) / 2
        self.register_buffer("filters", h[:, None].repeat(3, 1, 1, 1))  # (12, 1, 2, 2), grouped per channel

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image * 2 - 1, self.filters, stride=2, groups=3)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return (F.conv_transpose2d(features, self.filters, stride=2, groups=3) + 1) / 2


CODERS = {"learned": LearnedCoder, "haar": HaarCoder}


@register
class DeepSymmetric(nn.Module):
    """Dark photos: an invertible feature transformer between a shared encoder and decoder (Zhao et al.).

    ``blend`` mixes the enhanced image with the input."""

    name = "deep-symmetric"
    version = "1"
    params = (BLEND,)
    rendering = "network"
    default_weights = "deep-symmetric-default.pt"
    full_res = "guided"
    STRIDE = 2
    # receptive field: 8 blocks x 2 chained RRAMs x 8 convs at half resolution, plus the coder: 262 pixels
    margin, align = 272, 16

    CODER = "learned"  # the shipped weights' coder (BENCHMARKS.md compares the two)

    def __init__(self, coder: str | None = None, channels: int = FEATURES, blocks: int = BLOCKS):
        super().__init__()
        self.coder = CODERS[coder or self.CODER](channels)
        self.ift = InvertibleFeatureTransformer(channels, blocks)
        self.register_buffer("blend_amount", torch.tensor(1.0))

    @classmethod
    def from_info(cls, info) -> "DeepSymmetric":
        """The model a checkpoint was trained as (its coder is recorded in the training details)."""
        return cls(info.training.get("coder"))

    @staticmethod
    def retoucher_class():
        from ..guided import NetworkRetoucher
        return NetworkRetoucher

    def configure(self, full_res: str | None = None) -> dict:
        from .coarse_to_fine import configure_full_res
        return configure_full_res(self, full_res)

    def enhance(self, image: torch.Tensor, context: AttentionContext | None = None) -> torch.Tensor:
        """Forward propagation, dark -> good: (B, 3, H, W) -> (B, 3, H, W), not clamped."""
        h, w = image.shape[-2:]
        return self.coder.decode(self.ift(self.coder.encode(pad_to_multiple(image, self.STRIDE)), context))[..., :h, :w]

    def darken(self, image: torch.Tensor, context: AttentionContext | None = None) -> torch.Tensor:
        """Backward propagation, good -> dark, through the IFT's inverse."""
        h, w = image.shape[-2:]
        return self.coder.decode(self.ift.inverse(self.coder.encode(pad_to_multiple(image, self.STRIDE)), context))[..., :h, :w]

    def predict_strengths(self, thumbnail: torch.Tensor, lut_size: int | None = None) -> torch.Tensor:
        return self.blend_amount.expand(thumbnail.shape[0], 1).clone()

    def global_stage(self, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return image

    def context(self, image: torch.Tensor, params: torch.Tensor) -> AttentionContext:
        """The attention's poolings on the whole (working-size) image, for tiles to replay."""
        recorder = AttentionContext()
        self.enhance(image, recorder)
        return recorder

    def local_stage(self, image: torch.Tensor, params: torch.Tensor, context: AttentionContext | None = None
                    ) -> torch.Tensor:
        blend = params[:, :1].reshape(-1, 1, 1, 1)
        enhanced = self.enhance(image, None if context is None else context.replay())
        return (image + blend * (enhanced - image)).clamp(0, 1)

    def local_is_identity(self, params: torch.Tensor) -> bool:
        return bool((params[..., 0] == 0).all())

    def render(self, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.local_stage(image, params)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.predict_strengths(image)
        return self.render(image, params), params


# --- synthetic underexposure (the seed follows distort-and-recover: exposure, gamma, contrast, colour) ---------

def underexpose(image: torch.Tensor, rng, ev: tuple[float, float] = (1.0, 3.0)) -> torch.Tensor:
    """A good photo (B, 3, H, W) made as a dark capture of it would be: 1-3 EV less light, a random gamma (0.8-1.25),
    contrast (+-20 %), colour (saturation +-25 %, channel gains +-10 %), and sensor noise in linear light
    (Poisson-Gaussian: shot noise 2e-4 - 2e-3 of full scale per unit signal, read noise 0.5-3 e-3 of full scale,
    the range of ISO 400-6400 on common sensors), clamped to [0, 1]."""
    lin = srgb_to_linear(image.clamp(0, 1)) * 2.0 ** -rng.uniform(*ev)
    gains = torch.tensor([2.0 ** rng.uniform(-0.14, 0.14) for _ in range(3)]).reshape(1, 3, 1, 1)
    lin = lin * gains
    shot, read = rng.uniform(2e-4, 2e-3), rng.uniform(5e-4, 3e-3)
    generator = torch.Generator().manual_seed(rng.randrange(1 << 31))
    noise = torch.randn(lin.shape, generator=generator)
    lin = (lin + noise * torch.sqrt(shot * lin.clamp(min=0) + read ** 2)).clamp(0, 1)
    out = linear_to_srgb(lin) ** rng.uniform(0.8, 1.25)
    mean = out.mean((1, 2, 3), keepdim=True)
    out = mean + (out - mean) * rng.uniform(0.8, 1.2)
    grey = out.mean(1, keepdim=True)
    return (grey + (out - grey) * rng.uniform(0.75, 1.25)).clamp(0, 1)


def _luminance(lin: torch.Tensor) -> torch.Tensor:
    return 0.2126 * lin[:, 0] + 0.7152 * lin[:, 1] + 0.0722 * lin[:, 2]


def auto_exposure(image: torch.Tensor, target: float) -> torch.Tensor:
    """The global-exposure baseline: one gain in linear light bringing the mean luminance to ``target``."""
    lin = srgb_to_linear(image.clamp(0, 1))
    gain = target / _luminance(lin).mean((1, 2)).clamp(min=1e-4)
    return linear_to_srgb(lin * gain.reshape(-1, 1, 1, 1))


def oracle_exposure(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The best single linear-light gain given the answer (least squares): what no global exposure can beat."""
    a, b = srgb_to_linear(image.clamp(0, 1)), srgb_to_linear(target.clamp(0, 1))
    gain = (a * b).sum((1, 2, 3)) / (a * a).sum((1, 2, 3)).clamp(min=1e-8)
    return linear_to_srgb(a * gain.reshape(-1, 1, 1, 1))


IDENTITY_SHARE = 0.15  # of training crops left as they are, so well-exposed photos are not pushed brighter
CROP = 96
WORKING_SIZE = 384
VALIDATION_EVERY = 5
VALIDATION_DARK = 3  # fixed underexposures per held-out photo
BLEND_CHOICES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _crops(photos, rng, batch: int, size: int = CROP) -> tuple[torch.Tensor, torch.Tensor]:
    """(good, dark) (batch, 3, size, size): random crops of random photos, flipped half the time."""
    good, dark = [], []
    for _ in range(batch):
        p = photos[rng.randrange(len(photos))]
        h, w = p.shape[-2:]
        s = min(size, h, w)
        top, left = rng.randrange(h - s + 1), rng.randrange(w - s + 1)
        crop = p[None, :, top:top + s, left:left + s]
        crop = crop.flip(-1) if rng.random() < 0.5 else crop
        good.append(crop)
        dark.append(crop.clone() if rng.random() < IDENTITY_SHARE else underexpose(crop, rng))
    return torch.cat(good), torch.cat(dark)


def pretrain_coder(model: DeepSymmetric, photos, steps: int, rng, log=print) -> None:
    """The shared encoder/decoder as a tied autoencoder on good and dark crops (reconstruction L2), then frozen."""
    opt = torch.optim.Adam(model.coder.parameters(), lr=2e-3)
    for step in range(1, steps + 1):
        good, dark = _crops(photos, rng, 8)
        x = torch.cat([good, dark])
        loss = F.mse_loss(model.coder.decode(model.coder.encode(x)), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, steps // 5) == 0:
            log(f"deep-symmetric coder: step {step}/{steps} reconstruction MSE {loss.item():.6f}")
    model.coder.requires_grad_(False)


def train_network(photos, steps: int, seed: int = 0, coder: str = "learned", log=print, batch: int = 4,
                  coder_steps: int = 300, lr: float = 1e-3) -> DeepSymmetric:
    """Both propagation directions: L2(enhance(dark), good) + L2(darken(good), dark)."""
    import random
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = DeepSymmetric(coder)
    if coder == "learned":
        pretrain_coder(model, photos, coder_steps, rng, log)
    opt = torch.optim.Adam(model.ift.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(1, steps), pct_start=0.05)
    for step in range(1, steps + 1):
        good, dark = _crops(photos, rng, batch)
        forward, backward = F.mse_loss(model.enhance(dark), good), F.mse_loss(model.darken(good), dark)
        loss = forward + backward
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.ift.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, steps // 20) == 0:
            log(f"deep-symmetric ({coder}): step {step}/{steps} forward {forward.item():.5f} "
                f"backward {backward.item():.5f}")
    return model.eval()


def dark_validation(photos, seed: int = 321) -> list[tuple[torch.Tensor, torch.Tensor]]:
    import random
    rng = random.Random(seed)
    return [(p[None], underexpose(p[None], rng)) for p in photos for _ in range(VALIDATION_DARK)]


def mean_luminance(photos) -> float:
    """The median of the photos' mean linear luminance: the auto-exposure baseline's target."""
    import statistics
    return statistics.median(float(_luminance(srgb_to_linear(p[None])).mean()) for p in photos)


@torch.inference_mode()
def dark_scores(model, photos, target_luminance: float, blends=(1.0,)) -> dict:
    """Mean PSNR on fixed underexposures of ``photos``: the input, the model at each blend, NeurOp, the
    auto-exposure baseline and the oracle exposure."""
    import numpy as np

    from ..checkpoint import load_checkpoint
    from ..metrics import psnr
    neurop = load_checkpoint().model.eval()
    rows = {k: [] for k in ["input", "neurop", "auto_exposure", "oracle_exposure"] + [f"blend_{b}" for b in blends]}

    def score(key, out, good):
        rows[key].append(psnr(out[0].clamp(0, 1).permute(1, 2, 0).numpy(), good[0].permute(1, 2, 0).numpy()))
    for good, dark in dark_validation(photos):
        score("input", dark, good)
        score("neurop", neurop(dark)[0], good)
        score("auto_exposure", auto_exposure(dark, target_luminance), good)
        score("oracle_exposure", oracle_exposure(dark, good), good)
        enhanced = model.enhance(dark)
        for b in blends:
            score(f"blend_{b}", (dark + b * (enhanced - dark)).clamp(0, 1), good)
    return {k: float(np.mean(v)) for k, v in rows.items()} | {"n": len(rows["input"])}


@torch.inference_mode()
def pair_psnr_by_blend(model: DeepSymmetric, pairs, blends) -> dict:
    """Mean PSNR of real pairs (id, input, target) at each blend (the network once per pair), and of the inputs."""
    import numpy as np

    from ..evaluate import load_float
    from ..metrics import psnr
    rows = {"input": [], **{str(b): [] for b in blends}}
    for _, inp, tgt in pairs:
        a, b = load_float(inp), load_float(tgt)
        image = torch.from_numpy(a).permute(2, 0, 1)[None]
        enhanced = model.enhance(image)
        rows["input"].append(psnr(a, b))
        for k in blends:
            rows[str(k)].append(psnr((image + k * (enhanced - image)).clamp(0, 1)[0].permute(1, 2, 0).numpy(), b))
    return {k: float(np.mean(v)) for k, v in rows.items()} | {"n": len(pairs)}


def train_deep_symmetric(photo_sources: list[str], pair_sources: list[str], out: str, steps: int, seed: int = 0,
                         coder: str = "learned", log=print) -> dict:
    """Train on 4/5 of the photos underexposed at random; score on the held-out fifth beside NeurOp and the exposure
    baselines; choose the blend on them, never above what keeps every pairs set at least as good as its input;
    writes best.pt and dark.json."""
    import time

    from ..checkpoint import ModelInfo, save_training
    from ..evaluate import find_pairs
    from ..train import load_photos
    started = time.time()
    photos = [torch.from_numpy(p).permute(2, 0, 1).contiguous() for p in load_photos(photo_sources, WORKING_SIZE)]
    held = photos[::VALIDATION_EVERY]
    used = [p for i, p in enumerate(photos) if i % VALIDATION_EVERY]
    if not held or not used:
        raise ValueError(f"--model deep-symmetric needs at least {VALIDATION_EVERY} photos (one is held out)")
    log(f"deep-symmetric ({coder} coder): {len(used)} photos to learn from, {len(held)} held out, {steps} steps")
    model = train_network(used, steps, seed, coder, log)
    target = mean_luminance(used)
    scores = dark_scores(model, held, target, BLEND_CHOICES)
    report = {"coder": coder, "held_out_photos": len(held), "steps": steps, "seed": seed, "held_out": scores,
              "auto_exposure_target": target}
    allowed = list(BLEND_CHOICES)
    for source in pair_sources:
        by_blend = pair_psnr_by_blend(model, find_pairs(source), BLEND_CHOICES)
        report.setdefault("pairs", {})[source] = by_blend
        allowed = [b for b in allowed if all(by_blend[str(c)] >= by_blend["input"] for c in BLEND_CHOICES if c <= b)]
        log(f"{source} (never trained on), PSNR by blend: "
            + ", ".join(f"{k}: {v:.2f}" for k, v in by_blend.items() if k != "n"))
    blend = max(allowed, key=lambda b: scores[f"blend_{b}"])
    model.blend_amount.fill_(blend)
    report["blend"] = blend
    log(f"held-out underexposed photos (n={scores['n']}): input {scores['input']:.2f} dB, deep-symmetric "
        f"{scores[f'blend_{blend}']:.2f} dB (blend {blend}), NeurOp {scores['neurop']:.2f} dB, auto exposure "
        f"{scores['auto_exposure']:.2f} dB, oracle exposure {scores['oracle_exposure']:.2f} dB")
    info = ModelInfo(model=model.name, model_version=model.version, operators=model.operators,
                     prediction_size=WORKING_SIZE,
                     training={"steps": steps, "seed": seed, "coder": coder, "photos": len(used), "blend": blend,
                               "held_out_psnr": scores[f"blend_{blend}"], "neurop_psnr": scores["neurop"]},
                     source=f"retouch-batch train --model deep-symmetric ({len(used)} photos, synthetic underexposure)")
    return save_training(out, model, info, report, "dark.json", started)
