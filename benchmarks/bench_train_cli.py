"""``seqmodel train`` measured from outside against the speed suite's figure for the same step.

For each (cell, hidden) the speed suite's ``seqmodel`` worker (the library's default: the split
chosen at start-up, ``TrainConfig.steps_per_call`` steps per call; :mod:`benchmarks.bench_speed`)
is timed, then ``seqmodel train`` runs on the same shapes (tinyshakespeare, whose vocabulary is
the suite's 65; batch 32, sequence 128, embedding 64) for enough steps to train about
``--seconds`` seconds, in a fresh process timed from its start to its exit; then the worker is
timed again. Reported per row:

- ``bench_tokens_per_second``: the speed suite's figure (median of the repetitions before and
  after the command, compile excluded);
- ``outside_tokens_per_second``: the command's tokens over its whole wall time (Python start-up,
  data, the split's measurement, compile, training, final evaluation, checkpoint and sample);
- ``train_tokens_per_second``: what the command itself reports (its tokens over the run's
  training seconds) and ``step_tokens_per_second`` (its steady step rate, the figure the suite
  measures);
- the fixed costs that separate the outside figure from the step rate (``fixed_seconds``: wall
  time minus the steps' time at the step rate), and the command's own split and its reason.

Run::

    python benchmarks/bench_train_cli.py --json benchmarks/results/train_cli_cpu_2core.json
    python benchmarks/bench_train_cli.py --cells lstm --hidden 128 --seconds 10   # quick look
    python benchmarks/bench_train_cli.py --quickstart --json benchmarks/results/quickstart_cpu_2core.json
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

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import candidates, protocol  # noqa: E402
from benchmarks.environment import finish, load_average, provenance  # noqa: E402
from benchmarks.workload import BATCH, EMBED, SEQUENCE  # noqa: E402

TOKENS_PER_STEP = BATCH * SEQUENCE


def bench_seconds_per_step(worker: protocol.Worker, repeats: int) -> list[float]:
    first = worker.ask("run 1")
    if "seconds" not in first:
        raise RuntimeError(first.get("error", "no answer"))
    steps = max(1, round(1.0 / max(first["seconds"], 1e-4)))
    times = []
    for _ in range(repeats):
        answer = worker.ask(f"run {steps}")
        times.append(answer["seconds"] / steps)
    return times


def train_command(cell: str, hidden: int, steps: int, out: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "seqmodel", "train", "--data", "tinyshakespeare",
            "--cell", cell, "--hidden-size", str(hidden), "--embed-size", str(EMBED),
            "--batch-size", str(BATCH), "--seq-len", str(SEQUENCE), "--steps", str(steps),
            "--eval-every", str(steps), "--no-progress", "--json", "--out", str(out)]


def run_command(cell: str, hidden: int, steps: int) -> dict:
    environment = protocol.environment()
    if "SEQMODEL_DATA_DIR" not in environment:
        shared = protocol.CHECKOUT.parent / "shared" / "data"
        if shared.is_dir():
            environment["SEQMODEL_DATA_DIR"] = str(shared)
    with tempfile.TemporaryDirectory() as folder:
        command = train_command(cell, hidden, steps, pathlib.Path(folder) / "run")
        started = time.perf_counter()
        process = subprocess.run(command, env=environment, capture_output=True, text=True,
                                 check=False)
        wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"seqmodel train failed ({process.returncode}): "
                           f"{process.stderr.strip()[-500:]}")
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    summary.pop("sample", None)
    return {"command": " ".join(["seqmodel", *command[3:-2]]), "wall_seconds": wall,
            "summary": summary, "first_line": process.stderr.strip().splitlines()[0]}


def measure(cell: str, hidden: int, *, seconds: float, repeats: int, log) -> dict:
    (candidate,) = candidates.default_candidates(("seqmodel",))
    worker = candidates.start(candidate, cell, hidden)
    if "error" in worker.hello:
        raise RuntimeError(worker.hello["error"])
    try:
        start = load_average()
        before = bench_seconds_per_step(worker, repeats)
        steps = max(20, round(seconds / statistics.median(before) / 20) * 20)
        log(f"  {cell} h{hidden}: suite {TOKENS_PER_STEP / statistics.median(before):,.0f} "
            f"tokens/s; seqmodel train --steps {steps}")
        command = run_command(cell, hidden, steps)
        after = bench_seconds_per_step(worker, repeats)
        end = load_average()
    finally:
        worker.close()
    bench = statistics.median(before + after)
    summary = command["summary"]
    tokens = summary["tokens"]
    step_rate = summary.get("step_tokens_per_second") or summary["tokens_per_second"]
    return {
        "cell": cell, "hidden": hidden, "steps": steps, "tokens": tokens,
        "bench_tokens_per_second": TOKENS_PER_STEP / bench,
        "bench_spread": (max(before + after) - min(before + after)) / bench,
        "bench_devices": worker.hello.get("devices"),
        "bench_device_choice": (worker.hello.get("device_choice") or {}).get("reason"),
        "outside_tokens_per_second": tokens / command["wall_seconds"],
        "train_tokens_per_second": summary["tokens_per_second"],
        "step_tokens_per_second": step_rate,
        "step_to_bench": step_rate * bench / TOKENS_PER_STEP,
        "outside_to_bench": tokens / command["wall_seconds"] * bench / TOKENS_PER_STEP,
        "wall_seconds": command["wall_seconds"],
        "fixed_seconds": command["wall_seconds"] - tokens / step_rate,
        "command_devices": summary.get("devices"),
        "command_device_choice": summary.get("device_choice"),
        "command": command, "load_average": {"start": start, "end": end},
    }


def quickstart(argv) -> dict:
    """``seqmodel train`` with no arguments (the README's quick start), in a fresh folder: its
    printed lines and its summary."""
    environment = protocol.environment()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        process = subprocess.run([sys.executable, "-m", "seqmodel", "train", "--json"],
                                 env=environment, capture_output=True, text=True, check=False,
                                 cwd=folder)
        wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"seqmodel train failed ({process.returncode}): "
                           f"{process.stderr.strip()[-500:]}")
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    # --json moved the human-readable lines to stderr; library warnings start with "seqmodel ".
    output = [line for line in process.stderr.rstrip().splitlines()
              if not line.startswith(("WARNING", "seqmodel train: "))]
    return {"run_command": "seqmodel train", "output": output, "summary": summary,
            "wall_seconds": wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", action="store_true",
                        help="run `seqmodel train` with no arguments instead (the README's "
                             "quick start) and record what it prints")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--hidden", default="128,512")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="training seconds of each command at the suite's speed")
    parser.add_argument("--repeats", type=int, default=3, help="suite repetitions before and after")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    report = provenance("benchmarks/bench_train_cli.py", argv)
    if args.quickstart:
        report.update(quickstart(argv))
        print("\n".join(report["output"]))
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(finish(report), indent=1))
            print(f"wrote {args.json}")
        return 0
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    for cell in args.cells.split(","):
        for hidden in (int(h) for h in args.hidden.split(",")):
            row = measure(cell, hidden, seconds=args.seconds, repeats=args.repeats, log=log)
            rows.append(row)
            print(f"{cell} h{hidden}: suite {row['bench_tokens_per_second']:,.0f} tokens/s "
                  f"(spread {row['bench_spread']:.2f}, {row['bench_devices']} device(s)); "
                  f"seqmodel train: step rate {row['step_tokens_per_second']:,.0f} "
                  f"({row['step_to_bench']:.2f}x the suite), reported "
                  f"{row['train_tokens_per_second']:,.0f}, from outside "
                  f"{row['outside_tokens_per_second']:,.0f} ({row['outside_to_bench']:.2f}x; "
                  f"{row['fixed_seconds']:.1f} s of fixed costs in {row['wall_seconds']:.1f} s); "
                  f"{row['command_devices']} device(s): {row['command_device_choice']}",
                  flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(finish({**report, "rows": rows}), indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
