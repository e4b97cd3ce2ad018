"""The bilateral retoucher against NeurOp on the FiveK pairs, per pair, with paired bootstrap intervals.

    python benchmarks/bilateral_quality.py [--weights W] [--cv RUN/cv.json ...] [--out benchmarks/bilateral-quality]

Scores the shipped NeurOp and the bilateral weights (default: the shipped ones) on every pair of
../shared/data/fivek-pairs with `pipeline.evaluate.evaluate` (the whole image through each model, float, no 8-bit
rounding), and gives the 95% bootstrap interval of the mean per-pair gain of bilateral over NeurOp
(`pipeline.selection.gain_intervals`). Valid as a held-out comparison only for weights whose training never saw
these pairs' targets; for a recipe that trains on the pairs, `--cv` adds the cross-validated figures of
`retouch-batch train ... --cv K --baseline <neurop>` runs. Writes OUT.md and OUT.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.evaluate import evaluate, find_pairs  # noqa: E402
from pipeline.selection import gain_intervals  # noqa: E402

METRICS = ("psnr", "ssim", "delta_e")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(ROOT.parent / "shared" / "data" / "fivek-pairs"))
    ap.add_argument("--weights", default=None, help="bilateral checkpoint (default: the shipped one)")
    ap.add_argument("--cv", nargs="*", default=[], help="cv.json files of cross-validated recipes to report")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "bilateral-quality"))
    args = ap.parse_args(argv)
    pairs = find_pairs(args.pairs)
    neurop = evaluate(pairs, retoucher="neurop")
    bilateral = evaluate(pairs, weights=args.weights, retoucher="bilateral")
    scores = {name: {m: [getattr(s, m) for s in r.per_image] for m in METRICS}
              for name, r in (("neurop", neurop), ("bilateral", bilateral))}
    intervals = gain_intervals(scores["neurop"], scores["bilateral"])
    from pipeline.checkpoint import load_checkpoint
    trained_on = [str(p) for p in load_checkpoint(args.weights, model="bilateral").info.training.get("pairs", [])]
    report = {"pairs": args.pairs, "neurop": neurop.to_dict(), "bilateral": bilateral.to_dict(),
              "gain_intervals": {m: i.to_dict() for m, i in intervals.items()}, "cv": []}
    lines = ["# Bilateral retoucher against NeurOp on the FiveK pairs", "",
             f"`python benchmarks/bilateral_quality.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
             f"{len(pairs)} pairs, whole images through each model (`pipeline.evaluate`). Weights: "
             f"{bilateral.weights}; trained on {', '.join(trained_on) or 'nothing recorded'}"
             + (" - these very pairs: training-set figures, an upper bound on what it does on photos it never saw."
                if any("fivek" in t for t in trained_on) else "."), "",
             "| metric | NeurOp (shipped) | bilateral | mean gain | 95% interval |", "|---|---:|---:|---:|---|"]
    for m, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("delta_e", "dE76 (gain = fall)")):
        i = intervals[m]
        lines.append(f"| {label} | {getattr(neurop, m):.4f} | {getattr(bilateral, m):.4f} | {i.mean:+.4f} | "
                     f"[{i.low:+.4f}, {i.high:+.4f}] |")
    lines += ["", "| pair | NeurOp PSNR | bilateral PSNR | input PSNR |", "|---|---:|---:|---:|"]
    for a, b in zip(neurop.per_image, bilateral.per_image):
        lines.append(f"| {a.id} | {a.psnr:.2f} | {b.psnr:.2f} | {a.psnr_input:.2f} |")
    for path in args.cv:
        cv = json.loads(Path(path).read_text())
        report["cv"].append({"file": path, **cv})
        lines += ["", f"Cross-validated ({path}): {cv.get('reason', '')}", "",
                  "| metric | baseline | trained | mean gain | 95% interval |", "|---|---:|---:|---:|---|"]
        for m in METRICS:
            g = cv["gain"][m]
            lines.append(f"| {m} | {cv['start'][m]:.4f} | {cv['trained'][m]:.4f} | {g['mean']:+.4f} | "
                         f"[{g['low']:+.4f}, {g['high']:+.4f}] |")
    out = Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
