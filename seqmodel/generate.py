"""Free running: ``generate`` a continuation as one compiled program, or ``generate_stream`` it.

How a call runs (all of it inside one ``jax.jit``, cached per shape and static option):

1. **Prefill.** The prompt (right-padded, per-row ``prompt_lengths``) goes through the
   teacher-forced path, :meth:`SequenceModel.run_layers` with an ``active`` mask: every layer's
   input projection for all steps in one matmul / gather, then one ``lax.scan`` over the
   recurrence per layer, with each row's carry frozen once its prompt has ended. The last prompt element of each row is *not* consumed here: it is the first input of the
   free-running loop, so generation continues from each row's own last element.
2. **Free running.** The feed policy with no truth (:func:`seqmodel.feed.feed_steps`, the loop
   that scheduled sampling also runs): ``lax.scan`` over ``model.step``; each step feeds its
   input, draws a sample from the head's output with the sampling controls
   (:mod:`seqmodel.sampling`) and feeds the sample back. The draw of step ``i`` uses ``fold_in(key, i)``: the same key gives the same
   samples however the loop is cut into chunks, which is what makes :func:`generate_stream` equal
   to :func:`generate`. The noise of a whole run of steps (up to :data:`NOISE_BUDGET` elements)
   is drawn in one vectorised call before its scan; inside the scan a step is the model step,
   one add and an argmax.
3. **Early stop.** With ``eos_id``, the scan runs in chunks of :data:`EARLY_STOP_CHUNK` steps inside
   a ``lax.while_loop`` that ends once every row has emitted ``eos_id``: no recompiling, at most one
   chunk of wasted steps. Without ``eos_id`` it is one plain scan over all steps.

The model runs in eval mode (no dropout) during generation. The switch happens on the copy of the
model that lives inside the compiled function, so the caller's model is never modified, not even
for the duration of the call.
"""

from __future__ import annotations

import collections
import functools
import math
import numbers
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqmodel import feed, sampling
from seqmodel.feed import FeedState, feed_steps, start_state

Array = jax.Array

# Steps per chunk of the early-stopping loop (only used with eos_id). Small enough that a finished
# batch wastes little, large enough that the while loop's per-chunk cost vanishes (see
# benchmarks/bench_generate.py, which measures the chunked loop against one plain scan).
EARLY_STOP_CHUNK = 32

# Largest number of noise elements drawn ahead of a scan segment (see seqmodel.feed); read at
# trace time, so a test can shrink it to exercise the segmented loop.
NOISE_BUDGET = feed.NOISE_BUDGET

# How many times each compiled program has been traced; tests check that a second call with the
# same shapes adds nothing.
TRACE_COUNTS: collections.Counter = collections.Counter()


class Generation(NamedTuple):
    """What :func:`generate` returns (and :func:`generate_stream` yields chunk by chunk).

    Attributes:
      samples: ``(b, steps)`` int32 tokens or ``(b, steps, d)`` values: the new elements only.
        With ``num_samples = n`` the ``n`` continuations of prompt row ``r`` are rows
        ``r * n ... r * n + n - 1``. Past a row's length the samples are padding (``eos_id``).
      lengths: ``(b,)`` int32, the number of new elements up to and including the first
        ``eos_id`` (``steps`` for a row that never emitted it).
      scores: ``None`` unless ``return_scores=True``; then the head's distribution parameters
        (logits ``(b, steps, V)``, :class:`~seqmodel.heads.GaussianParams`, ...) with which each
        sample was drawn, before temperature and filtering, zero past a row's length.
    """

    samples: Array
    lengths: Array
    scores: Any = None


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


class _Request(NamedTuple):
    """Checked, normalised arguments: the traced inputs plus the static options of the program."""

    prompt: Any  # (b, p) int32 or (b, p, d) float32, NumPy or jax
    prompt_lengths: np.ndarray  # (b,) int32 in 1..p
    key: Array
    temperature: np.float32  # > 0 unless greedy
    top_p: np.float32  # 1.0 when unused
    eos_id: np.int32  # 0 when unused
    static: dict  # steps, num_samples, top_k, use_top_p, greedy, use_eos, return_scores


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_positive_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: allowed is an integer >= 1")
    return int(value)


def _check_key(key: Any) -> Array:
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
    raise ValueError(
        f"key={key!r} is invalid: allowed is a single PRNG key such as jax.random.key(0) "
        "(or a raw jax.random.PRNGKey(0))"
    )


def _check_prompt(model, prompt: Any, prompt_lengths: Any, batch_size: Any):
    config = model.config
    if prompt is None:
        if prompt_lengths is not None:
            raise ValueError(
                f"prompt_lengths={prompt_lengths!r} is invalid without a prompt: allowed is None "
                "(or give prompt too)"
            )
        batch = 1 if batch_size is None else _check_positive_int("batch_size", batch_size)
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


def _check_request(
    model, *, key, steps, prompt, prompt_lengths, batch_size, num_samples, temperature, top_k,
    top_p, greedy, eos_id, return_scores,
) -> _Request:
    config = model.config
    steps = _check_positive_int("steps", steps)
    num_samples = _check_positive_int("num_samples", num_samples)
    temperature = sampling.check_temperature(temperature)
    if not isinstance(greedy, bool):
        raise ValueError(f"greedy={greedy!r} is invalid: allowed is True or False")
    if not isinstance(return_scores, bool):
        raise ValueError(f"return_scores={return_scores!r} is invalid: allowed is True or False")
    greedy = greedy or temperature == 0.0
    head_name = type(model.head).__name__
    if config.discrete:
        top_k = sampling.check_top_k(top_k, config.vocab_size)
        top_p = sampling.check_top_p(top_p)
        if eos_id is not None and (not _is_int(eos_id) or not 0 <= eos_id < config.vocab_size):
            raise ValueError(
                f"eos_id={eos_id!r} is invalid: allowed is None or a token id in "
                f"[0, {config.vocab_size - 1}]"
            )
    else:
        for name, value in (("top_k", top_k), ("top_p", top_p), ("eos_id", eos_id)):
            if value is not None:
                raise ValueError(
                    f"{name}={value!r} is invalid for a {head_name} head (real-valued "
                    f"elements): allowed is {name}=None; top_k, top_p and eos_id apply to "
                    "token models (temperature and greedy work for every head)"
                )
    prompt, prompt_lengths = _check_prompt(model, prompt, prompt_lengths, batch_size)
    static = dict(
        steps=steps,
        num_samples=num_samples,
        # Filters are moot when greedy: drop them so that they add no ops and no recompiles.
        top_k=None if greedy else top_k,
        use_top_p=top_p is not None and not greedy,
        greedy=greedy,
        use_eos=eos_id is not None,
        return_scores=return_scores,
    )
    return _Request(
        prompt=prompt,
        prompt_lengths=prompt_lengths,
        key=_check_key(key),
        temperature=np.float32(1.0 if greedy else temperature),
        top_p=np.float32(1.0 if top_p is None else top_p),
        eos_id=np.int32(0 if eos_id is None else eos_id),
        static=static,
    )


# ---------------------------------------------------------------------------------------------
# The traced pieces
# ---------------------------------------------------------------------------------------------


def _prefill(model, prompt: Array, prompt_lengths: Array, num_samples: int) -> FeedState:
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


def _run_chunk(model, table, state: FeedState, key, start, temperature, top_p, eos_id, *,
               size: int, top_k, use_top_p: bool, greedy: bool, use_eos: bool,
               return_scores: bool):
    """Exactly ``size`` free-running steps with global indices ``start ...`` (the feed policy
    with no truth). Returns the new state and time-major ``(samples (size, b[, d]), scores or
    None)``, padded past each row's length."""
    head = model.head

    def draw(noise, out):
        return sampling.sample_with_noise(head, noise, out, temperature=temperature, top_k=top_k,
                                          top_p=top_p if use_top_p else None, greedy=greedy)

    state, (samples, _, scores) = feed_steps(
        model, state, key=key, start=start, size=size, draw=draw, table=table,
        eos_id=eos_id if use_eos else None, greedy=greedy, noise_budget=NOISE_BUDGET,
        record_outputs=return_scores)
    if not use_eos:  # every row is still going: no per-step bookkeeping needed
        state = state._replace(lengths=state.lengths + size)
    else:
        # Padding is decided once per chunk: position i of a row is real when i < its length.
        indices = start + jnp.arange(size, dtype=jnp.int32)
        valid = indices[:, None] < state.lengths[None, :]  # (size, b)
        samples = jnp.where(valid.reshape(valid.shape + (1,) * (samples.ndim - 2)), samples,
                            eos_id)
        if scores is not None:
            scores = jax.tree.map(
                lambda a: jnp.where(valid.reshape(valid.shape + (1,) * (a.ndim - 2)), a, 0),
                scores,
            )
    return state, samples, scores


def _batch_major(tree):
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), tree)


def _generate_program(model, prompt, prompt_lengths, key, temperature, top_p, eos_id, *,
                      steps: int, num_samples: int, top_k, use_top_p: bool, greedy: bool,
                      use_eos: bool, return_scores: bool) -> Generation:
    TRACE_COUNTS["generate"] += 1
    model.eval()  # the traced copy only: the caller's model keeps its mode
    table = model.input_table()
    state = _prefill(model, prompt, prompt_lengths, num_samples)
    run = functools.partial(
        _run_chunk, model, table, key=key, temperature=temperature, top_p=top_p, eos_id=eos_id,
        top_k=top_k, use_top_p=use_top_p, greedy=greedy, use_eos=use_eos,
        return_scores=return_scores,
    )
    if not use_eos:
        state, samples, scores = run(state, start=0, size=steps)
        return Generation(_batch_major(samples), state.lengths, _batch_major(scores))

    chunk = min(steps, EARLY_STOP_CHUNK)
    num_chunks = math.ceil(steps / chunk)
    chunk_shapes = jax.eval_shape(lambda s: run(s, start=0, size=chunk)[1:], state)
    # Buffers (num_chunks, chunk, b, ...) start as padding; chunks never run stay padding.
    samples_buffer = jnp.full((num_chunks,) + chunk_shapes[0].shape, eos_id, chunk_shapes[0].dtype)
    scores_buffer = jax.tree.map(
        lambda s: jnp.zeros((num_chunks,) + s.shape, s.dtype), chunk_shapes[1]
    )

    def keep_going(loop):
        index, state = loop[0], loop[1]
        return (index < num_chunks) & ~jnp.all(state.done)

    def next_chunk(loop):
        index, state, samples_buffer, scores_buffer = loop
        state, samples, scores = run(state, start=index * chunk, size=chunk)
        put = functools.partial(jax.lax.dynamic_update_index_in_dim, index=index, axis=0)
        samples_buffer = put(samples_buffer, samples)
        scores_buffer = jax.tree.map(put, scores_buffer, scores)
        return index + 1, state, samples_buffer, scores_buffer

    _, state, samples_buffer, scores_buffer = jax.lax.while_loop(
        keep_going, next_chunk, (jnp.int32(0), state, samples_buffer, scores_buffer)
    )

    def flatten(buffer):
        return buffer.reshape((num_chunks * chunk,) + buffer.shape[2:])[:steps]

    samples = flatten(samples_buffer)
    scores = jax.tree.map(flatten, scores_buffer)
    # A row whose eos fell in the wasted tail of the last chunk counts as never stopping.
    lengths = jnp.minimum(state.lengths, steps)
    return Generation(_batch_major(samples), lengths, _batch_major(scores))


_STATIC = ("steps", "num_samples", "top_k", "use_top_p", "greedy", "use_eos", "return_scores")
_compiled_generate = jax.jit(_generate_program, static_argnames=_STATIC)


def _prefill_program(model, prompt, prompt_lengths, *, num_samples: int) -> FeedState:
    TRACE_COUNTS["prefill"] += 1
    model.eval()
    return _prefill(model, prompt, prompt_lengths, num_samples)


def _chunk_program(model, state, key, start, temperature, top_p, eos_id, **static):
    TRACE_COUNTS["chunk"] += 1
    model.eval()
    return _run_chunk(model, model.input_table(), state, key, start, temperature, top_p, eos_id,
                      **static)


_compiled_prefill = jax.jit(_prefill_program, static_argnames=("num_samples",))
_compiled_chunk = jax.jit(
    _chunk_program,
    static_argnames=("size", "top_k", "use_top_p", "greedy", "use_eos", "return_scores"),
)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def generate(
    model,
    *,
    key: Array,
    steps: int,
    prompt: Any = None,
    prompt_lengths: Any = None,
    batch_size: int | None = None,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    eos_id: int | None = None,
    return_scores: bool = False,
) -> Generation:
    """Generate ``steps`` new elements per row, free running, as one compiled program.

    Args:
      model: a :class:`seqmodel.SequenceModel`. It runs in eval mode (no dropout) inside the call;
        its own mode is left untouched.
      key: PRNG key; the same key and arguments give the same samples.
      steps: number of new elements per row (``>= 1``).
      prompt: ``(b, p)`` token ids or ``(b, p, d)`` values, right-padded when rows differ in
        length. ``None`` starts ``batch_size`` rows from the zero carry and the start element
        (token 0 / the zero vector).
      prompt_lengths: ``(b,)`` ints in ``1..p``, each row's real prompt length (default ``p``).
      batch_size: rows to generate without a prompt (default 1).
      num_samples: continuations per prompt row; the result has ``b * num_samples`` rows.
      temperature: ``>= 0``. Divides the logits (categorical, Bernoulli), scales the variance
        (Gaussian, MDN components) and the mixture logits (MDN); ``0`` means greedy.
      top_k: keep exactly the ``k`` most likely tokens (categorical only).
      top_p: keep the nucleus of probability ``p`` in ``(0, 1]`` (categorical only).
      greedy: take the most likely element (the head's ``mode``) at every step.
      eos_id: a token that ends its row; the loop stops once every row has emitted it.
      return_scores: also return the distribution parameters of every generated step.

    Returns:
      :class:`Generation` with ``samples`` ``(b * n, steps[, d])``, ``lengths`` ``(b * n,)`` and
      ``scores`` (or ``None``).

    Example::

        generation = generate(model, key=jax.random.key(0), steps=200,
                              prompt=tokens, prompt_lengths=lengths, top_k=20, eos_id=0)
        generation.samples   # (b, 200) int32
    """
    request = _check_request(
        model, key=key, steps=steps, prompt=prompt, prompt_lengths=prompt_lengths,
        batch_size=batch_size, num_samples=num_samples, temperature=temperature, top_k=top_k,
        top_p=top_p, greedy=greedy, eos_id=eos_id, return_scores=return_scores,
    )
    return _compiled_generate(
        model, request.prompt, request.prompt_lengths, request.key, request.temperature,
        request.top_p, request.eos_id, **request.static,
    )


def generate_stream(
    model,
    *,
    key: Array,
    steps: int,
    chunk_size: int = 64,
    prompt: Any = None,
    prompt_lengths: Any = None,
    batch_size: int | None = None,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    eos_id: int | None = None,
    return_scores: bool = False,
) -> Iterator[Generation]:
    """Like :func:`generate`, but a Python generator of chunks, for long outputs and live display.

    Each chunk is one compiled scan of ``chunk_size`` steps (the last one cut to what is left)
    with the carry handed on; the arguments are those of :func:`generate`. Concatenating the
    chunks' ``samples`` (and ``scores``) along axis 1 gives exactly :func:`generate`'s result for
    the same key. Each yielded :class:`Generation` holds that chunk's ``samples``
    ``(b, c[, d])``, the ``lengths`` so far ``(b,)`` and the chunk's ``scores``. Once every row
    has emitted ``eos_id`` the remaining chunks are padding, made without running the model.

    Example::

        for chunk in generate_stream(model, key=key, steps=2000, chunk_size=100, prompt=tokens):
            print(tokenizer.decode(chunk.samples[0]), end="", flush=True)
    """
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    request = _check_request(
        model, key=key, steps=steps, prompt=prompt, prompt_lengths=prompt_lengths,
        batch_size=batch_size, num_samples=num_samples, temperature=temperature, top_k=top_k,
        top_p=top_p, greedy=greedy, eos_id=eos_id, return_scores=return_scores,
    )
    static = dict(request.static)
    steps, num_samples = static.pop("steps"), static.pop("num_samples")
    size = min(chunk_size, steps)
    return _stream(model, request, steps, size, num_samples, static)


def _stream(model, request: _Request, steps, size, num_samples, static) -> Iterator[Generation]:
    state = _compiled_prefill(
        model, request.prompt, request.prompt_lengths, num_samples=num_samples
    )
    finished = False
    for start in range(0, steps, size):
        take = min(size, steps - start)
        if finished:
            samples, scores = last_chunk
            pad = functools.partial(jnp.full_like, fill_value=0)
            chunk_samples = jnp.full_like(samples, request.eos_id)
            chunk_scores = jax.tree.map(pad, scores)
        else:
            state, chunk_samples, chunk_scores = _compiled_chunk(
                model, state, request.key, np.int32(start), request.temperature,
                request.top_p, request.eos_id, size=size, **static,
            )
            last_chunk = (chunk_samples, chunk_scores)
            finished = static["use_eos"] and bool(jnp.all(state.done))
        cut = lambda a: jnp.swapaxes(a[:take], 0, 1)  # noqa: E731
        yield Generation(
            cut(chunk_samples),
            jnp.minimum(state.lengths, start + take),
            jax.tree.map(cut, chunk_scores),
        )
