"""Output heads: map the top hidden state ``(..., h)`` to distribution parameters.

Each head offers

- ``__call__(hidden)`` -> params (an array or a small NamedTuple, leading axes kept),
- ``log_prob(params, target)`` -> ``(...)``: log-likelihood of one element (summed over features),
- ``sample(key, params, *, temperature=1.0)`` -> one element per leading index, built from
  ``draw_noise(key, batch_shape)`` and ``sample_from_noise(noise, params, temperature=)`` (the
  samplers in :mod:`seqmodel.decoding.sampling` use the same two, so there is one definition of a draw),
- ``mode(params)`` -> the most likely element (the temperature -> 0 limit of ``sample``),
- ``mean(params)`` -> the expected element (real-valued heads),
- ``quantile(params, q)`` -> the per-feature quantile at level ``q`` (real-valued heads): ``(..., d)``
  for a scalar ``q``, ``(Q, ..., d)`` (a leading quantile axis) for a vector of ``Q`` levels,
- ``rescale(params, scale, loc=None)`` -> the parameters of the distribution of
  ``loc + scale * X`` (real-valued heads but Bernoulli; ``loc`` only for the continuous ones): how
  a model with ``input_scaling`` (DeepAR's mean scaling, or standard scaling with
  ``input_location``) turns what its network predicts in scaled units into data units,
- ``discrete`` / ``event_shape``: what an element looks like, so that generation can feed samples
  back as inputs.

Heads: :class:`Categorical` (tokens), :class:`Gaussian`, :class:`MixtureGaussian`,
:class:`Bernoulli` (0/1 features), :class:`StudentT` (heavy tails) and :class:`NegativeBinomial`
(counts). Everything is computed in log space; scales are bounded below by ``MIN_SCALE`` so that a
collapsing variance cannot produce an infinite likelihood.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.scipy.special import betainc, gammaincc, ndtr, ndtri

from seqmodel.nn.distributions import (  # noqa: F401  (MIN_SCALE re-exported: the heads' scale floor)
    MIN_SCALE,
    bisect,
    bounded_log_scale,
    check_temperature,
    draw_per_key,
    log_beta,
    normal_log_density,
    per_element_keys,
    quantile_levels,
    student_t_standard_quantile,
)

Array = jax.Array

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
        check_temperature(temperature)
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
        return GaussianParams(mean, bounded_log_scale(raw))

    def log_prob(self, params: GaussianParams, target: Array) -> Array:
        """target ``(..., d)`` -> ``(...)``."""
        return normal_log_density(target, params.mean, params.log_scale).sum(-1)

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

    def quantile(self, params: GaussianParams, q) -> Array:
        """``mean + scale * Phi^-1(q)``: ``(..., d)`` for a scalar ``q``, ``(Q, ..., d)`` for
        ``Q`` levels.

        Example::

            lower, median, upper = head.quantile(params, [0.1, 0.5, 0.9])
        """
        levels = quantile_levels(q, params.mean.ndim)
        return params.mean + jnp.exp(params.log_scale) * ndtri(levels)

    def rescale(self, params: GaussianParams, scale: Array,
                loc: Array | None = None) -> GaussianParams:
        """The distribution of ``loc + scale * X``: scale ``(..., d)`` > 0 multiplies the mean
        and the standard deviation, ``loc`` ``(..., d)`` (default 0) moves the mean."""
        return GaussianParams(_shifted(params.mean * scale, loc), params.log_scale + jnp.log(scale))


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
        return MixtureParams(logits, mean, bounded_log_scale(raw))

    def log_prob(self, params: MixtureParams, target: Array) -> Array:
        """target ``(..., d)`` -> ``(...)``: ``logsumexp_k(log w_k + log N(target; k))``."""
        log_weights = jax.nn.log_softmax(params.logits, axis=-1)
        component = normal_log_density(target[..., None, :], params.mean, params.log_scale).sum(-1)
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

    def quantile(self, params: MixtureParams, q) -> Array:
        """Quantile of each feature's marginal mixture ``sum_k w_k N(mean_k, scale_k^2)``:
        ``(..., d)`` for a scalar ``q``, ``(Q, ..., d)`` for ``Q`` levels.

        The mixture CDF has no closed-form inverse; it is bisected between the smallest and the
        largest component quantile, which bracket the mixture's (60 halvings: float32 exact).
        """
        levels = quantile_levels(q, params.mean.ndim - 1)
        inside = jnp.clip(levels, 1e-30, 1.0 - 1e-7)
        scale = jnp.exp(params.log_scale)
        component = params.mean + scale * ndtri(inside[..., None, :])  # (Q?, ..., K, d)
        weights = jax.nn.softmax(params.logits, axis=-1)[..., None]

        def cdf(x):
            return (weights * ndtr((x[..., None, :] - params.mean) / scale)).sum(-2)

        lower, upper = component.min(-2), component.max(-2)
        target = jnp.broadcast_to(inside, lower.shape)
        value = bisect(cdf, target, lower, upper, iterations=60)
        return jnp.where(levels <= 0, -jnp.inf, jnp.where(levels >= 1, jnp.inf, value))

    def rescale(self, params: MixtureParams, scale: Array,
                loc: Array | None = None) -> MixtureParams:
        """The distribution of ``loc + scale * X``: scale ``(..., d)`` > 0 multiplies every
        component's mean and standard deviation, ``loc`` ``(..., d)`` moves every mean; the
        weights stay."""
        loc = None if loc is None else loc[..., None, :]
        scale = scale[..., None, :]
        return MixtureParams(params.logits, _shifted(params.mean * scale, loc),
                             params.log_scale + jnp.log(scale))


def _shifted(values: Array, loc: Array | None) -> Array:
    return values if loc is None else values + loc


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

    def quantile(self, logits: Array, q) -> Array:
        """The smallest element ``x`` in {0., 1.} with ``P(X <= x) >= q``: 1 where
        ``q > P(X = 0)``. ``(..., d)`` for a scalar ``q``, ``(Q, ..., d)`` for ``Q`` levels."""
        levels = quantile_levels(q, logits.ndim)
        return (levels > jax.nn.sigmoid(-logits)).astype(jnp.float32)

    def rescale(self, logits: Array, scale: Array, loc: Array | None = None) -> Array:
        raise ValueError("a Bernoulli head's elements are 0/1 and cannot be scaled: train it "
                         "without input scaling (--scaling none)")


class StudentTParams(NamedTuple):
    loc: Array  # (..., d)
    log_scale: Array  # (..., d), >= log(MIN_SCALE)
    df: Array  # (..., d) degrees of freedom, > 2


class StudentT(_Head):
    """Diagonal Student-t over ``d`` real features: heavy tails, robust to outliers.

    Params: location, log-scale (bounded below like the Gaussian's) and degrees of freedom
    ``df = 2 + softplus(raw)``, so the variance ``scale^2 df / (df - 2)`` is finite (as in
    GluonTS's ``StudentTOutput``; float32 rounds ``df`` to 2 only for ``raw < -16``). Elements
    are float ``(..., d)``.

    Example::

        head = StudentT(hidden_size=64, output_size=1, rngs=nnx.Rngs(0))
        params = head(hidden)                       # loc, log_scale, df: (b, t, 1) each
        nll = -head.log_prob(params, targets).mean()
    """

    def __init__(self, hidden_size: int, output_size: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        super().__init__(hidden_size, 3 * output_size, rngs=rngs, dtype=dtype)
        self.output_size = output_size

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.output_size,)

    def __call__(self, hidden: Array) -> StudentTParams:
        loc, raw_scale, raw_df = jnp.split(self.linear(hidden).astype(jnp.float32), 3, axis=-1)
        return StudentTParams(loc, bounded_log_scale(raw_scale), 2.0 + jax.nn.softplus(raw_df))

    def log_prob(self, params: StudentTParams, target: Array) -> Array:
        """target ``(..., d)`` -> ``(...)``: ``-log B(df/2, 1/2) - log(df)/2 - log(scale)
        - (df + 1)/2 log(1 + z^2/df)`` with ``z = (target - loc) / scale``."""
        df = params.df
        z = (target - params.loc) * jnp.exp(-params.log_scale)
        return (
            -log_beta(0.5 * df, 0.5) - 0.5 * jnp.log(df) - params.log_scale
            - 0.5 * (df + 1.0) * jnp.log1p(z * z / df)
        ).sum(-1)

    def draw_noise(self, key: Array, batch_shape: tuple[int, ...]) -> Array:
        """One PRNG key per index ``(...)``. A Student-t draw needs a chi-square draw whose shape
        is a parameter, and jax has no inverse Gamma CDF to make it a function of uniform noise
        (inverting the t CDF by float32 incomplete-beta bisection loses accuracy at large df):
        so the noise is a key, and the draw a deterministic function of it and the params."""
        return per_element_keys(key, batch_shape)

    def sample_from_noise(self, noise: Array, params: StudentTParams, *, temperature=1.0) -> Array:
        """``loc + sqrt(temperature) * scale * t_df``: temperature scales the spread as the
        Gaussian's does (``temperature -> 0`` is the mode ``loc``)."""
        standard = draw_per_key(lambda key, df: jax.random.t(key, df, df.shape), noise, params.df)
        return params.loc + jnp.sqrt(temperature) * jnp.exp(params.log_scale) * standard

    def mode(self, params: StudentTParams) -> Array:
        return params.loc

    def mean(self, params: StudentTParams) -> Array:
        return params.loc

    def quantile(self, params: StudentTParams, q) -> Array:
        """``loc + scale * t_df^-1(q)``: ``(..., d)`` for a scalar ``q``, ``(Q, ..., d)`` for
        ``Q`` levels. The standard quantile bisects the incomplete-beta CDF below 100 degrees of
        freedom and uses its asymptotic expansion (Abramowitz & Stegun 26.7.5) above."""
        levels = quantile_levels(q, params.loc.ndim)
        standard = student_t_standard_quantile(levels, params.df)
        return params.loc + jnp.exp(params.log_scale) * standard

    def rescale(self, params: StudentTParams, scale: Array,
                loc: Array | None = None) -> StudentTParams:
        """The distribution of ``loc + scale * X``: scale ``(..., d)`` > 0 multiplies the
        location and the scale, ``loc`` ``(..., d)`` moves the location; the degrees of freedom
        stay."""
        return StudentTParams(_shifted(params.loc * scale, loc), params.log_scale + jnp.log(scale),
                              params.df)


class NegativeBinomialParams(NamedTuple):
    mean: Array  # (..., d) mu > 0
    dispersion: Array  # (..., d) alpha > 0: variance mu + alpha mu^2


# Below this dispersion, and while alpha * mu stays small, the count CDF is the Poisson one: the
# float32 incomplete beta loses digits when its first argument 1 / alpha is large, and the
# Poisson CDF is then the closer of the two (both differ from the exact CDF by < 2e-3 there).
_POISSON_DISPERSION = 1e-3
_POISSON_EXCESS = 2e-2


class NegativeBinomial(_Head):
    """Independent negative-binomial counts over ``d`` features (DeepAR's parameterisation).

    Params: mean ``mu = softplus(raw)`` and dispersion ``alpha = softplus(raw)``; the variance is
    ``mu + alpha mu^2`` (``alpha -> 0`` is Poisson). It is the Gamma-Poisson mixture
    ``lambda ~ Gamma(shape 1/alpha, scale alpha mu)``, ``count ~ Poisson(lambda)``, i.e.
    ``scipy.stats.nbinom(n=1/alpha, p=1/(1 + alpha mu))``. Elements are non-negative integer
    counts held in floats ``(..., d)`` (targets too: other values give meaningless likelihoods).

    Example::

        head = NegativeBinomial(hidden_size=64, output_size=1, rngs=nnx.Rngs(0))
        params = head(hidden)                       # mean, dispersion: (b, t, 1) each
        nll = -head.log_prob(params, counts).mean()
    """

    def __init__(self, hidden_size: int, output_size: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        super().__init__(hidden_size, 2 * output_size, rngs=rngs, dtype=dtype)
        self.output_size = output_size

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.output_size,)

    def __call__(self, hidden: Array) -> NegativeBinomialParams:
        raw_mean, raw_dispersion = jnp.split(self.linear(hidden).astype(jnp.float32), 2, axis=-1)
        return NegativeBinomialParams(jax.nn.softplus(raw_mean), jax.nn.softplus(raw_dispersion))

    def log_prob(self, params: NegativeBinomialParams, target: Array) -> Array:
        """target counts ``(..., d)`` -> ``(...)``: with ``r = 1/alpha``,
        ``log C(y + r - 1, y) - r log(1 + alpha mu) + y log(alpha mu / (1 + alpha mu))``, the
        binomial coefficient as ``-log B(r, y + 1) - log(r + y)`` (accurate for large counts and
        small dispersions)."""
        total_count = 1.0 / params.dispersion
        excess = params.dispersion * params.mean  # alpha mu
        log_coefficient = -log_beta(total_count, target + 1.0) - jnp.log(total_count + target)
        # y log(alpha mu / (1 + alpha mu)): as -y log1p(1 / (alpha mu)) when alpha mu > 1, where
        # log(alpha mu) - log1p(alpha mu) would cancel (a count of 2000 loses ~1e-3 nat), and
        # with xlogy below (a zero count times log(0) is 0). Each branch sees only its values.
        large = excess > 1.0
        large_excess = jnp.where(large, excess, 1.0)
        small_excess = jnp.where(large, 1.0, excess)
        log_success = jnp.where(
            large,
            -target * jnp.log1p(1.0 / large_excess),
            jax.scipy.special.xlogy(target, small_excess) - target * jnp.log1p(small_excess),
        )
        return (log_coefficient - total_count * jnp.log1p(excess) + log_success).sum(-1)

    def draw_noise(self, key: Array, batch_shape: tuple[int, ...]) -> Array:
        """One PRNG key per index ``(...)``: the draw is a Gamma then a Poisson draw whose shape
        and rate are parameters, so no fixed-size uniform noise can drive it exactly; the draw
        is a deterministic function of the key and the params."""
        return per_element_keys(key, batch_shape)

    def sample_from_noise(
        self, noise: Array, params: NegativeBinomialParams, *, temperature=1.0
    ) -> Array:
        """A Gamma-Poisson draw ``x``, then ``max(0, round(mode + sqrt(temperature) *
        (x - mode)))``: temperature scales a draw's distance from the mode as the Gaussian's
        spread scales, so ``temperature=1`` is an exact draw and ``temperature -> 0`` the mode."""

        def draw(key, mean, dispersion):
            rate_key, count_key = jax.random.split(key)
            total_count = 1.0 / dispersion
            rate = jax.random.gamma(rate_key, total_count, mean.shape) * (mean * dispersion)
            return jax.random.poisson(count_key, rate, mean.shape).astype(jnp.float32)

        counts = draw_per_key(draw, noise, params.mean, params.dispersion)
        mode = self.mode(params)
        return jnp.maximum(0.0, jnp.round(mode + jnp.sqrt(temperature) * (counts - mode)))

    def mode(self, params: NegativeBinomialParams) -> Array:
        """``floor((r - 1) alpha mu) = floor(mu (1 - alpha))`` when ``alpha < 1``, else 0."""
        return jnp.floor(jnp.maximum(params.mean * (1.0 - params.dispersion), 0.0))

    def mean(self, params: NegativeBinomialParams) -> Array:
        return params.mean

    def cdf(self, params: NegativeBinomialParams, count: Array) -> Array:
        """``P(X <= count)`` for counts ``(..., d)`` (float32: absolute error below ~1e-3 for
        dispersions >= 1e-4 and means <= 1e4; Poisson's CDF where ``alpha`` is tiny)."""
        count = jnp.floor(count)
        safe = jnp.maximum(count, 0.0)
        mean, dispersion = params.mean, params.dispersion
        poisson = (dispersion < _POISSON_DISPERSION) & (dispersion * mean < _POISSON_EXCESS)
        total_count = 1.0 / jnp.where(poisson, 1.0, dispersion)
        negative_binomial = betainc(total_count, safe + 1.0, 1.0 / (1.0 + dispersion * mean))
        value = jnp.where(poisson, gammaincc(safe + 1.0, mean), negative_binomial)
        return jnp.where(count < 0, 0.0, jnp.clip(value, 0.0, 1.0))

    def quantile(self, params: NegativeBinomialParams, q) -> Array:
        """The smallest count ``k`` with ``P(X <= k) >= q``: ``(..., d)`` for a scalar ``q``,
        ``(Q, ..., d)`` for ``Q`` levels (``q = 1`` gives ``inf``). Found by bisection over
        the integers below Cantelli's bound ``mu + sigma sqrt(q / (1 - q))``."""
        levels = quantile_levels(q, params.mean.ndim)
        inside = jnp.clip(levels, 0.0, 1.0 - 1e-7)
        deviation = jnp.sqrt(params.mean + params.dispersion * params.mean**2)
        upper = jnp.ceil(params.mean + deviation * jnp.sqrt(inside / (1.0 - inside)))
        inside, upper = jnp.broadcast_arrays(inside, upper)

        def halve(_, bounds):
            low, high = bounds  # P(X <= low) < q <= P(X <= high)
            middle = jnp.floor(0.5 * (low + high))
            enough = self.cdf(params, middle) >= inside
            return jnp.where(enough, low, middle), jnp.where(enough, middle, high)

        _, high = jax.lax.fori_loop(0, 48, halve, (jnp.full_like(upper, -1.0), upper))
        return jnp.where(levels <= 0, 0.0, jnp.where(levels >= 1, jnp.inf, high))

    def rescale(self, params: NegativeBinomialParams, scale: Array,
                loc: Array | None = None) -> NegativeBinomialParams:
        """DeepAR's scaling of counts (Salinas et al. 2020, section 3.3): the mean times
        ``scale`` and the dispersion divided by ``sqrt(scale)``, scale ``(..., d)`` > 0. The
        result is again a distribution over counts (not that of ``scale * X``, which would not
        be integer): its variance ``mu s + alpha mu^2 s^1.5`` grows with the scale of the series."""
        if loc is not None:
            raise ValueError("a negative-binomial head's elements are counts and cannot be "
                             "shifted: train it with --scaling mean or none, not std")
        return NegativeBinomialParams(params.mean * scale, params.dispersion / jnp.sqrt(scale))


HEADS = ("categorical", "gaussian", "mdn", "bernoulli", "student_t", "negbin")
HEAD_CLASSES = (Categorical, Gaussian, MixtureGaussian, Bernoulli, StudentT, NegativeBinomial)
