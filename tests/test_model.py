"""NeurOp: shape, parameter count, checkpoint import, and the forward pass checked against an independent numpy one."""
import pickle

import numpy as np
import pytest
import torch

from pipeline.checkpoint import CheckpointError, ModelInfo, load_checkpoint, save_checkpoint
from pipeline.models import model_class, registered_models
from pipeline.models.neurop import NeurOp

from conftest import need_shared


def test_parameter_count_matches_the_paper():
    m = NeurOp()
    assert sum(p.numel() for p in m.parameters()) == 28_108
    assert sum(p.numel() for p in m.bc_renderer.parameters()) == 4_611
    assert sum(p.numel() for p in m.image_encoder.parameters()) == 13_984
    assert sum(p.numel() for p in m.vb_predictor.parameters()) == 97


def test_registry_knows_neurop():
    assert "neurop" in registered_models()
    assert model_class("neurop") is NeurOp
    with pytest.raises(KeyError, match="unknown model"):
        model_class("nope")


def test_forward_shapes_and_batch_broadcast():
    torch.manual_seed(0)
    m = NeurOp().eval()
    x = torch.rand(2, 3, 64, 96)
    out, s = m(x)
    assert out.shape == x.shape and s.shape == (2, 3)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    # each image of a batch gets its own strengths (the reference only broadcast correctly for batch 1)
    for i in range(2):
        oi, si = m(x[i:i + 1])
        assert torch.allclose(oi, out[i:i + 1], atol=1e-5) and torch.allclose(si, s[i:i + 1], atol=1e-6)


def _np_conv(x, w, b, stride):
    """Plain numpy valid convolution: x (C, H, W), w (O, C, k, k)."""
    o, c, k, _ = w.shape
    h = (x.shape[1] - k) // stride + 1
    wd = (x.shape[2] - k) // stride + 1
    out = np.zeros((o, h, wd))
    for i in range(k):
        for j in range(k):
            patch = x[:, i:i + stride * h:stride, j:j + stride * wd:stride]  # (C, h, wd)
            out += np.einsum("oc,chw->ohw", w[:, :, i, j], patch)
    return out + b[:, None, None]


def _np_bilinear(x, oh, ow):
    """align_corners=False bilinear resize without antialias, (C, H, W)."""
    c, h, w = x.shape
    def coords(n_out, n_in):
        s = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        s = np.clip(s, 0, None)
        i0 = np.minimum(np.floor(s).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, s - i0
    y0, y1, fy = coords(oh, h)
    x0, x1, fx = coords(ow, w)
    top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
    bot = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
    return top * (1 - fy[:, None]) + bot * fy[:, None]


def numpy_neurop(sd, img):
    """The whole NeurOp forward in numpy float64 from a state dict: img (H, W, 3) -> (out, strengths)."""
    g = {k: v.double().numpy() for k, v in sd.items()}
    x = img.transpose(2, 0, 1).astype(np.float64)
    vals = []
    for op in ("bc", "ex", "vb"):
        h, w = x.shape[1:]
        t = _np_bilinear(x, 256, int(256 * w / h))
        f = np.maximum(_np_conv(np.pad(t, ((0, 0), (1, 1), (1, 1))), g["image_encoder.conv1.weight"],
                                g["image_encoder.conv1.bias"], 2), 0)
        f = np.maximum(_np_conv(np.pad(f, ((0, 0), (1, 1), (1, 1))), g["image_encoder.conv2.weight"],
                                g["image_encoder.conv2.bias"], 2), 0)
        flat = f.reshape(f.shape[0], -1)
        desc = np.concatenate([flat.std(axis=1, ddof=1), flat.mean(axis=1), flat.max(axis=1)])
        v = np.tanh(g[f"{op}_predictor.fc3.weight"] @ desc + g[f"{op}_predictor.fc3.bias"])[0]
        vals.append(v)
        p = x.reshape(3, -1)
        code = g[f"{op}_renderer.encoder.weight"][:, :, 0, 0] @ p + g[f"{op}_renderer.encoder.bias"][:, None] + v
        code = g[f"{op}_renderer.mid_conv.weight"][:, :, 0, 0] @ code + g[f"{op}_renderer.mid_conv.bias"][:, None]
        code = np.where(code > 0, code, 0.01 * code)
        p = g[f"{op}_renderer.decoder.weight"][:, :, 0, 0] @ code + g[f"{op}_renderer.decoder.bias"][:, None]
        x = p.reshape(x.shape)
    return np.clip(x, 0, 1).transpose(1, 2, 0), np.array(vals)


@pytest.mark.parametrize("name", ["neurop_fivek_lite.pth", "neurop_ppr_a.pth"])  # legacy and zip torch formats
def test_official_checkpoint_reproduces_an_independent_numpy_forward(name):
    path = need_shared("weights", "neurop-official", name)
    loaded = load_checkpoint(path)
    from PIL import Image
    img = np.asarray(Image.open(need_shared("data", "fivek-pairs", "input", "a0481.png")).convert("RGB"),
                     dtype=np.float32)[::2, ::2] / 255.0
    with torch.no_grad():
        out, s = loaded.model(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None])
    ref_out, ref_s = numpy_neurop(torch.load(path, weights_only=True), img)
    assert np.allclose(s[0].numpy(), ref_s, atol=1e-5)
    assert np.abs(out[0].permute(1, 2, 0).numpy() - ref_out).max() < 1e-4
    assert loaded.info.operators == ("bc", "ex", "vb") and len(loaded.weights_sha256) == 64


def test_per_pixel_colour_function_equals_the_independent_numpy_forward():
    """render_pixels folds encoder and mid layer into one affine map per strength: same result as the network."""
    path = need_shared("weights", "neurop-official", "neurop_fivek_lite.pth")
    from PIL import Image
    img = np.asarray(Image.open(need_shared("data", "fivek-pairs", "input", "a0481.png")).convert("RGB"),
                     dtype=np.float32)[::4, ::4] / 255.0
    ref_out, ref_s = numpy_neurop(torch.load(path, weights_only=True), img)
    with torch.no_grad():
        out = load_checkpoint(path).model.render_pixels(torch.from_numpy(img.reshape(-1, 3)),
                                                        torch.from_numpy(ref_s.astype(np.float32)))
    assert np.abs(out.numpy().reshape(img.shape) - ref_out).max() < 1e-4


def test_own_format_round_trip_keeps_metadata(tmp_path):
    torch.manual_seed(1)
    m = NeurOp()
    info = ModelInfo("neurop", "1", ("bc", "ex", "vb"), training={"iters": 3}, source="test")
    sha = save_checkpoint(tmp_path / "w.pt", m, info)
    loaded = load_checkpoint(tmp_path / "w.pt")
    assert loaded.weights_sha256 == sha and loaded.info == info
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    torch.save({"format": "retouch-batch-checkpoint", "payload": Evil()}, p)
    with pytest.raises(CheckpointError, match="not a loadable weights file"):
        load_checkpoint(p)
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]) + b"garbage")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")


def test_operator_init_checkpoint_is_refused_for_rendering_with_a_hint():
    p = need_shared("weights", "neurop-official", "init_renderer.pth")
    with pytest.raises(CheckpointError, match="train --init"):
        load_checkpoint(p)


def test_shipped_default_weights_are_trained_not_identity():
    loaded = load_checkpoint(None)
    assert loaded.info.model == "neurop" and "neurop_fivek_lite.pth" in loaded.info.source
    # a trained model changes a mid-grey-ish photo; identity or random weights would not produce a sane retouch
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.uniform(0.2, 0.6, (1, 3, 64, 64)).astype(np.float32))
    out, s = loaded.model(img)
    assert 0.001 < float((out - img).abs().mean()) < 0.3
    assert torch.all(s.abs() < 1)
