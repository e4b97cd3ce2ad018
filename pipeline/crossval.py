"""Cross-validation of a training recipe over every pair: each pair is scored by a model that never saw it.

Leave-one-out by default, or repeated K-fold. Each pair's score under the recipe (the mean over repeats) is paired
with its score under the starting weights, and the per-pair gains get bootstrap intervals (pipeline.selection).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from .evaluate import PairScore, score_arrays
from .selection import METRIC_SIGNS, gain_intervals, verdict

Pair = tuple[str, np.ndarray, np.ndarray]
# fit(training pairs, folder for the fold's files) -> a model whose forward gives (image, strengths)
Fit = Callable[[list[Pair], Path], object]


def fold_plan(ids: list[str], folds: int | None = None, repeats: int = 1, seed: int = 0) -> list[list[str]]:
    """Held-out id lists: leave-one-out when ``folds`` is None (or equals the number of pairs), else ``repeats``
    seeded shuffles of ``folds`` folds. Every id is held out exactly once per repeat."""
    ids = sorted(ids)
    if folds is None or folds == len(ids):
        return [[i] for i in ids]
    if not 2 <= folds <= len(ids):
        raise ValueError(f"--cv must be 'loo' or a number of folds between 2 and the number of pairs ({len(ids)})")
    plan = []
    for r in range(repeats):
        order = list(ids)
        random.Random(seed + r).shuffle(order)
        plan += [sorted(order[k::folds]) for k in range(folds)]
    return plan


def scheme_name(n: int, folds: int | None, repeats: int) -> str:
    if folds is None or folds == n:
        return "leave-one-out"
    return f"{folds}-fold" + (f" x {repeats} repeats" if repeats > 1 else "")


def _by_metric(scores: dict[str, list[PairScore]], ids: list[str]) -> dict[str, list[float]]:
    """Per metric, each id's mean score over the folds that held it out (several when repeated)."""
    return {m: [float(np.mean([getattr(s, m) for s in scores[i]])) for i in ids] for m in METRIC_SIGNS}


def cross_validate(pairs: list[Pair], fit: Fit, start_model, out: str | Path, folds: int | None = None,
                   repeats: int = 1, seed: int = 0, log=print) -> dict:
    """Run ``fit`` once per fold of ``fold_plan`` and score the held-out pairs; write and return cv.json's content.

    ``start_model`` (the weights the recipe starts from) is scored on every pair for the paired comparison.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(p[0] for p in pairs)
    if len(ids) < 2:
        raise ValueError("cross-validation needs at least 2 pairs")
    by_id = {p[0]: p for p in pairs}
    plan = fold_plan(ids, folds, repeats, seed)
    start = {s.id: s for s in score_arrays(start_model, pairs)}
    trained: dict[str, list[PairScore]] = {i: [] for i in ids}
    records = []
    for k, held in enumerate(plan):
        train_pairs = [by_id[i] for i in ids if i not in held]
        model = fit(train_pairs, out / f"fold{k}")
        scores = score_arrays(model, [by_id[i] for i in held])
        for s in scores:
            trained[s.id].append(s)
        records.append({"fold": k, "held_out": held, "scores": [asdict(s) for s in scores]})
        log(f"fold {k + 1}/{len(plan)} (held out {', '.join(held)}): PSNR "
            + ", ".join(f"{start[s.id].psnr:.2f} -> {s.psnr:.2f}" for s in scores))
    start_by = {m: [getattr(start[i], m) for i in ids] for m in METRIC_SIGNS}
    trained_by = _by_metric(trained, ids)
    intervals = gain_intervals(start_by, trained_by, seed=seed)
    v = verdict(intervals)
    result = {
        "scheme": scheme_name(len(ids), folds, repeats), "pairs": len(ids), "folds": records,
        "start": {m: float(np.mean(start_by[m])) for m in METRIC_SIGNS},
        "trained": {m: float(np.mean(trained_by[m])) for m in METRIC_SIGNS},
        "per_pair": {i: {"start": {m: start_by[m][n] for m in METRIC_SIGNS},
                         "trained": {m: trained_by[m][n] for m in METRIC_SIGNS}} for n, i in enumerate(ids)},
        "gain": {m: iv.to_dict() for m, iv in intervals.items()},
        "replaces_start": v.replaces_start, "reason": v.reason,
    }
    (out / "cv.json").write_text(json.dumps(result, indent=1))
    return result


def format_summary(cv: dict) -> str:
    """The lines `train --cv` prints: means, the gain intervals and the verdict."""
    s, t, g = cv["start"], cv["trained"], cv["gain"]
    lines = [f"cross-validation ({cv['scheme']}, {cv['pairs']} pairs), per-pair means on held-out pairs:"]
    for m, label in (("psnr", "PSNR"), ("ssim", "SSIM"), ("delta_e", "dE76")):
        lines.append(f"  {label:<5} {s[m]:.4f} -> {t[m]:.4f}   gain {g[m]['mean']:+.4f}, "
                     f"95% interval [{g[m]['low']:+.4f}, {g[m]['high']:+.4f}]")
    lines.append(("  replaces the starting weights: " if cv["replaces_start"] else
                  "  does not replace the starting weights: ") + cv["reason"])
    return "\n".join(lines)
