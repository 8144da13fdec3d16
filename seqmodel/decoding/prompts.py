"""What every decoding call shares: checks of its arguments and the prefill of the prompt.

:func:`seqmodel.generate`, :func:`seqmodel.generate_stream` and :func:`seqmodel.beam_search`
take the same ``key``, ``prompt`` (right-padded) and ``prompt_lengths``, check them here, and
consume the prompt with :func:`prefill`: one masked call of the model's layer stack.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqmodel.decoding.feed import FeedState, start_state

Array = jax.Array


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: allowed is an integer >= 1")
    return int(value)


def check_key(key: Any) -> Array:
    """A single PRNG key (typed, or raw ``uint32[2]``), else a clear error."""
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
    raise ValueError(
        f"key={key!r} is invalid: allowed is a single PRNG key such as jax.random.key(0) "
        "(or a raw jax.random.PRNGKey(0))"
    )


def check_prompt(model, prompt: Any, prompt_lengths: Any, batch_size: Any):
    """Checked ``(prompt (b, p[, d]), prompt_lengths (b,) int32)``; without a prompt,
    ``batch_size`` rows (default 1) of the start element (token 0 / the zero vector)."""
    config = model.config
    if prompt is None:
        if prompt_lengths is not None:
            raise ValueError(
                f"prompt_lengths={prompt_lengths!r} is invalid without a prompt: allowed is None "
                "(or give prompt too)"
            )
        batch = 1 if batch_size is None else check_positive_int("batch_size", batch_size)
        # The start element: token 0 or the zero vector, fed from the zero carry.
        shape = (batch, 1) if config.discrete else (batch, 1, config.input_size)
        dtype = np.int32 if config.discrete else np.float32
        # NumPy, not jnp: the arrays travel with the jitted call, no extra dispatches.
        return np.zeros(shape, dtype), np.ones((batch,), np.int32)

    host = np.asarray(prompt)
    expected = "(b, p) token ids" if config.discrete else f"(b, p, {config.input_size}) values"
    rank = 2 if config.discrete else 3
    if (
        host.ndim != rank
        or host.shape[0] < 1
        or host.shape[1] < 1
        or (not config.discrete and host.shape[-1] != config.input_size)
    ):
        raise ValueError(
            f"prompt of shape {host.shape} is invalid: allowed is shape {expected} with b >= 1 "
            "and p >= 1"
        )
    if config.discrete:
        if not np.issubdtype(host.dtype, np.integer):
            raise ValueError(
                f"prompt of dtype {host.dtype} is invalid: allowed are integer token ids"
            )
        low, high = int(host.min()), int(host.max())
        if low < 0 or high >= config.vocab_size:
            raise ValueError(
                f"prompt holds token ids in [{low}, {high}]: allowed are ids in "
                f"[0, {config.vocab_size - 1}] (the vocabulary)"
            )
    batch, length = host.shape[:2]
    if batch_size is not None and batch_size != batch:
        raise ValueError(
            f"batch_size={batch_size!r} is invalid with a prompt of {batch} rows: allowed is None "
            f"or {batch} (num_samples draws several continuations per row)"
        )
    if prompt_lengths is None:
        lengths = np.full((batch,), length, np.int32)
    else:
        lengths = np.asarray(prompt_lengths)
        if (
            lengths.shape != (batch,)
            or not np.issubdtype(lengths.dtype, np.integer)
            or lengths.min() < 1
            or lengths.max() > length
        ):
            raise ValueError(
                f"prompt_lengths={lengths.tolist()!r} is invalid: allowed is one integer per "
                f"prompt row (shape ({batch},)) in 1..{length} (the padded prompt length)"
            )
    dtype = np.int32 if config.discrete else np.float32
    # A prompt already on the device stays there (the host copy above only served the checks);
    # NumPy arrays travel with the jitted call.
    prompt = prompt.astype(dtype) if isinstance(prompt, jax.Array) else host.astype(dtype)
    return prompt, lengths.astype(np.int32)


def prefill(model, prompt: Array, prompt_lengths: Array, num_samples: int) -> FeedState:
    """Consume ``prompt[:, :length - 1]`` per row with the teacher-forced path (one masked call of
    the layer stack: a row's carry stays frozen past its length). prompt ``(b, p[, d])`` -> the
    loop state for ``b * n`` rows, whose next input is each row's last prompt element."""
    batch, length = prompt.shape[:2]
    carry = model.init_carry(batch)
    last = prompt[jnp.arange(batch), prompt_lengths - 1]  # (b,) or (b, d)
    if length > 1:
        consumed = jnp.swapaxes(prompt[:, :-1], 0, 1)  # time-major (p - 1, b[, d])
        active = jnp.arange(length - 1)[:, None] < (prompt_lengths - 1)[None, :]  # (p - 1, b)
        _, carry = model.run_layers(model.project_inputs(consumed), carry, active=active)
    if num_samples > 1:
        repeat = functools.partial(jnp.repeat, repeats=num_samples, axis=0)
        carry, last = jax.tree.map(repeat, carry), repeat(last)
    return start_state(carry, last)
