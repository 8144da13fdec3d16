"""Output heads: map the top hidden state ``(..., h)`` to distribution parameters.

Each head offers

- ``__call__(hidden)`` -> params (an array or a small NamedTuple, leading axes kept),
- ``log_prob(params, target)`` -> ``(...)``: log-likelihood of one element (summed over features),
- ``sample(key, params, *, temperature=1.0)`` -> one element per leading index, built from
  ``draw_noise(key, batch_shape)`` and ``sample_from_noise(noise, params, temperature=)`` (the
  samplers in :mod:`seqmodel.sampling` use the same two, so there is one definition of a draw),
- ``mode(params)`` -> the most likely element (the temperature -> 0 limit of ``sample``),
- ``mean(params)`` -> the expected element (real-valued heads),
- ``discrete`` / ``event_shape``: what an element looks like, so that generation can feed samples
  back as inputs.

Everything is computed in log space; scales are bounded below by ``MIN_SCALE`` so that a collapsing
variance cannot produce an infinite likelihood.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

MIN_SCALE = 1e-3
_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, (int, float)) and not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 means the mode), got {temperature!r}"
        )


def _bounded_log_scale(raw: Array) -> Array:
    """``log(MIN_SCALE + softplus(raw))``: smooth, never below ``log(MIN_SCALE)``."""
    return jnp.log(MIN_SCALE + jax.nn.softplus(raw))


def _normal_log_density(target: Array, mean: Array, log_scale: Array) -> Array:
    z = (target - mean) * jnp.exp(-log_scale)
    return -0.5 * z * z - log_scale - _HALF_LOG_TWO_PI


class _Head(nnx.Module):
    discrete: bool = False

    def __init__(self, hidden_size: int, width: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.dtype = dtype
        self.linear = nnx.Linear(hidden_size, width, rngs=rngs, dtype=dtype)

    @property
    def event_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def batch_shape(self, params) -> tuple[int, ...]:
        """Leading axes ``(...)`` of ``params`` (one element is drawn per index)."""
        return jax.tree.leaves(params)[0].shape[:-1]

    def draw_noise(self, key: Array, batch_shape: tuple[int, ...]):
        """All the randomness of one draw per index of ``batch_shape``. Drawing it apart from
        the transformation lets a sampler draw many steps' noise in one vectorised call."""
        raise NotImplementedError

    def sample_from_noise(self, noise, params, *, temperature: float | Array = 1.0) -> Array:
        """The element that ``noise`` (from :meth:`draw_noise`) selects; ``temperature > 0``."""
        raise NotImplementedError

    def sample(self, key: Array, params, *, temperature: float = 1.0) -> Array:
        """One element per leading index; ``temperature=0`` is :meth:`mode`."""
        _check_temperature(temperature)
        if isinstance(temperature, (int, float)) and temperature == 0:
            return self.mode(params)
        noise = self.draw_noise(key, self.batch_shape(params))
        return self.sample_from_noise(noise, params, temperature=temperature)


class Categorical(_Head):
    """Distribution over ``vocab_size`` tokens; params are logits ``(..., vocab)``."""

    discrete = True

    def __init__(self, hidden_size: int, vocab_size: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        super().__init__(hidden_size, vocab_size, rngs=rngs, dtype=dtype)
        self.vocab_size = vocab_size

    @property
    def event_shape(self) -> tuple[int, ...]:
        return ()

    def __call__(self, hidden: Array) -> Array:
        return self.linear(hidden).astype(jnp.float32)

    def log_prob(self, logits: Array, target: Array) -> Array:
        """logits ``(..., V)``, target int ``(...)`` -> ``(...)``."""
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(log_probs, target[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def draw_noise(self, key: Array, batch_shape: tuple[int, ...]) -> Array:
        """Gumbel noise ``(..., V)``: ``argmax(logits / T + noise)`` is a draw (the Gumbel-max
        trick, which is also how ``jax.random.categorical`` draws)."""
        return jax.random.gumbel(key, tuple(batch_shape) + (self.vocab_size,))

    def sample_from_noise(self, noise: Array, logits: Array, *, temperature=1.0) -> Array:
        """A token ``(...)`` int32."""
        return jnp.argmax(logits / temperature + noise, axis=-1).astype(jnp.int32)

    def mode(self, logits: Array) -> Array:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


class GaussianParams(NamedTuple):
    mean: Array  # (..., d)
    log_scale: Array  # (..., d), >= log(MIN_SCALE)


class Gaussian(_Head):
    """Diagonal Gaussian over ``d`` real features."""

    def __init__(self, hidden_size: int, output_size: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        super().__init__(hidden_size, 2 * output_size, rngs=rngs, dtype=dtype)
        self.output_size = output_size

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.output_size,)

    def __call__(self, hidden: Array) -> GaussianParams:
        mean, raw = jnp.split(self.linear(hidden).astype(jnp.float32), 2, axis=-1)
        return GaussianParams(mean, _bounded_log_scale(raw))

    def log_prob(self, params: GaussianParams, target: Array) -> Array:
        """target ``(..., d)`` -> ``(...)``."""
        return _normal_log_density(target, params.mean, params.log_scale).sum(-1)

    def draw_noise(self, key: Array, batch_shape: tuple[int, ...]) -> Array:
        """Standard normal ``(..., d)``."""
        return jax.random.normal(key, tuple(batch_shape) + (self.output_size,))

    def sample_from_noise(self, noise: Array, params: GaussianParams, *, temperature=1.0) -> Array:
        """``mean + sqrt(temperature) * scale * noise``: temperature scales the variance."""
        return params.mean + jnp.sqrt(temperature) * jnp.exp(params.log_scale) * noise

    def mode(self, params: GaussianParams) -> Array:
        return params.mean

    def mean(self, params: GaussianParams) -> Array:
        return params.mean


class MixtureParams(NamedTuple):
    logits: Array  # (..., K) mixture weights, unnormalised
    mean: Array  # (..., K, d)
    log_scale: Array  # (..., K, d)


class MixtureGaussian(_Head):
    """Mixture of ``K`` diagonal Gaussians (mixture density network; Graves 2013, sketch-rnn)."""

    def __init__(
        self,
        hidden_size: int,
        output_size: int,
        num_mixtures: int,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        super().__init__(
            hidden_size, num_mixtures * (1 + 2 * output_size), rngs=rngs, dtype=dtype
        )
        self.output_size = output_size
        self.num_mixtures = num_mixtures

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.output_size,)

    def __call__(self, hidden: Array) -> MixtureParams:
        k, d = self.num_mixtures, self.output_size
        flat = self.linear(hidden).astype(jnp.float32)
        logits = flat[..., :k]
        mean = flat[..., k : k + k * d].reshape(*flat.shape[:-1], k, d)
        raw = flat[..., k + k * d :].reshape(*flat.shape[:-1], k, d)
        return MixtureParams(logits, mean, _bounded_log_scale(raw))

    def log_prob(self, params: MixtureParams, target: Array) -> Array:
        """target ``(..., d)`` -> ``(...)``: ``logsumexp_k(log w_k + log N(target; k))``."""
        log_weights = jax.nn.log_softmax(params.logits, axis=-1)
        component = _normal_log_density(target[..., None, :], params.mean, params.log_scale).sum(-1)
        return jax.nn.logsumexp(log_weights + component, axis=-1)

    def draw_noise(self, key: Array, batch_shape: tuple[int, ...]) -> tuple[Array, Array]:
        """Gumbel ``(..., K)`` to pick a component and standard normal ``(..., d)`` within it."""
        pick_key, noise_key = jax.random.split(key)
        batch_shape = tuple(batch_shape)
        return (jax.random.gumbel(pick_key, batch_shape + (self.num_mixtures,)),
                jax.random.normal(noise_key, batch_shape + (self.output_size,)))

    def sample_from_noise(self, noise, params: MixtureParams, *, temperature=1.0) -> Array:
        """Pick a component from ``softmax(logits / T)``, then draw with variance ``scale^2 * T``."""
        pick, normal = noise
        component = jnp.argmax(params.logits / temperature + pick, axis=-1)
        mean = _take_component(params.mean, component)
        scale = jnp.exp(_take_component(params.log_scale, component))
        return mean + jnp.sqrt(temperature) * scale * normal

    def mode(self, params: MixtureParams) -> Array:
        """Mean of the heaviest component (the mixture's mode when components are separated)."""
        return _take_component(params.mean, jnp.argmax(params.logits, axis=-1))

    def mean(self, params: MixtureParams) -> Array:
        weights = jax.nn.softmax(params.logits, axis=-1)
        return (weights[..., None] * params.mean).sum(-2)


def _take_component(values: Array, component: Array) -> Array:
    """values ``(..., K, d)``, component int ``(...)`` -> ``(..., d)``."""
    return jnp.take_along_axis(values, component[..., None, None], axis=-2)[..., 0, :]


class Bernoulli(_Head):
    """Independent binary features; params are logits ``(..., d)``; elements are 0./1. floats."""

    def __init__(self, hidden_size: int, output_size: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        super().__init__(hidden_size, output_size, rngs=rngs, dtype=dtype)
        self.output_size = output_size

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.output_size,)

    def __call__(self, hidden: Array) -> Array:
        return self.linear(hidden).astype(jnp.float32)

    def log_prob(self, logits: Array, target: Array) -> Array:
        """target ``(..., d)`` in {0, 1} -> ``(...)``, via log-sigmoid (stable for large logits)."""
        return (
            target * jax.nn.log_sigmoid(logits) + (1.0 - target) * jax.nn.log_sigmoid(-logits)
        ).sum(-1)

    def draw_noise(self, key: Array, batch_shape: tuple[int, ...]) -> Array:
        """Uniform ``(..., d)`` in ``[0, 1)``."""
        return jax.random.uniform(key, tuple(batch_shape) + (self.output_size,))

    def sample_from_noise(self, noise: Array, logits: Array, *, temperature=1.0) -> Array:
        """Each feature is 1 with probability ``sigmoid(logit / T)``."""
        return (noise < jax.nn.sigmoid(logits / temperature)).astype(jnp.float32)

    def mode(self, logits: Array) -> Array:
        return (logits > 0).astype(jnp.float32)

    def mean(self, logits: Array) -> Array:
        return jax.nn.sigmoid(logits)


HEADS = ("categorical", "gaussian", "mdn", "bernoulli")
HEAD_CLASSES = (Categorical, Gaussian, MixtureGaussian, Bernoulli)
