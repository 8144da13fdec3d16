"""The feed policy: per row and per step, feed the model the ground truth or its own sample.

Teacher forcing (all truth), free running (all samples), prompting (truth for a prefix of per-row
length) and scheduled sampling (truth with probability p; Bengio et al. 2015) are one mechanism:
:func:`feed_steps` runs ``model.step`` inside one ``lax.scan``; at each step a ``(b,)`` mask picks
the truth or the sample drawn at the step before. :func:`rollout` (training with scheduled
sampling) and :func:`seqmodel.generate` (free running after a prompt) both run it.

One way of drawing: the randomness of step ``i`` is ``head.draw_noise(fold_in(key, i))``, drawn
for a whole segment of steps in one vectorised call before the segment's scan (one large
random-bits computation is much cheaper on the CPU than a small one per step), and turned into a
sample by :func:`seqmodel.decoding.sampling.sample_with_noise`. The same key therefore gives the same
samples however the steps are cut into calls or segments.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqmodel.decoding import sampling

Array = jax.Array

# Largest number of noise elements drawn ahead of a scan segment (4 MiB in float32): a batch of
# 32 rows of a 65-token vocabulary draws the noise of 500 steps at once, a huge batch or
# vocabulary draws it in several segments.
NOISE_BUDGET = 1 << 20

# Why a row stopped, by code (a row's code is 0 while it runs; one that never stopped reports
# "length": it ran out of steps). "complete": a constraint's text is whole and nothing may
# follow it; "no_continuation": the constraint and the processors left the row no token.
STOP_REASONS = ("length", "eos", "stop_sequence", "complete", "no_continuation")
REASON_CODES = {name: code for code, name in enumerate(STOP_REASONS)}


class Stop(NamedTuple):
    """How rows end at a step, as ``draw`` reports it to :func:`feed_steps`.

    Attributes:
      reason: ``(b,)`` int32, a code of :data:`STOP_REASONS`: 0 where the row goes on.
      emitted: ``(b,)`` bool: the element of this step belongs to a row that ends here (False:
        the row ended before it, and its length does not count it).
    """

    reason: Array
    emitted: Any = True


class FeedState(NamedTuple):
    """The loop state carried from step to step.

    Attributes:
      carry: the model's carry, leaves ``(b, ...)``.
      x: ``(b,)`` or ``(b, d)``: the element fed at the next step (the last sample).
      stop_reasons: ``(b,)`` int32: 0 while the row runs, then why it stopped (a code of
        :data:`STOP_REASONS`).
      lengths: ``(b,)`` int32: elements emitted up to and including the one that ended the row.
      history: what the sampler remembers of each row (the logits processors'
        :class:`seqmodel.decoding.processors.History` and a constraint's automaton state; an
        empty one when none runs).
    """

    carry: Any
    x: Array
    stop_reasons: Array
    lengths: Array
    history: Any = None

    @property
    def done(self) -> Array:
        """``(b,)`` bool: the row has stopped."""
        return self.stop_reasons > 0


def start_state(carry, x: Array, history: Any = None) -> FeedState:
    """A :class:`FeedState` that feeds ``x`` ``(b[, d])`` first, with no row finished."""
    rows = x.shape[0]
    return FeedState(carry, x, jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), jnp.int32),
                     history)


def step_noise(head, key: Array, indices: Array, rows: int):
    """The noise of the steps ``indices`` ``(n,)``: step ``i`` draws from ``fold_in(key, i)``.
    Returns the head's noise pytree with leading ``(n, rows)``."""
    return jax.vmap(lambda index: sampling.draw_noise(head, jax.random.fold_in(key, index),
                                                      (rows,)))(indices)


def feed_steps(model, state: FeedState, *, key: Array, start, size: int,
               draw: Callable, truth: Array | None = None, use_truth: Array | None = None,
               dropout_key: Array | None = None, table: Array | None = None,
               greedy: bool = False, noise_budget: int = NOISE_BUDGET,
               record_outputs: bool = True, next_input: Callable | None = None,
               prepare_noise: Callable | None = None):
    """Exactly ``size`` steps of ``model.step`` with global step indices ``start ...``.

    At step ``i`` the input is ``truth[i]`` where ``use_truth[i]`` holds, else ``state.x`` (the
    sample of the step before); the head's output is turned into a sample by
    ``draw(noise, out)`` (e.g. :func:`seqmodel.decoding.sampling.sample_with_noise` with the sampling
    controls bound) and becomes the next ``state.x``.

    Args:
      model: a :class:`seqmodel.SequenceModel` (its mode decides dropout).
      state: the :class:`FeedState` to continue.
      key: sampling key; step ``i``'s noise comes from ``fold_in(key, i)``.
      start: global index of the first step (int or traced int32 scalar).
      size: number of steps (static).
      draw: ``(noise, out, history, i) -> (element, history, stop)``: ``stop`` is None (no row
        can stop) or a :class:`Stop`; with ``greedy`` the noise is None.
      truth: optional ``(size, b[, d])`` time-major elements to feed where ``use_truth``.
      use_truth: ``(size, b)`` bool, required with ``truth``.
      dropout_key: drives dropout in train mode (``fold_in(dropout_key, i)`` per step).
      table: the model's folded input table (:meth:`SequenceModel.input_table`).
      greedy: no noise is drawn (``draw`` gets None).
      noise_budget: largest number of noise elements drawn ahead of one scan segment.
      record_outputs: also return the head's outputs of every step.
      next_input: ``(element, history, i) -> x``: the model input that follows a sampled
        element (default: the element itself). Models whose inputs carry conditioning features
        after the element (lags, known covariates) build them here from ``history``.
      prepare_noise: ``noise (n, b, ...) -> noise``, applied to a segment's noise once before
        its scan: work that does not depend on the step's output (scaling by the temperature,
        adding a constant bias) leaves the scan body.

    Returns:
      ``(state, (samples, fed, outputs))``, each time-major ``(size, b, ...)``; ``outputs`` is
      None unless ``record_outputs``.
    """
    head = model.head
    rows = state.x.shape[0]

    def body(state: FeedState, scanned):
        index, noise, truth_t, use_truth_t = scanned
        x = state.x
        if truth_t is not None:
            x = jnp.where(use_truth_t.reshape(use_truth_t.shape + (1,) * (x.ndim - 1)),
                          truth_t, x)
        step_key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
        out, carry = model.step(x, state.carry, key=step_key, table=table)
        sample, history, stop = draw(noise, out, state.history, index)
        sample = jax.lax.stop_gradient(sample)
        following = sample if next_input is None else next_input(sample, history, index)
        if stop is not None:
            running = state.stop_reasons == 0
            counted = running & ((stop.reason == 0) | stop.emitted)
            state = state._replace(
                stop_reasons=jnp.where(running, stop.reason, state.stop_reasons),
                lengths=state.lengths + counted.astype(jnp.int32))
        state = state._replace(carry=carry, x=following.astype(state.x.dtype), history=history)
        return state, (sample.astype(state.x.dtype), x, out if record_outputs else None)

    def segment(state: FeedState, offset, length: int, truth_part, use_truth_part):
        indices = start + offset + jnp.arange(length, dtype=jnp.int32)
        noise = None if greedy else step_noise(head, key, indices, rows)
        if noise is not None and prepare_noise is not None:
            noise = prepare_noise(noise)
        return jax.lax.scan(body, state, (indices, noise, truth_part, use_truth_part))

    # Segments hold at most noise_budget noise elements: equal lengths plus one remainder.
    per_step = 0 if greedy else sum(
        leaf.size for leaf in jax.tree.leaves(
            jax.eval_shape(lambda k: sampling.draw_noise(head, k, (rows,)), key)))
    count = max(1, math.ceil(size * per_step / noise_budget))
    length, rest = divmod(size, count)

    def part(values, first: int, stop: int):
        return None if values is None else values[first:stop]

    if count == 1:
        state, records = segment(state, 0, size, truth, use_truth)
    else:
        def reshaped(values):
            if values is None:
                return None
            return values[: count * length].reshape((count, length) + values.shape[1:])

        state, records = jax.lax.scan(
            lambda state, scanned: segment(state, scanned[0] * length, length, *scanned[1:]),
            state, (jnp.arange(count, dtype=jnp.int32), reshaped(truth), reshaped(use_truth)))
        records = jax.tree.map(lambda a: a.reshape((count * length,) + a.shape[2:]), records)
        if rest:
            state, tail = segment(state, count * length, rest,
                                  part(truth, count * length, size),
                                  part(use_truth, count * length, size))
            records = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), records, tail)
    return state, records


def rollout(model, inputs: Array, teacher_mask: Array, *, key: Array, carry=None,
            temperature: float = 1.0):
    """Run ``model.step`` over ``t`` steps inside one ``lax.scan``, mixing truth and samples.

    Args:
      model: a :class:`seqmodel.SequenceModel` (train or eval mode; dropout draws from ``key``).
      inputs: ``(b, t)`` tokens or ``(b, t, d)`` values, the ground truth to feed.
      teacher_mask: ``(b, t)`` bool. True feeds ``inputs[:, i]`` at step ``i``; False feeds the
        sample drawn from the model's output at step ``i - 1``. Step 0 always feeds the truth.
      key: PRNG key for samples and dropout (one key per step, never reused).
      carry: initial carry (zeros when None).
      temperature: sampling temperature of the head (0 feeds the mode).

    Returns:
      ``(outputs, carry, fed)``: head parameters with leading ``(b, t)``, the final carry, and the
      elements actually fed ``(b, t[, d])``. Samples carry no gradient (as in scheduled sampling).

    Example::

        mask = jax.random.bernoulli(key, 0.75, tokens.shape)     # scheduled sampling, p = 0.75
        logits, carry, fed = rollout(model, tokens, mask, key=key)
    """
    batch, steps = inputs.shape[:2]
    if teacher_mask.shape != (batch, steps):
        raise ValueError(
            f"teacher_mask must have shape (b, t) = {(batch, steps)}, got {teacher_mask.shape}"
        )
    temperature = sampling.check_temperature(temperature)
    greedy = temperature == 0.0
    carry = model.init_carry(batch) if carry is None else carry
    inputs_by_time = jnp.swapaxes(inputs, 0, 1)
    mask_by_time = jnp.swapaxes(teacher_mask.astype(bool), 0, 1).at[0].set(True)
    sample_key, dropout_key = jax.random.split(key)

    def draw(noise, out, history, index):
        sample = sampling.sample_with_noise(model.head, noise, out, temperature=temperature,
                                            greedy=greedy)
        return sample, history, None

    state = start_state(carry, jnp.zeros_like(inputs_by_time[0]))
    state, (_, fed, outputs) = feed_steps(
        model, state, key=sample_key, start=0, size=steps, draw=draw, truth=inputs_by_time,
        use_truth=mask_by_time, dropout_key=dropout_key, table=model.input_table(),
        greedy=greedy)
    outputs = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), outputs)
    return outputs, state.carry, jnp.swapaxes(fed, 0, 1)
