"""Training, the pure part: schedules, the train step, exact teacher forcing, evaluation."""

import dataclasses
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from seqmodel import ModelConfig, SequenceModel
from seqmodel.data import Batch, ByteTokenizer, TextDataset, evaluation_batches
from seqmodel.training.evaluation import eval_chunks, evaluate
from seqmodel.training.optimization import (
    TrainConfig,
    init_train_state,
    learning_rate_at,
    make_loss_fn,
    make_multi_step,
    make_optimizer,
    make_train_step,
    reset_carry,
    split_model,
    stack_batches,
    step_neutral_config,
    teacher_forcing_at,
)

VOCAB = 7


def tiny_model(seed=0, **overrides):
    config = ModelConfig(**{"vocab_size": VOCAB, "hidden_size": 16, "embed_size": 8, **overrides})
    return SequenceModel(config, rngs=nnx.Rngs(seed))


def tiny_batch(seed=0, b=3, t=5, reset=True):
    tokens = np.random.default_rng(seed).integers(0, VOCAB, size=(b, t + 1)).astype(np.uint8)
    return Batch(tokens[:, :-1], tokens[:, 1:], None, np.full((b,), reset))


def tiny_dataset(length=3000, val_fraction=0.1):
    # A periodic stream with a little noise: learnable in a few dozen steps.
    rng = np.random.default_rng(0)
    tokens = (np.arange(length) % VOCAB).astype(np.uint8)
    noise = rng.random(length) < 0.05
    tokens[noise] = rng.integers(0, VOCAB, noise.sum())
    dataset = TextDataset(tokens, ByteTokenizer(), val_fraction=val_fraction, name="periodic")
    dataset.model_fields = lambda: {"vocab_size": VOCAB}
    return dataset


FAST = dict(batch_size=4, seq_len=8, eval_batch_size=4, eval_seq_len=16, warmup_steps=2,
            learning_rate=1e-2, log_every=1)


def params_of(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


# -- configuration and schedules ---------------------------------------------------------------


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"TrainConfig.batch_size=0 .*positive integer"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="teacher_forcing_schedule='cubic'.*linear"):
        TrainConfig(teacher_forcing_schedule="cubic")
    with pytest.raises(ValueError, match="teacher_forcing=1.5"):
        TrainConfig(teacher_forcing=1.5)
    config = TrainConfig(steps=10, max_time=5.0)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_learning_rate_matches_optax_schedule():
    config = TrainConfig(learning_rate=2e-3, warmup_steps=10, final_learning_rate_fraction=0.1)
    reference = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 10, 100, end_value=2e-4)
    for step in [0, 1, 5, 10, 11, 50, 99, 100, 150]:
        assert float(learning_rate_at(config, step, 100)) == pytest.approx(float(reference(step)),
                                                                           rel=1e-5, abs=1e-9)


def test_teacher_forcing_schedules():
    horizon = 1000
    steps = np.array([0, 250, 500, 750, 1000, 2000])
    constant = TrainConfig(teacher_forcing=0.7)
    assert np.allclose(teacher_forcing_at(constant, steps, horizon), 0.7)
    linear = TrainConfig(teacher_forcing=0.2, teacher_forcing_schedule="linear")
    np.testing.assert_allclose(teacher_forcing_at(linear, steps, horizon),
                               [1.0, 0.8, 0.6, 0.4, 0.2, 0.2], atol=1e-6)
    sigmoid = TrainConfig(teacher_forcing=0.0, teacher_forcing_schedule="inverse-sigmoid")
    values = np.asarray(teacher_forcing_at(sigmoid, steps, horizon))
    assert values[0] > 0.95 and values[-1] < 0.01
    assert abs(values[2] - 0.5) < 0.02  # the midpoint sits at half the horizon
    assert np.all(np.diff(values) < 0)


# -- the step ----------------------------------------------------------------------------------


def test_reset_carry_zeroes_only_reset_rows():
    carry = (jnp.ones((3, 2)), 2 * jnp.ones((3, 2)))
    out = reset_carry(carry, jnp.array([True, False, True]))
    np.testing.assert_array_equal(out[0][:, 0], [0, 1, 0])
    np.testing.assert_array_equal(out[1][:, 1], [0, 2, 0])


def _teacher_forced_reference(model, batch, carry):
    """The loss written out by hand: teacher-forced model call, mean NLL (sum / count)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        merged = nnx.merge(graphdef, params, rest)
        logits, _ = merged(jnp.asarray(batch.inputs, jnp.int32), carry)
        log_prob = merged.head.log_prob(logits, jnp.asarray(batch.targets, jnp.int32))
        return -jnp.sum(log_prob) / log_prob.size

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.slow
def test_plain_teacher_forcing_gives_exactly_the_teacher_forced_loss_and_gradients():
    model = tiny_model()
    model.train()
    batch = tiny_batch()
    carry = model.init_carry(3)
    expected_loss, expected_grads = _teacher_forced_reference(model, batch, carry)
    config = TrainConfig(teacher_forcing=1.0)

    def loss_and_grads(config):
        grad_fn = nnx.value_and_grad(make_loss_fn(config), argnums=nnx.DiffState(0, nnx.Param),
                                     has_aux=True)
        return nnx.jit(grad_fn)(model, carry, batch, jax.random.key(0), 1.0)

    (loss, _), grads = loss_and_grads(config)
    assert float(loss) == float(expected_loss)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_array_equal(got, want)

    # The feed-policy path with every step fed the truth computes the same numbers (to rounding).
    (loss, _), grads = loss_and_grads(
        dataclasses.replace(config, teacher_forcing_schedule="linear"))
    assert float(loss) == pytest.approx(float(expected_loss), abs=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_scheduled_sampling_changes_what_is_fed():
    model = tiny_model()
    config = TrainConfig(teacher_forcing=0.0)
    batch = tiny_batch(t=12)
    loss_fn = nnx.jit(make_loss_fn(config))
    losses = [loss_fn(model, model.init_carry(3), batch, jax.random.key(0), p)[0]
              for p in (1.0, 0.0)]
    assert float(losses[0]) != pytest.approx(float(losses[1]), abs=1e-4)


def test_train_step_learns_carries_state_and_compiles_once():
    model = tiny_model()
    config = TrainConfig(steps=40, **FAST)
    tx = make_optimizer(config)
    graphdef, state = init_train_state(model, tx, config)
    step = make_train_step(graphdef, tx, config)
    batches = tiny_dataset().train_batches(batch_size=4, seq_len=8)
    losses = []
    for _ in range(40):
        state, metrics = step(state, next(batches))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert int(state.step) == 40
    # The last step (step index 39 of 40) ran at the end of the cosine schedule.
    assert float(metrics["learning_rate"]) == pytest.approx(float(learning_rate_at(config, 39, 40)))
    assert float(metrics["learning_rate"]) < 1e-2 * 0.06
    assert float(jnp.abs(jax.tree.leaves(state.carry)[0][1]).sum()) > 0  # the carry is passed on
    assert step._cache_size() == 1


@pytest.mark.slow
def test_multi_step_equals_the_steps_one_by_one():
    model = tiny_model()
    config = TrainConfig(steps=10, **FAST)
    tx = make_optimizer(config)
    graphdef, state = init_train_state(model, tx, config)
    copy = jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), state)
    batches = list(itertools.islice(tiny_dataset().train_batches(batch_size=4, seq_len=8), 3))
    one_step = make_train_step(graphdef, tx, config)
    losses = []
    for batch in batches:
        state, metrics = one_step(state, batch)
        losses.append(float(metrics["loss"]))
    copy, stacked_metrics = make_multi_step(graphdef, tx, config)(copy, stack_batches(batches))
    assert stacked_metrics["loss"].shape == (3,)
    np.testing.assert_allclose(np.asarray(stacked_metrics["loss"]), losses, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(copy.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert int(copy.step) == 3


def test_step_neutral_config_keeps_only_what_the_step_reads():
    config = TrainConfig(steps=10, batch_size=4, eval_every=5, seed=3, learning_rate=2e-3)
    other = TrainConfig(max_time=60.0, batch_size=8, eval_every=None, seed=9, learning_rate=2e-3)
    assert step_neutral_config(config) == step_neutral_config(other)  # one compiled step
    for changed in (dict(learning_rate=1e-3), dict(teacher_forcing=0.5), dict(clip_norm=2.0)):
        assert (step_neutral_config(dataclasses.replace(config, **changed))
                != step_neutral_config(config)), changed


def test_split_model_leaves_the_callers_mode_alone():
    model = tiny_model(dropout=0.5, num_layers=2)
    model.eval()
    graphdef, params, _ = split_model(model)
    assert model.dropout.deterministic  # still in eval mode
    # The split graph is the training one: dropout on.
    rest = nnx.state(model, nnx.Not(nnx.Param))
    assert not nnx.merge(graphdef, params, rest).dropout.deterministic


# -- evaluation --------------------------------------------------------------------------------


def test_evaluate_is_the_exact_nll_of_the_stream():
    model = tiny_model()
    stream = np.random.default_rng(1).integers(0, VOCAB, size=37).astype(np.uint8)
    logits, _ = model(jnp.asarray(stream[None, :-1], jnp.int32))
    expected = -float(jnp.mean(model.head.log_prob(logits, jnp.asarray(stream[None, 1:], jnp.int32))))
    result = evaluate(model, evaluation_batches(stream, batch_size=1, seq_len=5))
    assert result.elements == 36
    assert result.loss == pytest.approx(expected, abs=1e-5)
    assert result.bits == pytest.approx(expected / math.log(2), abs=1e-5)
    # More lanes: every target still counted once, each lane from a zero carry.
    lanes = evaluate(model, evaluation_batches(stream, batch_size=4, seq_len=5))
    assert lanes.elements == 36 and abs(lanes.loss - expected) < 0.5


def test_evaluation_stacks_batches_of_one_shape_into_one_call():
    model = tiny_model()
    stream = np.random.default_rng(2).integers(0, VOCAB, size=103).astype(np.uint8)
    batches = list(evaluation_batches(stream, batch_size=2, seq_len=5))
    chunks = eval_chunks(batches, max_batches=3)
    # Runs of one shape, at most 3 batches a call, every batch once and in order.
    assert sum(batch.reset.shape[0] if stacked else 1 for batch, stacked in chunks) == len(batches)
    assert all(batch.inputs.shape[0] <= 3 for batch, stacked in chunks if stacked)
    assert any(stacked for _, stacked in chunks)
    # Batches already on a device run one by one: the same result as the stacked calls.
    one_by_one = evaluate(model, [jax.device_put(batch) for batch in batches])
    stacked = evaluate(model, batches)
    assert stacked.elements == one_by_one.elements == 102
    assert stacked.loss == pytest.approx(one_by_one.loss, rel=1e-6)


def test_evaluate_runs_in_eval_mode():
    model = tiny_model(dropout=0.5, num_layers=2)
    model.train()
    batches = evaluation_batches(np.arange(30, dtype=np.uint8) % VOCAB, batch_size=2, seq_len=4)
    first, second = evaluate(model, batches), evaluate(model, batches)
    assert first.loss == second.loss  # no dropout noise
    assert not model.dropout.deterministic  # the caller's model keeps its mode
