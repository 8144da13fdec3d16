"""Quality benchmark: validation loss after a fixed wall-time budget, and the loss curve on the way.

Runs ``seqmodel train --data tinyshakespeare --max-time 110`` with the default settings in a fresh
process and reports the validation loss in nats per character, the throughput, a sample and how
loaded the machine was (the 1-minute load average before and after; timings on a shared machine
are pessimistic). References measured on the 2-core development machine: a PyTorch ``nn.LSTM``
(hidden 512, Adam) reaches 1.665 in the same budget, nanoGPT's CPU configuration 1.886 in 124 s.
The target is 1.60 or lower.

``--cell``, ``--scan``, ``--hidden-size``, ``--num-layers``, ``--seq-len``, ``--eval-every``,
``--data`` and ``--max-time`` pass on to ``seqmodel train`` (any other flag after ``--``), so
that two families can be compared. The run's ``metrics.jsonl`` gives the curve: every
evaluation's validation loss against the run's wall-clock seconds (evaluations included, as
they count against the budget), and the training loss of every log interval.
``benchmarks/plot_linear.py quality`` draws the curves of several results in one plot.

Usage::

    SEQMODEL_DATA_DIR=../shared/data python benchmarks/bench_quality.py [--max-time 110]
        [--json result.json] [-- extra seqmodel train flags]
    python benchmarks/bench_quality.py --cell rglru --num-layers 2 --hidden-size 256 \\
        --json rglru.json
    python benchmarks/bench_quality.py --data python-stdlib --seq-len 1024 --eval-every 20 \\
        --max-time 150 --json gru_long.json

Not a test: it takes about two minutes.
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

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
TARGET = 1.60  # tinyshakespeare's target; other data have none
REFERENCES = {"pytorch_lstm_h512_110s": 1.665, "nanogpt_cpu_124s": 1.886}
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


def train_command(args, out: pathlib.Path, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "seqmodel.cli", "train", "--data", args.data,
               "--max-time", str(args.max_time), "--out", str(out), "--json", "--no-progress"]
    for field in PASSED_FLAGS:
        value = getattr(args, field)
        if value is not None:
            command += ["--" + field.replace("_", "-"), str(value)]
    return command + extra


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", type=float, default=110.0)
    parser.add_argument("--data", default="tinyshakespeare",
                        help="seqmodel train --data (default tinyshakespeare)")
    for field, kind in PASSED_FLAGS.items():
        parser.add_argument("--" + field.replace("_", "-"), type=kind, default=None,
                            help="passed to seqmodel train (default: its default)")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    parser.add_argument("--keep", metavar="DIR", help="keep the run folder here (default: a "
                        "temporary folder, removed)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="flags passed on to seqmodel train (after --)")
    args = parser.parse_args(argv)
    extra = [flag for flag in args.extra if flag != "--"]

    environment = dict(os.environ)
    if "SEQMODEL_DATA_DIR" not in environment:
        shared = REPOSITORY.parent / "shared" / "data"
        if shared.is_dir():
            environment["SEQMODEL_DATA_DIR"] = str(shared)
    with tempfile.TemporaryDirectory() as folder:
        out = pathlib.Path(args.keep) if args.keep else pathlib.Path(folder) / "run"
        command = train_command(args, out, extra)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        process = subprocess.run(command, env=environment, capture_output=True, text=True,
                                 check=False)
        wall = time.perf_counter() - started
        load_after = os.getloadavg()[0]
        if process.returncode != 0:
            sys.stderr.write(process.stderr[-3000:])
            print(f"bench_quality: seqmodel train failed with status {process.returncode}",
                  file=sys.stderr)
            return process.returncode
        validation, training = read_curves(out / "metrics.jsonl")
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    shakespeare = args.data == "tinyshakespeare"
    result = {
        "command": " ".join(["seqmodel", *command[3:]]),
        "data": args.data,
        "cell": args.cell,
        "val_loss": summary["val_loss"],
        "bpc": summary.get("bpc"),
        "target": TARGET if shakespeare else None,
        "meets_target": (shakespeare and summary["val_loss"] is not None
                         and summary["val_loss"] <= TARGET),
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "train_seconds": summary["train_seconds"],
        "tokens_per_second": summary["tokens_per_second"],
        "process_wall_seconds": round(wall, 1),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(load_after, 2),
        "cpu_count": os.cpu_count(),
        "validation_curve": validation,
        "training_curve": training,
        "references": REFERENCES if shakespeare else None,
        "sample": summary.get("sample", ""),
    }
    references = (f" (target {TARGET}; PyTorch LSTM h512 "
                  f"{REFERENCES['pytorch_lstm_h512_110s']})" if shakespeare else "")
    print(f"{args.data}, --max-time {args.max_time:g}: val loss {result['val_loss']:.4f} "
          f"nats/char{references} after {result['steps']} steps, {result['tokens']:,} chars, "
          f"{result['tokens_per_second']:,.0f} chars/s; load average {load_before:.1f} -> "
          f"{load_after:.1f} on {os.cpu_count()} cores")
    print("validation loss by wall-clock seconds: " + ", ".join(
        f"{point['seconds']:.0f} s {point['val_loss']:.3f}" for point in validation))
    print("--- sample ---")
    print(result["sample"])
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
