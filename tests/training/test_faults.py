"""Runs that survive any kill: SIGKILL inside a save, SIGTERM, a save that fails, on 1 device and
on 2 virtual CPU devices (and SIGTERM across 2 processes); each run is then resumed to its end
and must equal the uninterrupted run bit for bit, with one metric record per step.

The moment of each fault is exact (tests/fault_hooks.py): a process paused inside orbax's last
step of a save is killed there; SIGTERM is sent once a given step is dispatched; a save fails
with ENOSPC. Subprocesses are few and the model tiny (about 5 s each on 2 busy cores).
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from seqmodel import cli
from seqmodel.training import writers as metrics
from seqmodel.training.checkpoint import CHECKPOINTS, inspect_run, load_model
from seqmodel.training.fitting import saving, stopping
from tests.training import fault_hooks

# Every test here starts and kills processes: the slow part of the suite.
pytestmark = pytest.mark.slow


REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
HOOKS = pathlib.Path(fault_hooks.__file__)
TIMEOUT = 240  # seconds for one subprocess, on a loaded machine

# Evaluations (and saves) at steps 4, 8, 12; one step per call, so that a stop falls at the step
# it is asked at.
RUN = ["train", "--data", "sine", "--hidden-size", "16", "--batch-size", "4", "--seq-len", "8",
       "--eval-every", "4", "--steps", "12", "--steps-per-call", "1", "--no-progress"]


def environment(**faults) -> dict:
    values = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu",
                  JAX_DEFAULT_MATMUL_PRECISION="highest")
    values.pop("XLA_FLAGS", None)
    for key, value in faults.items():
        values[f"FAULT_{key.upper()}"] = str(value)
    return values


def run_cli(*argv, **faults) -> subprocess.CompletedProcess:
    """``seqmodel`` with ``argv`` in a fresh process, with the faults of ``fault_hooks``."""
    return subprocess.run([sys.executable, str(HOOKS), *argv], env=environment(**faults),
                          capture_output=True, text=True, timeout=TIMEOUT)


def kill_inside_save(step: int, tmp_path: pathlib.Path, *argv) -> None:
    """Run ``seqmodel argv`` until it is inside the save of ``step`` (every file written, the
    step not yet renamed into place), then SIGKILL it."""
    ready = tmp_path / f"ready-{step}"
    process = subprocess.Popen([sys.executable, str(HOOKS), *argv],
                               env=environment(pause_at_step=step, ready=ready),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + TIMEOUT
        while not ready.exists():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "the run never reached the save"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL


def final_parameters(folder) -> list[np.ndarray]:
    model, metadata = load_model(folder, prefer="latest")
    assert metadata["step"] == 12
    import jax
    from flax import nnx

    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]


def assert_identical(folder, reference) -> None:
    for got, want in zip(final_parameters(folder), final_parameters(reference), strict=True):
        np.testing.assert_array_equal(got, want)


def assert_one_record_per_step(folder) -> None:
    records = metrics.read_jsonl(folder / "metrics.jsonl")
    for key in ("loss", "val_loss"):
        steps = [record["step"] for record in records if key in record]
        assert steps == sorted(set(steps)), (key, steps)
    assert [r["step"] for r in records if "val_loss" in r] == [4, 8, 12]


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line]
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------------------------------------
# One device: the kill in a subprocess, the rest of the run's life in this process
# ---------------------------------------------------------------------------------------------


def test_one_device_run_killed_in_its_first_save_then_stopped_and_failing(tmp_path, capsys):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert cli.main([*RUN, "--out", str(reference), "--devices", "1"]) == 0

    kill_inside_save(4, tmp_path, *RUN, "--out", str(run), "--devices", "1")
    folder = inspect_run(run)
    assert not folder.holds_checkpoint and folder.holds_run
    assert [path.name for path in folder.partial] == ["4.orbax-checkpoint-tmp"]
    # Without --resume the folder is refused, with it the run starts again: never a dead end.
    capsys.readouterr()
    assert cli.main([*RUN, "--out", str(run)]) == 2
    assert "already holds a run; pass --resume" in one_line(capsys.readouterr().err)

    uninstall = fault_hooks.install({"term_at_step": 6})
    try:
        status = cli.main([*RUN, "--out", str(run), "--resume", "--devices", "1"])
    finally:
        uninstall()
    captured = capsys.readouterr()
    assert status == 143, captured.err
    assert f"no step of the run in {run} was saved completely; starting it from step 0" in \
        captured.err
    assert "stopped by SIGTERM at step 6" in captured.out
    assert [s.step for s in inspect_run(run).steps] == [6, 4] and not inspect_run(run).partial

    uninstall = fault_hooks.install({"fail_at_step": 8})
    try:
        status = cli.main([*RUN, "--out", str(run), "--resume", "--devices", "1"])
    finally:
        uninstall()
    captured = capsys.readouterr()
    assert status == 1
    assert one_line(captured.err) == (
        f"seqmodel train: cannot write the checkpoint of step 8 to {run / CHECKPOINTS}: "
        f"[Errno 28] No space left on device; the last good checkpoint (step 6) is in {run}. "
        f"Free space or fix the folder, then resume the run")
    assert load_model(run, prefer="latest")[1]["step"] == 6  # the previous step is readable

    assert cli.main([*RUN, "--out", str(run), "--resume", "--devices", "1"]) == 0
    assert_identical(run, reference)
    assert_one_record_per_step(run)


# ---------------------------------------------------------------------------------------------
# Two virtual CPU devices: every run in a subprocess
# ---------------------------------------------------------------------------------------------


def test_two_device_run_stopped_killed_and_failing_resumes_bit_for_bit(tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    two = ("--devices", "2")
    result = run_cli(*RUN, *two, "--out", str(reference))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 cpu devices" in result.stdout

    stopped = run_cli(*RUN, *two, "--out", str(run), term_at_step=6)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at step 6" in stopped.stdout

    kill_inside_save(8, tmp_path, *RUN, *two, "--out", str(run), "--resume")
    folder = inspect_run(run)
    assert [s.step for s in folder.steps] == [6, 4]
    assert [path.name for path in folder.partial] == ["8.orbax-checkpoint-tmp"]

    failing = run_cli(*RUN, *two, "--out", str(run), "--resume", fail_at_step=12)
    assert failing.returncode == 1, failing.stderr[-3000:]
    assert "cannot write the checkpoint of step 12" in one_line(failing.stderr)
    assert "the last good checkpoint (step 8)" in failing.stderr

    finished = run_cli(*RUN, *two, "--out", str(run), "--resume")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_identical(run, reference)
    assert_one_record_per_step(run)


# ---------------------------------------------------------------------------------------------
# Two processes: SIGTERM to one of them stops both at the same step
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sigterm_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    run = tmp_path / "run"
    processes = []
    for process_id in (0, 1):
        faults = {"term_at_step": 5} if process_id == 1 else {}
        argv = [*RUN, "--out", str(run), "--devices", "1", "--coordinator", coordinator,
                "--num-processes", "2", "--process-id", str(process_id)]
        processes.append(subprocess.Popen(
            [sys.executable, str(HOOKS), *argv], env=environment(**faults),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [process.communicate(timeout=TIMEOUT) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert [process.returncode for process in processes] == [143, 143], outputs[0][1][-3000:]
    # The signal reached process 1 at step 5; both agreed at the next log or evaluation step (8),
    # evaluated it, and process 0 wrote the checkpoint the two saved together.
    assert "stopped by SIGTERM at step 8" in outputs[0][0]
    assert [s.step for s in inspect_run(run).steps] == [8, 4]
    assert "stopped by" not in outputs[1][0]  # process 0 reports for the run


# ---------------------------------------------------------------------------------------------
# The parts, in this process
# ---------------------------------------------------------------------------------------------


def test_a_stop_waits_for_the_agreement_of_every_process():
    stop = stopping.StopRequest(processes=2)
    with stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_number == signal.SIGTERM
        stop.poll(sync=False)
        assert not stop.stopping  # the other process may be at another step: wait
        stop.poll(sync=True)  # one process here: the all-gather is over itself
        assert stop.stopping and stop.signal_number == signal.SIGTERM
        # A second SIGTERM would end the process: the default action is back.
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert stopping.agree(None) is None and stopping.agree(stopping.CALLBACK) == 0


def test_rewinding_writers_drops_what_the_interrupted_run_recorded_past_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = metrics.JsonlWriter(path)
    for step in (1, 2, 3, 4):
        writer.write({"step": step, "loss": 1.0 / step})
    writer.write({"step": 4, "val_loss": 0.5})
    writer.close()
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"step": 5, "lo')  # the line a killed process was writing
    writer = metrics.JsonlWriter(path, append=True)
    writer.rewind(3)
    writer.write({"step": 4, "loss": 0.2})
    writer.close()
    assert [(r["step"], r.get("loss")) for r in metrics.read_jsonl(path)] == [
        (1, 1.0), (2, 0.5), (3, 1.0 / 3), (4, 0.2)]
    memory = metrics.MemoryWriter([{"step": 1}, {"step": 7}])
    memory.rewind(1)
    assert memory.records == [{"step": 1}]


def test_tensorboard_writer_rewinds_by_purging_past_the_step(tmp_path):
    pytest.importorskip("tensorboardX")
    writer = metrics.TensorBoardWriter(tmp_path)
    writer.rewind(40)
    assert writer.purge_step == 41
    writer.write({"step": 41, "loss": 1.0})
    with pytest.raises(RuntimeError, match="before the first record"):
        writer.rewind(50)
    writer.close()


def test_save_failures_name_the_cause_in_one_line():
    assert saving._cause(OSError(28, "No space left on device")) == \
        "[Errno 28] No space left on device"
    tensorstore = ValueError('OUT_OF_RANGE: Error writing "x/0" in OCDBT database at local file '
                             '"/run/checkpoints/8.orbax-checkpoint-tmp/": Failed to write 651107 '
                             "bytes to file 11: File too large [os_error_code='27']")
    assert saving._cause(tensorstore) == "[Errno 27] File too large"
