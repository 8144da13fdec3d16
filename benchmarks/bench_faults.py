"""Runs killed at random moments and inside their saves, each continued to its end: are they the
uninterrupted run, and did each restart continue from the newest complete step?

For each of ``--runs`` runs, ``seqmodel train`` starts in a fresh process and is signalled up to
``--kills`` times; after each kill the same command starts again, with ``--resume`` when
:func:`seqmodel.training.checkpoint.inspect_run` says the folder holds a run (the rule the command
itself applies), until the run ends normally. Its final parameters are then compared with those
of one uninterrupted run of the same command.

A kill lands either after a random delay (uniform up to 1.1x the uninterrupted run's wall time;
SIGKILL or SIGTERM at random) or, for a ``--save-kills`` fraction of them, inside a save: the
parent watches the checkpoint folder and sends SIGKILL as soon as orbax's temporary step folder
appears. Each kill records its phase, observed from outside at the moment it was sent:

- ``start-up``: before the command printed its ``seqmodel: training`` / ``resuming`` line
  (imports, data, model);
- ``compile``: after that line, before the process logged a train step past the step it resumed
  from (restore, compile, the first compiled call);
- ``training``: train steps running;
- ``saving``: a step being written (a ``<step>.orbax-checkpoint-tmp*`` folder exists);
  ``save_interrupted`` says whether the folder was still partial once the process had died;
- ``finishing``: after the ``done:`` line (the sample).

Every restart records the newest complete step on disk before it started (``expected_step``)
and the step it resumed from (``resumed_from``, from its ``resuming ... from step N`` line, or the
fallback warning's step; 0 when it started anew). A restart that resumed from an older step than
the newest complete one without a warning naming an unreadable step, in particular one that
started again from 0 while a complete step was saved, fails the run: a run that silently
restarts from 0 also ends bit for bit equal (training is deterministic), so the final comparison
alone would pass it.

The JSON (``--json``) holds the command, versions, date, load averages, every run with every
process (kill time, phase, signal, exit status, expected and resumed step) and the counts
(kills by phase and signal, runs identical / different / lost / failed). The exit status is 1
when any run failed.

Run::

    python benchmarks/bench_faults.py --runs 2                    # a quick check
    python benchmarks/bench_faults.py --runs 12 --devices 1 --json benchmarks/results/faults_cpu_1dev.json
    python benchmarks/bench_faults.py --runs 12 --devices 2 --json benchmarks/results/faults_cpu_2dev.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.environment import finish, provenance  # noqa: E402
from benchmarks.protocol import environment  # noqa: E402

# Exit statuses of a process that a signal ended or stopped (Popen reports -N for "killed by N").
SIGNALLED = {-signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}
PHASES = ("start-up", "compile", "training", "saving", "finishing")
TEMPORARY_MARK = ".orbax-checkpoint-tmp"
RESUMING = re.compile(r"^seqmodel: resuming \S+ \S+ from step (\d+) ")
FALLBACK = re.compile(r"resuming from step (\d+): .* cannot be read")
STARTED_ANEW = re.compile(r"^seqmodel: training |starting it from step 0")
POLL_SECONDS = 0.001


def train_command(options, out: pathlib.Path, *, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "seqmodel", "train", "--data", options.data,
               "--hidden-size", str(options.hidden_size), "--batch-size", str(options.batch_size),
               "--seq-len", str(options.seq_len), "--steps", str(options.steps),
               "--eval-every", str(options.eval_every), "--devices", str(options.devices),
               "--seed", str(options.seed), "--no-progress", "--out", str(out)]
    return command + (["--resume"] if resume else [])


def child_environment() -> dict:
    values = environment()
    values.pop("XLA_FLAGS", None)
    return values


class TrainProcess:
    """One ``seqmodel train`` process, its output lines read as they come (with their time)."""

    def __init__(self, options, out: pathlib.Path):
        from seqmodel.training.checkpoint import inspect_run

        run = inspect_run(out)
        self.out = out
        # The newest complete step before it starts: where a restart must continue from.
        self.expected_step = run.steps[0].step if run.steps else 0
        # Partial steps a killed save left: the process removes them, they are no save of its.
        self.stale = partial_steps(out)
        self.started = time.perf_counter()
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            train_command(options, out, resume=run.holds_run), env=child_environment(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.readers = [threading.Thread(target=self._read, args=(stream,), daemon=True)
                        for stream in (self.process.stdout, self.process.stderr)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append((time.perf_counter(), line.rstrip("\n")))

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def line_time(self, pattern: str) -> float | None:
        for moment, line in list(self.lines):
            if line.startswith(pattern):
                return moment
        return None

    def saving(self) -> bool:
        """Whether this process is writing a step (a temporary step folder of its own)."""
        return bool(partial_steps(self.out) - self.stale)

    def phase(self) -> str:
        """The phase of the run at this moment (see the module docstring)."""
        if self.saving():
            return "saving"
        if self.line_time("done:") is not None:
            return "finishing"
        announced = self.line_time("seqmodel: ")
        if announced is None:
            return "start-up"
        metrics = self.out / "metrics.jsonl"
        try:
            fresh = metrics.stat().st_mtime > time.time() - (time.perf_counter() - announced)
            last = json.loads(metrics.read_text().strip().splitlines()[-1]) if fresh else {}
        except (OSError, ValueError, IndexError):
            last = {}
        # Any record past the step it resumed from (a train interval or an evaluation).
        return "training" if last.get("step", 0) > self.expected_step else "compile"

    def finish(self, timeout: float) -> int:
        self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return self.process.returncode

    def resumed_from(self) -> int | None:
        """The step this process continued from (None: it died before saying)."""
        found = None
        for _, line in self.lines:
            if (match := RESUMING.search(line)) and found is None:
                found = int(match.group(1))
            elif match := FALLBACK.search(line):
                found = int(match.group(1))  # arrays unreadable: fell back further
            elif STARTED_ANEW.search(line):
                found = 0
        return found

    def fell_back(self) -> bool:
        return any(FALLBACK.search(line) or "starting it from step 0" in line
                   for _, line in self.lines)

    def last_line(self) -> str:
        lines = [line for _, line in self.lines if line.strip()]
        return lines[-1] if lines else ""


def partial_steps(out: pathlib.Path) -> set[tuple[str, int]]:
    """``(name, inode)`` of the temporary step folders in the run's checkpoint folder."""
    try:
        return {(entry.name, entry.inode()) for entry in os.scandir(out / "checkpoints")
                if TEMPORARY_MARK in entry.name}
    except OSError:
        return set()


def wait_for_save(train: TrainProcess, deadline: float) -> bool:
    """Poll until a save is in progress (True) or the process ends or the deadline passes."""
    while train.process.poll() is None and train.seconds() < deadline:
        if train.saving():
            return True
        time.sleep(POLL_SECONDS)
    return False


def kill(train: TrainProcess, options, wall: float, rng: random.Random) -> dict | None:
    """Signal ``train`` once, at a random moment or inside a save; the kill's record, or None
    when the process ended first."""
    at_save = rng.random() < options.save_kills
    if at_save:
        if not wait_for_save(train, deadline=3 * wall):
            return None
        kind = signal.SIGKILL
    else:
        try:
            train.process.wait(timeout=rng.uniform(0.2, 1.1 * wall))
            return None
        except subprocess.TimeoutExpired:
            kind = rng.choice([signal.SIGKILL, signal.SIGTERM])
    phase, seconds = train.phase(), train.seconds()
    train.process.send_signal(kind)
    return {"aimed_at": "save" if at_save else "random", "signal": kind.name,
            "seconds": round(seconds, 3), "phase": phase}


def one_run(options, out: pathlib.Path, wall: float, rng: random.Random) -> dict:
    """Kill and continue one run to its end; its record (processes, outcome, failure)."""
    processes, failure, kills = [], None, 0
    while True:
        train = TrainProcess(options, out)
        record = {"expected_step": train.expected_step}
        if kills < options.kills:
            signalled = kill(train, options, wall, rng)
            if signalled:
                kills += 1
                record["kill"] = signalled
        status = train.finish(timeout=3600)
        record.update(exit=status, seconds=round(train.seconds(), 3),
                      resumed_from=train.resumed_from())
        if "kill" in record and record["kill"]["phase"] == "saving":
            # A partial step left behind: the kill landed before the save completed.
            record["kill"]["save_interrupted"] = train.saving()
        if "kill" in record:
            record["kill"]["sigterm_saved"] = status == 128 + signal.SIGTERM
        processes.append(record)
        resumed = record["resumed_from"]
        if resumed is not None and resumed < train.expected_step and not train.fell_back():
            failure = (f"resumed from step {resumed} although step {train.expected_step} was "
                       f"saved completely")
            if resumed == 0:
                failure = f"restarted from 0 although step {train.expected_step} was saved"
            break
        if status == 0:
            break
        if "kill" not in record or status not in SIGNALLED:
            failure = f"exit {status}: {train.last_line()}"
            break
    return {"processes": processes, "failure": failure}


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


def count(runs: list[dict]) -> dict:
    kills = [process["kill"] for run in runs for process in run["processes"] if "kill" in process]
    outcomes = collections.Counter(run["outcome"] for run in runs)
    return {
        "kills": len(kills),
        "by_phase": {phase: sum(k["phase"] == phase for k in kills) for phase in PHASES},
        "by_signal": dict(collections.Counter(k["signal"] for k in kills)),
        "aimed_at_save": sum(k["aimed_at"] == "save" for k in kills),
        "saving_with_partial_step_left": sum(k.get("save_interrupted", False) for k in kills),
        "sigterm_saved": sum(k.get("sigterm_saved", False) for k in kills),
        "restarts": sum(len(run["processes"]) - 1 for run in runs),
        "resumed_from_newest_complete_step": sum(
            process["resumed_from"] == process["expected_step"]
            for run in runs for process in run["processes"][1:]),
        "runs": len(runs),
        **{outcome: outcomes.get(outcome, 0) for outcome in ("identical", "different", "lost",
                                                               "failed")},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--kills", type=int, default=3, help="signals per run at most")
    parser.add_argument("--save-kills", type=float, default=0.35,
                        help="fraction of the kills aimed inside a save (default 0.35)")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--data", default="sine")
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0, help="of the runs; the kills draw from it too")
    parser.add_argument("--folder", help="keep the run folders here (default: a temporary one)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    options = parser.parse_args(argv)

    rng = random.Random(options.seed)
    header = provenance("benchmarks/bench_faults.py", argv)
    runs = []
    with tempfile.TemporaryDirectory() as temporary:
        root = pathlib.Path(options.folder or temporary)
        root.mkdir(parents=True, exist_ok=True)
        reference = root / "reference"
        began = time.perf_counter()
        result = subprocess.run(train_command(options, reference, resume=False),
                                env=child_environment(), capture_output=True, text=True,
                                check=False)
        wall = time.perf_counter() - began
        if result.returncode != 0:
            raise SystemExit(f"the uninterrupted run failed: {result.stderr.strip()[-500:]}")
        want = final_parameters(reference, options.steps)
        print(f"uninterrupted run: {wall:.1f} s; {options.runs} runs on {options.devices} "
              f"device(s), at most {options.kills} kills each", flush=True)
        for index in range(options.runs):
            folder = root / f"run-{index}"
            run = one_run(options, folder, wall, rng)
            if run["failure"] is not None:
                run["outcome"] = "failed" if "resumed from" in run["failure"] or \
                    "restarted from 0" in run["failure"] else "lost"
            else:
                run["outcome"] = ("identical" if identical(
                    final_parameters(folder, options.steps), want) else "different")
            run["load_average"] = round(os.getloadavg()[0], 2)
            runs.append(run)
            kills = ", ".join(f"{p['kill']['signal']} at {p['kill']['seconds']:.2f} s "
                              f"({p['kill']['phase']})" for p in run["processes"] if "kill" in p)
            resumed = [p["resumed_from"] for p in run["processes"][1:]]
            print(f"run {index}: {run['outcome']}{': ' + run['failure'] if run['failure'] else ''}"
                  f"; kills: {kills or 'none'}; resumed from {resumed}", flush=True)
    counts = count(runs)
    print(" ".join(f"{key}={value}" for key, value in counts.items() if not isinstance(value, dict)))
    print("kills by phase: " + ", ".join(f"{k} {v}" for k, v in counts["by_phase"].items()))
    passed = counts["identical"] == counts["runs"]
    if options.json:
        report = finish({
            "benchmark": "bench_faults", **header,
            "options": vars(options),
            "uninterrupted_seconds": round(wall, 2),
            "counts": counts,
            "passed": passed,
            "runs": runs,
        })
        pathlib.Path(options.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {options.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
