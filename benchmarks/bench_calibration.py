"""Conformal calibration variants, scored on the held-out windows of the forecasting suites.

Which calibration makes seqmodel's intervals cover what they say on windows the model never saw?
Each dataset and seed trains one model as ``bench_forecast_real.py`` does (the data before the
first held-out window, the library's defaults), then samples, once:

- the calibration windows :func:`seqmodel.forecasting.conformal.calibrate` uses (rolling
  origins one step apart in the validation tail, extended back into training where it is short);
- the held-out windows of the backtest (``windows`` of ``horizon`` steps);
- the "online" windows: rolling origins whose truth lies in the held-out span, which a forecast
  from a later origin has in its history (cross-validation with ``refit=False`` sees them).

Every variant then only recomputes margins from these scores (no sampling), so all variants are
judged on the same paths:

- ``split``: the library's split conformal, every calibration window alike;
- ``floor``: split, but a margin never narrows the model's interval;
- ``floor-short``: split (narrowing allowed) where every calibration window lies in the
  validation tail, floor where the windows had to reach back into the data the model fitted;
- ``validation``: only the windows whose truth lies in the validation tail;
- ``decay``: weighted conformal (Barber et al. 2023), weights halving every ``half_life`` steps
  of age (from the window's last step to the forecast origin);
- ``online``: the calibration windows plus the online windows before each held-out origin;
- ``online-decay``: both.

Reported per dataset: the coverage of the 80% and 95% intervals (mean over seeds) and their mean
width in window scales, and over the suite how many (dataset, seed) pairs fall inside the target
bands 0.72-0.88 and 0.90-0.98.

    python benchmarks/bench_calibration.py --suite tuning --seeds 0,1 \\
        --json benchmarks/results/forecast_tuning/calibration_variants.json
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import jax
import numpy as np

if not __package__:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.bench_forecast_real import (  # noqa: E402
    HEADS, SUITES, frame_of, held_out_windows, load)
from benchmarks.environment import installed_versions  # noqa: E402
from seqmodel.forecasting.conformal import (  # noqa: E402
    calibration_origins,
    interval_scores,
    window_paths,
)

LEVELS = (0.8, 0.95)
BANDS = {0.8: (0.72, 0.88), 0.95: (0.90, 0.98)}
QUANTILES = (0.025, 0.1, 0.9, 0.975)


def _windows(forecaster, series, chosen, horizon, num_samples, key):
    """``(quantiles (4, n, H, d) at QUANTILES, truth (n, H, d), scale (n, d))`` of ``chosen``
    ``(row, origin)`` windows of the normalised ``series`` (the library's calibration windows'
    own sampling, kept as quantiles: the paths of a long panel would not fit)."""
    paths, truth, scale = window_paths(forecaster, series, chosen, horizon=horizon,
                                       num_samples=num_samples, key=key)
    return np.quantile(paths, QUANTILES, axis=1), truth, scale


def scores_of(quantiles, truth, scale, level):
    """``(n, H, d)`` conformal scores of the ``level`` interval (negative inside)."""
    low, high = (quantiles[0], quantiles[3]) if level == 0.95 else (quantiles[1], quantiles[2])
    return interval_scores(low, high, truth, scale)


def widths_of(quantiles, scale, level):
    low, high = (quantiles[0], quantiles[3]) if level == 0.95 else (quantiles[1], quantiles[2])
    return (high - low) / scale[:, None, :]


def sample_dataset(task, seed: int, num_samples: int) -> dict:
    """One model of ``seed`` and the scores of its calibration, held-out and online windows."""
    import seqmodel.forecasting as smf

    train = frame_of(task, drop_last=task.windows * task.horizon)
    started = time.perf_counter()
    forecaster = smf.fit(train, h=task.horizon, heads=HEADS, seed=seed, calibrate=False,
                         num_samples=num_samples)
    seconds = time.perf_counter() - started
    dataset = forecaster.frame.dataset
    horizon = task.horizon
    first = max(forecaster.preparation.spec.max_lag, 2)
    train_lengths = [len(item) for item in dataset.series]
    chosen = calibration_origins(train_lengths, dataset.splits, horizon=horizon, first=first)
    full, held = held_out_windows(task, forecaster)
    key = jax.random.key(seed + 1)
    calibration = _windows(forecaster, dataset.series, chosen, horizon, 100, key)
    test = _windows(forecaster, full, held, horizon, num_samples, jax.random.fold_in(key, 1))
    # Online windows: their truth ends inside the held-out span, before the last origin.
    online_chosen = [(row, origin) for row, item in enumerate(full)
                     for origin in range(train_lengths[row] - horizon + 1,
                                         len(item) - 2 * horizon + 1)]
    online = (_windows(forecaster, full, online_chosen, horizon, 100, jax.random.fold_in(key, 2))
              if online_chosen else None)
    return {"seconds": seconds, "steps": forecaster.frame.train_steps,
            "calibration": (chosen, calibration), "test": (held, test),
            "online": (online_chosen, online), "splits": list(dataset.splits),
            "train_lengths": train_lengths}


def conformal_margin(scores: np.ndarray, weights: np.ndarray, level: float) -> float:
    """The weighted conformal quantile (Barber et al. 2023): the smallest score whose weighted
    CDF, with the test point's weight 1 on +inf, reaches ``level``; unweighted: the
    ``ceil((n + 1) level) / n`` quantile."""
    order = np.argsort(scores)
    sorted_scores, sorted_weights = scores[order], weights[order]
    total = sorted_weights.sum() + 1.0
    cumulative = np.cumsum(sorted_weights) / total
    index = np.searchsorted(cumulative, level - 1e-12)
    return float(sorted_scores[index]) if index < len(sorted_scores) else float(
        sorted_scores[-1])


def evaluate(sampled: dict, task, variant: str, half_life: float) -> dict:
    """Coverage and width of the held-out intervals under ``variant``, per level."""
    chosen, calibration = sampled["calibration"]
    held, test = sampled["test"]
    online_chosen, online = sampled["online"]
    horizon = task.horizon
    splits = np.array(sampled["splits"])
    all_validation = all(origin >= splits[row] for row, origin in chosen)
    results = {}
    for level in LEVELS:
        cal_scores = scores_of(*calibration, level)  # (n, H, d)
        test_scores = scores_of(*test, level)
        test_widths = widths_of(test[0], test[2], level)
        online_scores = scores_of(*online, level) if online is not None else None
        covered, widths = [], []
        for index, (row, origin) in enumerate(held):
            pool_scores, pool_ends, pool_rows = [cal_scores], [
                np.array([o + horizon for _, o in chosen])], [np.array([r for r, _ in chosen])]
            if variant.startswith("online") and online is not None:
                ends = np.array([o + horizon for _, o in online_chosen])
                keep = ends <= origin
                pool_scores.append(online_scores[keep])
                pool_ends.append(ends[keep])
                pool_rows.append(np.array([r for r, _ in online_chosen])[keep])
            pool = np.concatenate(pool_scores)
            ends = np.concatenate(pool_ends)
            rows = np.concatenate(pool_rows)
            if variant == "validation":
                split = np.array(sampled["splits"])[rows]
                starts = ends - horizon
                in_tail = starts >= split
                if in_tail.sum() >= 10:
                    pool, ends, rows = pool[in_tail], ends[in_tail], rows[in_tail]
            # Age: steps from a window's end to this origin, per series (a panel's series end
            # together, so the age of the same origin is the same in every series).
            age = np.maximum(origin - ends, 0).astype(np.float64)
            weights = (0.5 ** (age / half_life) if "decay" in variant else np.ones(len(pool)))
            for step in range(horizon):
                column = pool[:, step].reshape(-1)
                column_weights = np.repeat(weights, pool.shape[2])
                present = np.isfinite(column)
                margin = conformal_margin(column[present], column_weights[present], level)
                if variant == "floor" or (variant == "floor-short" and not all_validation):
                    margin = max(margin, 0.0)
                truth_scores = test_scores[index, step]
                ok = np.isfinite(truth_scores)
                covered.extend((truth_scores[ok] <= margin).tolist())
                widths.extend((test_widths[index, step][ok] + 2 * margin).tolist())
        results[f"{level:g}"] = {"coverage": float(np.mean(covered)),
                                 "width": float(np.mean(widths))}
    return results


VARIANTS = ("raw", "split", "floor", "floor-short", "validation", "decay", "online", "online-decay")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="tuning")
    parser.add_argument("--datasets", help="comma-separated (default: the suite's)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--half-lives", default="1,2,4",
                        help="decay half-lives in horizons (comma-separated)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    names = [n.strip() for n in (args.datasets or ",".join(suite)).split(",") if n.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    half_lives = [float(h) for h in args.half_lives.split(",")]
    started_all = time.perf_counter()
    results = {}
    for name in names:
        task = load(args.suite, name)
        runs = []
        for seed in seeds:
            sampled = sample_dataset(task, seed, args.num_samples)
            variants = {}
            for variant in VARIANTS:
                if variant == "raw":
                    test = sampled["test"][1]
                    variants["raw"] = {}
                    for level in LEVELS:
                        scores = scores_of(*test, level)
                        variants["raw"][f"{level:g}"] = {
                            "coverage": float(np.mean(scores[np.isfinite(scores)] <= 0)),
                            "width": float(np.nanmean(widths_of(test[0], test[2], level)))}
                    continue
                for half_life in (half_lives if "decay" in variant else [math.inf]):
                    label = variant if math.isinf(half_life) else f"{variant}-{half_life:g}h"
                    variants[label] = evaluate(sampled, task, variant,
                                               half_life * task.horizon)
            runs.append({"seed": seed, "seconds": round(sampled["seconds"], 1),
                         "steps": sampled["steps"],
                         "calibration_windows": len(sampled["calibration"][0]),
                         "calibration_in_validation": bool(all(
                             origin >= sampled["splits"][row]
                             for row, origin in sampled["calibration"][0])),
                         "online_windows": len(sampled["online"][0]), "variants": variants})
            print(name, seed, json.dumps({k: (round(v["0.8"]["coverage"], 3),
                                              round(v["0.95"]["coverage"], 3))
                                          for k, v in variants.items()}), flush=True)
        results[name] = runs
        if args.json:
            write(args, argv, results, time.perf_counter() - started_all)
    summary = summarise(results)
    for label, line in summary.items():
        print(f"{label:22s} {line}")
    if args.json:
        write(args, argv, results, time.perf_counter() - started_all)
    return 0


def summarise(results: dict) -> dict:
    """Per variant: (dataset, seed) pairs inside the 80% and 95% bands, mean |coverage -
    nominal|, and the mean width relative to split's."""
    labels = list(next(iter(results.values()))[0]["variants"])
    summary = {}
    for label in labels:
        inside = {level: 0 for level in LEVELS}
        error = {level: [] for level in LEVELS}
        ratio = {level: [] for level in LEVELS}
        count = 0
        for runs in results.values():
            for run in runs:
                count += 1
                for level in LEVELS:
                    value = run["variants"][label][f"{level:g}"]
                    low, high = BANDS[level]
                    inside[level] += low <= value["coverage"] <= high
                    error[level].append(abs(value["coverage"] - level))
                    ratio[level].append(value["width"]
                                        / run["variants"]["split"][f"{level:g}"]["width"])
        summary[label] = {
            **{f"inside_{level:g}": f"{inside[level]}/{count}" for level in LEVELS},
            **{f"abs_error_{level:g}": round(float(np.mean(error[level])), 3) for level in LEVELS},
            **{f"width_vs_split_{level:g}": round(float(np.exp(np.mean(np.log(ratio[level])))), 3)
               for level in LEVELS}}
    return summary


def write(args, argv, results, seconds):
    payload = {"command": "python benchmarks/bench_calibration.py " + " ".join(
        argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "seconds": round(seconds, 1),
        "versions": installed_versions("jax", "flax", "numpy"), "results": results,
        "summary": summarise(results)}
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)


if __name__ == "__main__":
    raise SystemExit(main())
