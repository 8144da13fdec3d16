"""Checkpoints: exact resume (also after Ctrl-C), model loading, incompatible checkpoints."""

import dataclasses
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from seqmodel import ModelConfig, SequenceModel
from seqmodel.checkpoint import (
    find_checkpoint,
    load_model,
    peek_metadata,
    read_metadata,
    restore_train_state,
)
from seqmodel.data import ByteTokenizer, TextDataset
from seqmodel.errors import CheckpointError
from seqmodel.fit import fit
from seqmodel.train import TrainConfig, init_train_state, make_optimizer

VOCAB = 6


def dataset():
    rng = np.random.default_rng(0)
    tokens = ((np.arange(2000) * 7 // 3) % VOCAB).astype(np.uint8)
    flips = rng.random(len(tokens)) < 0.1
    tokens[flips] = rng.integers(0, VOCAB, flips.sum())
    data = TextDataset(tokens, ByteTokenizer(), val_fraction=0.1, name="pattern")
    data.model_fields = lambda: {"vocab_size": VOCAB}
    return data


def model(hidden_size=12):
    # Dropout between two layers: the resumed run must also continue the dropout RNG stream.
    config = ModelConfig(vocab_size=VOCAB, hidden_size=hidden_size, embed_size=4, num_layers=2,
                         dropout=0.2)
    return SequenceModel(config, rngs=nnx.Rngs(3))


CONFIG = TrainConfig(steps=14, batch_size=3, seq_len=6, eval_every=5, eval_batch_size=4,
                     eval_seq_len=12, learning_rate=5e-3, warmup_steps=3, log_every=1,
                     steps_per_call=4)


def leaves(tree):
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                       else x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    trained = model()
    result = fit(trained, dataset(), CONFIG, out_dir=folder, progress=False)
    return trained, result, folder


# 4 steps per call: calls end at steps 4, 5, 9, 10, 14 (a call never passes an evaluation
# step), so the Ctrl-C pressed at step 7 stops the run at 9. One step per call stops at 7, and its
# resumed run must still equal the uninterrupted run of 4-step calls bit for bit: the K-step
# program loops over the one-step program's math.
@pytest.mark.parametrize("steps_per_call, stopped_at", [(4, 9), (1, 7)])
def test_interrupted_and_resumed_run_equals_uninterrupted(uninterrupted, tmp_path, steps_per_call,
                                                          stopped_at):
    _, straight, _ = uninterrupted
    config = dataclasses.replace(CONFIG, steps_per_call=steps_per_call)

    def press_ctrl_c(step, metrics):
        if step == 7:  # between evaluations: the carry and data position matter
            os.kill(os.getpid(), signal.SIGINT)

    first = fit(model(), dataset(), config, out_dir=tmp_path, progress=False, callback=press_ctrl_c)
    assert first.interrupted and first.steps == stopped_at
    assert find_checkpoint(tmp_path, prefer="latest") == (tmp_path / "latest", stopped_at)
    assert read_metadata(tmp_path, prefer="latest")["data_position"]["index"] > 0

    resumed_model = model(hidden_size=12)
    resumed = fit(resumed_model, dataset(), config, out_dir=tmp_path, resume=True, progress=False)
    assert resumed.steps == 14 and not resumed.interrupted
    for got, want in zip(leaves(resumed.state), leaves(straight.state)):
        np.testing.assert_array_equal(got, want)
    assert resumed.val_loss == straight.val_loss
    assert resumed.tokens == straight.tokens


def test_load_model_restores_parameters_and_metadata(uninterrupted):
    trained, result, folder = uninterrupted
    loaded, metadata = load_model(folder, prefer="latest")
    for got, want in zip(leaves(nnx.state(loaded, nnx.Param)), leaves(nnx.state(trained, nnx.Param))):
        np.testing.assert_array_equal(got, want)
    assert metadata["step"] == 14 and metadata["data"]["tokenizer"] == {"kind": "byte"}
    assert metadata["model_config"]["hidden_size"] == 12
    assert loaded.dropout.deterministic  # loaded for inference: eval mode
    # Arrays come back on this process's default device, whatever device wrote them.
    assert all(leaf.devices() == {jax.devices()[0]}
               for leaf in jax.tree.leaves(nnx.state(loaded, nnx.Param)))
    best, best_metadata = load_model(folder)  # run folder: best checkpoint
    assert best_metadata["best_val_loss"] == pytest.approx(result.best_val_loss)


def test_metadata_read_without_jax_equals_orbax_restore(uninterrupted):
    # seqmodel train --resume reads the batch size this way before JAX starts.
    _, _, folder = uninterrupted
    for prefer in ("latest", "best"):
        assert peek_metadata(folder, prefer=prefer) == read_metadata(folder, prefer=prefer)


def test_incompatible_checkpoint_is_a_clear_error(uninterrupted):
    _, _, folder = uninterrupted
    other = model(hidden_size=8)
    config = CONFIG
    _, template = init_train_state(other, make_optimizer(config), config)
    with pytest.raises(CheckpointError, match=r"another model: hidden_size=12 \(now 8\)"):
        restore_train_state(folder, template, other.config)


def test_checkpoint_error_is_the_one_users_import():
    import seqmodel
    from seqmodel import checkpoint

    assert checkpoint.CheckpointError is CheckpointError is seqmodel.CheckpointError


def test_missing_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        find_checkpoint(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_model(tmp_path)
