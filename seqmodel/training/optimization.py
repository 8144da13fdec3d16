"""Training, the pure part: ``TrainConfig``, ``TrainState``, the jitted train step, evaluation.

The train step is a pure function ``(state, batch) -> (state, metrics)`` over pytrees (the model
is split with ``nnx.split`` into a static graph and arrays), jitted with the state donated, so
it can be given input/output shardings (a ``data`` mesh axis over the batch and the lanes'
carry, parameters replicated; :mod:`seqmodel.training.distributed`) without changing its shape. The host
loop that drives it (time budget, evaluation schedule, metrics, checkpoints) is
:func:`seqmodel.training.fitting.fit`.

Example::

    tx = make_optimizer(config)
    graphdef, state = init_train_state(model, tx, config)
    train_step = make_train_step(graphdef, tx, config)
    state, metrics = train_step(state, batch)          # metrics["loss"] is a () array
    result = evaluate(model, dataset.validation_batches(batch_size=32, seq_len=256))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from seqmodel.configs import (  # noqa: F401  (re-exported)
    TEACHER_FORCING_SCHEDULES,
    TrainConfig,
)
from seqmodel.data import Batch
from seqmodel.decoding.feed import rollout
from seqmodel.nn.model import reset_carry  # noqa: F401  (re-exported: the train step's reset)

Array = jax.Array

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
    """``model`` -> ``(graphdef, params, other state)`` of its training-mode graph (dropout on),
    without switching ``model`` itself out of its mode."""
    return nnx.split(nnx.view(model, deterministic=False), nnx.Param, ...)


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


def as_model_input(values: Array) -> Array:
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
    otherwise :func:`seqmodel.decoding.feed.rollout` with a Bernoulli(``teacher_probability``) feed mask."""
    plain = config.plain_teacher_forcing

    def loss_fn(model, carry, batch: Batch, key, teacher_probability):
        inputs, targets = as_model_input(batch.inputs), as_model_input(batch.targets)
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




# Fields of TrainConfig that the compiled step does not read, and the values they take in
# step_neutral_config.
_STEP_NEUTRAL_VALUES = dict(batch_size=1, seq_len=1, steps=None, max_time=None, eval_every=None,
                            eval_batch_size=1, eval_seq_len=1, val_fraction=0.0, batching="lanes",
                            seed=0, log_every=1, steps_per_call=1)


def step_neutral_config(config: TrainConfig) -> TrainConfig:
    """``config`` with every field that the compiled train step does not read set to a fixed
    value: two runs whose configs differ only in those fields (length of the run, batch shape,
    evaluation and logging settings, seed) share one compiled step when it is cached by this key
    (tests and repeated fits in one process then compile once; see
    :meth:`seqmodel.training.distributed.DataParallel.train_step`).

    Example::

        step_neutral_config(TrainConfig(steps=10)) == step_neutral_config(TrainConfig(steps=99))
    """
    return dataclasses.replace(config, **_STEP_NEUTRAL_VALUES)
