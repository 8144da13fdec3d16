"""The device side of a run: the train state, its batches, the compiled step programs, and the
metrics of dispatched calls that the host has not fetched yet."""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from seqmodel.training import optimization
from seqmodel.training.distributed import DataParallel
from seqmodel.training.fitting.in_flight import CallsInFlight

log = logging.getLogger("seqmodel")


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What a run takes over from the checkpoint it resumes, besides the train state (a fresh
    run: the defaults). ``step``: the step it continues from (0 for a fresh run, and for a
    resumed run that no step of was saved completely); ``skipped``: the steps that could not be
    read (newer than ``step``, or damaged folders), as ``(step, reason)``: set aside by
    :func:`seqmodel.training.checkpoint.set_aside_unreadable_steps`."""

    data_position: dict | None = None
    elapsed: float = 0.0
    best_val_loss: float | None = None
    tokens: int = 0
    saved_step: int | None = None
    step: int = 0
    skipped: tuple[tuple[int, str], ...] = ()


class Training:
    """The :class:`~seqmodel.training.optimization.TrainState` on the devices of ``parallel``, advanced by
    dispatching compiled calls of one step (``train_step``) or ``K`` stacked steps
    (``multi_step``) without waiting for them; :meth:`fetch` brings their metrics to the host.

    Example::

        training, resumed = Training.start(model, dataset, config, parallel)
        training.dispatch(20)                     # one call of 20 steps, not waited for
        for step, metrics in training.fetch():    # per step: {"loss": 2.3, ...}
            ...
    """

    def __init__(self, parallel: DataParallel, state: optimization.TrainState, batches, train_step,
                 multi_step):
        self.parallel = parallel
        self.state = state
        self.step = int(state.step)
        self.batches = batches
        self.train_step, self.multi_step = train_step, multi_step
        # Step counts per call whose program has run: a first run compiles it.
        self.programs_used: set[int] = set()
        # (last step of a call, steps in it, its metrics still on the device)
        self.pending: list[tuple[int, int, dict]] = []
        self.in_flight = CallsInFlight()

    @classmethod
    def start(cls, model, dataset, config: optimization.TrainConfig, parallel: DataParallel, *,
              out_path: pathlib.Path | None = None,
              resume: bool = False) -> tuple["Training", Resumed]:
        """A fresh state for ``model``, or with ``resume`` the ``latest`` checkpoint of
        ``out_path`` (parameters, optimizer state, step, schedule, carry, RNG and data
        position), laid out on ``parallel``'s mesh."""
        graphdef = optimization.split_model(model)[0]
        tx, train_step = parallel.train_step(graphdef, config)
        # K steps per call where they fit (CallSchedule); the programs compile on first use.
        multi_step = (parallel.train_step(graphdef, config, stacked=True)[1]
                      if config.steps_per_call > 1 else None)
        _, state = optimization.init_train_state(model, tx, config)
        resumed = Resumed()
        if resume:
            state, resumed = _resume(out_path, state, model.config)
            if config.steps is not None:
                state = state.replace(horizon=jnp.asarray(config.steps, jnp.int32))
        state = parallel.place_state(state)
        batches = parallel.local_batches(dataset.train_batches(
            batch_size=config.batch_size, seq_len=config.seq_len, batching=config.batching,
            seed=config.seed, position=resumed.data_position))
        return cls(parallel, state, batches, train_step, multi_step), resumed

    def dispatch(self, count: int) -> bool:
        """Dispatch the next ``count`` train steps: as one call when their batches stack (one
        shape), else one call each. Returns whether a program ran for the first time (its
        compile then falls in this call's time)."""
        compiled = False
        for batch, steps in self.batches.take(count):
            if steps not in self.programs_used:
                self.programs_used.add(steps)
                compiled = True
            program = self.train_step if steps == 1 else self.multi_step
            self.state, metrics = program(self.state, batch)
            self.pending.append((self.step + steps, steps, metrics))
            self.in_flight.add(metrics)
            self.step += steps
        return compiled

    def fetch(self) -> list[tuple[int, dict[str, float]]]:
        """The metrics of every dispatched step not fetched yet, as ``[(step, {name: value})]``
        (waits for their calls to finish)."""
        if not self.pending:
            return []
        fetched_calls = jax.device_get([metrics for _, _, metrics in self.pending])
        # Per step: a call of K steps returns (K,) metrics, a one-step call scalars.
        steps = []
        for (last_step, count, _), metrics in zip(self.pending, fetched_calls):
            for index in range(count):
                steps.append((last_step - count + 1 + index,
                              {key: float(np.atleast_1d(value)[index])
                               for key, value in metrics.items()}))
        self.pending = []
        return steps

    def set_horizon(self, total_steps: int) -> None:
        """Move the end of the learning-rate (and teacher-forcing) schedule to ``total_steps``."""
        # Laid out as the step's input: a plain array here made the step compile again.
        self.state = self.state.replace(horizon=jax.device_put(
            np.asarray(total_steps, np.int32), self.parallel.replicated))


def _resume(out_path: pathlib.Path, state: optimization.TrainState,
            model_config) -> tuple[optimization.TrainState, Resumed]:
    """The newest readable step of the run in ``out_path`` (see
    :func:`seqmodel.training.checkpoint.restore_train_state`), or ``state`` itself when the run never
    saved a step completely (it was killed during its first save): the run then starts from
    step 0, with a one-line notice."""
    from seqmodel.training import checkpoint  # keeps orbax off the import path

    run = checkpoint.inspect_run(out_path)
    aside = out_path / checkpoint.UNREADABLE
    if not run.holds_checkpoint:
        if not run.holds_run:
            raise checkpoint.CheckpointError(
                f"{str(out_path)!r} holds no run to resume (no checkpoint, no metrics.jsonl); "
                f"start it without resume")
        damaged = tuple((saved.step, reason) for saved, reason in run.damaged)
        unreadable = "".join(f"; step {step} cannot be read ({reason}) and is set aside in "
                             f"{aside}" for step, reason in damaged)
        log.warning(f"no step of the run in {out_path} was saved completely{unreadable}; "
                    f"starting it from step 0")
        return state, Resumed(skipped=damaged)
    restored = checkpoint.restore_train_state(out_path, state, model_config)
    saved, step = restored.metadata, int(restored.state.step)
    if restored.skipped:
        listing = ", ".join(f"{'the newer ' if skipped > step else ''}step {skipped} ({reason})"
                            for skipped, reason in restored.skipped)
        verb = "cannot be read and is" if len(restored.skipped) == 1 else \
            "cannot be read and are"
        log.warning(f"resuming from step {step}: {listing} {verb} set aside in {aside}")
    return restored.state, Resumed(
        data_position=saved.get("data_position"), elapsed=float(saved.get("train_seconds", 0.0)),
        best_val_loss=saved.get("best_val_loss"), tokens=int(saved.get("tokens", 0)),
        saved_step=step, step=step, skipped=restored.skipped)
