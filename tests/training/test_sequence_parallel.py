"""Sequence parallelism in training (seqmodel.training.distributed with a ``sequence`` axis):
losses, gradients and parameters equal the one-device run on 2 and 4 virtual CPU devices, time
alone and rows x time, at T = 64 (every mesh) and 65,536 (4 along time, with the memory a
device holds); a run stopped and resumed on the sequence mesh equals the run never stopped;
generation after it is unchanged; what cannot split time is refused with one clear line.

Device counts are fixed when JAX starts its backend, so the multi-device checks run in
subprocesses with ``--xla_force_host_platform_device_count=4``.

Tolerances (fp32 CPU, ``JAX_DEFAULT_MATMUL_PRECISION=highest``): losses ``rtol=1e-5``; gradients
normwise per leaf (max |g - g1| / max |g1|) 1e-5; parameters after 3 AdamW steps at lr 1e-3
``atol=1e-5`` (AdamW divides each gradient by its own scale, so a coordinate whose gradient is
nearly 0 moves by up to the learning rate whatever its rounding: a relative tolerance on such
coordinates would measure that division, not the split). Measured: losses 1e-7, gradients
up to 3e-6, parameters up to 2e-7. A resumed run equals the uninterrupted one bit for bit.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from seqmodel import ModelConfig, TrainConfig, cli
from seqmodel.training import distributed

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT = 900
CORPUS = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\n" * 40


def worker_environment(devices: int = 4) -> dict:
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu",
                       JAX_DEFAULT_MATMUL_PRECISION="highest",
                       XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return environment


def run_worker(script: str, *arguments: str) -> dict:
    run = subprocess.run([sys.executable, "-c", script, *arguments], env=worker_environment(),
                         capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert run.returncode == 0, run.stderr[-4000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# One worker per length: the train step and the gradients on meshes of (devices, sequence)
# (by default (2, 2), (4, 4), (4, 2); argv[3] may name fewer, e.g. "4x4") against one device.
STEPS = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from seqmodel import ModelConfig, SequenceModel, TrainConfig
from seqmodel.data import Batch
from seqmodel.nn import sequence_parallel
from seqmodel.training import distributed, optimization

length, cell = int(sys.argv[1]), sys.argv[2]
meshes = [tuple(int(n) for n in mesh.split("x")) for mesh in
          (sys.argv[3] if len(sys.argv) > 3 else "2x2,4x4,4x2").split(",")]
batch_size = 4 if length <= 4096 else 2
model_config = ModelConfig(vocab_size=40, cell=cell, hidden_size=16, embed_size=8, num_layers=2)
train_config = TrainConfig(batch_size=batch_size, seq_len=length, steps=3, warmup_steps=0,
                           learning_rate=1e-3, steps_per_call=1)
rng = np.random.default_rng(0)
batches = [Batch(rng.integers(0, 40, (batch_size, length)).astype(np.uint8),
                 rng.integers(0, 40, (batch_size, length)).astype(np.uint8), None,
                 np.full(batch_size, index == 0)) for index in range(3)]

def gradients(parallel, model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_fn = optimization.make_loss_fn(train_config)
    def of(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
        (loss, _), grads = grad_fn(model, model.init_carry(batch_size), batch,
                                   jax.random.key(0), 1.0)
        return loss, nnx.state(grads, nnx.Param)
    with sequence_parallel.split_time(parallel.layout):  # read while jit traces
        loss, grads = jax.jit(of)(*jax.device_put((params, rest), parallel.replicated),
                                  parallel.shard_batch(batches[0]))
    return float(loss), [np.asarray(leaf) for leaf in jax.tree.leaves(grads)]

def train(parallel):
    parallel.check_config(train_config, model_config)
    model = SequenceModel(model_config, rngs=nnx.Rngs(0))
    loss, grads = gradients(parallel, model)
    graphdef = optimization.split_model(model)[0]
    tx, step = parallel.train_step(graphdef, train_config)
    _, state = optimization.init_train_state(model, tx, train_config)
    state = parallel.place_state(state)
    compiled = step.lower(state, parallel.shard_batch(batches[0])).compile()
    losses = []
    for batch in batches:
        state, metrics = step(state, parallel.shard_batch(batch))
        losses.append(float(metrics["loss"]))
    text = compiled.as_text()
    return dict(loss=loss, grads=grads, losses=losses,
                params=[np.asarray(leaf) for leaf in jax.tree.leaves(state.params)],
                carry=[np.asarray(leaf) for leaf in jax.tree.leaves(state.carry)],
                carry_spec=list(jax.tree.leaves(state.carry)[0].sharding.spec),
                memory=compiled.memory_analysis().temp_size_in_bytes,
                gathers=text.count("all-gather-start(") + text.count("all-gather("))

def normwise(first, second):
    return max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
               for a, b in zip(first, second))

one = train(distributed.DataParallel.create(1))
report = {}
for devices, sequence in meshes:
    parallel = distributed.DataParallel.create(devices, sequence=sequence)
    run = train(parallel)
    report[parallel.describe()] = dict(
        loss=abs(run["loss"] - one["loss"]) / abs(one["loss"]),
        losses=max(abs(a - b) / abs(b) for a, b in zip(run["losses"], one["losses"])),
        grads=normwise(run["grads"], one["grads"]),
        params=max(float(np.max(np.abs(a - b))) for a, b in zip(run["params"], one["params"])),
        carry=normwise(run["carry"], one["carry"]), carry_spec=run["carry_spec"],
        memory=run["memory"] / one["memory"], gathers=run["gathers"])
print("RESULT " + json.dumps(report), flush=True)
"""


ALL_MESHES = {"2 cpu devices (1 data x 2 sequence)", "4 cpu devices (1 data x 4 sequence)",
              "4 cpu devices (2 data x 2 sequence)"}


def check_steps(report: dict, meshes: set = ALL_MESHES) -> None:
    assert set(report) == meshes
    for mesh, values in report.items():
        assert values["loss"] < 1e-5 and values["losses"] < 1e-5, mesh
        assert values["grads"] < 1e-5, (mesh, values["grads"])
        assert values["params"] < 1e-5, (mesh, values["params"])
        assert values["carry"] < 1e-5, (mesh, values["carry"])
        # The lanes' carry stays split by rows only; the chunk summaries cross the devices.
        assert values["carry_spec"] == ["data"], mesh
        assert values["gathers"] > 0, mesh


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["rglru", "mingru"])
def test_train_steps_on_sequence_meshes_equal_one_device_at_64(cell):
    if cell == "rglru":
        # 4 devices along time, and 2 data x 2 sequence; 2 devices along time alone is the
        # nn-level mesh test's (tests/nn/test_sequence_parallel.py), and the suite's time is
        # mostly compiling.
        check_steps(run_worker(STEPS, "64", cell, "4x4,4x2"), ALL_MESHES - {
            "2 cpu devices (1 data x 2 sequence)"})
    else:  # the second cell on the mesh that splits both axes (the scans are the same code)
        check_steps(run_worker(STEPS, "64", cell, "4x2"), {"4 cpu devices (2 data x 2 sequence)"})


@pytest.mark.slow
def test_train_steps_on_sequence_meshes_equal_one_device_at_65536():
    # Every mesh is checked at 64; the long length checks time split over 4 devices alone (a
    # run at 4,096 checked the same and was dropped to keep the suite under 10 minutes).
    report = run_worker(STEPS, "65536", "rglru", "4x4")
    check_steps(report, {"4 cpu devices (1 data x 4 sequence)"})
    # Each device holds its chunk of time: memory per device falls with the devices along time
    # (measured 0.250 of one device's).
    assert report["4 cpu devices (1 data x 4 sequence)"]["memory"] < 0.35


# fit() on a 2 x 2 mesh: equal to one device, resumed exactly, and generation afterwards.
FIT = """
import json, sys
import jax, numpy as np
from flax import nnx
from seqmodel import ModelConfig, SequenceModel, TrainConfig, fit, generate
from seqmodel.data import load_dataset
from seqmodel.training import distributed

corpus, out = sys.argv[1], sys.argv[2]
dataset = load_dataset(corpus)
vocab = dataset.model_fields()["vocab_size"]

def run(parallel, steps, out_dir=None, resume=False, callback=None):
    model = SequenceModel(ModelConfig(vocab_size=vocab, cell="rglru", hidden_size=16,
                                      embed_size=8, num_layers=2), rngs=nnx.Rngs(0))
    config = TrainConfig(batch_size=4, seq_len=64, steps=steps, eval_every=None,
                         eval_batch_size=4, eval_seq_len=32, warmup_steps=0,
                         learning_rate=1e-3, log_every=1, steps_per_call=2)
    result = fit(model, dataset, config, out_dir=out_dir, progress=False, parallel=parallel,
                 resume=resume, callback=callback)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    return model, result, [np.asarray(leaf) for leaf in params]

mesh = distributed.DataParallel.create(4, sequence=2)
one_model, one, one_params = run(distributed.DataParallel.create(1), 7)
whole_model, whole, whole_params = run(mesh, 7)
# Stopped after step 4 (its log record asks to stop), then resumed to 7.
_, first, _ = run(mesh, 7, out + "/resumed", callback=lambda step, record: step >= 4)
_, resumed, resumed_params = run(mesh, 7, out + "/resumed", resume=True)
prompt = np.asarray(dataset.tokenizer.encode("The quick"))[None]
samples = [generate(model, key=jax.random.key(0), prompt=prompt, steps=24, greedy=True,
                    return_scores=True) for model in (one_model, whole_model)]
print("RESULT " + json.dumps(dict(
    loss=abs(whole.train_loss - one.train_loss) / abs(one.train_loss),
    val=abs(whole.val_loss - one.val_loss) / abs(one.val_loss),
    params=max(float(np.max(np.abs(a - b))) for a, b in zip(whole_params, one_params)),
    resumed_steps=resumed.steps, first_steps=first.steps, interrupted=first.interrupted,
    resumed_equal=all(np.array_equal(a, b) for a, b in zip(resumed_params, whole_params)),
    resumed_loss=resumed.train_loss == whole.train_loss,
    samples_equal=bool(np.array_equal(samples[0].samples, samples[1].samples)),
    scores=float(np.max(np.abs(np.asarray(samples[0].scores) - np.asarray(samples[1].scores)))),
)), flush=True)
"""


@pytest.mark.slow
def test_fit_on_a_sequence_mesh_resumes_exactly_and_generates_as_one_device(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    result = run_worker(FIT, str(corpus), str(tmp_path))
    assert result["loss"] < 1e-5 and result["val"] < 1e-5
    assert result["params"] < 1e-5
    assert result["interrupted"] and result["first_steps"] == 4 and result["resumed_steps"] == 7
    assert result["resumed_equal"] and result["resumed_loss"]
    assert result["samples_equal"] and result["scores"] < 1e-4


@pytest.mark.slow
def test_cli_trains_with_sequence_parallel_and_refuses_a_serial_cell(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    common = [sys.executable, "-m", "seqmodel", "train", "--data", str(corpus), "--steps", "2",
              "--hidden-size", "16", "--embed-size", "8", "--batch-size", "2", "--seq-len",
              "32", "--devices", "2", "--sequence-parallel", "2", "--no-progress"]
    environment = worker_environment()
    environment.pop("XLA_FLAGS")  # the CLI asks for its devices itself
    refused = subprocess.run(common + ["--cell", "gru", "--out", str(tmp_path / "gru")],
                             env=environment, capture_output=True, text=True,
                             timeout=SUBPROCESS_TIMEOUT)
    assert refused.returncode == cli.EXIT_USAGE
    (line,) = [line for line in refused.stderr.splitlines() if line.strip()][-1:]
    assert "--cell gru is a serial recurrence" in line and "--sequence-parallel 2" in line
    trained = subprocess.run(common + ["--cell", "mingru", "--remat", "block", "--json", "--out",
                                       str(tmp_path / "mingru")],
                             env=environment, capture_output=True, text=True,
                             timeout=SUBPROCESS_TIMEOUT)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "on 2 cpu devices (1 data x 2 sequence)" in trained.stderr
    summary = json.loads(next(line for line in trained.stdout.splitlines()
                              if line.startswith("{")))
    assert summary["steps"] == 2 and summary["tokens"] == 2 * 2 * 32


# ---------------------------------------------------------------------------------------------
# In this process (one CPU device): checks and placement arithmetic
# ---------------------------------------------------------------------------------------------


class TwoAlongTime(distributed.DataParallel):
    """The arithmetic of a mesh with 2 devices along time (this process has one device)."""

    num_devices = 2
    sequence_size = 2


def test_what_cannot_split_time_is_refused_with_one_line():
    parallel = TwoAlongTime(distributed.DataParallel.create(1).mesh)
    linear = ModelConfig(vocab_size=8, cell="rglru")
    parallel.check_config(TrainConfig(seq_len=64), linear)
    cases = [
        (TrainConfig(seq_len=63), linear,
         r"--seq-len 63 does not split over --sequence-parallel 2: use a multiple of 2 \(e.g. 64"),
        (TrainConfig(seq_len=64), ModelConfig(vocab_size=8, cell="lstm"),
         "--cell lstm is a serial recurrence"),
        (TrainConfig(seq_len=64), ModelConfig(vocab_size=8, cell="mingru", scan="log_space"),
         "--scan log_space cannot split time"),
        (TrainConfig(seq_len=64, teacher_forcing=0.5), linear, "scheduled sampling"),
        (TrainConfig(seq_len=4), linear, "leaves 2 step"),
    ]
    for train_config, model_config, message in cases:
        with pytest.raises(distributed.DistributedError, match=message) as caught:
            parallel.check_config(train_config, model_config)
        assert "\n" not in str(caught.value)


def test_sequence_mesh_arithmetic():
    with pytest.raises(distributed.DistributedError,
                       match="--sequence-parallel 2 does not divide --devices 1"):
        distributed.DataParallel.create(1, sequence=2)
    with pytest.raises(distributed.DistributedError, match="sequence=0 is invalid"):
        distributed.data_mesh(1, sequence=0)
    one = distributed.DataParallel.create(1)
    assert one.sequence_size == 1 and one.data_size == 1 and one.layout is None
    shardings = one.batch_shardings()
    assert shardings.inputs == one.rows and shardings.reset == one.rows
    parallel = TwoAlongTime(one.mesh)
    assert parallel.data_size == 1
    parallel.check_batch_size(3)  # rows split over the data axis only
    assert "(1 data x 2 sequence)" in parallel.describe()


def test_cli_passes_sequence_parallel_to_the_mesh(monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(distributed, "from_flags",
                        lambda **flags: seen.append(flags) or (_ for _ in ()).throw(
                            distributed.DistributedError("stopped by the test")))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    status = cli.main(["train", "--data", str(corpus), "--out", str(tmp_path / "run"),
                       "--steps", "1", "--sequence-parallel", "4"])
    assert status == cli.EXIT_USAGE and "stopped by the test" in capsys.readouterr().err
    assert seen[0]["sequence"] == 4
    assert jax.device_count() >= 1  # this process is untouched
