"""Evaluation during a run: the validation batches placed once, the exact NLL at each
evaluation step, and an estimate of its cost for the time budget."""

from __future__ import annotations

import time

import jax
from flax import nnx

from seqmodel.training import evaluation, optimization
from seqmodel.training.distributed import DataParallel


class Validation:
    """The run's validation set, stacked and placed on the devices once, evaluated in the eval
    graph of the model (dropout off) on the train state's parameters.

    Example::

        validation = Validation(dataset, config, parallel, optimization.eval_graphdef(model))
        result = validation.run(training.state, step=2000)   # EvalResult, or None: no data
    """

    def __init__(self, dataset, config: optimization.TrainConfig, parallel: DataParallel,
                 graphdef: nnx.GraphDef):
        batches = list(dataset.validation_batches(batch_size=config.eval_batch_size,
                                                  seq_len=config.eval_seq_len))
        self.batch_count = len(batches)
        self.first_batch = batches[0] if batches else None  # on the host; timed on demand
        # Placed once for the run, stacked into as few compiled calls as the shapes allow.
        self.chunks = evaluation.eval_chunks(batches, place=parallel.place_eval_batch)
        self.graphdef = graphdef
        self.unit = getattr(dataset, "bits_per_unit", None)  # "char": records bits per char
        self.batch_seconds = 0.0  # one batch, measured by time_one_batch
        self.evaluated_at: int | None = None  # the step of the last evaluation

    def time_one_batch(self, state: optimization.TrainState, parallel: DataParallel) -> None:
        """Compile and time one evaluation batch, so that a time-bounded run keeps time for its
        final evaluation. Evaluation itself runs the batches stacked, about 20% faster than batch
        by batch, so the estimate errs on the safe side until an evaluation is measured."""
        if self.first_batch is None:
            return
        batch = parallel.place_eval_batch(self.first_batch)
        carry = nnx.merge(self.graphdef, state.params, state.model_state).init_carry(
            batch.reset.shape[0])

        def once():
            return jax.block_until_ready(evaluation.evaluate_batch(
                self.graphdef, state.params, state.model_state, carry, batch))

        once()  # compiles
        times = []
        for _ in range(3):  # the fastest of three: the first runs after a compile may be slow
            started = time.perf_counter()
            once()
            times.append(time.perf_counter() - started)
        self.batch_seconds = min(times)

    def estimated_seconds(self) -> float:
        return 1.25 * self.batch_seconds * self.batch_count

    def run(self, state: optimization.TrainState, step: int) -> evaluation.EvalResult | None:
        """The exact validation NLL of ``state``'s parameters (None without validation data)."""
        if not self.chunks:
            return None
        # No multi-device train step may still be in flight when evaluation's programs start:
        # with virtual CPU devices, interleaved collectives of two programs can starve XLA:CPU's
        # all-reduce rendezvous (seen as a 40 s abort under load).
        jax.block_until_ready(state)
        result = evaluation.evaluate_chunks(self.chunks, self.graphdef, state.params,
                                       state.model_state)
        self.evaluated_at = step
        return result

    def record(self, step: int, result: evaluation.EvalResult, elapsed: float) -> dict:
        """The metric record of an evaluation."""
        record = {"step": step, "val_loss": result.loss, "elapsed": round(elapsed, 3)}
        if self.unit:
            record[f"val_bits_per_{self.unit}"] = result.bits
        return record
