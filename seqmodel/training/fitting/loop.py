"""``fit``: the host loop that drives the pure train step of :mod:`seqmodel.training.optimization`.

The loop dispatches calls of train steps without waiting for them (:class:`Training`), fetches
their metrics at log and evaluation steps (:class:`LogIntervals`, :class:`Throughput`), evaluates
and saves on the schedule (:class:`CallSchedule`, :class:`Validation`, :class:`RunSaver`), and
stops at ``steps``, at ``max_time`` (:class:`TimeBudget`), on Ctrl-C or when a callback asks.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
from typing import Callable, NamedTuple, Sequence

from flax import nnx

from seqmodel.errors import TrainingError
from seqmodel.training import distributed, evaluation, optimization
from seqmodel.training import writers as metric_writers
from seqmodel.training.fitting import stopping
from seqmodel.training.fitting.clock import TimeBudget
from seqmodel.training.fitting.log_records import LogIntervals
from seqmodel.training.fitting.progress import ProgressBar
from seqmodel.training.fitting.saving import RunSaver
from seqmodel.training.fitting.schedule import CallSchedule
from seqmodel.training.fitting.throughput import Throughput
from seqmodel.training.fitting.training import Resumed, Training
from seqmodel.training.fitting.validation import Validation


class FitResult(NamedTuple):
    """What :func:`fit` returns. Losses are nats per element; ``val_bits`` is bits per element
    (per character for text). ``checkpoint`` is the run's checkpoint folder or None.
    ``tokens_per_second`` is over the whole run (compile, evaluation, checkpoints included);
    ``step_tokens_per_second`` over the train steps alone, without the first (compiling)
    interval. ``interrupted``: stopped by a signal or a callback before its end, after saving;
    ``stop_signal``: the signal's number (``signal.SIGINT``, ``signal.SIGTERM``; None: not a
    signal). ``checkpoint_wait_seconds``: the time the loop waited for checkpoint saves."""

    state: optimization.TrainState
    steps: int
    tokens: int
    train_seconds: float
    tokens_per_second: float
    step_tokens_per_second: float | None
    train_loss: float
    val_loss: float | None
    val_bits: float | None
    best_val_loss: float | None
    checkpoint: str | None
    interrupted: bool
    stop_signal: int | None = None
    checkpoint_wait_seconds: float = 0.0


def fit(model, dataset, config: optimization.TrainConfig, *, out_dir: str | os.PathLike | None = None,
        resume: bool = False, progress: bool = True,
        callback: Callable[[int, dict], bool | None] | None = None,
        writers: Sequence[metric_writers.MetricWriter] = (), run_metadata: dict | None = None,
        parallel: distributed.DataParallel | None = None) -> FitResult:
    """Train ``model`` on ``dataset`` (see :class:`seqmodel.data.Dataset`) as ``config`` says.

    Every ``config.eval_every`` steps and at the end: exact validation NLL, then a checkpoint
    in ``out_dir/checkpoints`` (:mod:`seqmodel.training.checkpoint`: the newest two steps and the best
    one are kept), written in the background while training goes on. ``out_dir`` also receives
    ``metrics.jsonl`` (one JSON object per log interval or evaluation) and ``loss.png``.
    ``resume=True`` continues from the newest readable step exactly: parameters, optimizer state,
    step, schedule, carry, RNG and data position. The records past that step (logged by the
    interrupted run after its last checkpoint) are dropped from ``metrics.jsonl`` and from
    ``writers`` that have a ``rewind(step)`` method, so each step is recorded once. A newest
    step that cannot be read gives way to the one before it, with a warning (logger
    ``seqmodel``) and a record ``{"event": "resumed_from_older_step", ...}``; a run that never
    saved a step completely starts from step 0, with a warning.

    Ctrl-C (SIGINT) or SIGTERM stops after the current call of steps, saves, and returns with
    ``interrupted=True`` and ``stop_signal``; with several processes, all stop at the same log
    step. A non-finite loss raises :class:`TrainingError` without saving, so the checkpoints on
    disk stay the last good ones; so does a checkpoint that cannot be written (the steps saved
    before it stay readable). ``callback(step, record)`` runs at each log interval (in every
    process); returning True stops the run as a signal does. ``writers`` (see
    :mod:`seqmodel.training.writers`) receive every record besides ``metrics.jsonl``, and are closed at the
    end of the run. ``model`` ends up holding the trained parameters (in the mode it had).

    ``parallel`` (a :class:`seqmodel.training.distributed.DataParallel`; None: as many devices as split
    the batch) splits each batch and the lanes' carry over its ``data`` mesh axis; with several
    processes only process 0 writes records, ``loss.png`` and the progress bar (see
    ``docs/distributed.md``).

    Example::

        result = fit(model, load_dataset("tinyshakespeare"), TrainConfig(max_time=110),
                     out_dir="runs/shakespeare")
        result.val_loss, result.checkpoint
    """
    if config.steps is None and config.max_time is None:
        raise ValueError("TrainConfig needs steps or max_time (or both) to know when to stop")
    out_path = pathlib.Path(out_dir) if out_dir is not None else None
    if resume and out_path is None:
        raise ValueError("resume=True needs out_dir")
    parallel = parallel if parallel is not None else distributed.default_parallel(
        config.batch_size)
    if out_path is not None and not resume and parallel.is_main and _holds_run(out_path):
        # A fresh run there would put its steps beside the old run's, and the best step of the
        # two runs together (load_model's default) could be the old run's. (Process 0 checks,
        # before it writes; the other processes would see its files.)
        raise ValueError(f"out_dir={str(out_path)!r} already holds a run; pass resume=True to "
                         "continue it, or choose another out_dir")
    parallel.check_config(config, model.config)
    training, resumed = Training.start(model, dataset, config, parallel, out_path=out_path,
                                       resume=resume)
    validation = Validation(dataset, config, parallel, optimization.eval_graphdef(model))
    budget = TimeBudget(config.max_time, resumed.elapsed)
    if config.max_time is not None:
        # A time-bounded run keeps time for its final evaluation and checkpoint.
        validation.time_one_batch(training.state, parallel)

    run_writers, own_writers, history = _writers(out_path, writers, parallel, resumed if resume
                                                 else None)
    if resumed.skipped:
        _set_aside_unreadable(out_path, resumed, parallel)
    saver = RunSaver(out_path, metadata={**(run_metadata or {}),
                                         "model_config": model.config.to_dict(),
                                         "train_config": config.to_dict(),
                                         "data": dataset.metadata()},
                     best_val_loss=resumed.best_val_loss, saved_step=resumed.saved_step)
    bar = ProgressBar(enabled=progress and parallel.is_main,
                      total=int(training.state.horizon) if config.steps else None,
                      initial=training.step)
    log = LogIntervals(config.log_every, teacher_forcing=not config.plain_teacher_forcing)
    loop = _Loop(config, training, budget=budget, validation=validation, saver=saver, log=log,
                 meter=Throughput(resumed.tokens), writers=run_writers, bar=bar,
                 callback=callback)
    try:
        if resumed.skipped:
            loop.write(_fallback_record(resumed))
        loop.run()  # ends once the last save is on disk
    finally:
        bar.close()
        for writer in [*own_writers, *writers]:
            writer.close()
        saver.close()

    state = training.state
    nnx.update(model, *parallel.local_copy((state.params, state.model_state)))
    train_seconds = budget.elapsed()
    if out_path is not None and parallel.is_main:
        metric_writers.plot_losses(history.records, out_path / "loss.png")
    run_seconds = max(train_seconds - resumed.elapsed, 1e-9)
    return FitResult(
        state=state,
        steps=training.step,
        tokens=loop.meter.tokens,
        train_seconds=train_seconds,
        tokens_per_second=(loop.meter.tokens - resumed.tokens) / run_seconds,
        step_tokens_per_second=loop.meter.step_tokens_per_second(),
        train_loss=log.train_loss,
        val_loss=None if loop.last_val is None else loop.last_val.loss,
        val_bits=None if loop.last_val is None else loop.last_val.bits,
        best_val_loss=saver.best_val_loss,
        checkpoint=saver.latest_path(),
        interrupted=loop.interrupted,
        stop_signal=loop.stop_signal,
        checkpoint_wait_seconds=saver.wait_seconds,
    )


def _writers(out_path: pathlib.Path | None, writers: Sequence[metric_writers.MetricWriter], parallel,
             resumed: Resumed | None) -> tuple[list, list, metric_writers.MemoryWriter]:
    """``(the run's writers, those fit opened, the records loss.png is drawn from)``. Only
    process 0 writes. A resumed run (``resumed``) first rewinds ``metrics.jsonl`` and the
    writers that can to the step it continues from."""
    history = metric_writers.MemoryWriter()
    if not parallel.is_main:
        return [], [], history
    own_writers: list = []
    if out_path is not None:
        metrics_path = out_path / "metrics.jsonl"
        jsonl = metric_writers.JsonlWriter(metrics_path, append=resumed is not None)
        if resumed is not None:
            jsonl.rewind(resumed.step)
        # A resumed run's plot shows its whole history: the records of the runs before it.
        history = metric_writers.MemoryWriter(metric_writers.read_jsonl(metrics_path) if resumed else ())
        own_writers = [jsonl, history]
    if resumed is not None:
        for writer in writers:
            rewind = getattr(writer, "rewind", None)
            if callable(rewind):
                rewind(resumed.step)
    return own_writers + list(writers), own_writers, history


def _holds_run(out_path: pathlib.Path) -> bool:
    # Imported here: the checkpoint package loads orbax, which `import seqmodel` must not.
    from seqmodel.training.checkpoint import inspect_run

    return inspect_run(out_path).holds_run


def _fallback_record(resumed: Resumed) -> dict:
    """The record of a resumed run that skipped newer steps it could not read."""
    return {"step": resumed.step, "event": "resumed_from_older_step",
            "unreadable_steps": [step for step, _ in resumed.skipped],
            "reasons": [reason for _, reason in resumed.skipped]}


def _set_aside_unreadable(out_path: pathlib.Path, resumed: Resumed, parallel) -> None:
    """Move the unreadable steps newer than the resumed one out of the checkpoint folder (in
    process 0; the others wait), so that the run saves those steps anew."""
    from seqmodel.training import checkpoint

    if parallel.is_main:
        checkpoint.set_aside_unreadable_steps(out_path, resumed.step)
    if parallel.num_processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("seqmodel: unreadable steps set aside")


class _Loop:
    """The loop of one :func:`fit` call over its parts: when to dispatch, log, evaluate, save
    and stop."""

    def __init__(self, config: optimization.TrainConfig, training: Training, *, budget: TimeBudget,
                 validation: Validation, saver: RunSaver, log: LogIntervals, meter: Throughput,
                 writers: list, bar: ProgressBar, callback):
        self.schedule = CallSchedule(config)
        self.training = training
        self.budget, self.validation, self.saver = budget, validation, saver
        self.log, self.meter, self.writers, self.bar = log, meter, writers, bar
        self.callback = callback
        self.last_val: evaluation.EvalResult | None = None
        self.interrupted = False
        self.stop_signal: int | None = None

    def run(self) -> None:
        schedule, training = self.schedule, self.training
        with stopping.stop_request_for(training.parallel) as stop:
            while not schedule.done(training.step):
                count = schedule.steps_this_call(training.step)
                if stop.stopping or self.budget.out_of_time(self.estimated_eval_seconds(),
                                                            steps=count):
                    self.interrupted = stop.stopping
                    break
                before = training.step
                self.meter.dispatched(count, compiled=training.dispatch(count))
                self.bar.update(count)
                # A call never passes an evaluation step (steps_this_call), but may pass a log one.
                at_eval = schedule.evaluates_at(training.step)
                synced = schedule.logs_between(before, training.step) or at_eval
                if synced:
                    for record in self.flush(final=at_eval):
                        if self.callback is not None and self.callback(record["step"], record):
                            stop.ask()
                # Every process fetched the same steps here: a stop is agreed on across them.
                stop.poll(sync=synced)
                if at_eval and not schedule.done(training.step):
                    self.last_val = self.evaluate()
                    self.save(self.last_val)
                    self.meter.restart_interval()  # evaluation is not step time
                    if self.last_val is not None:
                        self.bar.note(f"step {training.step}: val_loss {self.last_val.loss:.4f}")
            self.stop_signal = stop.signal_number if self.interrupted and (
                stop.signal_number != stopping.CALLBACK) else None
            self.flush(final=True)
            if schedule.config.steps is None:
                self.bar.end_at(training.step)
            # A time-bounded run may run out of time right after an evaluation step: that step is
            # then evaluated and saved already.
            finished_at_evaluation = self.validation.evaluated_at == training.step and (
                not self.saver.active or self.saver.newest_step == training.step)
            if not finished_at_evaluation:
                if not self.interrupted:
                    self.last_val = self.evaluate()
                self.save(None if self.interrupted else self.last_val)
            # Still under the stop request: a signal now does not cut the last save short.
            self.saver.wait()

    def estimated_eval_seconds(self) -> float:
        saving = (self.budget.save_seconds or 1.0) if self.saver.active else 0.0
        return self.validation.estimated_seconds() + saving

    def write(self, record: dict) -> None:
        for writer in self.writers:
            writer.write(record)

    def flush(self, *, final: bool = False) -> list[dict]:
        """Fetch the pending metrics, check them, log them; returns the records written, one
        per finished log interval (with ``final``, before an evaluation or at the end, also the
        unfinished one)."""
        steps = self.training.fetch()
        if steps:
            for at_step, step_metrics in steps:
                if not math.isfinite(step_metrics["loss"]):
                    raise TrainingError(
                        f"training stopped: the loss became {step_metrics['loss']} at step "
                        f"{at_step}; {self.saver.kept()}. Lower --lr or --clip-norm, or check "
                        f"the data")
            elements = sum(step_metrics["elements"] for _, step_metrics in steps)
            seconds = self.meter.close_interval(elements, self.budget)
            self.log.add(steps, seconds)
            # A time-bounded run re-estimates where its schedule ends from the measured speed.
            if self.schedule.config.steps is None:
                total = self.budget.estimated_total_steps(self.training.step,
                                                          self.estimated_eval_seconds())
                if total is not None:
                    self.training.set_horizon(total)
                    self.bar.set_total(total)
            self.bar.show(loss=self.log.train_loss,
                          tokens_per_second=elements / seconds if seconds > 0 else 0)
        records = self.log.complete(final=final, elapsed=self.budget.elapsed())
        for record in records:
            self.write(record)
        return records

    def evaluate(self) -> evaluation.EvalResult | None:
        started = time.perf_counter()
        result = self.validation.run(self.training.state, self.training.step)
        if result is None:
            return None
        self.budget.eval_seconds = time.perf_counter() - started
        self.write(self.validation.record(self.training.step, result, self.budget.elapsed()))
        return result

    def save(self, val: evaluation.EvalResult | None) -> None:
        if not self.saver.active:
            return
        started = time.perf_counter()
        training = self.training
        # A time-bounded run times one whole save (the write included) to keep time for the
        # last one; every other save returns while the disk writes.
        measure = self.budget.max_time is not None and self.budget.save_seconds is None
        self.saver.save(training.step, training.parallel.host_state(training.state), val=val,
                        last_val=self.last_val, data_position=training.batches.position,
                        tokens=self.meter.tokens, train_seconds=self.budget.elapsed(),
                        wait=measure)
        self.budget.save_seconds = max(self.budget.save_seconds or 0.0,
                                       time.perf_counter() - started)
