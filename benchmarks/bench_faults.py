"""Runs killed at random moments, each continued to its end: are they the uninterrupted run?

For each of ``--runs`` runs, ``seqmodel train`` starts in a fresh process and is sent SIGKILL or
SIGTERM (chosen at random) after a random delay, up to ``--kills`` times; after each kill the
same command starts again, with ``--resume`` when :func:`seqmodel.training.checkpoint.inspect_run` says the
folder holds a run (the rule the command itself applies), until the run ends normally. Its final
parameters are then compared with those of one uninterrupted run of the same command.

Counts printed (and written with ``--json``):

- ``kills``: signals that hit a running process (``sigkill``, ``sigterm``); ``sigterm_saved``:
  SIGTERM ends with exit status 143 (saved, then stopped);
- ``runs``: runs started; ``identical``: finished with parameters bit for bit equal to the
  uninterrupted run's; ``different``: finished with other parameters; ``lost``: could not be
  continued (a command failed: its last line is shown).

Run::

    python benchmarks/bench_faults.py --runs 2                    # a quick check
    python benchmarks/bench_faults.py --runs 20 --devices 1 --json faults-1.json
    python benchmarks/bench_faults.py --runs 20 --devices 2 --json faults-2.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
# Exit statuses of a process that a signal ended or stopped (Popen reports -N for "killed by N").
SIGNALLED = {-signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}


def train_command(options, out: pathlib.Path, *, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "seqmodel", "train", "--data", options.data,
               "--hidden-size", str(options.hidden_size), "--batch-size", str(options.batch_size),
               "--seq-len", str(options.seq_len), "--steps", str(options.steps),
               "--eval-every", str(options.eval_every), "--devices", str(options.devices),
               "--seed", str(options.seed), "--no-progress", "--out", str(out)]
    return command + (["--resume"] if resume else [])


def environment() -> dict:
    values = dict(os.environ)
    values["PYTHONPATH"] = os.pathsep.join(
        [str(CHECKOUT)] + [p for p in values.get("PYTHONPATH", "").split(os.pathsep) if p])
    values.pop("XLA_FLAGS", None)
    return values


def final_parameters(folder: pathlib.Path, steps: int):
    import jax
    from flax import nnx

    from seqmodel.training.checkpoint import load_model

    model, metadata = load_model(folder, prefer="latest")
    if metadata["step"] != steps:
        return None
    return [jax.device_get(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]


def identical(first, second) -> bool:
    import numpy as np

    return first is not None and second is not None and len(first) == len(second) and all(
        np.array_equal(a, b) for a, b in zip(first, second))


def start(options, out: pathlib.Path) -> subprocess.Popen:
    from seqmodel.training.checkpoint import inspect_run

    return subprocess.Popen(train_command(options, out, resume=inspect_run(out).holds_run),
                            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def one_run(options, out: pathlib.Path, wall: float, rng: random.Random, counts: dict) -> str:
    """Kill and continue one run to its end; returns "identical", "different" or "lost: ..."."""
    kills = 0
    while True:
        process = start(options, out)
        if kills < options.kills:
            try:
                process.wait(timeout=rng.uniform(0.2, 1.1 * wall))
            except subprocess.TimeoutExpired:
                kind = rng.choice([signal.SIGKILL, signal.SIGTERM])
                process.send_signal(kind)
                kills += 1
                counts["kills"] += 1
                counts["sigkill" if kind == signal.SIGKILL else "sigterm"] += 1
                _, stderr = process.communicate(timeout=600)
                if kind == signal.SIGTERM and process.returncode == 128 + signal.SIGTERM:
                    counts["sigterm_saved"] += 1
                if process.returncode in SIGNALLED or process.returncode == 0:
                    if process.returncode == 0:
                        return "finished"  # the signal came as the run ended
                    continue
                return f"lost: exit {process.returncode}: {last_line(stderr)}"
        _, stderr = process.communicate(timeout=3600)
        if process.returncode == 0:
            return "finished"
        return f"lost: exit {process.returncode}: {last_line(stderr)}"


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--kills", type=int, default=3, help="signals per run at most")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--data", default="sine")
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="of the runs; the kills draw from it too")
    parser.add_argument("--folder", help="keep the run folders here (default: a temporary one)")
    parser.add_argument("--json", metavar="PATH", help="also write the counts here")
    options = parser.parse_args()

    rng = random.Random(options.seed)
    counts = {"kills": 0, "sigkill": 0, "sigterm": 0, "sigterm_saved": 0, "runs": 0,
              "identical": 0, "different": 0, "lost": 0}
    with tempfile.TemporaryDirectory() as temporary:
        root = pathlib.Path(options.folder or temporary)
        root.mkdir(parents=True, exist_ok=True)
        reference = root / "reference"
        started = time.perf_counter()
        result = subprocess.run(train_command(options, reference, resume=False),
                                env=environment(), capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"the uninterrupted run failed: {last_line(result.stderr)}")
        want = final_parameters(reference, options.steps)
        print(f"uninterrupted run: {wall:.1f} s; {options.runs} runs on {options.devices} "
              f"device(s), at most {options.kills} kills each", flush=True)
        failures = []
        for index in range(options.runs):
            counts["runs"] += 1
            outcome = one_run(options, root / f"run-{index}", wall, rng, counts)
            if outcome == "finished":
                outcome = ("identical" if identical(final_parameters(root / f"run-{index}",
                                                                     options.steps), want)
                           else "different")
                counts[outcome] += 1
            else:
                counts["lost"] += 1
                failures.append(f"run {index}: {outcome}")
            print(f"run {index}: {outcome}", flush=True)
    print(" ".join(f"{key}={value}" for key, value in counts.items()))
    for failure in failures:
        print(failure)
    if options.json:
        pathlib.Path(options.json).write_text(json.dumps(
            {**counts, "devices": options.devices, "failures": failures}, indent=1) + "\n")


if __name__ == "__main__":
    main()
