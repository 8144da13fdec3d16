"""One path for real values: a one-column CSV (no time column) forecasts as well as the same
series with its time column, both with the defaults, as a user runs them from the command line.

For each dataset (``co2``: weekly, the case a plain CSV used to fail on; ``airpassengers``:
monthly) two files are written: ``plain.csv`` (one column of values, no dates) and
``dated.csv`` (``date,value``). For each seed, in fresh processes::

    seqmodel train --data FILE [--time-column date] --holdout H*W --seed S --devices 1
    seqmodel eval --checkpoint RUN --backtest W --horizon H --baselines persistence,seasonal_naive --json

The backtest scores the ``W`` held-out windows of ``H`` steps (never seen in training or
validation). Reported per dataset and arm: the season and lags the defaults chose, MASE and
the MAE relative to persistence (mean and spread over seeds), and the seconds each run took.
Without a time column the season comes from the autocorrelation of the training part
(``seqmodel.data.calendar.detect_season``), with one from the frequency; the other defaults
(lags, mean scaling, context, head) follow the same rule.

Run::

    python benchmarks/bench_plain_path.py --json benchmarks/results/plain_path_cpu_2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

if not __package__:  # run by path: the package needs its parent on sys.path
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.environment import provenance  # noqa: E402
from benchmarks.forecast_datasets import load_task  # noqa: E402


def seqmodel(*arguments: str, cwd: pathlib.Path) -> tuple[str, str]:
    """Run ``python -m seqmodel ARGUMENTS`` in ``cwd``; its stdout and stderr (raises on
    failure)."""
    completed = subprocess.run([sys.executable, "-m", "seqmodel", *arguments], cwd=cwd,
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"seqmodel {' '.join(arguments)} failed:\n{completed.stderr[-2000:]}")
    return completed.stdout, completed.stderr


def write_files(task, folder: pathlib.Path) -> None:
    (_, times, values), = task.series
    (folder / "plain.csv").write_text("value\n" + "".join(f"{v:.6g}\n" for v in values))
    (folder / "dated.csv").write_text("date,value\n" + "".join(
        f"{np.datetime64(t, 'D')},{v:.6g}\n" for t, v in zip(times, values)))


def run_arm(task, arm: str, seed: int, folder: pathlib.Path, steps: int | None) -> dict:
    holdout = task.horizon * task.windows
    train = ["train", "--data", f"{arm}.csv", "--holdout", str(holdout), "--seed", str(seed),
             "--devices", "1", "--no-progress", "--out", f"run-{arm}-{seed}", "--json"]
    if arm == "dated":
        train += ["--time-column", "date"]
    if steps:
        train += ["--steps", str(steps)]
    started = time.perf_counter()
    printed, said = seqmodel(*train, cwd=folder)
    trained = time.perf_counter() - started
    first_line = next(line for line in (said + printed).splitlines() if "training" in line)
    report = json.loads(seqmodel("eval", "--checkpoint", f"run-{arm}-{seed}", "--backtest",
                                 str(task.windows), "--horizon", str(task.horizon), "--baselines",
                                 "persistence,seasonal_naive", "--seed", str(seed), "--json",
                                 cwd=folder)[0].strip().splitlines()[-1])
    methods = report["methods"]
    ours, persistence = methods["seqmodel"], methods["persistence"]
    return {"seed": seed, "train_seconds": round(trained, 1), "described": first_line,
            "mase": ours["mase"]["overall"], "mae": ours["mae"]["overall"],
            "mae_vs_persistence": ours["mae"]["overall"] / persistence["mae"]["overall"],
            "persistence_mase": persistence["mase"]["overall"],
            "seasonal_naive_mase": methods["seasonal_naive"]["mase"]["overall"],
            "coverage_80": ours["coverage_80"]["overall"], "season": report.get("season")}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in ("mase", "mae_vs_persistence", "coverage_80"):
        values = [run[key] for run in runs]
        out[key] = {"mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="co2,airpassengers")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: seqmodel train's series default)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    report = {**provenance("benchmarks/bench_plain_path.py", argv), "datasets": []}
    report["load_average_start"] = os.getloadavg()
    for name in args.datasets.split(","):
        task = load_task(name)
        entry = {"dataset": name, "horizon": task.horizon, "windows": task.windows,
                 "steps": task.lengths[0], "arms": {}}
        with tempfile.TemporaryDirectory() as directory:
            folder = pathlib.Path(directory)
            write_files(task, folder)
            for arm in ("plain", "dated"):
                runs = []
                for seed in seeds:
                    runs.append(run_arm(task, arm, seed, folder, args.steps))
                    print(json.dumps({"dataset": name, "arm": arm, **runs[-1]}), flush=True)
                entry["arms"][arm] = {"runs": runs, **summarise(runs)}
        report["datasets"].append(entry)
        for arm, result in entry["arms"].items():
            print(f"{name:>14} {arm:>6}: MASE {result['mase']['mean']:.3f} "
                  f"± {result['mase']['std']:.3f}, MAE / persistence "
                  f"{result['mae_vs_persistence']['mean']:.2f}, 80% coverage "
                  f"{result['coverage_80']['mean']:.2f}", flush=True)
    report["load_average_end"] = os.getloadavg()
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
