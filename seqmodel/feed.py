"""The feed policy: per row and per step, feed the model the ground truth or its own sample.

Teacher forcing (all truth), free running (all samples), prompting (truth for a prefix of per-row
length) and scheduled sampling (truth with probability p; Bengio et al. 2015) are one mechanism: a
boolean ``teacher_mask`` ``(b, t)`` handed to :func:`rollout`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def rollout(model, inputs: Array, teacher_mask: Array, *, key: Array, carry=None,
            temperature: float = 1.0):
    """Run ``model.step`` over ``t`` steps inside one ``lax.scan``, mixing truth and samples.

    Args:
      model: a :class:`seqmodel.SequenceModel` (train or eval mode; dropout draws from ``key``).
      inputs: ``(b, t)`` tokens or ``(b, t, d)`` values, the ground truth to feed.
      teacher_mask: ``(b, t)`` bool. True feeds ``inputs[:, i]`` at step ``i``; False feeds the
        sample drawn from the model's output at step ``i - 1``. Step 0 always feeds the truth.
      key: PRNG key for samples and dropout (split per step, never reused).
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
    carry = model.init_carry(batch) if carry is None else carry
    config = model.config
    table = model.input_table() if config.discrete and config.fold_embedding else None
    inputs_by_time = jnp.swapaxes(inputs, 0, 1)
    mask_by_time = jnp.swapaxes(teacher_mask.astype(bool), 0, 1).at[0].set(True)
    keys = jax.random.split(key, steps)

    def body(state, scanned):
        carry, previous_sample = state
        truth, use_truth, step_key = scanned
        sample_key, dropout_key = jax.random.split(step_key)
        use_truth = use_truth.reshape(use_truth.shape + (1,) * (truth.ndim - 1))
        x = jnp.where(use_truth, truth, previous_sample)
        out, carry = model.step(x, carry, key=dropout_key, table=table)
        sample = model.head.sample(sample_key, out, temperature=temperature)
        sample = jax.lax.stop_gradient(sample).astype(inputs.dtype)
        return (carry, sample), (out, x)

    initial = (carry, jnp.zeros_like(inputs_by_time[0]))
    (carry, _), (outputs, fed) = jax.lax.scan(body, initial, (inputs_by_time, mask_by_time, keys))
    outputs = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), outputs)
    return outputs, carry, jnp.swapaxes(fed, 0, 1)
