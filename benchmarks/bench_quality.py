"""Quality benchmark: validation loss after a fixed wall-time budget, and the loss curve on the way.

Runs ``seqmodel train --data tinyshakespeare --max-time 110`` with the default settings in a fresh
process, once per seed, and reports the validation loss in nats per character, the throughput,
a sample and how loaded the machine was (the load averages at the start and the end; timings on
a shared machine are pessimistic). The target is 1.60 or lower.

Arms compare at an equal tuning budget: every arm runs the command's defaults (only the cell,
and the size the cell's own defaults give, change), three seeds each. ``--framework torch`` is the
PyTorch arm: ``nn.LSTM`` h512 with the same data, initial weights, optimizer, schedule, budget
rule and evaluation (:mod:`benchmarks.quality_torch`).

``--cell``, ``--scan``, ``--hidden-size``, ``--num-layers``, ``--seq-len``, ``--eval-every``,
``--data`` and ``--max-time`` pass on to ``seqmodel train`` (any other flag after ``--``). The
run's ``metrics.jsonl`` gives the curve: every evaluation's validation loss against the run's
wall-clock seconds (evaluations included, as they count against the budget), and the training
loss of every log interval. Each run's JSON (``--out-dir DIR``: ``DIR/ARM_seedN.json``) holds
the command, date, commit, versions and load averages.

Usage::

    python benchmarks/bench_quality.py --seeds 0,1,2 --out-dir benchmarks/results/quality
    python benchmarks/bench_quality.py --cell lstm --seeds 0,1,2 --out-dir benchmarks/results/quality
    python benchmarks/bench_quality.py --cell mingru --seeds 0,1,2 --out-dir benchmarks/results/quality
    python benchmarks/bench_quality.py --framework torch --seeds 0,1,2 --out-dir benchmarks/results/quality

Not a test: each run takes about two minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.environment import finish, provenance  # noqa: E402

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
TARGET = 1.60  # tinyshakespeare's target; other data have none
# Flags passed on to `seqmodel train` as given (None: the train command's default).
PASSED_FLAGS = {"cell": str, "scan": str, "hidden_size": int, "num_layers": int, "seq_len": int,
                "eval_every": int}


def read_curves(metrics_path: pathlib.Path) -> tuple[list[dict], list[dict]]:
    """``(validation, training)`` points of a run's ``metrics.jsonl``: ``{"seconds", "step",
    "val_loss"}`` per evaluation and ``{"seconds", "step", "loss"}`` per log interval."""
    validation, training = [], []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        point = {"seconds": record["elapsed"], "step": record["step"]}
        if "val_loss" in record:
            validation.append({**point, "val_loss": record["val_loss"]})
        elif "loss" in record:
            training.append({**point, "loss": record["loss"]})
    return validation, training


def seconds_to_reach(curve: list[dict], loss: float) -> float | None:
    """Wall seconds at which a validation curve first reaches ``loss`` (linear between
    evaluations), or None if it never does.

    Example::

        seconds_to_reach([{"seconds": 10, "val_loss": 2.0}, {"seconds": 20, "val_loss": 1.0}],
                         1.5)   # 15.0
    """
    previous = None
    for point in curve:
        if point["val_loss"] <= loss:
            if previous is None:
                return point["seconds"]
            fraction = (previous["val_loss"] - loss) / (previous["val_loss"] - point["val_loss"])
            return previous["seconds"] + fraction * (point["seconds"] - previous["seconds"])
        previous = point
    return None


def train_command(args, out: pathlib.Path, extra: list[str], seed: int) -> list[str]:
    if args.framework == "torch":
        return [sys.executable, "-m", "benchmarks.quality_torch", "--data", args.data,
                "--max-time", str(args.max_time), "--seed", str(seed), "--out", str(out)]
    command = [sys.executable, "-m", "seqmodel.cli", "train", "--data", args.data,
               "--max-time", str(args.max_time), "--out", str(out), "--json", "--no-progress",
               "--seed", str(seed)]
    for field in PASSED_FLAGS:
        value = getattr(args, field)
        if value is not None:
            command += ["--" + field.replace("_", "-"), str(value)]
    return command + extra


def one_run(args, extra: list[str], seed: int, environment: dict, argv) -> dict:
    """Train one arm with one seed in a fresh process; its result (see the module docstring)."""
    with tempfile.TemporaryDirectory() as folder:
        out = pathlib.Path(args.keep) / f"seed{seed}" if args.keep else pathlib.Path(folder) / "run"
        command = train_command(args, out, extra, seed)
        header = provenance("benchmarks/bench_quality.py", argv)
        started = time.perf_counter()
        process = subprocess.run(command, env=environment, capture_output=True, text=True,
                                 check=False, cwd=REPOSITORY)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            sys.stderr.write(process.stderr[-3000:])
            raise SystemExit(f"bench_quality: the run failed with status {process.returncode}")
        validation, training = read_curves(out / "metrics.jsonl")
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    shakespeare = args.data == "tinyshakespeare"
    return finish({
        **header,
        "run_command": " ".join(["seqmodel", *command[3:]] if args.framework == "seqmodel"
                                else ["python", *command[1:]]),
        "arm": args.arm, "framework": args.framework, "seed": seed,
        "data": args.data,
        "cell": "lstm" if args.framework == "torch" else args.cell,
        "max_time": args.max_time,
        "val_loss": summary["val_loss"],
        "bpc": summary.get("bpc"),
        "target": TARGET if shakespeare else None,
        "meets_target": (shakespeare and summary["val_loss"] is not None
                         and summary["val_loss"] <= TARGET),
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "train_seconds": summary["train_seconds"],
        "tokens_per_second": summary["tokens_per_second"],
        "devices": summary.get("devices"),
        "device_choice": summary.get("device_choice"),
        "threads": summary.get("threads"),
        "process_wall_seconds": round(wall, 1),
        "validation_curve": validation,
        "training_curve": training,
        "sample": summary.get("sample", ""),
    })


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", type=float, default=110.0)
    parser.add_argument("--data", default="tinyshakespeare",
                        help="seqmodel train --data (default tinyshakespeare)")
    for field, kind in PASSED_FLAGS.items():
        parser.add_argument("--" + field.replace("_", "-"), type=kind, default=None,
                            help="passed to seqmodel train (default: its default)")
    parser.add_argument("--framework", choices=("seqmodel", "torch"), default="seqmodel",
                        help="torch: benchmarks/quality_torch.py, nn.LSTM h512 with seqmodel "
                             "train's defaults")
    parser.add_argument("--seeds", default="0", help="comma list of seeds, one run each")
    parser.add_argument("--arm", help="the arm's name in file names and tables (default: the "
                        "cell, or torch-lstm)")
    parser.add_argument("--out-dir", metavar="DIR", help="write DIR/ARM_seedN.json per run")
    parser.add_argument("--json", metavar="PATH", help="write the (last) run's result here")
    parser.add_argument("--keep", metavar="DIR", help="keep the run folders here (default: a "
                        "temporary folder, removed)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="flags passed on to seqmodel train (after --)")
    args = parser.parse_args(argv)
    extra = [flag for flag in args.extra if flag != "--"]
    if args.framework == "torch" and (extra or any(getattr(args, f) is not None
                                                   for f in PASSED_FLAGS)):
        parser.error("--framework torch runs seqmodel train's defaults only (no model flags)")
    args.arm = args.arm or ("torch-lstm" if args.framework == "torch" else args.cell or "gru")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: {args.seeds!r} is not a comma list of integers")

    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPOSITORY)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    if "SEQMODEL_DATA_DIR" not in environment:
        shared = REPOSITORY.parent / "shared" / "data"
        if shared.is_dir():
            environment["SEQMODEL_DATA_DIR"] = str(shared)
    for seed in seeds:
        result = one_run(args, extra, seed, environment, argv)
        print(f"{args.arm} seed {seed}: {args.data}, --max-time {args.max_time:g}: val loss "
              f"{result['val_loss']:.4f} nats/char after {result['steps']} steps, "
              f"{result['tokens']:,} chars, {result['tokens_per_second']:,.0f} chars/s; load "
              f"average {result['load_average']['start'][0]:.1f} -> "
              f"{result['load_average']['end'][0]:.1f} on {os.cpu_count()} cores", flush=True)
        print("validation loss by wall-clock seconds: " + ", ".join(
            f"{point['seconds']:.0f} s {point['val_loss']:.3f}"
            for point in result["validation_curve"]))
        text = json.dumps(result, indent=1) + "\n"
        if args.out_dir:
            folder = pathlib.Path(args.out_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{args.arm}_seed{seed}.json").write_text(text, encoding="utf-8")
        if args.json:
            pathlib.Path(args.json).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
