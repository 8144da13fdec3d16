"""One process per timed candidate, driven by JSON lines on stdin / stdout.

Each candidate runs alone in its own process, so that device counts, thread counts and the two
frameworks' thread pools do not interfere. The parent (:class:`Worker`) starts
``python -m benchmarks.candidates --worker SPEC``; the worker (:func:`serve`) builds and compiles,
answers one ``{"ready": true, ...}`` line, then answers ``run N`` (time ``N`` steps:
``{"seconds", "cpu_seconds"}``) and ``generate`` (``{"seconds"}``) until ``quit``. Failures come
back as ``{"error": "..."}``, and the parent records the candidate as skipped.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Callable

# The folder holding benchmarks/ and (in a checkout) seqmodel/: a worker imports both from it.
CHECKOUT = pathlib.Path(__file__).resolve().parents[1]


def environment(extra: dict | None = None) -> dict:
    """``os.environ`` plus ``extra``, with the checkout first on ``PYTHONPATH``: a
    ``python -m benchmarks.<module>`` subprocess then imports this checkout's suite."""
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(
        [str(CHECKOUT)] + [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path])
    return env


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


def serve(builders: dict[str, Callable], spec_json: str) -> None:
    """The worker loop. ``builders[spec["kind"]](spec)`` returns ``(run, compile_info, extra)``:
    ``run(n)`` times ``n`` steps (seconds, or ``(wall, cpu)`` when it times only part of its
    call), ``compile_info`` goes into the ready line, ``extra["generate"]()`` times a generation
    and ``extra["result"]`` is a result computed at start (the GEMM ceilings)."""
    spec = json.loads(spec_json)
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    try:
        run, compile_info, extra = builders[spec["kind"]](spec)
    except Exception as error:  # reported to the parent, which records the candidate as failed
        out.write(json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n")
        out.flush()
        return
    out.write(json.dumps({"ready": True, **(compile_info or {}),
                          "result": extra.get("result")}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        try:
            if command[0] == "run":
                cpu = time.process_time()
                timed = run(int(command[1]))
                # CPU seconds of this process (all its threads): the work done, which a busy
                # machine does not inflate the way it stretches wall time.
                seconds, cpu_seconds = timed if isinstance(timed, tuple) else (
                    timed, time.process_time() - cpu)
                answer = {"seconds": seconds, "cpu_seconds": cpu_seconds}
            else:
                answer = {"seconds": extra["generate"]()}
        except Exception as error:
            answer = {"error": f"{type(error).__name__}: {error}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------


class Worker:
    """A running worker process of one candidate for one (cell, hidden).

    ``spec``: ``{"kind", "cell", "hidden", "options"}`` as :func:`serve` reads it; ``env`` is
    added to the worker's environment before it starts (XLA flags must be set before JAX is
    imported). ``hello`` holds the ready line (or the error)."""

    def __init__(self, name: str, spec: dict, *, env: dict | None = None):
        self.name = name
        # stderr to a file, not a pipe: a chatty worker (logs, warnings) must never block on a
        # full pipe that nobody reads, and its last lines explain a crash.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.candidates", "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=environment(env),
        )
        self.hello = self._read()

    def _exited(self) -> dict:
        self.process.wait()
        self.log.seek(0)
        return {"error": f"worker exited with status {self.process.returncode}: "
                         f"{self.log.read()[-2000:].strip()}"}

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            return self._exited()
        return json.loads(line)

    def ask(self, command: str) -> dict:
        """Send ``run N`` / ``generate``; the worker's answer."""
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return self._exited()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# Timing several workers in turn
# ---------------------------------------------------------------------------------------------


def start_workers(named_specs, *, log=print) -> tuple[list[Worker], dict[str, str]]:
    """Start one worker per ``(name, spec, env)``, one after the other (each builds and compiles
    alone). Returns ``(ready workers, {name: error})`` for those that failed to start."""
    workers, failed = [], {}
    for name, spec, env in named_specs:
        worker = Worker(name, spec, env=env)
        if "error" in worker.hello:
            log(f"  {name}: skipped ({worker.hello['error'][-300:]})")
            failed[name] = worker.hello["error"][-1000:]
            worker.close()
        else:
            workers.append(worker)
    return workers, failed


def alternate(workers: list[Worker], *, repeats: int, counts: dict[str, int] | None = None,
              log=print) -> tuple[dict[str, list[float]], dict[str, str]]:
    """``repeats`` rounds in which every worker times ``counts[name]`` units (``run N``; default
    1) in turn, the order rotating each round so that no worker always follows the same one.
    Returns ``({name: [seconds per unit, one per round]}, {name: error})``; a worker that fails
    is dropped from later rounds."""
    seconds: dict[str, list[float]] = {worker.name: [] for worker in workers}
    failed: dict[str, str] = {}
    live = list(workers)
    for repeat in range(repeats):
        shift = repeat % max(len(live), 1)
        for worker in live[shift:] + live[:shift]:
            if worker.name in failed:
                continue
            count = (counts or {}).get(worker.name, 1)
            answer = worker.ask(f"run {count}")
            if "seconds" in answer:
                seconds[worker.name].append(answer["seconds"] / count)
            else:
                failed[worker.name] = answer.get("error", "no answer")[-1000:]
                log(f"  {worker.name}: failed ({failed[worker.name][-300:]})")
        live = [worker for worker in live if worker.name not in failed]
    return seconds, failed


def summary(values: list[float]) -> dict:
    """``{"median", "fastest", "spread", "repeats"}`` of a candidate's repetitions (seconds);
    ``spread`` is ``(max - min) / median``, the run's own noise figure."""
    import statistics

    median = statistics.median(values)
    return {"median": median, "fastest": min(values),
            "spread": (max(values) - min(values)) / median, "repeats": len(values)}
