"""Sampling controls: pure functions on distribution parameters, testable without a model.

For categorical heads the controls compose in the order users of Hugging Face's ``generate`` expect:

1. the logits are divided by the ``temperature`` (``temperature=0`` means greedy, not a crash),
2. ``top_k`` keeps exactly ``k`` candidates (ties at the k-th logit are broken by index, so a tie
   never lets more than ``k`` through, unlike a ``logits < kth`` mask),
3. ``top_p`` keeps the nucleus: the smallest set of most likely candidates, taken in descending
   order, whose probability (after steps 1 and 2) reaches ``p``,
4. a draw from what is left (or the argmax when greedy).

Removed candidates get the logit ``-inf``. For real-valued heads (Gaussian, MDN, Bernoulli) the
temperature scales the spread exactly as the heads' own ``sample`` does (sketch-rnn style: variance
times ``T``; MDN mixture weights from ``softmax(logits / T)``; Bernoulli ``sigmoid(logit / T)``),
and greedy means the head's ``mode``.

Example::

    logits = jnp.array([[2.0, 1.0, 0.5, -1.0]])
    filter_logits(logits, temperature=0.7, top_k=3, top_p=0.9)   # (1, 4), -inf where removed
    sample_logits(key, logits, top_k=2)                          # (1,) int32 in {0, 1}
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from seqmodel.nn import heads as heads_module

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Argument checks (shared with generate)
# ---------------------------------------------------------------------------------------------


def check_temperature(temperature: Any) -> float:
    """``temperature`` must be a finite real number ``>= 0``; returns it as a float."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(
            f"temperature={temperature!r} is invalid: allowed is a finite number >= 0 "
            "(0 means greedy, 1 the model's own distribution)"
        )
    return float(temperature)


def check_top_k(top_k: Any, vocab_size: int | None = None) -> int | None:
    """``top_k`` must be None or an integer in ``1..vocab_size``."""
    if top_k is None:
        return None
    upper = "" if vocab_size is None else f" and <= the vocabulary size {vocab_size}"
    if (
        isinstance(top_k, bool)
        or not isinstance(top_k, numbers.Integral)
        or top_k < 1
        or (vocab_size is not None and top_k > vocab_size)
    ):
        raise ValueError(
            f"top_k={top_k!r} is invalid: allowed is None (no top-k) or an integer >= 1{upper}"
        )
    return int(top_k)


def check_top_p(top_p: Any) -> float | None:
    """``top_p`` must be None or a real number in ``(0, 1]``."""
    if top_p is None:
        return None
    if (
        isinstance(top_p, bool)
        or not isinstance(top_p, numbers.Real)
        or not (0.0 < top_p <= 1.0)
    ):
        raise ValueError(
            f"top_p={top_p!r} is invalid: allowed is None (no nucleus filter) or a number in "
            "(0, 1]"
        )
    return float(top_p)


# ---------------------------------------------------------------------------------------------
# Categorical: temperature -> top-k -> top-p -> draw
# ---------------------------------------------------------------------------------------------


def apply_temperature(logits: Array, temperature: float | Array) -> Array:
    """``logits / temperature`` for ``temperature > 0``. logits ``(..., V)`` -> ``(..., V)``.

    ``temperature=0`` is greedy and has no finite logits; handle it with ``greedy=True`` (as
    :func:`sample_logits` does) rather than dividing here.
    """
    return logits / jnp.asarray(temperature, logits.dtype)


def _keep_only(logits: Array, indices: Array, keep: Array | bool = True) -> Array:
    """Keep ``logits`` at ``indices`` ``(..., m)`` (where ``keep`` holds), ``-inf`` elsewhere."""
    mask = jnp.zeros(logits.shape, bool)
    keep = jnp.broadcast_to(jnp.asarray(keep, bool), indices.shape)
    mask = jnp.put_along_axis(mask, indices, keep, axis=-1, inplace=False)
    return jnp.where(mask, logits, -jnp.inf)


def top_k_filter(logits: Array, top_k: int) -> Array:
    """Keep exactly the ``top_k`` largest logits; ``-inf`` elsewhere.

    logits ``(..., V)`` -> ``(..., V)``. Ties at the k-th value go to the lower index, so exactly
    ``top_k`` entries survive (a ``logits < kth`` mask would keep every tied entry). ``top_k`` is a
    Python int (it fixes a shape).

    Example::

        top_k_filter(jnp.array([1.0, 3.0, 3.0, 3.0]), 2)   # [-inf, 3, 3, -inf]
    """
    top_k = check_top_k(top_k, logits.shape[-1])
    if top_k == logits.shape[-1]:
        return logits
    _, indices = jax.lax.top_k(logits, top_k)
    return _keep_only(logits, indices)


def top_p_filter(logits: Array, top_p: float | Array) -> Array:
    """Keep the nucleus: the most likely logits, in descending order, until their probability
    reaches ``top_p``; ``-inf`` elsewhere. The most likely entry always survives.

    logits ``(..., V)`` (may already hold ``-inf``) -> ``(..., V)``. ``top_p`` in ``(0, 1]`` may
    be a traced scalar. Ties are ordered by index, so the kept set is one exact prefix.

    Example::

        top_p_filter(jnp.log(jnp.array([0.5, 0.3, 0.2])), 0.7)   # keeps entries 0 and 1
    """
    if isinstance(top_p, numbers.Real):
        check_top_p(top_p)
    # Stable descending order: ties keep the lower index first, as lax.top_k does.
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # An entry is in the nucleus when the mass strictly before it is still short of top_p.
    return _keep_only(logits, order, mass_before < top_p)


def filter_logits(
    logits: Array,
    *,
    temperature: float | Array = 1.0,
    top_k: int | None = None,
    top_p: float | Array | None = None,
) -> Array:
    """Temperature, then top-k, then top-p. logits ``(..., V)`` -> ``(..., V)`` with ``-inf``
    where removed. ``temperature`` must be ``> 0`` here (0 is greedy: see :func:`sample_logits`).

    Example::

        filter_logits(logits, temperature=0.8, top_k=40, top_p=0.95)
    """
    if isinstance(temperature, numbers.Real) and check_temperature(temperature) == 0.0:
        raise ValueError(
            "temperature=0 is invalid for filter_logits: it means greedy; use "
            "sample_logits(..., temperature=0) or greedy=True"
        )
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def sample_logits(
    key: Array,
    logits: Array,
    *,
    temperature: float | Array = 1.0,
    top_k: int | None = None,
    top_p: float | Array | None = None,
    greedy: bool = False,
) -> Array:
    """Draw one token per row. logits ``(..., V)`` -> int32 ``(...)``.

    ``greedy=True`` or ``temperature=0`` returns the argmax (which every filter keeps).

    Example::

        tokens = sample_logits(key, logits, temperature=0.8, top_k=40)   # (b,)
    """
    if isinstance(temperature, numbers.Real) and check_temperature(temperature) == 0.0:
        greedy = True
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Any head: the draw split into its randomness (``draw_noise``) and a pure function of it
# ---------------------------------------------------------------------------------------------
#
# Generation draws the noise of a whole chunk of steps in one vectorised call before its scan and
# hands each step its slice: one large random-bits computation is much cheaper on the CPU than a
# small one per step. The noise is exactly what the heads' own ``sample`` draws from the same key,
# so ``sample_head(head, key, ...)`` equals ``head.sample(key, ...)`` (tested).


def draw_noise(head, key: Array, batch_shape: tuple[int, ...]) -> Any:
    """The randomness of one draw per row of ``batch_shape`` from ``head``.

    Categorical: Gumbel ``(..., V)``; Gaussian: standard normal ``(..., d)``; MDN: a tuple of
    Gumbel ``(..., K)`` (component) and standard normal ``(..., d)``; Bernoulli: uniform
    ``(..., d)``.

    Example::

        noise = draw_noise(model.head, key, (b,))
        x = sample_with_noise(model.head, noise, out, temperature=0.8)
    """
    if not isinstance(head, heads_module.HEAD_CLASSES):
        allowed = ", ".join(cls.__name__ for cls in heads_module.HEAD_CLASSES)
        raise ValueError(
            f"head={type(head).__name__} is not supported: allowed are {allowed}"
        )
    return head.draw_noise(key, tuple(batch_shape))


def _check_controls(head, top_k, top_p) -> None:
    if head.discrete:
        return
    for name, value in (("top_k", top_k), ("top_p", top_p)):
        if value is not None:
            raise ValueError(
                f"{name}={value!r} is invalid for a {type(head).__name__} head: it filters "
                f"categorical logits; allowed here is {name}=None (use temperature or greedy)"
            )


def sample_with_noise(
    head,
    noise: Any,
    params: Any,
    *,
    temperature: float | Array = 1.0,
    top_k: int | None = None,
    top_p: float | Array | None = None,
    greedy: bool = False,
) -> Array:
    """One element per row from ``params`` and the ``noise`` of :func:`draw_noise` (ignored
    when greedy). Returns int32 ``(...)`` tokens or ``(..., d)`` values; see
    :func:`sample_head`."""
    if isinstance(temperature, numbers.Real) and check_temperature(temperature) == 0.0:
        greedy = True
    _check_controls(head, top_k, top_p)
    if greedy:
        return head.mode(params)
    temperature = jnp.asarray(temperature, jnp.float32)
    if isinstance(head, heads_module.Categorical):
        # Temperature first, then top-k / top-p, then the head's own Gumbel-max draw.
        filtered = filter_logits(params, temperature=temperature, top_k=top_k, top_p=top_p)
        return head.sample_from_noise(noise, filtered, temperature=1.0)
    return head.sample_from_noise(noise, params, temperature=temperature)


def sample_head(
    head,
    key: Array,
    params: Any,
    *,
    temperature: float | Array = 1.0,
    top_k: int | None = None,
    top_p: float | Array | None = None,
    greedy: bool = False,
) -> Array:
    """Draw one element per row from a head's parameters (leading axes ``(...)``).

    Categorical: temperature, top-k, top-p, draw -> int32 ``(...)``. Gaussian / MDN / Bernoulli:
    what the head's own ``sample`` draws (temperature scales the spread) or its ``mode`` when
    greedy -> ``(..., d)``; ``top_k`` / ``top_p`` do not apply to them and raise ``ValueError``.

    Example::

        out, carry = model.step(x, carry)
        x = sample_head(model.head, key, out, temperature=0.8)
    """
    _check_controls(head, top_k, top_p)
    noise = draw_noise(head, key, head.batch_shape(params))
    return sample_with_noise(
        head, noise, params, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy
    )


# ---------------------------------------------------------------------------------------------
# Categorical draws with the temperature (and a constant bias) folded into the noise
# ---------------------------------------------------------------------------------------------
#
# argmax(logits / T + g) = argmax(logits + T * g) for T > 0, and a bias b added to the logits
# before the temperature moves into the noise the same way: argmax((logits + b) / T + g) =
# argmax(logits + (b + T * g)). The noise of a segment of steps is drawn before its scan, so
# folding there leaves the scan body one add and an argmax: on XLA:CPU every elementwise operand
# more in that fusion pushes its cost model over the line where it splits the (b, V) argmax over
# two threads, and the split costs more than the arithmetic (benchmarks/bench_decoding.py).
# With T = 1 and no bias the draw is bit for bit the one of sample_with_noise.


def fold_noise(noise: Array, *, temperature: float | Array, bias: Array | None = None) -> Array:
    """Gumbel ``noise`` ``(..., V)`` -> ``temperature * noise (+ bias (V,))``, for
    :func:`sample_folded`."""
    folded = noise * jnp.asarray(temperature, noise.dtype)
    return folded if bias is None else folded + bias


def sample_folded(folded_noise: Array, logits: Array, *, top_k: int | None = None) -> Array:
    """The categorical draw of :func:`sample_with_noise` (temperature, top-k, no top-p) from
    noise folded by :func:`fold_noise`. logits ``(..., V)`` -> int32 ``(...)``.

    Example::

        folded = fold_noise(draw_noise(head, key, (b,)), temperature=0.8)
        tokens = sample_folded(folded, logits, top_k=40)   # = sample_with_noise(..., 0.8, 40)
    """
    if top_k is not None:
        logits = top_k_filter(logits, top_k)  # the top k do not change with T > 0
    return jnp.argmax(logits + folded_noise, axis=-1).astype(jnp.int32)
