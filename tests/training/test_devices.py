"""The default split of a CPU run (seqmodel.training.devices): the decision rule, the timing's
freedom from side effects, and `seqmodel train` choosing, saying and keeping its split."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from seqmodel import ModelConfig, SequenceModel
from seqmodel.data import TextDataset
from seqmodel.training import devices, distributed
from seqmodel.training.fitting import fit
from seqmodel.training.optimization import TrainConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\n" * 30
CONFIG = TrainConfig(batch_size=8, seq_len=16, steps=6, eval_every=None, eval_batch_size=4,
                     eval_seq_len=32, warmup_steps=0, log_every=1, steps_per_call=3)


def test_a_split_must_beat_one_device_by_more_than_the_margin():
    clear = devices.decide({(1, 20): 0.050, (2, 20): 0.040, (1, 1): 0.060}, (1, 20))
    assert (clear.devices, clear.steps_per_call) == (2, 20)
    assert clear.reason.startswith("2 cpu devices, 20 steps a call (timed at start-up, ms a step: "
                                   "1 cpu device, 20 steps a call 50.0, 2 cpu devices, 20 steps a "
                                   "call 40.0, 1 cpu device, 1 step a call 60.0; 1.25x the first)")
    close = devices.decide({(1, 20): 0.050, (2, 20): 0.049}, (1, 20))  # 2% faster: noise
    assert (close.devices, close.steps_per_call) == (1, 20)
    assert "the others within 5%: the first kept" in close.reason
    slower = devices.decide({(1, 20): 0.040, (2, 20): 0.068}, (1, 20))  # a busy machine
    assert slower.devices == 1 and slower.reason.startswith("1 cpu device, 20 steps a call (")
    # One step per call wins on a busy machine when the long calls get less of the cores.
    busy = devices.decide({(1, 20): 0.060, (1, 1): 0.035, (2, 20): 0.062, (2, 1): 0.050}, (1, 20))
    assert (busy.devices, busy.steps_per_call) == (1, 1)
    assert devices.decide({(1, 20): 0.05, (4, 20): 0.02}, (1, 20)).devices == 4
    record = json.loads(json.dumps(clear.to_dict()))
    assert record["seconds_per_step"] == {"1x20": 0.05, "2x20": 0.04, "1x1": 0.06}
    assert record["steps_per_call"] == 20


def model():
    dataset = TextDataset.from_text(CORPUS, val_fraction=0.1)
    config = ModelConfig(vocab_size=dataset.vocab_size, hidden_size=16, embed_size=8)
    return SequenceModel(config, rngs=nnx.Rngs(0)), dataset


def params_of(trained):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(trained, nnx.Param))]


def test_one_device_is_kept_without_timing_anything():
    trained, dataset = model()
    parallel = distributed.DataParallel.create(1)
    assert devices.splits_to_try(parallel) == [1]

    def never(*args):
        raise AssertionError("nothing to measure on one device")

    chosen, choice = devices.choose_split(trained, dataset, CONFIG, parallel, measure=never)
    assert chosen is parallel and choice.devices == 1 and choice.seconds_per_step == {}
    assert choice.steps_per_call == CONFIG.steps_per_call


def test_timing_leaves_the_model_and_the_run_as_they_were():
    trained, dataset = model()
    before = params_of(trained)
    timed = devices.time_splits(trained, dataset, CONFIG, [distributed.DataParallel.create(1)],
                                [CONFIG.steps_per_call, 1])
    assert set(timed) == {(1, 3), (1, 1)} and all(seconds > 0 for seconds in timed.values())
    # The timed calls donated copies: the model's own arrays are intact, and a run that follows
    # equals a run that was never timed, bit for bit.
    for got, want in zip(params_of(trained), before, strict=True):
        np.testing.assert_array_equal(got, want)
    fit(trained, dataset, CONFIG, progress=False, parallel=distributed.DataParallel.create(1))
    untimed, _ = model()
    fit(untimed, dataset, CONFIG, progress=False, parallel=distributed.DataParallel.create(1))
    for got, want in zip(params_of(trained), params_of(untimed), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_train_times_its_split_says_it_and_a_resumed_run_keeps_it(tmp_path):
    """`seqmodel train` without --devices on 2 CPU cores: the first line names the split and the
    timings behind it, the checkpoint records it, and --resume runs on it without timing."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    environment.pop("XLA_FLAGS", None)
    command = [sys.executable, "-m", "seqmodel", "train", "--data", str(corpus), "--out",
               str(tmp_path / "run"), "--hidden-size", "16", "--embed-size", "8",
               "--batch-size", "16", "--seq-len", "16", "--eval-every", "100",
               "--no-progress", "--json"]
    # One process sees 2 cores (os.sched_getaffinity), whatever the machine has.
    pinned = ["taskset", "-c", "0,1"] if len(os.sched_getaffinity(0)) > 2 else []
    first = subprocess.run([*pinned, *command, "--steps", "6"], capture_output=True, text=True,
                           env=environment, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: nothing to choose")
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert "(timed at start-up, ms a step: 1 cpu device, 20 steps a call" in summary["device_choice"]
    assert f"on {summary['device_choice']}" in first.stderr
    metadata = json.loads((tmp_path / "run" / "checkpoints" / "6" / "metadata" / "metadata")
                          .read_text())
    assert metadata["devices"] == summary["devices"] in (1, 2)
    assert set(metadata["device_choice"]["seconds_per_step"]) == {"1x20", "1x1", "2x20", "2x1"}
    assert metadata["train_config"]["steps_per_call"] == metadata["device_choice"]["steps_per_call"]
    resumed = subprocess.run([*pinned, *command, "--resume", "--steps", "9"], capture_output=True,
                             text=True, env=environment, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert again["devices"] == summary["devices"] and again["device_choice"] is None
    assert "timed at start-up" not in resumed.stderr
