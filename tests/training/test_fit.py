"""The host loop (seqmodel.training.fitting): checkpoints, metric records and writers, the loss plot, calls in
flight, the evaluation schedule, the time budget, divergence."""

import itertools
import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from seqmodel import ModelConfig, SequenceModel
from seqmodel.data import ByteTokenizer, TextDataset
from seqmodel.training import distributed
from seqmodel.training import evaluation as evaluation_module
from seqmodel.training import writers as metrics
from seqmodel.training.fitting import FitResult, TrainingError, fit, in_flight
from seqmodel.training.fitting.clock import TimeBudget
from seqmodel.training.fitting.log_records import LogIntervals
from seqmodel.training.fitting.schedule import CallSchedule
from seqmodel.training.optimization import TrainConfig, split_model

VOCAB = 7


def tiny_model(seed=0, **overrides):
    config = ModelConfig(**{"vocab_size": VOCAB, "hidden_size": 16, "embed_size": 8, **overrides})
    return SequenceModel(config, rngs=nnx.Rngs(seed))


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


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the run ------------------------------------------------------------------------------------


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
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [12, 24]
    plot = tmp_path / "loss.png"
    pytest.importorskip("matplotlib")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # The trained parameters end up in the caller's model.
    np.testing.assert_array_equal(params_of(model)[0],
                                  jax.tree.leaves(result.state.params)[0])


@pytest.mark.parametrize("steps_per_call, calls", [(1, 30), (4, 9)])  # 4: 7 calls of 4, 2 of 1
def test_fit_keeps_at_most_a_few_calls_in_flight(monkeypatch, steps_per_call, calls):
    # More than 32 queued calls per device can deadlock XLA:CPU's collectives with several CPU
    # devices (in_flight.MAX_CALLS_IN_FLIGHT); between logs fit must wait for old calls itself.
    waited = []
    original = jax.block_until_ready

    def recording(tree):
        if isinstance(tree, dict) and "loss" in tree:
            waited.append(tree)
        return original(tree)

    monkeypatch.setattr(distributed.jax, "block_until_ready", recording)
    steps, limit = 30, in_flight.MAX_CALLS_IN_FLIGHT
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
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["5"]


def test_fit_needs_a_stopping_rule():
    with pytest.raises(ValueError, match="steps or max_time"):
        fit(tiny_model(), tiny_dataset(), TrainConfig(**FAST), progress=False)


@pytest.mark.slow
def test_max_time_ends_the_run_with_an_evaluation(monkeypatch):
    ticks = itertools.count(0.0, 0.25)  # a clock that advances 0.25 s whenever it is read
    monkeypatch.setattr(TimeBudget, "now", staticmethod(lambda: next(ticks)))
    # One step per call: the fake clock then advances a fixed amount per step.
    config = TrainConfig(max_time=20.0, eval_every=None, steps_per_call=1, **FAST)
    model = tiny_model(hidden_size=24)  # a graph of its own: a train step no other test compiled
    result = fit(model, tiny_dataset(), config, progress=False)
    assert 5 < result.steps < 80
    assert result.val_loss is not None and not result.interrupted
    assert int(result.state.horizon) < 10**9  # the schedule's end was estimated from the speed
    # Re-estimating the horizon must not change the step's input layout (it once recompiled).
    _, train_step = distributed.default_parallel(config.batch_size).train_step(
        split_model(model)[0], config)
    assert train_step._cache_size() == 1


def test_time_running_out_at_an_evaluation_step_evaluates_and_saves_once(monkeypatch, tmp_path):
    checks = itertools.count()  # one time check per call: calls at steps 0 and 4, then 8
    monkeypatch.setattr(TimeBudget, "out_of_time", lambda self, *args, **kwargs: next(checks) >= 2)
    evaluations = []
    original = evaluation_module.evaluate_chunks
    monkeypatch.setattr(evaluation_module, "evaluate_chunks",
                        lambda *args, **kwargs: evaluations.append(1) or original(*args, **kwargs))
    config = TrainConfig(max_time=1000.0, eval_every=8, steps_per_call=4, **FAST)
    result = fit(tiny_model(), tiny_dataset(), config, out_dir=tmp_path, progress=False)
    assert result.steps == 8 and not result.interrupted and result.val_loss is not None
    assert len(evaluations) == 1  # the evaluation at step 8 is the final one
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [8]
    assert (tmp_path / "checkpoints" / "8").is_dir() and result.checkpoint is not None


def test_clock_keeps_time_for_the_final_evaluation():
    clock = TimeBudget(max_time=100.0, elapsed_before=90.0)
    clock.record_steps(10, 1.0)  # 0.1 s per step
    assert not clock.out_of_time(estimated_eval=2.0)
    assert clock.out_of_time(estimated_eval=9.5)  # 90 + 0.1 + 9.5 + 1 s margin > 100
    assert clock.out_of_time(estimated_eval=2.0, steps=70)  # a call of 70 steps takes 7 s
    total = clock.estimated_total_steps(500, estimated_eval=4.0)
    assert 540 <= total <= 550  # about (100 - 90 - 5) / 0.1 more steps


# -- writers and the loss plot ------------------------------------------------------------------


def test_writers_see_every_record_and_the_plot_is_drawn_from_them(tmp_path, monkeypatch):
    plotted = []
    original_plot = metrics.plot_losses
    monkeypatch.setattr(metrics, "plot_losses", lambda records, path: plotted.append(
        list(records)) or original_plot(records, path))
    memory, called, closed = metrics.MemoryWriter(), [], []

    class Closing(metrics.MemoryWriter):
        def close(self):
            closed.append(len(self.records))

    model = tiny_model()
    model.eval()
    config = TrainConfig(steps=6, eval_every=3, **{**FAST, "log_every": 2})
    first = fit(model, tiny_dataset(), config, out_dir=tmp_path, progress=False,
                writers=[memory, metrics.CallbackWriter(called.append), Closing()])
    on_disk = read_records(tmp_path / "metrics.jsonl")
    assert memory.records == called == on_disk
    assert [r["step"] for r in on_disk] == [2, 3, 3, 4, 6, 6]  # logs every 2, evaluations at 3, 6
    assert closed == [6]  # fit closes the writers it was given
    assert plotted == [on_disk]
    assert isinstance(first, FitResult) and model.dropout.deterministic  # the model's mode stays

    # A resumed run appends to metrics.jsonl, and its plot shows the whole history.
    resumed_memory = metrics.MemoryWriter()
    config = TrainConfig(steps=8, eval_every=3, **{**FAST, "log_every": 2})
    fit(tiny_model(), tiny_dataset(), config, out_dir=tmp_path, resume=True, progress=False,
        writers=[resumed_memory])
    assert [r["step"] for r in resumed_memory.records] == [8, 8]  # a log record, the evaluation
    assert plotted[-1] == read_records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in plotted[-1]][:6] == [2, 3, 3, 4, 6, 6]


def test_only_process_0_writes(tmp_path):
    class NotProcessZero(distributed.DataParallel):  # the view of process 1 of a run
        is_main = False

    memory = metrics.MemoryWriter()
    result = fit(tiny_model(), tiny_dataset(), TrainConfig(steps=4, eval_every=2, **FAST),
                 out_dir=tmp_path, progress=False, writers=[memory],
                 parallel=NotProcessZero(distributed.data_mesh(1)))
    assert result.steps == 4 and result.val_loss is not None
    assert memory.records == []
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "loss.png").exists()
    assert (tmp_path / "checkpoints" / "4").is_dir()  # every process takes part in checkpoints


# -- the parts ----------------------------------------------------------------------------------


def test_call_schedule_never_passes_an_evaluation_or_the_end():
    schedule = CallSchedule(TrainConfig(steps=30, eval_every=10, steps_per_call=4, log_every=3))
    step, calls = 0, []
    while not schedule.done(step):
        count = schedule.steps_this_call(step)
        calls.append(count)
        step += count
    assert step == 30 and calls == [4, 4, 1, 1, 4, 4, 1, 1, 4, 4, 1, 1]
    assert schedule.evaluates_at(20) and not schedule.evaluates_at(21)
    assert schedule.logs_between(2, 3) and schedule.logs_between(1, 5)
    assert not schedule.logs_between(3, 5)
    every_call = CallSchedule(TrainConfig(max_time=5.0, eval_every=None, steps_per_call=4))
    assert every_call.steps_this_call(10**6) == 4 and not every_call.done(10**6)


def test_log_intervals_fall_every_log_every_steps_however_the_steps_were_fetched():
    def metrics_of(step):
        return {"loss": float(step), "learning_rate": 0.1, "grad_norm": 1.0,
                "teacher_forcing": 1.0, "elements": 10.0}

    log = LogIntervals(3, teacher_forcing=False)
    log.add([(step, metrics_of(step)) for step in (1, 2, 3, 4)], seconds=4.0)
    records = log.complete(final=False, elapsed=1.0)
    assert [(r["step"], r["loss"]) for r in records] == [(3, 2.0)]  # step 4 waits for 5 and 6
    assert records[0]["tokens_per_second"] == pytest.approx(30 / 3.0)
    log.add([(5, metrics_of(5))], seconds=1.0)
    assert log.complete(final=False, elapsed=2.0) == []
    (last,) = log.complete(final=True, elapsed=3.0)  # before an evaluation: the partial interval
    assert (last["step"], last["loss"], last["elapsed"]) == (5, 4.5, 3.0)
    assert "teacher_forcing" not in last and log.train_loss == 5.0
