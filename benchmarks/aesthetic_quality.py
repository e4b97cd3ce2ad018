"""The aesthetic retoucher on the FiveK pairs: its search settings chosen by leave-one-out, beside NeurOp and the input.

    python benchmarks/aesthetic_quality.py [--weights W] [--lrs 0,1e-5,3e-5,1e-4,1e-3] [--steps 20]
                                           [--out benchmarks/aesthetic-quality]

For every candidate learning rate, every pair's input goes through the search (the shipped guide, or --weights'),
and its output is scored against the expert target (PSNR, SSIM, dE76, `pipeline.evaluate`) and, over the whole set,
with the seed's patch histogram intersections (`pipeline.metrics`). The rate is a setting, so it is chosen without
looking at the pair it is judged on: for each pair, the rate with the best mean PSNR on the other 12 pairs, and that
pair's score at it (leave-one-out). The shipped guide was trained on these pairs (its own held-out ranking accuracy
is in benchmarks/aesthetic-guide.json), so the search's figures are, for the guide, training-set figures.
Writes OUT.md and OUT.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.checkpoint import load_checkpoint  # noqa: E402
from pipeline.evaluate import evaluate, find_pairs, load_float, model_output, score_output  # noqa: E402
from pipeline.metrics import histogram_intersections  # noqa: E402
from pipeline.selection import bootstrap_interval, gain_intervals, gains  # noqa: E402

METRICS = ("psnr", "ssim", "delta_e")
SEED_TABLE = {"PIEA": (86.4, 87.8, 87.8), "EXPOSURE": (71.3, 83.7, 69.7), "CycleGAN": (61.4, 71.1, 82.6),
              "Pix2pix": (92.4, 83.3, 86.5)}  # the seed's Table 1, FiveK expert C, luminance / contrast / saturation


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(ROOT.parent / "shared" / "data" / "fivek-pairs"))
    ap.add_argument("--weights", default=None, help="aesthetic checkpoint (default: the shipped one)")
    ap.add_argument("--lrs", default="0,1e-5,3e-5,1e-4,1e-3")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "aesthetic-quality"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pairs = find_pairs(args.pairs)
    data = [(i, load_float(a), load_float(b)) for i, a, b in pairs]
    loaded = load_checkpoint(args.weights, model="aesthetic")
    model = loaded.model
    model.configure(search_steps=args.steps)
    rates = [float(x) for x in args.lrs.split(",")]
    per_rate, outputs = {}, {}
    for lr in rates:
        model.configure(search_lr=lr)
        t0 = time.perf_counter()
        scores, outs, before, after = [], [], [], []
        for image_id, a, b in data:
            o = model_output(model, a)
            scores.append(score_output(image_id, o, a, b))
            outs.append(o)
            before.append(float(model.last_search.score_before[0]))
            after.append(float(model.last_search.score_after[0]))
        per_rate[lr] = {"scores": scores, "seconds_per_image": (time.perf_counter() - t0) / len(data),
                        "guide_before": before, "guide_after": after,
                        "histogram": histogram_intersections(outs, [b for _, _, b in data])}
        outputs[lr] = outs
        print(f"lr {lr:g}: PSNR {np.mean([s.psnr for s in scores]):.2f} dB, guide score "
              f"{np.mean(before):.2f} -> {np.mean(after):.2f}", flush=True)
    # leave-one-out choice of the rate
    psnr = np.array([[s.psnr for s in per_rate[lr]["scores"]] for lr in rates])  # (R, N)
    chosen, loo = [], {m: [] for m in METRICS}
    for n in range(len(data)):
        others = np.delete(psnr, n, axis=1).mean(1)
        r = int(np.argmax(others))
        chosen.append(rates[r])
        for m in METRICS:
            loo[m].append(getattr(per_rate[rates[r]]["scores"][n], m))
    loo_outputs = [outputs[lr][n] for n, lr in enumerate(chosen)]
    targets = [b for _, _, b in data]
    inputs = [a for _, a, _ in data]
    neurop = evaluate(pairs, retoucher="neurop")
    input_scores = {"psnr": [s.psnr_input for s in neurop.per_image]}
    report = {
        "pairs": args.pairs, "weights": loaded.weights_path, "steps": args.steps, "rates": rates,
        "per_rate": {str(lr): {"psnr": float(np.mean([s.psnr for s in v["scores"]])),
                               "ssim": float(np.mean([s.ssim for s in v["scores"]])),
                               "delta_e": float(np.mean([s.delta_e for s in v["scores"]])),
                               "histogram": v["histogram"], "seconds_per_image": v["seconds_per_image"],
                               "guide_before": float(np.mean(v["guide_before"])),
                               "guide_after": float(np.mean(v["guide_after"])),
                               "per_pair_psnr": [s.psnr for s in v["scores"]]}
                     for lr, v in per_rate.items()},
        "loo": {"chosen_rates": chosen, **{m: float(np.mean(loo[m])) for m in METRICS},
                "per_pair": loo, "histogram": histogram_intersections(loo_outputs, targets)},
        "input": {"psnr": float(np.mean(input_scores["psnr"])), "histogram": histogram_intersections(inputs, targets)},
        "neurop": {"psnr": neurop.psnr, "ssim": neurop.ssim, "delta_e": neurop.delta_e,
                   "histogram": neurop.histogram_intersection},
        "gain_over_input": {"psnr": bootstrap_interval(gains(input_scores["psnr"], loo["psnr"], "psnr")).to_dict()},
        "gain_over_neurop": {m: v.to_dict() for m, v in gain_intervals(
            {m: [getattr(s, m) for s in neurop.per_image] for m in METRICS}, {m: loo[m] for m in METRICS}).items()},
        "seed_table": SEED_TABLE,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1, default=float))
    Path(args.out + ".md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    def hist(h):
        return " / ".join(f"{h[k]:.1f}" for k in ("luminance", "contrast", "saturation"))
    lines = [f"Aesthetic retoucher on {r['pairs']} ({len(r['loo']['chosen_rates'])} pairs), {r['steps']} search steps.",
             "", "| search rate | PSNR | SSIM | dE76 | histogram L / C / S % | guide score before -> after | s/image |",
             "|---:|---:|---:|---:|---|---|---:|"]
    for lr, v in r["per_rate"].items():
        lines.append(f"| {float(lr):g} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v['delta_e']:.2f} | {hist(v['histogram'])} "
                     f"| {v['guide_before']:.2f} -> {v['guide_after']:.2f} | {v['seconds_per_image']:.2f} |")
    loo = r["loo"]
    lines += ["", f"Leave-one-out choice of the rate (chosen: {sorted(set(loo['chosen_rates']))}): PSNR "
              f"{loo['psnr']:.2f} dB, SSIM {loo['ssim']:.4f}, dE76 {loo['delta_e']:.2f}; histogram L / C / S "
              f"{hist(loo['histogram'])} %.",
              f"Input: PSNR {r['input']['psnr']:.2f} dB, histogram {hist(r['input']['histogram'])} %. "
              f"NeurOp (shipped): PSNR {r['neurop']['psnr']:.2f} dB, SSIM {r['neurop']['ssim']:.4f}, dE76 "
              f"{r['neurop']['delta_e']:.2f}, histogram {hist(r['neurop']['histogram'])} %.",
              f"Gain over the input, PSNR: {fmt(r['gain_over_input']['psnr'])}; over NeurOp: "
              + ", ".join(f"{m} {fmt(v)}" for m, v in r["gain_over_neurop"].items()) + ".",
              "", "The seed's Table 1 (FiveK expert C, 500 x 333, histogram L / C / S %): "
              + "; ".join(f"{k} {' / '.join(str(x) for x in v)}" for k, v in r["seed_table"].items()) + "."]
    return "\n".join(lines) + "\n"


def fmt(g: dict) -> str:
    return f"{g['mean']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}]"


if __name__ == "__main__":
    main()
