"""Training: ``TrainConfig``, ``TrainState``, a pure jitted train step, evaluation and ``fit``.

The train step is a pure function ``(state, batch) -> (state, metrics)`` over pytrees (the model
is split with ``nnx.split`` into a static graph and arrays), jitted with the state donated, so
it can later be given input/output shardings (a ``data`` mesh axis over the batch and the lanes'
carry, parameters replicated) without changing its shape.

Example::

    model = SequenceModel(ModelConfig(vocab_size=dataset.vocab_size), rngs=nnx.Rngs(0))
    result = fit(model, dataset, TrainConfig(steps=1000), out_dir="runs/demo")
    result.val_loss, result.checkpoint

    # or step by step
    tx = make_optimizer(config)
    graphdef, state = init_train_state(model, tx, config)
    train_step = make_train_step(graphdef, tx, config)
    state, metrics = train_step(state, batch)          # metrics["loss"] is a () array
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from seqmodel import distributed
from seqmodel.configs import DictConfig
from seqmodel.data import BATCHINGS, Batch
from seqmodel.feed import rollout

Array = jax.Array

TEACHER_FORCING_SCHEDULES = ("constant", "linear", "inverse-sigmoid")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says what happened and what was kept."""


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig(DictConfig):
    """Every knob of a training run (the model's shape lives in :class:`seqmodel.ModelConfig`).

    Length of the run: ``steps`` and/or ``max_time`` (seconds of wall time for the whole of
    :func:`fit`, evaluation and checkpoints included). The learning rate warms up linearly over
    ``warmup_steps`` then decays with a cosine to ``learning_rate * final_learning_rate_fraction``
    at the end of the run: at ``steps``, or, with ``max_time`` only, at the step count estimated
    from the measured speed (re-estimated as the run goes, so a time-bounded run also ends decayed).

    Example::

        TrainConfig(batch_size=64, seq_len=128, max_time=110, learning_rate=3e-3)
    """

    # Defaults tuned on tinyshakespeare under a 110 s budget on 2 CPU cores with a GRU h512
    # (benchmarks/bench_quality.py): in that regime more, smaller updates learn more per
    # character than fewer large ones, at about the same characters per second.
    batch_size: int = 16
    seq_len: int = 32
    steps: int | None = None
    max_time: float | None = None
    learning_rate: float = 5e-3
    warmup_steps: int = 100
    final_learning_rate_fraction: float = 0.05
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    clip_norm: float = 1.0
    # Evaluate (and checkpoint) every this many steps; None: only at the end.
    eval_every: int | None = 2000
    eval_batch_size: int = 32
    eval_seq_len: int = 256
    val_fraction: float = 0.1
    teacher_forcing: float = 1.0
    teacher_forcing_schedule: str = "constant"
    batching: str = "lanes"
    seed: int = 0
    log_every: int = 20
    # Train steps per compiled call (a lax.scan over the steps; the same results as one step per
    # call). On CPU every call costs a dispatch that takes a core from the devices, and fresh
    # temporary buffers: XLA:CPU maps its temp allocation anew per call (124 MB for LSTM h512,
    # 30k page faults, ~25 ms). 20 steps per call ran the 2-device step 3-15% faster at LSTM
    # h128 (six runs) and 18-25% at h512 than one (bench_speed's seqmodel-1call column,
    # probe_steps_per_call.py). A multiple of log_every's default: log records fall at call ends.
    steps_per_call: int = 20

    def __post_init__(self):
        def bad(field: str, allowed: str):
            raise ValueError(f"TrainConfig.{field}={getattr(self, field)!r} is invalid: {allowed}")

        def positive_int(field: str, *, optional: bool = False):
            value = getattr(self, field)
            if optional and value is None:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(field, "must be a positive integer" + (" or None" if optional else ""))

        for field in ("batch_size", "seq_len", "eval_batch_size", "eval_seq_len", "log_every",
                      "steps_per_call"):
            positive_int(field)
        positive_int("steps", optional=True)
        positive_int("eval_every", optional=True)
        if self.max_time is not None and not (
            isinstance(self.max_time, (int, float)) and self.max_time > 0
        ):
            bad("max_time", "must be a positive number of seconds or None")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            bad("learning_rate", "must be > 0")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            bad("warmup_steps", "must be an integer >= 0")
        if not 0.0 <= self.final_learning_rate_fraction <= 1.0:
            bad("final_learning_rate_fraction", "must be in [0, 1]")
        if not self.weight_decay >= 0:
            bad("weight_decay", "must be >= 0")
        for field in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, field) < 1.0:
                bad(field, "must be in [0, 1)")
        if not self.clip_norm > 0:
            bad("clip_norm", "must be > 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "must be in [0, 1)")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            bad("teacher_forcing", "must be a probability in [0, 1]")
        if self.teacher_forcing_schedule not in TEACHER_FORCING_SCHEDULES:
            bad("teacher_forcing_schedule", f"allowed: {', '.join(TEACHER_FORCING_SCHEDULES)}")
        if self.batching not in BATCHINGS:
            bad("batching", f"allowed: {', '.join(BATCHINGS)}")
        if not isinstance(self.seed, int):
            bad("seed", "must be an integer")

    @property
    def plain_teacher_forcing(self) -> bool:
        """True when every step feeds the truth: the train step then uses the teacher-forced path."""
        return self.teacher_forcing == 1.0 and self.teacher_forcing_schedule == "constant"



# ---------------------------------------------------------------------------------------------
# Schedules and optimizer
# ---------------------------------------------------------------------------------------------


def learning_rate_at(config: TrainConfig, step: Array, horizon: Array) -> Array:
    """Linear warmup to ``learning_rate``, then cosine decay to the final fraction at ``horizon``.

    Equals ``optax.warmup_cosine_decay_schedule(0, lr, warmup, horizon, end)`` but takes the
    horizon as an array, so a time-bounded run can re-estimate it without recompiling."""
    step = jnp.asarray(step, jnp.float32)
    horizon = jnp.asarray(horizon, jnp.float32)
    peak = config.learning_rate
    end = peak * config.final_learning_rate_fraction
    warmup = float(config.warmup_steps)
    warm = peak * step / max(warmup, 1.0)
    progress = jnp.clip((step - warmup) / jnp.maximum(horizon - warmup, 1.0), 0.0, 1.0)
    decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup, warm, decayed)


def teacher_forcing_at(config: TrainConfig, step: Array, horizon: Array) -> Array:
    """Probability of feeding the truth at ``step`` (Bengio et al. 2015).

    ``constant``: ``p``. ``linear``: from 1 down to ``p`` at ``horizon``. ``inverse-sigmoid``:
    ``p + (1 - p) * k / (k + exp(step / k))`` with ``k`` chosen so the midpoint falls at half the
    horizon. ``p`` is ``config.teacher_forcing``."""
    floor = config.teacher_forcing
    step = jnp.asarray(step, jnp.float32)
    horizon = jnp.maximum(jnp.asarray(horizon, jnp.float32), 8.0)
    if config.teacher_forcing_schedule == "constant":
        return jnp.asarray(floor, jnp.float32)
    if config.teacher_forcing_schedule == "linear":
        return jnp.maximum(floor, 1.0 - (1.0 - floor) * step / horizon)
    # k log k = horizon / 2, solved by fixed-point iteration (converges for k > e).
    half = horizon / 2.0
    k = jnp.maximum(half / jnp.log(half), jnp.e)
    for _ in range(30):
        k = jnp.maximum(half / jnp.log(k), jnp.e)
    return floor + (1.0 - floor) * k / (k + jnp.exp(jnp.minimum(step / k, 80.0)))


def _decay_mask(params):
    # Weight decay on matrices only (kernels, embeddings), not on biases: the nanoGPT convention.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm -> adamw`` with an injectable learning rate (set by the train step)."""
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        # mask is a function of the parameters, not a schedule: it must stay a static argument.
        optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
            learning_rate=config.learning_rate, b1=config.beta1, b2=config.beta2,
            weight_decay=config.weight_decay, mask=_decay_mask,
        ),
    )


def _with_learning_rate(opt_state, learning_rate: Array):
    clip_state, adam_state = opt_state
    hyperparams = dict(adam_state.hyperparams, learning_rate=learning_rate)
    return (clip_state, adam_state._replace(hyperparams=hyperparams))


# ---------------------------------------------------------------------------------------------
# State and steps
# ---------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything that changes during training (all arrays, so it jits, donates and checkpoints).

    Attributes:
      step: ``()`` int32, optimizer steps taken.
      params: ``nnx.State`` of the model's ``nnx.Param`` variables.
      model_state: ``nnx.State`` of the other variables (the dropout RNG stream).
      opt_state: the optax state.
      carry: the training lanes' carry, one ``(batch_size, h)`` leaf per cell state.
      key: ``(2,)`` uint32 raw PRNG key data for scheduled sampling.
      horizon: ``()`` int32, the step at which the learning rate (and teacher forcing) schedule ends.
    """

    step: Array
    params: Any
    model_state: Any
    opt_state: Any
    carry: Any
    key: Array
    horizon: Array

    def replace(self, **changes) -> "TrainState":
        return dataclasses.replace(self, **changes)


def split_model(model) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``model`` -> ``(graphdef, params, other state)``, in training mode."""
    model.train()
    return nnx.split(model, nnx.Param, ...)


def eval_graphdef(model) -> nnx.GraphDef:
    """The graph of ``model`` in eval mode (dropout off), without touching ``model`` itself."""
    return nnx.graphdef(nnx.view(model, deterministic=True))


def init_train_state(model, tx: optax.GradientTransformation, config: TrainConfig, *,
                     horizon: int | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """Split ``model`` and build the initial :class:`TrainState` (zero carry, step 0)."""
    graphdef, params, model_state = split_model(model)
    key = jax.random.key_data(jax.random.key(config.seed + 1))
    horizon = horizon or config.steps or 10**9
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        # Copies: a cell may hand out one zeros array for several carry leaves, and a donated
        # state must not hold the same buffer twice.
        carry=jax.tree.map(lambda leaf: jnp.array(leaf, copy=True),
                           model.init_carry(config.batch_size)),
        key=key,
        horizon=jnp.asarray(horizon, jnp.int32),
    )
    return graphdef, state


def reset_carry(carry, reset: Array):
    """Zero the carry of the rows where ``reset`` ``(b,)`` is True."""
    def zero_rows(leaf):
        keep = jnp.logical_not(reset).reshape((-1,) + (1,) * (leaf.ndim - 1))
        return jnp.where(keep, leaf, jnp.zeros_like(leaf))

    return jax.tree.map(zero_rows, carry)


def _as_model_input(values: Array) -> Array:
    # Token ids travel in the data's smallest dtype (uint8, ...) and widen on the device.
    if jnp.issubdtype(values.dtype, jnp.integer):
        return values.astype(jnp.int32)
    return values.astype(jnp.float32)


def masked_nll_rows(model, outputs, targets: Array, mask: Array | None) -> tuple[Array, Array]:
    """``(b,)`` sums of -log_prob over each row's weighted elements and ``(b,)`` sums of weights."""
    log_prob = model.head.log_prob(outputs, targets)
    log_prob = log_prob.reshape(log_prob.shape[0], -1)
    if mask is None:
        return -jnp.sum(log_prob, axis=1), jnp.full(log_prob.shape[:1], log_prob.shape[1],
                                                    jnp.float32)
    mask = mask.astype(jnp.float32).reshape(log_prob.shape)
    # where, not multiply: a padded element's log_prob may be -inf or NaN and must not leak.
    return -jnp.sum(jnp.where(mask > 0, log_prob * mask, 0.0), axis=1), jnp.sum(mask, axis=1)


def masked_nll(model, outputs, targets: Array, mask: Array | None) -> tuple[Array, Array]:
    """``(sum of -log_prob over weighted elements, sum of weights)``."""
    totals, weights = masked_nll_rows(model, outputs, targets, mask)
    return jnp.sum(totals), jnp.sum(weights)


def make_loss_fn(config: TrainConfig) -> Callable:
    """``loss_fn(model, carry, batch, key, teacher_probability) -> (loss, (carry, weight))``:
    the masked mean NLL of one batch, differentiable with ``nnx.value_and_grad``.

    With plain teacher forcing (``config.plain_teacher_forcing``) it runs ``model(inputs, carry)``;
    otherwise :func:`seqmodel.feed.rollout` with a Bernoulli(``teacher_probability``) feed mask."""
    plain = config.plain_teacher_forcing

    def loss_fn(model, carry, batch: Batch, key, teacher_probability):
        inputs, targets = _as_model_input(batch.inputs), _as_model_input(batch.targets)
        if plain:
            outputs, carry = model(inputs, carry)
        else:
            mask_key, rollout_key = jax.random.split(key)
            teacher_mask = jax.random.bernoulli(mask_key, teacher_probability, inputs.shape[:2])
            outputs, carry, _ = rollout(model, inputs, teacher_mask, key=rollout_key, carry=carry)
        total, weight = masked_nll(model, outputs, targets, batch.mask)
        return total / jnp.maximum(weight, 1.0), (carry, weight)

    return loss_fn


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    config: TrainConfig, *, jit: bool = True, **jit_options) -> Callable:
    """Build ``train_step(state, batch) -> (state, metrics)``.

    One optimizer step on one :class:`~seqmodel.data.Batch` ``(b, t[, d])``: reset the carry of
    rows with ``batch.reset``, loss and gradients, learning rate from the schedule, clipped AdamW
    update. ``metrics`` holds ``()`` arrays: ``loss`` (nats per element), ``grad_norm`` (before
    clipping), ``learning_rate``, ``teacher_forcing``, ``elements`` (weighted element count).

    With ``jit=True`` the step is ``jax.jit(..., donate_argnums=0, **jit_options)``:
    ``jit_options`` may carry ``in_shardings`` / ``out_shardings`` for data parallelism.

    Example::

        step = make_train_step(graphdef, tx, config)
        state, metrics = step(state, batch)
    """
    # nnx.value_and_grad rather than jax's: the model's dropout RNG stream advances inside the
    # differentiated function, which only an NNX transform can carry back out.
    grad_fn = nnx.value_and_grad(make_loss_fn(config), argnums=nnx.DiffState(0, nnx.Param),
                                 has_aux=True)

    def train_step(state: TrainState, batch: Batch):
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        teacher_probability = teacher_forcing_at(config, state.step, state.horizon)
        carry = reset_carry(state.carry, jnp.asarray(batch.reset))
        model = nnx.merge(graphdef, state.params, state.model_state)
        (loss, (carry, weight)), grads = grad_fn(model, carry, batch, step_key, teacher_probability)
        _, _, model_state = nnx.split(model, nnx.Param, ...)
        learning_rate = learning_rate_at(config, state.step, state.horizon)
        opt_state = _with_learning_rate(state.opt_state, learning_rate)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": learning_rate,
            "teacher_forcing": teacher_probability,
            "elements": weight,
        }
        new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                                  opt_state=opt_state, carry=jax.lax.stop_gradient(carry))
        return new_state, metrics

    if not jit:
        return train_step
    return jax.jit(train_step, donate_argnums=0, **jit_options)


def make_multi_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    config: TrainConfig, *, jit: bool = True, **jit_options) -> Callable:
    """Build ``multi_step(state, batches) -> (state, metrics)``: the steps of
    :func:`make_train_step` over ``K`` stacked batches (every leaf ``(K, b, ...)``) in one call,
    as a ``lax.scan``; ``metrics`` holds ``(K,)`` arrays, one entry per step. The loop body is the
    one-step program, so K steps here give the same state as K calls of the one-step function
    (bit for bit on CPU, as the checkpoint tests assert).

    Example::

        multi_step = make_multi_step(graphdef, tx, config)
        state, metrics = multi_step(state, stack_batches(four_batches))  # loss shape (4,)
    """
    train_step = make_train_step(graphdef, tx, config, jit=False)

    def multi_step(state: TrainState, batches: Batch):
        return jax.lax.scan(train_step, state, batches)

    if not jit:
        return multi_step
    return jax.jit(multi_step, donate_argnums=0, **jit_options)


def stack_batches(batches: list[Batch]) -> Batch:
    """``K`` batches ``(b, ...)`` -> one batch of ``(K, b, ...)`` leaves (a ``None`` mask stays
    None), the input of :func:`make_multi_step`."""
    return jax.tree.map(lambda *leaves: np.stack(leaves), *batches)


def batch_shapes(batch: Batch) -> tuple:
    """The shapes of ``batch``'s leaves: batches with equal shapes can be stacked."""
    return tuple(np.shape(leaf) for leaf in jax.tree.leaves(batch))


# How many dispatched train calls (of one or several steps) may be unfinished at once. XLA:CPU's
# PjRt client queues up to 32 executions per device; one more blocks the dispatching task on a
# thread of the client's pool, which has one thread per core. With several CPU devices and an
# all-reduce in the step, two such blocked threads leave none to start one device's half of a
# step, whose other half waits in the all-reduce forever (XLA aborts after 40 s; seen in ~1 of 3
# tight loops of 400 steps on 2 cores, diagnosed with gdb). A few calls of lead keep the devices
# busy just as well.
MAX_CALLS_IN_FLIGHT = 8


class CallsInFlight:
    """Keeps asynchronous dispatch at most ``limit`` calls ahead: :meth:`add` each call's outputs
    (e.g. its metrics) right after dispatching it; it waits for the outputs of the call
    dispatched ``limit`` calls earlier.

    Example::

        in_flight = CallsInFlight()
        for batch in batches:
            state, metrics = train_step(state, batch)
            in_flight.add(metrics)
    """

    def __init__(self, limit: int = MAX_CALLS_IN_FLIGHT):
        self.limit = limit
        self.outputs: collections.deque = collections.deque()

    def add(self, outputs) -> None:
        self.outputs.append(outputs)
        if len(self.outputs) > self.limit:
            # In a steady run this call is long done: the wait costs nothing.
            jax.block_until_ready(self.outputs.popleft())


# Fields of TrainConfig that the compiled step does not read: runs that differ only in these
# share one compiled step (tests and repeated fits in one process compile once; see
# DataParallel.train_step).
_STEP_NEUTRAL = dict(batch_size=1, seq_len=1, steps=None, max_time=None, eval_every=None,
                     eval_batch_size=1, eval_seq_len=1, val_fraction=0.0, batching="lanes", seed=0,
                     log_every=1, steps_per_call=1)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _eval_rows(graphdef, params, model_state, carry, batch: Batch):
    """One evaluation batch ``(b, t)``: ``(carry, (b,) NLL sums, (b,) weights)``."""
    model = nnx.merge(graphdef, params, model_state)
    carry = reset_carry(carry, batch.reset)
    outputs, carry = model(_as_model_input(batch.inputs), carry)
    # Per-row sums, added up on the host: with the rows split over devices the program then holds
    # no all-reduce. Back-to-back evaluation programs with an all-reduce each, not chained through
    # their totals, aborted in XLA:CPU's collective rendezvous under load (virtual CPU devices).
    totals, weights = masked_nll_rows(model, outputs, _as_model_input(batch.targets), batch.mask)
    return carry, totals, weights


_eval_batch = jax.jit(_eval_rows, static_argnums=0)


@jax.jit(static_argnums=0)
def _eval_stacked(graphdef, params, model_state, carry, batches: Batch):
    """:func:`_eval_rows` over stacked batches ``(K, b, t)`` as one ``lax.scan``: the per-row sums
    of all K. One call instead of K saves their dispatches and XLA:CPU's per-call temp buffers
    (37 batches of GRU h512 evaluation: 3.9 s instead of 4.9 s, 17k page faults instead of 618k)."""
    def add_batch(running, batch):
        carry, totals, weights = running
        carry, batch_totals, batch_weights = _eval_rows(graphdef, params, model_state, carry,
                                                        batch)
        return (carry, totals + batch_totals, weights + batch_weights), None

    zeros = jnp.zeros(batches.reset.shape[1:], jnp.float32)
    (carry, totals, weights), _ = jax.lax.scan(add_batch, (carry, zeros, zeros), batches)
    return carry, totals, weights


# Evaluation batches per stacked call (a validation set of more batches takes several calls).
EVAL_BATCHES_PER_CALL = 64


def eval_chunks(batches: Iterable[Batch], place: Callable | None = None,
                max_batches: int = EVAL_BATCHES_PER_CALL) -> list[tuple[Batch, bool]]:
    """Host batches ``(b, t)`` -> ``[(batch, stacked)]`` for :func:`evaluate`: runs of consecutive
    batches of one shape stacked to ``(K, b, t)`` (``stacked=True``), up to ``max_batches`` each.
    ``place(batch, stacked=...)`` puts each on its devices (e.g.
    ``DataParallel.place_eval_batch``). Batches already on a device stay one per chunk."""
    chunks, run, run_shapes = [], [], None

    def close_run():
        if run:
            stacked = len(run) > 1
            batch = stack_batches(run) if stacked else run[0]
            chunks.append((place(batch, stacked=stacked) if place else batch, stacked))
            run.clear()

    for batch in batches:
        if any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(batch)):
            close_run()
            chunks.append((batch, False))
            continue
        shapes = batch_shapes(batch)
        if shapes != run_shapes or len(run) == max_batches:
            close_run()
            run_shapes = shapes
        run.append(batch)
    close_run()
    return chunks


class EvalResult(NamedTuple):
    """``loss``: mean NLL in nats per element; ``bits``: the same in bits (bits per character for
    text); ``elements``: how many targets were scored."""

    loss: float
    bits: float
    elements: int


def _host_sum(values: Array) -> float:
    """Sum of ``values`` on the host in float64; rows held by other processes are gathered."""
    if not values.is_fully_addressable:
        from jax.experimental import multihost_utils

        values = multihost_utils.process_allgather(values, tiled=True)
    return float(np.sum(np.asarray(values, np.float64)))


def evaluate(model, batches: Iterable[Batch], *, graphdef: nnx.GraphDef | None = None,
             params=None, model_state=None) -> EvalResult:
    """Exact NLL over ``batches`` (e.g. ``dataset.validation_batches(...)``), in eval mode.

    The carry starts at zero and is passed from batch to batch (rows with ``reset`` start anew);
    it belongs to this call only, so evaluating never touches a training run's carry. Give either
    ``model`` or, inside training, its eval ``graphdef`` with ``params`` / ``model_state``.
    Consecutive host batches of one shape run as one compiled call (:func:`eval_chunks`).

    Example::

        result = evaluate(model, dataset.validation_batches(batch_size=32, seq_len=256))
        result.loss, result.bits
    """
    if graphdef is None:
        graphdef = eval_graphdef(model)
        _, params, model_state = nnx.split(model, nnx.Param, ...)
    return _evaluate_chunks(eval_chunks(batches), graphdef, params, model_state)


def _evaluate_chunks(chunks: list[tuple[Batch, bool]], graphdef, params,
                     model_state) -> EvalResult:
    """:func:`evaluate` over the output of :func:`eval_chunks` (placed once by ``fit``)."""
    # Per-row sums stay on the devices (a split elementwise add, no collective); the host adds
    # the rows once at the end. Every batch has the carry's rows, so the shapes always match.
    row_totals = row_weights = carry = None
    for batch, stacked in chunks:
        if carry is None:
            rows = batch.reset.shape[-1]
            carry = nnx.merge(graphdef, params, model_state).init_carry(rows)
        program = _eval_stacked if stacked else _eval_batch
        carry, totals, weights = program(graphdef, params, model_state, carry, batch)
        row_totals = totals if row_totals is None else row_totals + totals
        row_weights = weights if row_weights is None else row_weights + weights
    if carry is None:
        return EvalResult(float("nan"), float("nan"), 0)
    total, weight = _host_sum(row_totals), _host_sum(row_weights)
    loss = total / max(weight, 1.0)
    return EvalResult(loss, loss / math.log(2.0), int(round(weight)))


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


class FitResult(NamedTuple):
    """What :func:`fit` returns. Losses are nats per element; ``val_bits`` is bits per element
    (per character for text). ``checkpoint`` is the run's latest checkpoint folder or None.
    ``tokens_per_second`` is over the whole run (compile, evaluation, checkpoints included);
    ``step_tokens_per_second`` over the train steps alone, without the first (compiling) interval."""

    state: TrainState
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


class _StopRequest:
    """Turns the first Ctrl-C into a request to stop after the current step (the state buffers
    are donated to the step in flight, so raising in the middle of it would lose them); a second
    Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _Clock:
    """Wall time of the run, the deadline, and the step-time estimate behind the horizon."""

    now = staticmethod(time.perf_counter)  # replaceable in tests

    def __init__(self, max_time: float | None, elapsed_before: float):
        self.start = self.now() - elapsed_before
        self.max_time = max_time
        self.seconds_per_step: float | None = None
        self.eval_seconds: float | None = None
        self.save_seconds: float | None = None

    def elapsed(self) -> float:
        return self.now() - self.start

    def record_steps(self, steps: int, seconds: float) -> None:
        if steps <= 0 or seconds <= 0:
            return
        rate = seconds / steps
        # Averaged so that one slow interval (another process on the machine) does not swing it.
        self.seconds_per_step = rate if self.seconds_per_step is None else (
            0.7 * self.seconds_per_step + 0.3 * rate)

    def reserve(self, estimated_eval: float) -> float:
        """Seconds kept for the final evaluation and checkpoint (and a margin for the last step)."""
        if self.eval_seconds is not None:  # measured beats estimated
            estimated_eval = 1.2 * (self.eval_seconds + (self.save_seconds or 0.0))
        return estimated_eval + 1.0

    def out_of_time(self, estimated_eval: float, *, steps: int = 1) -> bool:
        """Whether ``steps`` more steps and the final evaluation would pass ``max_time``."""
        if self.max_time is None:
            return False
        next_steps = (self.seconds_per_step or 0.0) * steps
        return self.elapsed() + next_steps + self.reserve(estimated_eval) >= self.max_time

    def estimated_total_steps(self, step: int, estimated_eval: float) -> int | None:
        if self.max_time is None or self.seconds_per_step is None:
            return None
        remaining = self.max_time - self.elapsed() - self.reserve(estimated_eval)
        return step + max(int(remaining / self.seconds_per_step), 1)


def _time_eval_batch(graphdef: nnx.GraphDef, state: TrainState, batch: Batch) -> float:
    """Seconds of one compiled evaluation batch (compiling it first)."""
    carry = nnx.merge(graphdef, state.params, state.model_state).init_carry(batch.reset.shape[0])
    jax.block_until_ready(_eval_batch(graphdef, state.params, state.model_state, carry, batch))
    times = []
    for _ in range(3):  # the fastest of three: the first runs after a compile may be slow
        started = time.perf_counter()
        jax.block_until_ready(_eval_batch(graphdef, state.params, state.model_state, carry, batch))
        times.append(time.perf_counter() - started)
    return min(times)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


class _Run:
    """One call of :func:`fit`: the state, the data, the clock and the run folder, and the steps
    of the loop (log, evaluate, save) as methods."""

    def __init__(self, model, dataset, config: TrainConfig, *, out_path, resume: bool,
                 progress: bool, callback, run_metadata: dict | None, parallel):
        from seqmodel import checkpoint as checkpoint_module  # keeps orbax off the import path

        self.model, self.dataset, self.config = model, dataset, config
        self.out_path, self.callback = out_path, callback
        self.run_metadata = run_metadata or {}
        self.parallel = parallel = distributed.resolve(parallel, config.batch_size)
        parallel.check_config(config)
        graphdef = split_model(model)[0]
        tx, self.train_step = parallel.train_step(graphdef, config)
        # K steps per call where they fit (see steps_this_call); the programs compile on first use.
        self.multi_step = (parallel.train_step(graphdef, config, stacked=True)[1]
                           if config.steps_per_call > 1 else None)
        _, state = init_train_state(model, tx, config)
        self.evaluation_graph = eval_graphdef(model)
        position, elapsed_before, self.best_val, self.tokens_before = None, 0.0, None, 0
        if resume:
            if out_path is None:
                raise ValueError("resume=True needs out_dir")
            state, saved = checkpoint_module.restore_train_state(out_path, state, model.config)
            position = saved.get("data_position")
            elapsed_before = float(saved.get("train_seconds", 0.0))
            self.best_val = saved.get("best_val_loss")
            self.tokens_before = int(saved.get("tokens", 0))
            if config.steps is not None:
                state = state.replace(horizon=jnp.asarray(config.steps, jnp.int32))
        self.state = parallel.place_state(state)
        self.elapsed_before = elapsed_before

        self.batches = parallel.local_batches(dataset.train_batches(
            batch_size=config.batch_size, seq_len=config.seq_len, batching=config.batching,
            seed=config.seed, position=position))
        val_batches = dataset.validation_batches(batch_size=config.eval_batch_size,
                                                 seq_len=config.eval_seq_len)
        val_batches = list(val_batches)
        self.val_batch_count = len(val_batches)
        # Placed once for the run, stacked into as few compiled calls as the shapes allow.
        self.val_chunks = eval_chunks(val_batches, place=parallel.place_eval_batch)
        self.unit = getattr(dataset, "bits_per_unit", None)
        self.clock = _Clock(config.max_time, elapsed_before)
        # A time-bounded run keeps time for its final evaluation and checkpoint: one evaluation
        # batch is compiled and timed up front. Evaluation itself runs the batches stacked, about
        # 20% faster than batch by batch, so the estimate errs on the safe side until the first
        # evaluation is measured.
        self.eval_batch_seconds = 0.0
        if config.max_time is not None and val_batches:
            self.eval_batch_seconds = _time_eval_batch(
                self.evaluation_graph, self.state, parallel.place_eval_batch(val_batches[0]))

        self.metrics_file = None
        if out_path is not None and parallel.is_main:
            out_path.mkdir(parents=True, exist_ok=True)
            self.metrics_file = open(out_path / "metrics.jsonl", "a" if resume else "w",
                                     encoding="utf-8")
        self.saver = checkpoint_module.RunCheckpoints(out_path) if out_path is not None else None
        self.bar = None
        if progress and parallel.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=int(self.state.horizon) if config.steps else None,
                            initial=int(self.state.step), unit="step", dynamic_ncols=True,
                            leave=True)

        self.step = int(self.state.step)
        self.tokens = self.tokens_before
        self.train_loss = float("nan")
        self.last_val: EvalResult | None = None
        self.last_saved_step: int | None = self.step if resume else None
        self.interrupted = False
        self.evaluated_at: int | None = None  # the step of the last evaluation
        # (last step of a call, steps in it, its metrics still on the device)
        self.pending: list[tuple[int, int, dict]] = []
        # Fetched steps whose log interval is not complete: (step, seconds, metrics).
        self.unlogged: list[tuple[int, float, dict]] = []
        self.in_flight = CallsInFlight()
        self.interval_start, self.interval_steps = time.perf_counter(), 0
        # An interval in which a program ran for the first time holds its compile: its speed is
        # not the step's (the first interval always; the one-step program's first use later on).
        self.programs_used: set[int] = set()
        self.interval_compiled = False
        self.steady_elements, self.steady_seconds = 0.0, 0.0  # train steps after the compile

    # -- time -------------------------------------------------------------------------------------

    def estimated_eval_seconds(self) -> float:
        evaluation = 1.25 * self.eval_batch_seconds * self.val_batch_count
        saving = (self.clock.save_seconds or 1.0) if self.out_path is not None else 0.0
        return evaluation + saving

    # -- records ----------------------------------------------------------------------------------

    def write(self, record: dict) -> None:
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()

    def flush(self, *, final: bool = False) -> list[dict]:
        """Fetch the pending metrics, check them, log them; returns the summaries written, one
        per finished log interval (every ``log_every`` steps; with ``final``, before an
        evaluation or at the end, also the unfinished one)."""
        if not self.pending:
            return self.log_steps(final=final)
        fetched_calls = jax.device_get([metrics for _, _, metrics in self.pending])
        # Per step: a call of K steps returns (K,) metrics, a one-step call scalars.
        steps_done, fetched = [], []
        for (last_step, count, _), metrics in zip(self.pending, fetched_calls):
            for index in range(count):
                steps_done.append(last_step - count + 1 + index)
                fetched.append({key: float(np.atleast_1d(value)[index])
                                for key, value in metrics.items()})
        self.pending = []
        now = time.perf_counter()
        seconds = now - self.interval_start
        for at_step, metrics in zip(steps_done, fetched):
            if not math.isfinite(metrics["loss"]):
                raise self.diverged(metrics["loss"], at_step)
        elements = sum(metrics["elements"] for metrics in fetched)
        self.tokens += int(round(elements))
        if not self.interval_compiled:
            self.clock.record_steps(self.interval_steps, seconds)
            self.steady_elements += elements
            self.steady_seconds += seconds
        self.interval_compiled = False
        self.train_loss = float(np.mean([metrics["loss"] for metrics in fetched]))
        for at_step, metrics in zip(steps_done, fetched):
            self.unlogged.append((at_step, seconds / len(fetched), metrics))
        self.interval_start, self.interval_steps = now, 0
        # A time-bounded run re-estimates where its schedule ends from the measured speed.
        if self.config.steps is None:
            total = self.clock.estimated_total_steps(self.step, self.estimated_eval_seconds())
            if total is not None:
                # Laid out as the step's input: a plain array here made the step compile again.
                self.state = self.state.replace(horizon=jax.device_put(
                    np.asarray(total, np.int32), self.parallel.replicated))
                if self.bar is not None:
                    self.bar.total = total
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.train_loss:.3f}",
                                 tok_s=f"{elements / seconds if seconds > 0 else 0:,.0f}",
                                 refresh=False)
        return self.log_steps(final=final)

    def log_steps(self, *, final: bool) -> list[dict]:
        """Write one record per finished log interval of the fetched steps (and with ``final``
        the unfinished one too); returns the records. A call of several steps may pass a log
        step, so the steps wait here until their interval is complete: records then fall every
        ``log_every`` steps whatever the steps per call."""
        log_every = self.config.log_every
        summaries = []
        while self.unlogged:
            last_step = self.unlogged[-1][0]
            # The steps of the first interval in the buffer: up to its next multiple of log_every.
            end = (self.unlogged[0][0] - 1) // log_every * log_every + log_every
            if last_step < end and not final:
                break
            group = [entry for entry in self.unlogged if entry[0] <= end]
            self.unlogged = self.unlogged[len(group):]
            at_step, _, last = group[-1]
            seconds = sum(share for _, share, _ in group)
            elements = sum(metrics["elements"] for _, _, metrics in group)
            summary = {"step": at_step,
                       "loss": float(np.mean([metrics["loss"] for _, _, metrics in group])),
                       "learning_rate": last["learning_rate"], "grad_norm": last["grad_norm"],
                       "tokens_per_second": elements / seconds if seconds > 0 else None,
                       "elapsed": round(self.clock.elapsed(), 3)}
            if not self.config.plain_teacher_forcing:
                summary["teacher_forcing"] = last["teacher_forcing"]
            self.write(summary)
            summaries.append(summary)
        return summaries

    def diverged(self, value: float, at_step: int) -> TrainingError:
        kept = (f"the last good checkpoint (step {self.last_saved_step}) is in {self.out_path}"
                if self.last_saved_step is not None and self.out_path is not None
                else "no checkpoint was written")
        return TrainingError(f"training stopped: the loss became {value} at step {at_step}; "
                             f"{kept}. Lower --lr or --clip-norm, or check the data")

    # -- evaluation and checkpoints ---------------------------------------------------------------

    def evaluate(self) -> EvalResult | None:
        if not self.val_chunks:
            return None
        started = time.perf_counter()
        # No multi-device train step may still be in flight when evaluation's programs start:
        # with virtual CPU devices, interleaved collectives of two programs can starve XLA:CPU's
        # all-reduce rendezvous (seen as a 40 s abort under load).
        jax.block_until_ready(self.state)
        result = _evaluate_chunks(self.val_chunks, self.evaluation_graph, self.state.params,
                                  self.state.model_state)
        self.clock.eval_seconds = time.perf_counter() - started
        self.evaluated_at = self.step
        record = {"step": self.step, "val_loss": result.loss,
                  "elapsed": round(self.clock.elapsed(), 3)}
        if self.unit:
            record[f"val_bits_per_{self.unit}"] = result.bits
        self.write(record)
        return result

    def save(self, val: EvalResult | None) -> None:
        if self.saver is None:
            return
        started = time.perf_counter()
        improved = val is not None and _finite(val.loss) and (
            self.best_val is None or val.loss < self.best_val)
        if improved:
            self.best_val = val.loss
        metadata = {
            **self.run_metadata,
            "model_config": self.model.config.to_dict(),
            "train_config": self.config.to_dict(),
            "data": self.dataset.metadata(),
            "data_position": self.batches.position,
            "step": self.step,
            "tokens": self.tokens,
            "train_seconds": self.clock.elapsed(),
            "val_loss": None if self.last_val is None else self.last_val.loss,
            "best_val_loss": self.best_val,
        }
        self.saver.save(self.step, self.parallel.host_state(self.state), metadata, best=improved)
        self.last_saved_step = self.step
        self.clock.save_seconds = max(self.clock.save_seconds or 0.0,
                                      time.perf_counter() - started)

    # -- the loop ---------------------------------------------------------------------------------

    def done(self) -> bool:
        return self.config.steps is not None and self.step >= self.config.steps

    def steps_this_call(self) -> int:
        """``config.steps_per_call`` when that many steps fit before the next evaluation and the
        end of the run, else 1. The calls then fall at the same steps in a resumed run as in an
        uninterrupted one (a run stops, and so resumes, only between calls), so the same
        programs compute the same steps."""
        config = self.config
        count = config.steps_per_call
        if count == 1:
            return 1
        boundaries = []
        if config.eval_every is not None:
            boundaries.append((self.step // config.eval_every + 1) * config.eval_every)
        if config.steps is not None:
            boundaries.append(config.steps)
        return count if not boundaries or self.step + count <= min(boundaries) else 1

    def call_steps(self, count: int) -> None:
        """Dispatch the next ``count`` train steps: as one call when their batches stack (one
        shape), else one call each. The metrics stay pending on the device until the next
        :meth:`flush`."""
        for batch, steps in self.batches.take(count):
            if steps not in self.programs_used:
                self.programs_used.add(steps)
                self.interval_compiled = True
            program = self.train_step if steps == 1 else self.multi_step
            self.state, metrics = program(self.state, batch)
            self.pending.append((self.step + steps, steps, metrics))
            self.in_flight.add(metrics)
            self.step += steps
            self.interval_steps += steps
        if self.bar is not None:
            self.bar.update(count)

    def train(self) -> None:
        config = self.config
        with self.parallel.stop_request() as stop:
            while not self.done():
                count = self.steps_this_call()
                if stop.requested or self.clock.out_of_time(self.estimated_eval_seconds(),
                                                            steps=count):
                    self.interrupted = stop.requested
                    break
                before = self.step
                self.call_steps(count)
                # A call never passes an evaluation step (steps_this_call), but may pass a log one.
                at_eval = config.eval_every is not None and self.step % config.eval_every == 0
                if self.step // config.log_every > before // config.log_every or at_eval:
                    for summary in self.flush(final=at_eval):
                        if self.callback is not None and self.callback(summary["step"], summary):
                            stop.requested = True
                if at_eval and not self.done():
                    self.last_val = self.evaluate()
                    self.save(self.last_val)
                    self.interval_start = time.perf_counter()  # evaluation is not step time
                    if self.bar is not None and self.last_val is not None:
                        self.bar.write(f"step {self.step}: val_loss {self.last_val.loss:.4f}")
            self.flush(final=True)
            if self.bar is not None and config.steps is None:
                # A time-bounded run ends where its time does, not at the last estimate.
                self.bar.total = self.step
                self.bar.refresh()
            # A time-bounded run may run out of time right after an evaluation step: that step is
            # then evaluated and saved already.
            finished_at_evaluation = self.evaluated_at == self.step and (
                self.saver is None or self.last_saved_step == self.step)
            if not finished_at_evaluation:
                if not self.interrupted:
                    self.last_val = self.evaluate()
                self.save(None if self.interrupted else self.last_val)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.saver is not None:
            self.saver.close()

    def result(self) -> FitResult:
        state = self.state
        nnx.update(self.model, *self.parallel.local_copy((state.params, state.model_state)))
        train_seconds = self.clock.elapsed()
        if self.out_path is not None and self.parallel.is_main:
            plot_losses(self.out_path / "metrics.jsonl", self.out_path / "loss.png")
        run_seconds = max(train_seconds - self.elapsed_before, 1e-9)
        return FitResult(
            state=state,
            steps=self.step,
            tokens=self.tokens,
            train_seconds=train_seconds,
            tokens_per_second=(self.tokens - self.tokens_before) / run_seconds,
            step_tokens_per_second=(self.steady_elements / self.steady_seconds
                                    if self.steady_seconds > 0 else None),
            train_loss=self.train_loss,
            val_loss=None if self.last_val is None else self.last_val.loss,
            val_bits=None if self.last_val is None else self.last_val.bits,
            best_val_loss=self.best_val,
            checkpoint=None if self.saver is None else str(self.saver.latest_path()),
            interrupted=self.interrupted,
        )


def fit(model, dataset, config: TrainConfig, *, out_dir: str | os.PathLike | None = None,
        resume: bool = False, progress: bool = True,
        callback: Callable[[int, dict], bool | None] | None = None,
        run_metadata: dict | None = None, parallel=None) -> FitResult:
    """Train ``model`` on ``dataset`` (see :class:`seqmodel.data.Dataset`) as ``config`` says.

    Every ``config.eval_every`` steps and at the end: exact validation NLL, then the checkpoints
    ``out_dir/latest`` and (when validation improved) ``out_dir/best``. ``out_dir`` also receives
    ``metrics.jsonl`` (one JSON object per log interval or evaluation) and ``loss.png``.
    ``resume=True`` continues from ``out_dir/latest`` exactly: parameters, optimizer state, step,
    schedule, carry, RNG and data position.

    Ctrl-C stops after the current step, saves ``latest`` and returns with ``interrupted=True``.
    A non-finite loss raises :class:`TrainingError` without saving, so the checkpoints on disk
    stay the last good ones. ``callback(step, metrics)`` runs at each log interval; returning True
    stops the run as Ctrl-C does. ``model`` ends up holding the trained parameters.

    ``parallel`` (a :class:`seqmodel.distributed.DataParallel`; None: all devices) splits each
    batch and the lanes' carry over its ``data`` mesh axis; with several processes only process 0
    writes ``metrics.jsonl``, ``loss.png`` and the progress bar (see ``docs/distributed.md``).

    Example::

        result = fit(model, load_dataset("tinyshakespeare"), TrainConfig(max_time=110),
                     out_dir="runs/shakespeare")
    """
    if config.steps is None and config.max_time is None:
        raise ValueError("TrainConfig needs steps or max_time (or both) to know when to stop")
    run = _Run(model, dataset, config, out_path=pathlib.Path(out_dir) if out_dir is not None else None,
               resume=resume, progress=progress, callback=callback, run_metadata=run_metadata,
               parallel=parallel)
    try:
        run.train()
    finally:
        run.close()
    return run.result()


def plot_losses(metrics_path: str | os.PathLike, image_path: str | os.PathLike) -> bool:
    """Draw train and validation loss against steps from ``metrics.jsonl`` into a PNG.

    Returns False (and draws nothing) when matplotlib is not installed or there is nothing to draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train, val = [], []
    with open(metrics_path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if "loss" in record:
                train.append((record["step"], record["loss"]))
            if "val_loss" in record:
                val.append((record["step"], record["val_loss"]))
    if not train and not val:
        return False
    figure, axes = plt.subplots(figsize=(7, 4))
    if train:
        axes.plot(*zip(*train), label="train")
    if val:
        axes.plot(*zip(*val), "o-", label="validation")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per element)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(image_path, dpi=100)
    plt.close(figure)
    return True
