"""Coverage of seqmodel's central intervals at many levels, raw and calibrated, on held-out windows.

Users ask for more than the 80% and 95% intervals the forecasting benchmark scores (statsforecast's
examples use 90%). Each dataset and seed trains one model as ``bench_forecast_real.py`` does (the
data before the first held-out window, the library's defaults, calibrated by
:func:`seqmodel.forecasting.conformal.calibrate`), samples every held-out window once and reports,
per level, the coverage of the model's own interval and of the calibrated one (mean over seeds),
and over the suite the mean distance from the nominal level.

    python benchmarks/bench_interval_levels.py --suite tuning --seeds 0,1,2 \\
        --json benchmarks/results/forecast_tuning/interval_levels.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

if not __package__:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.bench_forecast_real import SUITES, frame_of, held_out_windows, load  # noqa: E402
from benchmarks.environment import installed_versions  # noqa: E402
from seqmodel.forecasting.conformal import window_paths  # noqa: E402

LEVELS = (0.5, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)


def coverage_by_level(task, seed: int, num_samples: int) -> dict:
    """``{level: (raw coverage, calibrated coverage)}`` of one model over ``task``'s held-out
    windows."""
    import seqmodel.forecasting as smf

    forecaster = smf.fit(frame_of(task, drop_last=task.windows * task.horizon), h=task.horizon,
                         seed=seed, num_samples=num_samples)
    series, chosen = held_out_windows(task, forecaster)
    paths, truth, scale = window_paths(forecaster, series, chosen, horizon=task.horizon,
                                       num_samples=num_samples, key=jax.random.key(seed))
    quantile_levels = sorted({0.5} | {round((1 - level) / 2, 6) for level in LEVELS}
                             | {round((1 + level) / 2, 6) for level in LEVELS})
    raw = np.quantile(paths, quantile_levels, axis=1)  # (Q, n, H, d)
    calibrated = forecaster.calibration.adjust(raw, quantile_levels, scale)
    present = np.isfinite(truth)
    result = {}
    for level in LEVELS:
        low = quantile_levels.index(round((1 - level) / 2, 6))
        high = quantile_levels.index(round((1 + level) / 2, 6))
        result[f"{level:g}"] = [
            float(((truth >= q[low]) & (truth <= q[high]))[present].mean())
            for q in (raw, calibrated)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="tuning")
    parser.add_argument("--datasets", help="comma-separated (default: the suite's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    names = args.datasets.split(",") if args.datasets else list(SUITES[args.suite])
    seeds = [int(seed) for seed in args.seeds.split(",")]
    started = time.perf_counter()
    results = {}
    for name in names:
        task = load(args.suite, name)
        runs = [coverage_by_level(task, seed, args.num_samples) for seed in seeds]
        results[name] = {level: [round(float(np.mean([run[level][arm] for run in runs])), 4)
                                 for arm in (0, 1)] for level in runs[0]}
        print(name, json.dumps(results[name]), flush=True)
    distance = {level: [round(float(np.mean([abs(results[name][f"{level:g}"][arm] - level)
                                              for name in names])), 4) for arm in (0, 1)]
                for level in LEVELS}
    print("mean distance from the nominal level (raw, calibrated):", json.dumps(distance))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({
            "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
            "seconds": round(time.perf_counter() - started, 1), "versions": installed_versions(),
            "suite": args.suite, "seeds": seeds, "num_samples": args.num_samples,
            "coverage_raw_calibrated": results,
            "mean_distance_raw_calibrated": {f"{k:g}": v for k, v in distance.items()}},
            indent=1) + "\n")


if __name__ == "__main__":
    main()
