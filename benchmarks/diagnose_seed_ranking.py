"""Does a free-running score on the validation tail rank seeds as the held-out windows do?

A diagnostic for the seed dependence of one dataset (docs/forecasting.md, "airpassengers depends
on the seed"): for each seed, one model with the defaults trained as ``bench_forecast_real.py``
trains it (the data before the first held-out window), then the MAE of the median of 200
free-running paths on every window whose truth lies in the validation tail of that training part
(what a checkpoint or seed choice could see) and on the held-out windows, and the Spearman rank
correlation of the two over the seeds.

    python benchmarks/diagnose_seed_ranking.py --datasets airpassengers --seeds 0,1,2,3,4,5,6,7,8 \\
        --json benchmarks/results/forecast_airpassengers_9_seeds_validation_rank.json
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
from seqmodel.forecasting.conformal import window_paths  # noqa: E402

NUM_SAMPLES = 200


def median_mae(forecaster, series, chosen, horizon: int, seed: int) -> float:
    """MAE of the median of the free-running paths over the ``chosen`` (series, origin) windows."""
    paths, truth, _ = window_paths(forecaster, series, chosen, horizon=horizon,
                                   num_samples=NUM_SAMPLES, key=jax.random.key(seed))
    return float(np.nanmean(np.abs(np.median(paths, axis=1) - truth)))


def seed_scores(task, seed: int) -> dict:
    import seqmodel.forecasting as smf

    forecaster = smf.fit(frame_of(task, drop_last=task.windows * task.horizon),
                         h=task.horizon, seed=seed)
    dataset = forecaster.frame.dataset
    validation = [(row, origin) for row, (item, split) in enumerate(zip(dataset.series,
                                                                       dataset.splits))
                  for origin in range(split, len(item) - task.horizon + 1)]
    full, held_out = held_out_windows(task, forecaster)
    return {"seed": seed, "validation_windows": len(validation),
            "validation_mae": median_mae(forecaster, dataset.series, validation, task.horizon,
                                         seed),
            "held_out_mae": median_mae(forecaster, full, held_out, task.horizon, seed)}


def main() -> None:
    from scipy.stats import spearmanr

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="benchmark")
    parser.add_argument("--datasets", default="airpassengers")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    started, results = time.perf_counter(), {}
    for name in args.datasets.split(","):
        task = load(args.suite, name)
        rows = [seed_scores(task, int(seed)) for seed in args.seeds.split(",")]
        for row in rows:
            print(name, json.dumps(row), flush=True)
        rank = spearmanr([r["validation_mae"] for r in rows], [r["held_out_mae"] for r in rows])
        results[name] = {"seeds": rows, "spearman": round(float(rank.correlation), 4)}
        print(name, "Spearman rank correlation, validation vs held out:",
              results[name]["spearman"], flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({
            "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
            "seconds": round(time.perf_counter() - started, 1), "suite": args.suite,
            "num_samples": NUM_SAMPLES, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
