"""Sample paths of a plain real-valued model (it reads its bare elements: no lags, no scaling,
no known features), drawn by :func:`seqmodel.generate`, and its teacher-forced pass.

A model with conditioning features is forecast by :class:`seqmodel.Forecaster` instead, which
rebuilds its inputs step by step (:mod:`seqmodel.forecasting.free_running`).

Example::

    paths = forecast(model, normalizer, history, key=jax.random.key(0), horizon=24,
                     num_samples=200)                          # (p, d) -> (200, 24, d)
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqmodel.data.normalization import Normalizer

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Sample paths
# ---------------------------------------------------------------------------------------------


def check_plain_real_valued(model) -> None:
    """A ValueError unless ``model`` is real-valued and reads its bare elements."""
    if model.config.conditioned:
        raise ValueError(
            "this model's inputs carry conditioning features after each element (lags, scale, "
            "time features, covariates): forecast it with seqmodel.Forecaster "
            "(or the backtest of seqmodel.forecasting.backtest), which builds them step by step")
    if model.config.discrete:
        raise ValueError(
            "forecasting needs a real-valued model (ModelConfig(input_size=d, head='gaussian' | "
            "'mdn' | 'bernoulli')); this one is a token model (vocab_size="
            f"{model.config.vocab_size})"
        )


def sample_paths(model, context: Array, *, key: Array, horizon: int, num_samples: int,
                 context_lengths: Array | None = None, temperature: float = 1.0) -> Array:
    """Free-running sample paths in the model's (normalised) units.

    Args:
      model: a real-valued :class:`seqmodel.SequenceModel` (sampled in eval mode; the caller's
        model keeps its mode).
      context: ``(b, p, d)`` right-padded contexts (prompts).
      key: PRNG key; the same key gives the same paths.
      horizon: ``H`` steps to draw after each context.
      num_samples: ``S`` paths per context.
      context_lengths: ``(b,)`` true lengths (default: all ``p``).
      temperature: spread scaling of the head (1 samples the model as trained).

    Returns:
      ``(b, S, H, d)``: path ``s`` of context ``i`` continues from ``context[i, :length_i]``.

    Example::

        paths = sample_paths(model, context, key=jax.random.key(0), horizon=50, num_samples=100)
    """
    from seqmodel.decoding.generate import generate  # generate sits above this layer's imports

    check_plain_real_valued(model)
    context = jnp.asarray(context, jnp.float32)
    generation = generate(
        model, key=key, steps=horizon, prompt=context, prompt_lengths=context_lengths,
        num_samples=num_samples, temperature=temperature,
    )
    samples = generation.samples  # (b * S, H, d): the S paths of context row r are adjacent
    return samples.reshape(context.shape[0], num_samples, horizon, samples.shape[-1])


def forecast(model, normalizer: Normalizer, context, *, key: Array, horizon: int,
             num_samples: int, context_lengths=None, temperature: float = 1.0) -> np.ndarray:
    """Sample paths in original units from contexts in original units.

    Args:
      context: ``(b, p, d)`` (right-padded, with ``context_lengths``) or one context ``(p, d)``.

    Returns:
      ``(b, S, H, d)`` numpy float32, or ``(S, H, d)`` for one ``(p, d)`` context.

    Example::

        paths = forecast(model, normalizer, history, key=jax.random.key(0), horizon=24,
                         num_samples=200)
        low, median, high = sample_quantiles(paths, (0.1, 0.5, 0.9), axis=0)
    """
    context = np.asarray(context, np.float32)
    single = context.ndim == 2
    if single:
        context = context[None]
    if context.ndim != 3 or context.shape[-1] != normalizer.num_features:
        raise ValueError(
            f"context must have shape (p, {normalizer.num_features}) or "
            f"(b, p, {normalizer.num_features}), got {context.shape}"
        )
    if np.isnan(context).any():
        raise ValueError("context holds missing values (NaN); forecasts need a complete context")
    paths = sample_paths(
        model, normalizer.normalize(context), key=key, horizon=horizon, num_samples=num_samples,
        context_lengths=None if context_lengths is None else jnp.asarray(context_lengths),
        temperature=temperature,
    )
    paths = np.asarray(normalizer.denormalize(np.asarray(paths)), np.float32)
    return paths[0] if single else paths


# ---------------------------------------------------------------------------------------------
# Teacher-forced pass
# ---------------------------------------------------------------------------------------------


def teacher_forced_outputs(model, values: Array, mask: Array):
    """One teacher-forced pass over padded sequences.

    Args:
      values: ``(n, T, d)`` normalised, padded; mask ``(n, T)``.

    Returns:
      ``(outputs, nll)``: head parameters with leading ``(n, T - 1)`` (``outputs[:, i]`` predicts
      ``values[:, i + 1]``), and the mean NLL per real target step (nats, normalised units).
    """
    return _teacher_forced(model, jnp.asarray(values, jnp.float32), jnp.asarray(mask, jnp.float32))


@nnx.jit
def _teacher_forced(model, values, mask):
    outputs, _ = model(values[:, :-1])
    log_prob = model.head.log_prob(outputs, values[:, 1:])
    target_mask = mask[:, 1:]
    nll = -(log_prob * target_mask).sum() / jnp.maximum(target_mask.sum(), 1.0)
    return outputs, nll


