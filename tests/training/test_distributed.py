"""Data-parallel training (seqmodel.training.distributed): 1 device vs 4 virtual CPU devices, two processes
on 127.0.0.1 training together, and a process that dies.

Device counts are fixed when JAX starts its backend, so the multi-device checks run in
subprocesses (each pays one JAX import and a few compiles): one with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and one pair of processes joined by
``jax.distributed`` (gloo collectives on the CPU).

Tolerance of "the same run on 1 and on 4 devices": the 4-device gradient is the all-reduce of
four partial sums, so it differs from the 1-device sum in float rounding only (~1e-7 relative);
after a few AdamW steps parameters agree to ``atol=1e-5`` and losses to ``rtol=1e-5`` (measured:
about 1e-7 for both). Processes of one run compute the same replicated update, so their parameters
are bitwise equal.
"""

import importlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from seqmodel import cli
from seqmodel.data import Batch
from seqmodel.training import distributed
from seqmodel.training.fitting import stopping

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\n" * 30
TINY_MODEL = "ModelConfig(vocab_size=VOCAB, hidden_size=16, embed_size=8)"
TINY_TRAIN = ("TrainConfig(batch_size=8, seq_len=16, steps=STEPS, eval_every=None, eval_batch_size=4, "
              "eval_seq_len=32, warmup_steps=0, learning_rate=1e-2, log_every=1, steps_per_call=4)")
CLI_TINY = ["--hidden-size", "16", "--embed-size", "8", "--batch-size", "8", "--seq-len", "16",
            "--eval-every", "100", "--steps-per-call", "4", "--no-progress"]
# Generous but bounded: a subprocess imports JAX and compiles a few programs on a busy machine.
SUBPROCESS_TIMEOUT = 240

# Shared by the worker scripts: train a tiny model with fit() and return its parameters.
WORKER_PRELUDE = f"""
import json, os, sys, time
import numpy as np
from seqmodel.training import distributed

def train(dataset, parallel, out_dir=None, steps=5, resume=False):
    import jax
    from flax import nnx
    from seqmodel import ModelConfig, SequenceModel, TrainConfig, fit

    VOCAB, STEPS = dataset.model_fields()["vocab_size"], steps
    model = SequenceModel({TINY_MODEL}, rngs=nnx.Rngs(0))
    result = fit(model, dataset, {TINY_TRAIN}, out_dir=out_dir, progress=False,
                 parallel=parallel, resume=resume)
    params = [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]
    return result, params

def largest_difference(first, second):
    return max(float(np.max(np.abs(a - b))) for a, b in zip(first, second))

def report(**values):
    print("RESULT " + json.dumps(values), flush=True)
"""

# One process with XLA_FLAGS=--xla_force_host_platform_device_count=4: fit() on meshes of 1 and 4.
FOUR_DEVICES = WORKER_PRELUDE + """
corpus, out = sys.argv[1], sys.argv[2]
import jax
from seqmodel.data import load_dataset
dataset = load_dataset(corpus)
one, params_one = train(dataset, distributed.DataParallel.create(1))
four, params_four = train(dataset, distributed.DataParallel.create(4), out_dir=out + "/four")
carry_devices = len(jax.tree.leaves(four.state.carry)[0].sharding.device_set)
carry_spec = list(jax.tree.leaves(four.state.carry)[0].sharding.spec)
# The 4-device checkpoint resumes on 1 device (checkpoints hold no sharding).
resumed, _ = train(dataset, distributed.DataParallel.create(1), out_dir=out + "/four", steps=7,
                   resume=True)
# Evaluation programs hold no collective: each device sums its own rows and the host adds them up
# (back-to-back evaluation programs with an all-reduce each aborted XLA:CPU's rendezvous under load).
from flax import nnx
from seqmodel import ModelConfig, SequenceModel
from seqmodel.training import evaluation as evaluation_module
from seqmodel.training import optimization as train_module
VOCAB = dataset.model_fields()["vocab_size"]
model = SequenceModel(ModelConfig(vocab_size=VOCAB, hidden_size=16, embed_size=8), rngs=nnx.Rngs(0))
mesh_of_four = distributed.DataParallel.create(4)
_, params, rest = nnx.split(model, nnx.Param, ...)
params, rest = jax.device_put((params, rest), mesh_of_four.replicated)
eval_batch = mesh_of_four.place_eval_batch(next(iter(dataset.validation_batches(batch_size=4, seq_len=32))))
eval_carry = jax.device_put(model.init_carry(4), mesh_of_four.rows)
eval_program = evaluation_module.evaluate_batch.lower(train_module.eval_graphdef(model), params, rest,
                                              eval_carry, eval_batch).compile().as_text()
host_batches = list(dataset.validation_batches(batch_size=4, seq_len=32))[:2]
stacked_batch = mesh_of_four.place_eval_batch(train_module.stack_batches(host_batches), stacked=True)
stacked_program = evaluation_module.evaluate_stacked.lower(train_module.eval_graphdef(model), params, rest,
                                                   eval_carry, stacked_batch).compile().as_text()
report(devices=jax.device_count(), carry_devices=carry_devices,
       eval_collectives=sum(program.count(op + "(") for op in
                            ("all-reduce", "all-reduce-start", "all-gather", "reduce-scatter")
                            for program in (eval_program, stacked_program)),
       carry_spec=carry_spec, loss_one=one.train_loss, loss_four=four.train_loss,
       val_one=one.val_loss, val_four=four.val_loss,
       params=largest_difference(params_one, params_four), resumed_steps=resumed.steps)
"""

# One of two processes: `seqmodel train --devices 2` across both (the CLI asks for 2 virtual CPU
# devices before JAX starts), then fit() across both (global mesh of 2x2
# devices) and, in process 1, the same run on one local device; then process 1 dies and process
# 0's next collective must fail fast.
TWO_PROCESSES = WORKER_PRELUDE + """
from seqmodel import cli
from seqmodel.training import runtime
# Notice the dead peer after 8 s instead of the library's 30 (the wait is idle time of the
# suite); heartbeats come from a background thread, so a busy process still sends them.
runtime.initialize.__kwdefaults__["heartbeat_timeout"] = 8
process, port, corpus, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
status = cli.main(["train", "--data", corpus, "--out", out + "/cli", "--steps", "4", "--json",
                   "--devices", "2", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                   "--process-id", str(process), *json.loads(sys.argv[5])])
report(cli_status=status)

import jax
from jax.experimental import multihost_utils
from seqmodel.data import load_dataset
# No validation part: evaluation and checkpoints across processes are covered by the CLI run.
dataset = load_dataset(corpus, val_fraction=0.0)
if process == 1:  # the same run on one local device, while process 0 prints the CLI's sample
    reference, reference_params = train(
        dataset, distributed.DataParallel(jax.sharding.Mesh(np.array(jax.local_devices()[:1]),
                                                            ("data",))))
parallel = distributed.DataParallel.create()
result, params = train(dataset, parallel)
np.savez(f"{out}/params_{process}.npz", *params)
values = dict(process=process, devices=parallel.num_devices, processes=parallel.num_processes,
              loss=result.train_loss)
if process == 1:
    values.update(reference_loss=reference.train_loss,
                  reference_params=largest_difference(params, reference_params))
report(**values)
multihost_utils.sync_global_devices("trained")
if process == 1:
    report(dying=time.time())
    os._exit(1)
time.sleep(1.0)
ones = parallel.shard_batch(np.ones((parallel.num_devices, 1), np.float32))
started = time.time()
try:
    total = jax.jit(lambda x: x.sum(), out_shardings=parallel.replicated)(ones)
    report(survived=float(total))
except Exception as error:  # JaxRuntimeError or ValueError, depending on where
    report(failed_after=time.time() - started)
    cli.stop_after_failure(error, parallel)
"""


def results(stdout: str) -> list[dict]:
    return [json.loads(line[len("RESULT "):]) for line in stdout.splitlines()
            if line.startswith("RESULT ")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker_environment(**extra) -> dict:
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu",
                       JAX_DEFAULT_MATMUL_PRECISION="highest")
    environment.pop("XLA_FLAGS", None)
    return dict(environment, **extra)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# In this process (one CPU device): placement, checks and errors, no subprocess
# ---------------------------------------------------------------------------------------------


def test_mesh_of_one_shards_batches_and_state_like_a_single_device():
    parallel = distributed.DataParallel.create(1)
    assert parallel.num_devices == 1 and parallel.num_processes == 1 and parallel.is_main
    assert parallel.mesh.axis_names == ("data",) and parallel.describe() == "1 cpu device"
    inputs = np.arange(12, dtype=np.int32).reshape(4, 3)
    batch = parallel.shard_batch(Batch(inputs, inputs + 1, None, np.ones(4, bool)))
    assert batch.mask is None and batch.inputs.sharding == parallel.rows
    np.testing.assert_array_equal(np.asarray(batch.targets), inputs + 1)
    assert parallel.local_rows(4) == slice(0, 4)
    tree = {"w": jax.numpy.ones((2, 2))}
    assert parallel.local_copy(parallel._place(tree, parallel.replicated))["w"].shape == (2, 2)


def test_more_devices_than_the_process_has_is_a_clear_error():
    too_many = len(jax.local_devices()) + 1
    with pytest.raises(distributed.DistributedError, match=f"--devices {too_many} is more than"):
        distributed.DataParallel.create(too_many)
    with pytest.raises(distributed.DistributedError, match="JAX already started"):
        distributed.request_cpu_devices(too_many)  # the backend of this process is running


def test_batch_that_does_not_split_over_the_devices_is_refused():
    parallel = distributed.DataParallel.create(1)
    parallel.check_batch_size(7)  # anything splits over one device

    class FourDevices(distributed.DataParallel):  # the arithmetic only; this process has one
        num_devices = 4

    with pytest.raises(distributed.DistributedError,
                       match=r"batch_size=30 does not split evenly over 4 cpu devices: use a "
                             r"multiple of 4 \(e\.g\. 32\)"):
        FourDevices(parallel.mesh).check_batch_size(30)
    FourDevices(parallel.mesh).check_batch_size(32)


def test_default_cpu_devices_are_one_per_core_that_splits_the_batch():
    assert distributed.default_cpu_devices(32, cores=2) == 2
    assert distributed.default_cpu_devices(16, cores=2) == 2  # the training default: 8 rows each
    assert distributed.default_cpu_devices(12, cores=2) == 1  # 6 rows a device are too few
    assert distributed.default_cpu_devices(24, cores=2) == 2
    assert distributed.default_cpu_devices(17, cores=2) == 1  # does not split
    assert distributed.default_cpu_devices(96, cores=16) == 8  # capped at MAX_DEFAULT_CPU_DEVICES
    assert distributed.default_cpu_devices(48, cores=16) == 6  # largest count leaving 8 rows
    assert distributed.default_cpu_devices(64, cores=1) == 1
    assert distributed.default_cpu_devices(None, cores=8) == 1  # batch unknown
    assert distributed.default_cpu_devices(10**6) <= distributed.cpu_cores()


def test_from_flags_without_devices_asks_for_the_default_before_jax_starts(monkeypatch):
    asked = []
    monkeypatch.setattr(distributed, "backend_started", lambda: False)
    monkeypatch.setattr(distributed, "request_cpu_devices", asked.append)
    monkeypatch.setattr(distributed, "cpu_cores", lambda: 2)
    monkeypatch.setattr(distributed.DataParallel, "create",
                        classmethod(lambda cls, devices=None, sequence=1: ("mesh of", devices)))
    assert distributed.from_flags(batch_size=32) == ("mesh of", None)  # all of the 2 made
    assert distributed.from_flags(devices=1, batch_size=32) == ("mesh of", 1)
    assert distributed.from_flags(batch_size=12) == ("mesh of", None)
    assert asked == [2, 1, 1]


def test_cli_train_sets_devices_from_the_planned_batch_size(monkeypatch, corpus, tmp_path, capsys):
    seen = []

    def stop_here(args, *, batch_size):
        seen.append(batch_size)
        raise distributed.DistributedError("stopped by the test")

    train_command = importlib.import_module("seqmodel.cli.train")
    monkeypatch.setattr(train_command, "parallel_from_flags", stop_here)
    for extra in ([], ["--batch-size", "32"]):
        status = cli.main(["train", "--data", str(corpus), "--out", str(tmp_path / "new"),
                           "--steps", "1", *extra])
        assert status == cli.EXIT_USAGE and "stopped by the test" in capsys.readouterr().err
    assert seen == [cli.train_defaults()["batch_size"], 32]


@pytest.mark.parametrize("address", ["127.0.0.1", "host:port", ":123", "h:70000"])
def test_bad_coordinator_address(address):
    with pytest.raises(distributed.DistributedError, match="HOST:PORT"):
        distributed.parse_coordinator(address)


def test_process_flags_are_checked_before_jax_starts():
    with pytest.raises(distributed.DistributedError, match="go together"):
        distributed.from_flags(coordinator="127.0.0.1:1234")
    with pytest.raises(distributed.DistributedError, match=r"--process-id 2 is invalid.*\[0, 1\]"):
        distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
    assert distributed.parse_coordinator("10.0.0.1:12355") == ("10.0.0.1", 12355)


def test_cli_refuses_process_flags_without_a_shared_run_folder(capsys):
    status = cli.main(["train", "--coordinator", "127.0.0.1:1234", "--num-processes", "2",
                       "--process-id", "0", "--steps", "1"])
    assert status == cli.EXIT_USAGE
    assert "--coordinator needs --out" in capsys.readouterr().err
    status = cli.main(["train", "--process-id", "0", "--out", "somewhere", "--steps", "1"])
    assert status == cli.EXIT_USAGE
    assert "go together" in capsys.readouterr().err


def test_fit_stops_as_its_parallel_layout_says(corpus, monkeypatch):
    # Across processes a stop is agreed on at log and evaluation steps (stopping.stop_request_for
    # knows the processes); fit has to ask with its layout.
    from flax import nnx

    from seqmodel import ModelConfig, SequenceModel, TrainConfig
    from seqmodel.data import load_dataset
    from seqmodel.training.fitting import fit

    class TwoProcesses(distributed.DataParallel):  # the arithmetic only; this process is alone
        num_processes = 2

    one = distributed.DataParallel.create(1)
    assert stopping.stop_request_for(one).processes == 1
    assert stopping.stop_request_for(TwoProcesses(one.mesh)).processes == 2

    asked = []

    def stop_at_once(parallel):
        asked.append(parallel)
        request = stopping.StopRequest(processes=1)
        request.ask()
        request.stopping = True
        return request

    monkeypatch.setattr(stopping, "stop_request_for", stop_at_once)
    dataset = load_dataset(str(corpus))
    model = SequenceModel(ModelConfig(vocab_size=dataset.model_fields()["vocab_size"],
                                      hidden_size=8, embed_size=4), rngs=nnx.Rngs(0))
    result = fit(model, dataset, TrainConfig(batch_size=2, seq_len=4, steps=5, eval_every=None),
                 progress=False, parallel=one)
    assert result.interrupted and result.steps == 0 and asked == [one]


# ---------------------------------------------------------------------------------------------
# Subprocesses: 4 virtual devices; two processes on 127.0.0.1
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_four_devices_train_like_one_device(corpus, tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES, str(corpus), str(tmp_path)],
        env=worker_environment(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = results(run.stdout)
    assert result["devices"] == 4 and result["eval_collectives"] == 0
    assert result["carry_devices"] == 4 and result["carry_spec"] == ["data"]
    assert result["loss_four"] == pytest.approx(result["loss_one"], rel=1e-5)
    assert result["val_four"] == pytest.approx(result["val_one"], rel=1e-5)
    assert result["params"] < 1e-5
    assert result["resumed_steps"] == 7
    assert (tmp_path / "four" / "checkpoints" / "7").is_dir()


@pytest.mark.slow
def test_two_processes_train_together_and_a_dead_one_stops_the_other(corpus, tmp_path):
    port = free_port()
    processes = [
        subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, str(process), str(port),
                          str(corpus), str(tmp_path), json.dumps(CLI_TINY)],
                         env=worker_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for process in (0, 1)
    ]
    ended: dict[int, float] = {}
    deadline = time.time() + SUBPROCESS_TIMEOUT
    try:
        while len(ended) < 2 and time.time() < deadline:
            for index, process in enumerate(processes):
                if index not in ended and process.poll() is not None:
                    ended[index] = time.time()
            time.sleep(0.1)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    outputs = [process.communicate() for process in processes]
    assert len(ended) == 2, f"a process hung: {outputs[0][1][-2000:]}"
    (stdout0, stderr0), (stdout1, stderr1) = outputs

    # Process 1 died on purpose (exit 1); process 0 failed fast with one clear line.
    assert processes[1].returncode == 1, stderr1[-3000:]
    assert processes[0].returncode != 0, stdout0[-2000:]
    assert ended[0] - ended[1] < 60  # the gloo error is immediate; the heartbeat timeout 8 s
    assert ("another process of the run failed" in stderr0
            or "JAX distributed service detected fatal errors" in stderr0), stderr0[-3000:]
    assert not any("survived" in r for r in results(stdout0))

    # The CLI run: both processes took part, only process 0 printed and wrote files.
    cli_result0, library0 = results(stdout0)[:2]
    cli_result1, library1 = results(stdout1)[:2]
    assert cli_result0 == {"cli_status": 0} and cli_result1 == {"cli_status": 0}
    summary = json.loads(next(line for line in stdout0.splitlines() if line.startswith("{")))
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 8 * 16
    assert "on 4 cpu devices in 2 processes" in stderr0
    assert not any(line.startswith("{") for line in stdout1.splitlines())
    assert "seqmodel: training" not in stderr1
    assert (tmp_path / "cli" / "metrics.jsonl").is_file()
    assert (tmp_path / "cli" / "checkpoints" / "4").is_dir()

    # fit() across both processes: the same parameters in both, equal to one device's run.
    assert library0["devices"] == 4 and library0["processes"] == 2
    assert library0["loss"] == library1["loss"]
    params0 = np.load(tmp_path / "params_0.npz")
    params1 = np.load(tmp_path / "params_1.npz")
    assert len(params0.files) > 0
    for name in params0.files:
        np.testing.assert_array_equal(params0[name], params1[name])
    assert library0["loss"] == pytest.approx(library1["reference_loss"], rel=1e-5)
    assert library1["reference_params"] < 1e-5
