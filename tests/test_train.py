"""Training: schedules, the pure train step, exact teacher forcing, evaluation, fit."""

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

from seqmodel import ModelConfig, SequenceModel, distributed
from seqmodel.data import Batch, ByteTokenizer, TextDataset, evaluation_batches
from seqmodel.train import (
    _Clock,
    TrainConfig,
    TrainingError,
    eval_chunks,
    evaluate,
    fit,
    init_train_state,
    learning_rate_at,
    make_loss_fn,
    make_multi_step,
    make_optimizer,
    make_train_step,
    reset_carry,
    split_model,
    stack_batches,
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
    assert float(jnp.abs(state.carry[0][1]).sum()) > 0  # the lanes' carry is passed on
    assert step._cache_size() == 1


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


# -- fit -----------------------------------------------------------------------------------------


def test_fit_writes_checkpoints_metrics_and_plot(tmp_path):
    model = tiny_model()
    config = TrainConfig(steps=24, eval_every=12, **FAST)
    result = fit(model, tiny_dataset(), config, out_dir=tmp_path, progress=False)
    assert result.steps == 24 and result.tokens == 24 * 4 * 8
    assert result.val_loss < math.log(VOCAB)
    assert result.best_val_loss == pytest.approx(min(result.val_loss, result.best_val_loss))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [12, 24]
    assert sum("loss" in r for r in records) == 24
    assert (tmp_path / "latest" / "24").is_dir() and (tmp_path / "best").is_dir()
    plot = tmp_path / "loss.png"
    pytest.importorskip("matplotlib")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # The trained parameters end up in the caller's model.
    np.testing.assert_array_equal(params_of(model)[0],
                                  jax.tree.leaves(result.state.params)[0])


@pytest.mark.parametrize("steps_per_call, calls", [(1, 30), (4, 9)])  # 4: 7 calls of 4, 2 of 1
def test_fit_keeps_at_most_a_few_calls_in_flight(monkeypatch, steps_per_call, calls):
    # More than 32 queued calls per device can deadlock XLA:CPU's collectives with several CPU
    # devices (train.MAX_CALLS_IN_FLIGHT); between logs fit must wait for old calls itself.
    from seqmodel import train as train_module

    waited = []
    original = jax.block_until_ready

    def recording(tree):
        if isinstance(tree, dict) and "loss" in tree:
            waited.append(tree)
        return original(tree)

    monkeypatch.setattr(train_module.jax, "block_until_ready", recording)
    steps, limit = 30, train_module.MAX_CALLS_IN_FLIGHT
    result = fit(tiny_model(), tiny_dataset(), TrainConfig(
        steps=steps, eval_every=None, steps_per_call=steps_per_call,
        **{**FAST, "log_every": 1000}), progress=False)
    assert result.steps == steps
    assert len(waited) == calls - limit  # one wait per call beyond the first `limit`


def test_several_steps_per_call_train_and_log_like_one_step_per_call(tmp_path):
    # log_every=3 with 4 steps per call: calls end at 4, 8, 9, 10 (none passes the evaluation at
    # 10), 11, 12; the records still fall every 3 steps and at the evaluation, as with one step
    # per call.
    records, params = {}, {}
    for steps_per_call in (1, 4):
        model = tiny_model()
        config = TrainConfig(steps=12, eval_every=10, steps_per_call=steps_per_call,
                             **{**FAST, "log_every": 3})
        result = fit(model, tiny_dataset(), config, out_dir=tmp_path / str(steps_per_call),
                     progress=False)
        assert result.steps == 12 and result.tokens == 12 * 4 * 8
        lines = (tmp_path / str(steps_per_call) / "metrics.jsonl").read_text().splitlines()
        records[steps_per_call] = [json.loads(line) for line in lines]
        params[steps_per_call] = params_of(model)
    for one, several in zip(records[1], records[4], strict=True):
        assert one["step"] == several["step"] and one.keys() == several.keys()
        for key in {"loss", "val_loss", "learning_rate", "grad_norm"} & one.keys():
            assert one[key] == pytest.approx(several[key], rel=1e-6)
    assert [record["step"] for record in records[4] if "loss" in record] == [3, 6, 9, 10, 12]
    for one, several in zip(params[1], params[4]):
        np.testing.assert_allclose(one, several, rtol=1e-6, atol=1e-7)


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


def test_evaluation_does_not_disturb_training(tmp_path):
    """Same run with and without intermediate evaluations: identical parameters."""
    dataset = tiny_dataset()
    with_eval = tiny_model()
    fit(with_eval, dataset, TrainConfig(steps=12, eval_every=3, **FAST), progress=False)
    without = tiny_model()
    fit(without, dataset, TrainConfig(steps=12, eval_every=None, **FAST), progress=False)
    for a, b in zip(params_of(with_eval), params_of(without)):
        np.testing.assert_array_equal(a, b)


class _PoisonedDataset:
    """Wraps a dataset; from batch ``poison_at`` on, a token id outside the vocabulary makes the
    loss NaN (an out-of-range gather fills with NaN)."""

    def __init__(self, dataset, poison_at):
        self.dataset, self.poison_at = dataset, poison_at

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def train_batches(self, **kwargs):
        inner = self.dataset.train_batches(**kwargs)
        poison_at = self.poison_at

        class Iterator:
            position = property(lambda self: inner.position)

            def __iter__(self):
                return self

            def __next__(self):
                index = inner.position["index"] + inner.position["epoch"] * inner.batches_per_epoch
                batch = next(inner)
                if index + 1 >= poison_at:
                    batch = batch._replace(inputs=np.full_like(batch.inputs, 250))
                return batch

        return Iterator()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    dataset = _PoisonedDataset(tiny_dataset(), poison_at=8)
    config = TrainConfig(steps=20, eval_every=5, **FAST)
    with pytest.raises(TrainingError, match=r"loss became nan at step 8; the last good checkpoint "
                                            r"\(step 5\)"):
        fit(tiny_model(), dataset, config, out_dir=tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == ["5"]


def test_fit_needs_a_stopping_rule():
    with pytest.raises(ValueError, match="steps or max_time"):
        fit(tiny_model(), tiny_dataset(), TrainConfig(**FAST), progress=False)


def test_max_time_ends_the_run_with_an_evaluation(monkeypatch):
    ticks = itertools.count(0.0, 0.25)  # a clock that advances 0.25 s whenever it is read
    monkeypatch.setattr(_Clock, "now", staticmethod(lambda: next(ticks)))
    # One step per call: the fake clock then advances a fixed amount per step.
    config = TrainConfig(max_time=20.0, eval_every=None, steps_per_call=1, **FAST)
    model = tiny_model(hidden_size=24)  # a graph of its own: a train step no other test compiled
    result = fit(model, tiny_dataset(), config, progress=False)
    assert 5 < result.steps < 80
    assert result.val_loss is not None and not result.interrupted
    assert int(result.state.horizon) < 10**9  # the schedule's end was estimated from the speed
    # Re-estimating the horizon must not change the step's input layout (it once recompiled).
    _, train_step = distributed.resolve(None, config.batch_size).train_step(
        split_model(model)[0], config)
    assert train_step._cache_size() == 1


def test_time_running_out_at_an_evaluation_step_evaluates_and_saves_once(monkeypatch, tmp_path):
    from seqmodel import train as train_module

    checks = itertools.count()  # one time check per call: calls at steps 0 and 4, then 8
    monkeypatch.setattr(_Clock, "out_of_time", lambda self, *args, **kwargs: next(checks) >= 2)
    evaluations = []
    original = train_module._evaluate_chunks
    monkeypatch.setattr(train_module, "_evaluate_chunks",
                        lambda *args, **kwargs: evaluations.append(1) or original(*args, **kwargs))
    config = TrainConfig(max_time=1000.0, eval_every=8, steps_per_call=4, **FAST)
    result = fit(tiny_model(), tiny_dataset(), config, out_dir=tmp_path, progress=False)
    assert result.steps == 8 and not result.interrupted and result.val_loss is not None
    assert len(evaluations) == 1  # the evaluation at step 8 is the final one
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [8]
    assert (tmp_path / "latest" / "8").is_dir() and result.checkpoint is not None


def test_clock_keeps_time_for_the_final_evaluation():
    clock = _Clock(max_time=100.0, elapsed_before=90.0)
    clock.record_steps(10, 1.0)  # 0.1 s per step
    assert not clock.out_of_time(estimated_eval=2.0)
    assert clock.out_of_time(estimated_eval=9.5)  # 90 + 0.1 + 9.5 + 1 s margin > 100
    assert clock.out_of_time(estimated_eval=2.0, steps=70)  # a call of 70 steps takes 7 s
    total = clock.estimated_total_steps(500, estimated_eval=4.0)
    assert 540 <= total <= 550  # about (100 - 90 - 5) / 0.1 more steps
