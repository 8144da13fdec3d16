"""Quality benchmark: validation loss on tinyshakespeare after a fixed wall-time budget.

Runs ``seqmodel train --data tinyshakespeare --max-time 110`` with the default settings in a fresh
process and reports the validation loss in nats per character, the throughput, a sample and how
loaded the machine was (the 1-minute load average before and after; timings on a shared machine
are pessimistic). References measured on the 2-core development machine: a PyTorch ``nn.LSTM``
(hidden 512, Adam) reaches 1.665 in the same budget, nanoGPT's CPU configuration 1.886 in 124 s.
The target is 1.60 or lower.

Usage::

    SEQMODEL_DATA_DIR=../shared/data python benchmarks/bench_quality.py [--max-time 110]
        [--json result.json] [-- extra seqmodel train flags]

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
TARGET = 1.60
REFERENCES = {"pytorch_lstm_h512_110s": 1.665, "nanogpt_cpu_124s": 1.886}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", type=float, default=110.0)
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")
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
        command = [sys.executable, "-m", "seqmodel.cli", "train", "--data", "tinyshakespeare",
                   "--max-time", str(args.max_time), "--out", str(pathlib.Path(folder) / "run"),
                   "--json", "--no-progress", *extra]
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        process = subprocess.run(command, env=environment, capture_output=True, text=True)
        wall = time.perf_counter() - started
        load_after = os.getloadavg()[0]
    if process.returncode != 0:
        sys.stderr.write(process.stderr[-3000:])
        print(f"bench_quality: seqmodel train failed with status {process.returncode}",
              file=sys.stderr)
        return process.returncode
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    result = {
        "command": " ".join(["seqmodel", *command[3:]]),
        "val_loss": summary["val_loss"],
        "bpc": summary.get("bpc"),
        "target": TARGET,
        "meets_target": summary["val_loss"] is not None and summary["val_loss"] <= TARGET,
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "train_seconds": summary["train_seconds"],
        "tokens_per_second": summary["tokens_per_second"],
        "process_wall_seconds": round(wall, 1),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(load_after, 2),
        "cpu_count": os.cpu_count(),
        "references": REFERENCES,
        "sample": summary.get("sample", ""),
    }
    print(f"tinyshakespeare, --max-time {args.max_time:g}: val loss {result['val_loss']:.4f} "
          f"nats/char (target {TARGET}; PyTorch LSTM h512 {REFERENCES['pytorch_lstm_h512_110s']}) "
          f"after {result['steps']} steps, {result['tokens']:,} chars, "
          f"{result['tokens_per_second']:,.0f} chars/s; load average {load_before:.1f} -> "
          f"{load_after:.1f} on {os.cpu_count()} cores")
    print("--- sample ---")
    print(result["sample"])
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
