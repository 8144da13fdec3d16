"""Start-up time of the ``seqmodel`` command: ``--help`` and argument errors, before any work.

Each case runs ``python -m seqmodel ARGS`` in a fresh process ``--repeats`` times (one warm-up
run first, so that the file cache is warm) and prints the median and fastest wall time, the exit
status, and whether the process imported jax, flax or orbax (read from ``-X importtime``). The
target is under 0.3 s for ``seqmodel --help`` and argument errors.

Times hold for this machine and its load only; compare cases and commits run in one sitting.

Run::

    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --repeats 10 --json startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]

CASES = {
    "seqmodel --help": ["--help"],
    "seqmodel (no command)": [],
    "seqmodel trian (unknown command)": ["trian"],
    "seqmodel train --batch-size 0": ["train", "--batch-size", "0"],
    "seqmodel sample (missing --checkpoint)": ["sample"],
    "seqmodel eval (missing --checkpoint)": ["eval"],
    "seqmodel train --help": ["train", "--help"],
}

HEAVY = ("jax", "flax", "orbax")


def run_once(args: list[str]) -> tuple[float, int, set[str]]:
    """(wall seconds, exit status, heavy top-level packages imported) of one fresh process."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(CHECKOUT)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "seqmodel", *args],
                            capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - started
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in result.stderr.splitlines() if line.startswith("import time:")}
    return seconds, result.returncode, imported & set(HEAVY)


def run_plain(args: list[str]) -> float:
    """Wall seconds of one fresh process without -X importtime (which slows imports down)."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(CHECKOUT)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seqmodel", *args], capture_output=True, env=environment)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    options = parser.parse_args()
    results = []
    print(f"{'case':42s} {'median s':>9s} {'best s':>7s} {'exit':>5s}  heavy imports")
    for name, args in CASES.items():
        _, status, heavy = run_once(args)  # warm-up, and what it imports
        times = [run_plain(args) for _ in range(options.repeats)]
        row = {"case": name, "median_seconds": round(statistics.median(times), 3),
               "best_seconds": round(min(times), 3), "exit_status": status,
               "heavy_imports": sorted(heavy)}
        results.append(row)
        print(f"{name:42s} {row['median_seconds']:9.3f} {row['best_seconds']:7.3f} "
              f"{status:5d}  {', '.join(row['heavy_imports']) or '-'}", flush=True)
    if options.json:
        pathlib.Path(options.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
