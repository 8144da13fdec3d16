"""The numerical pieces of the output heads: bounded scales, log densities, quantiles by
bisection or expansion, a stable log-Beta, and per-element sampling keys.

Pure ``jax.numpy`` functions of arrays; :mod:`seqmodel.nn.heads` builds the heads from them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc, gammaln, ndtri

Array = jax.Array

MIN_SCALE = 1e-3
HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def check_temperature(temperature: float) -> None:
    if isinstance(temperature, (int, float)) and not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 means the mode), got {temperature!r}"
        )


def bounded_log_scale(raw: Array) -> Array:
    """``log(MIN_SCALE + softplus(raw))``: smooth, never below ``log(MIN_SCALE)``."""
    return jnp.log(MIN_SCALE + jax.nn.softplus(raw))


def normal_log_density(target: Array, mean: Array, log_scale: Array) -> Array:
    z = (target - mean) * jnp.exp(-log_scale)
    return -0.5 * z * z - log_scale - HALF_LOG_TWO_PI


# ---------------------------------------------------------------------------------------------
# Quantile levels and the numerical pieces the quantiles and log-likelihoods share
# ---------------------------------------------------------------------------------------------


def quantile_levels(q, value_ndim: int) -> Array:
    """``q`` (a scalar or a vector of ``Q`` levels in ``[0, 1]``) as float32, shaped to broadcast
    against values ``(..., d)`` of ``value_ndim`` axes: ``()`` or ``(Q, 1, ..., 1)``."""
    levels = jnp.asarray(q, jnp.float32)
    if levels.ndim > 1:
        raise ValueError(
            f"q must be a scalar or a vector of quantile levels, got an array of shape "
            f"{levels.shape}; flatten it first"
        )
    try:
        concrete = np.asarray(q, np.float64)
    except jax.errors.TracerArrayConversionError:
        concrete = None  # traced levels cannot be checked here
    if concrete is not None and not np.all((concrete >= 0) & (concrete <= 1)):
        raise ValueError(f"q must hold quantile levels in [0, 1], got {q!r}")
    return levels.reshape(levels.shape + (1,) * value_ndim)


def bisect(increasing, target: Array, lower: Array, upper: Array, iterations: int) -> Array:
    """Elementwise root of ``increasing(x) = target`` in ``[lower, upper]`` by bisection: a fixed
    number of halvings, so it traces to one loop whatever the values."""

    def halve(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        below = increasing(middle) < target
        return jnp.where(below, middle, low), jnp.where(below, high, middle)

    low, high = jax.lax.fori_loop(0, iterations, halve, (lower, upper))
    return 0.5 * (low + high)


STIRLING_THRESHOLD = 8.0


def stirling_correction(x: Array) -> Array:
    """``lgamma(x) - ((x - 0.5) log x - x + 0.5 log(2 pi))`` for ``x >= 8`` (error < 1e-9)."""
    inverse = 1.0 / x
    inverse_square = inverse * inverse
    return inverse * (1 / 12 - inverse_square * (1 / 360 - inverse_square / 1260))


def log_beta(a: Array, b: Array) -> Array:
    """``log B(a, b) = lgamma(a) + lgamma(b) - lgamma(a + b)`` for ``a, b > 0``, accurate in
    float32 when an argument is large.

    Why not the plain sum: for ``b = 1e5`` each ``lgamma`` is about ``1e6`` and float32 keeps
    ~0.06 of it, which would be the error of a negative-binomial log-likelihood of a count of
    1e5 (or of a Student-t's with 1e5 degrees of freedom). Large arguments use Stirling's series
    with the ``log1p`` form of the difference instead (the method of TensorFlow Probability's
    ``lbeta``)."""
    small, large = jnp.minimum(a, b), jnp.maximum(a, b)
    both_large = small >= STIRLING_THRESHOLD
    one_large = large >= STIRLING_THRESHOLD
    # Each branch sees only arguments valid for it, so that the unused branch of a jnp.where
    # cannot put a NaN into the gradient.
    stirling_small = jnp.where(both_large, small, STIRLING_THRESHOLD)
    stirling_large = jnp.where(one_large, large, STIRLING_THRESHOLD)
    total = stirling_small + stirling_large
    # (a - 1/2) log a + (b - 1/2) log b - (a + b - 1/2) log(a + b) rearranged around log1p.
    both_stirling = (
        0.5 * math.log(2 * math.pi)
        + (stirling_small - 0.5) * jnp.log(stirling_small / total)
        - (stirling_large - 0.5) * jnp.log1p(stirling_small / stirling_large)
        - 0.5 * jnp.log(total)
        + stirling_correction(stirling_small) + stirling_correction(stirling_large)
        - stirling_correction(total)
    )
    # lgamma(small) directly plus lgamma(large) - lgamma(large + small) by Stirling.
    direct_small = jnp.where(one_large, small, 1.0)
    total = direct_small + stirling_large
    one_stirling = (
        gammaln(direct_small)
        - (stirling_large - 0.5) * jnp.log1p(direct_small / stirling_large)
        - direct_small * jnp.log(total)
        + direct_small
        + stirling_correction(stirling_large) - stirling_correction(total)
    )
    plain_small = jnp.where(one_large, 1.0, small)
    plain_large = jnp.where(one_large, 1.0, large)
    plain = gammaln(plain_small) + gammaln(plain_large) - gammaln(plain_small + plain_large)
    return jnp.where(both_large, both_stirling, jnp.where(one_large, one_stirling, plain))


def per_element_keys(key: Array, batch_shape: tuple[int, ...]) -> Array:
    """One typed PRNG key per index of ``batch_shape`` (raw ``uint32`` keys are wrapped)."""
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return jax.random.split(key, tuple(batch_shape))


def draw_per_key(draw, keys: Array, *arrays: Array) -> Array:
    """``draw(key, *rows)`` for each key of ``keys`` ``(...)``, with the matching rows ``(d,)``
    of ``arrays`` ``(..., d)``; returns ``(..., d)``."""
    batch_shape = keys.shape
    arrays = [jnp.broadcast_to(a, batch_shape + a.shape[-1:]) for a in arrays]
    rows = [a.reshape((-1,) + a.shape[-1:]) for a in arrays]
    values = jax.vmap(draw)(keys.reshape(-1), *rows)
    return values.reshape(batch_shape + values.shape[-1:])


# Student-t quantiles for df at or above this use the asymptotic expansion in 1/df, which is more
# accurate there than bisecting float32 incomplete-beta tails (those lose digits as df grows).
STUDENT_T_EXPANSION_DF = 100.0


def student_t_standard_quantile(levels: Array, df: Array) -> Array:
    """Quantile of the standard Student-t with ``df >= 2``; ``levels`` in [0, 1] broadcast
    against ``df``."""
    levels, df = jnp.broadcast_arrays(levels, df)
    tail = jnp.clip(jnp.minimum(levels, 1.0 - levels), 1e-30, 0.5)
    # The df = 2 quantile has a closed form and is the widest of all df >= 2: the bracket.
    widest = (1.0 - 2.0 * tail) / jnp.sqrt(2.0 * tail * (1.0 - tail))

    def minus_tail_probability(t):  # increasing in t >= 0
        return -0.5 * betainc(0.5 * df, 0.5, df / (df + t * t))

    bisected = bisect(minus_tail_probability, -tail, jnp.zeros_like(widest), widest,
                       iterations=40)
    # Abramowitz & Stegun 26.7.5 (the Cornish-Fisher expansion of the t quantile in 1/df).
    z = -ndtri(tail)  # not ndtri(1 - tail): 1 - tail rounds away the digits of a small tail
    z2 = z * z
    large_df = jnp.maximum(df, STUDENT_T_EXPANSION_DF)
    expansion = z + (
        z * (z2 + 1) / 4
        + z * (3 + z2 * (16 + z2 * 5)) / (96 * large_df)
        + z * (-15 + z2 * (17 + z2 * (19 + z2 * 3))) / (384 * large_df**2)
        + z * (-945 + z2 * (-1920 + z2 * (1482 + z2 * (776 + z2 * 79))))
        / (92160 * large_df**3)
    ) / large_df
    magnitude = jnp.where(df >= STUDENT_T_EXPANSION_DF, expansion, bisected)
    value = jnp.where(levels < 0.5, -magnitude, magnitude)
    return jnp.where(levels <= 0, -jnp.inf, jnp.where(levels >= 1, jnp.inf, value))
