"""Free running: ``generate`` a continuation as one compiled program, or ``generate_stream`` it.

How a call runs (all of it inside one ``jax.jit``, cached per shape and static option):

1. **Prefill.** The prompt (right-padded, per-row ``prompt_lengths``) goes through the
   teacher-forced path, :meth:`SequenceModel.run_layers` with an ``active`` mask: every layer's
   input projection for all steps in one matmul / gather, then one ``lax.scan`` over the
   recurrence per layer, with each row's carry frozen once its prompt has ended. The last prompt element of each row is *not* consumed here: it is the first input of the
   free-running loop, so generation continues from each row's own last element.
2. **Free running.** The feed policy with no truth (:func:`seqmodel.decoding.feed.feed_steps`, the loop
   that scheduled sampling also runs): ``lax.scan`` over ``model.step``; each step feeds its
   input, draws a sample from the head's output with the sampling controls
   (:mod:`seqmodel.decoding.sampling`) and feeds the sample back. The draw of step ``i`` uses ``fold_in(key, i)``: the same key gives the same
   samples however the loop is cut into chunks, which is what makes :func:`generate_stream` equal
   to :func:`generate`. The noise of a whole run of steps (up to :data:`NOISE_BUDGET` elements)
   is drawn in one vectorised call before its scan; inside the scan a step is the model step,
   one add and an argmax.
3. **Logits processors** (:mod:`seqmodel.decoding.processors`: penalties, bias and bans, min-new-tokens,
   stop sequences, a user function) change each step's logits before the sampling controls,
   with what they remember of each row carried in the loop state.
4. **Early stop.** With ``eos_id`` or stop sequences, the scan runs in chunks of
   :data:`EARLY_STOP_CHUNK` steps inside a ``lax.while_loop`` that ends once every row has
   stopped: no recompiling, at most one chunk of wasted steps. Otherwise it is one plain scan.

The model runs in eval mode (no dropout) during generation. The switch happens on the copy of the
model that lives inside the compiled function, so the caller's model is never modified, not even
for the duration of the call.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqmodel.decoding import feed, processors, sampling
from seqmodel.decoding.feed import FeedState, feed_steps
from seqmodel.decoding.prompts import check_key, check_positive_int, check_prompt, is_int, prefill

Array = jax.Array

# Steps per chunk of the early-stopping loop (only used when rows can stop). Small enough that a
# finished batch wastes little, large enough that the while loop's per-chunk cost vanishes (see
# benchmarks/bench_generate.py, which measures the chunked loop against one plain scan).
EARLY_STOP_CHUNK = 32

# Largest number of noise elements drawn ahead of a scan segment (see seqmodel.decoding.feed); read at
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
        ``r * n ... r * n + n - 1``. Past a row's length the samples are padding (``eos_id``,
        or 0 without one).
      lengths: ``(b,)`` int32, the number of new elements up to and including the first
        ``eos_id`` or the end of the first stop sequence (``steps`` for a row that never stopped).
      scores: ``None`` unless ``return_scores=True``; then the head's distribution parameters
        (logits ``(b, steps, V)``, :class:`~seqmodel.nn.heads.GaussianParams`, ...) at each step,
        before logits processors, temperature and filtering, zero past a row's length.
    """

    samples: Array
    lengths: Array
    scores: Any = None


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Options:
    """The static options of a generate program (part of its compile key)."""

    steps: int
    num_samples: int
    top_k: int | None
    use_top_p: bool
    greedy: bool
    return_scores: bool
    processors: processors.ProcessorOptions


class _Values(NamedTuple):
    """The traced numbers of a generate program (new values do not recompile)."""

    temperature: np.float32  # > 0 unless greedy
    top_p: np.float32  # 1.0 when unused
    processors: processors.ProcessorValues


class _Request(NamedTuple):
    """Checked, normalised arguments of :func:`generate` / :func:`generate_stream`."""

    prompt: Any  # (b, p) int32 or (b, p, d) float32, NumPy or jax
    prompt_lengths: np.ndarray  # (b,) int32 in 1..p
    key: Array
    values: _Values
    options: _Options


def _check_request(model, *, key, steps, prompt, prompt_lengths, batch_size, num_samples,
                   temperature, top_k, top_p, greedy, eos_id, return_scores,
                   **processor_arguments) -> _Request:
    config = model.config
    if config.conditioned:
        raise ValueError(
            f"generate cannot feed this model its own samples: its inputs carry "
            f"{config.input_size - config.target_size} conditioning features after each "
            f"{config.target_size}-feature element (ModelConfig.target_size); forecast it with "
            "seqmodel.forecasting.forecaster, which builds those features step by step")
    steps = check_positive_int("steps", steps)
    num_samples = check_positive_int("num_samples", num_samples)
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
        if eos_id is not None and (not is_int(eos_id) or not 0 <= eos_id < config.vocab_size):
            raise ValueError(
                f"eos_id={eos_id!r} is invalid: allowed is None or a token id in "
                f"[0, {config.vocab_size - 1}]"
            )
        processor_options, processor_values = processors.check_processors(
            config.vocab_size, eos_id=eos_id, **processor_arguments)
    else:
        given = dict(top_k=top_k, top_p=top_p, eos_id=eos_id, **processor_arguments)
        for name, value in given.items():
            if value is not None:
                raise ValueError(
                    f"{name}={value!r} is invalid for a {head_name} head (real-valued "
                    f"elements): allowed is {name}=None; top_k, top_p, eos_id and the logits "
                    "processors apply to token models (temperature and greedy work for every "
                    "head)"
                )
        processor_options, processor_values = processors.check_processors(1)
    prompt, prompt_lengths = check_prompt(model, prompt, prompt_lengths, batch_size)
    options = _Options(
        steps=steps,
        num_samples=num_samples,
        # Filters are moot when greedy: drop them so that they add no ops and no recompiles.
        top_k=None if greedy else top_k,
        use_top_p=top_p is not None and not greedy,
        greedy=greedy,
        return_scores=return_scores,
        processors=processor_options,
    )
    values = _Values(
        temperature=np.float32(1.0 if greedy else temperature),
        top_p=np.float32(1.0 if top_p is None else top_p),
        processors=processor_values,
    )
    return _Request(prompt, prompt_lengths, check_key(key), values, options)


# ---------------------------------------------------------------------------------------------
# The traced pieces
# ---------------------------------------------------------------------------------------------


def _start(model, prompt, prompt_lengths, options: _Options) -> FeedState:
    """The prefilled loop state of ``b * num_samples`` rows, with the processors' history."""
    state = prefill(model, prompt, prompt_lengths, options.num_samples)
    history = processors.History()
    if model.config.discrete:
        repeat = functools.partial(jnp.repeat, repeats=options.num_samples, axis=0)
        history = processors.initial_history(
            options.processors, repeat(prompt), repeat(prompt_lengths),
            vocab_size=model.config.vocab_size, steps=options.steps)
    return state._replace(history=history)


def _run_chunk(model, table, state: FeedState, key, start, values: _Values, *, size: int,
               options: _Options):
    """Exactly ``size`` free-running steps with global indices ``start ...`` (the feed policy
    with no truth). Returns the new state and time-major ``(samples (size, b[, d]), scores or
    None)``, padded past each row's length."""
    head = model.head
    rules, numbers = options.processors, values.processors

    def draw(noise, out, history, index):
        logits = processors.process_logits(out, history, index, rules, numbers) \
            if rules.active else out
        sample = sampling.sample_with_noise(
            head, noise, logits, temperature=values.temperature, top_k=options.top_k,
            top_p=values.top_p if options.use_top_p else None, greedy=options.greedy)
        if not head.discrete:
            return sample, history, None
        history = processors.update_history(history, sample, index, rules)
        return sample, history, processors.ends_row(history, sample, index, rules, numbers)

    state, (samples, _, scores) = feed_steps(
        model, state, key=key, start=start, size=size, draw=draw, table=table,
        greedy=options.greedy, noise_budget=NOISE_BUDGET, record_outputs=options.return_scores)
    if not rules.stops:  # every row is still going: no per-step bookkeeping needed
        state = state._replace(lengths=state.lengths + size)
    else:
        # Padding is decided once per chunk: position i of a row is real when i < its length.
        indices = start + jnp.arange(size, dtype=jnp.int32)
        valid = indices[:, None] < state.lengths[None, :]  # (size, b)
        samples = jnp.where(valid.reshape(valid.shape + (1,) * (samples.ndim - 2)), samples,
                            numbers.eos_id.astype(samples.dtype))
        if scores is not None:
            scores = jax.tree.map(
                lambda a: jnp.where(valid.reshape(valid.shape + (1,) * (a.ndim - 2)), a, 0),
                scores,
            )
    return state, samples, scores


def _batch_major(tree):
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), tree)


def _generate_program(model, prompt, prompt_lengths, key, values: _Values, *,
                      options: _Options) -> Generation:
    TRACE_COUNTS["generate"] += 1
    model.eval()  # the traced copy only: the caller's model keeps its mode
    table = model.input_table()
    state = _start(model, prompt, prompt_lengths, options)
    run = functools.partial(_run_chunk, model, table, key=key, values=values, options=options)
    steps = options.steps
    if not options.processors.stops:
        state, samples, scores = run(state, start=0, size=steps)
        return Generation(_batch_major(samples), state.lengths, _batch_major(scores))

    chunk = min(steps, EARLY_STOP_CHUNK)
    num_chunks = math.ceil(steps / chunk)
    chunk_shapes = jax.eval_shape(lambda s: run(s, start=0, size=chunk)[1:], state)
    # Buffers (num_chunks, chunk, b, ...) start as padding; chunks never run stay padding.
    padding = values.processors.eos_id
    samples_buffer = jnp.full((num_chunks,) + chunk_shapes[0].shape, padding,
                              chunk_shapes[0].dtype)
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
    # A row whose stop fell in the wasted tail of the last chunk counts as never stopping.
    lengths = jnp.minimum(state.lengths, steps)
    return Generation(_batch_major(samples), lengths, _batch_major(scores))


_compiled_generate = jax.jit(_generate_program, static_argnames=("options",))


def _prefill_program(model, prompt, prompt_lengths, *, options: _Options) -> FeedState:
    TRACE_COUNTS["prefill"] += 1
    model.eval()
    return _start(model, prompt, prompt_lengths, options)


def _chunk_program(model, state, key, start, values, *, size: int, options: _Options):
    TRACE_COUNTS["chunk"] += 1
    model.eval()
    return _run_chunk(model, model.input_table(), state, key, start, values, size=size,
                      options=options)


_compiled_prefill = jax.jit(_prefill_program, static_argnames=("options",))
_compiled_chunk = jax.jit(_chunk_program, static_argnames=("size", "options"))


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
    repetition_penalty: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    token_bias: dict[int, float] | None = None,
    banned_tokens: Sequence[int] | None = None,
    min_new_tokens: int | None = None,
    stop_sequences: Sequence[Sequence[int]] | None = None,
    logits_processor: Callable | None = None,
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
      eos_id: a token that ends its row; the loop stops once every row has stopped.
      return_scores: also return the distribution parameters of every generated step.
      repetition_penalty: CTRL's penalty (``> 1`` discourages tokens already seen).
      presence_penalty, frequency_penalty: subtracted once per seen token / per occurrence.
      token_bias: ``{token id: logit to add}``; banned_tokens: token ids never drawn.
      min_new_tokens: no ``eos_id`` and no stop-sequence end before this many new tokens.
      stop_sequences: token-id sequences (e.g. ``[tokenizer.encode("\\n\\n")]``) that end a
        row when it generates one; the row's length includes it.
      logits_processor: a jittable ``(logits (b, V), tokens (b, steps), step) -> logits``.
      The processors run in the order given in :mod:`seqmodel.decoding.processors` (token models only).

    Returns:
      :class:`Generation` with ``samples`` ``(b * n, steps[, d])``, ``lengths`` ``(b * n,)`` and
      ``scores`` (or ``None``).

    Example::

        generation = generate(model, key=jax.random.key(0), steps=200,
                              prompt=tokens, prompt_lengths=lengths, top_k=20, eos_id=0,
                              repetition_penalty=1.2)
        generation.samples   # (b, 200) int32
    """
    request = _check_request(
        model, key=key, steps=steps, prompt=prompt, prompt_lengths=prompt_lengths,
        batch_size=batch_size, num_samples=num_samples, temperature=temperature, top_k=top_k,
        top_p=top_p, greedy=greedy, eos_id=eos_id, return_scores=return_scores,
        repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, token_bias=token_bias, banned_tokens=banned_tokens,
        min_new_tokens=min_new_tokens, stop_sequences=stop_sequences,
        logits_processor=logits_processor,
    )
    return _compiled_generate(model, request.prompt, request.prompt_lengths, request.key,
                              request.values, options=request.options)


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
    repetition_penalty: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    token_bias: dict[int, float] | None = None,
    banned_tokens: Sequence[int] | None = None,
    min_new_tokens: int | None = None,
    stop_sequences: Sequence[Sequence[int]] | None = None,
    logits_processor: Callable | None = None,
) -> Iterator[Generation]:
    """Like :func:`generate`, but a Python generator of chunks, for long outputs and live display.

    Each chunk is one compiled scan of ``chunk_size`` steps (the last one cut to what is left)
    with the carry handed on; the arguments are those of :func:`generate`. Concatenating the
    chunks' ``samples`` (and ``scores``) along axis 1 gives exactly :func:`generate`'s result for
    the same key. Each yielded :class:`Generation` holds that chunk's ``samples``
    ``(b, c[, d])``, the ``lengths`` so far ``(b,)`` and the chunk's ``scores``. Once every row
    has stopped the remaining chunks are padding, made without running the model.

    Example::

        for chunk in generate_stream(model, key=key, steps=2000, chunk_size=100, prompt=tokens):
            print(tokenizer.decode(chunk.samples[0]), end="", flush=True)
    """
    chunk_size = check_positive_int("chunk_size", chunk_size)
    request = _check_request(
        model, key=key, steps=steps, prompt=prompt, prompt_lengths=prompt_lengths,
        batch_size=batch_size, num_samples=num_samples, temperature=temperature, top_k=top_k,
        top_p=top_p, greedy=greedy, eos_id=eos_id, return_scores=return_scores,
        repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, token_bias=token_bias, banned_tokens=banned_tokens,
        min_new_tokens=min_new_tokens, stop_sequences=stop_sequences,
        logits_processor=logits_processor,
    )
    return _stream(model, request, min(chunk_size, request.options.steps))


def _stream(model, request: _Request, size: int) -> Iterator[Generation]:
    options, steps = request.options, request.options.steps
    state = _compiled_prefill(model, request.prompt, request.prompt_lengths, options=options)
    finished, last_chunk = False, None
    for start in range(0, steps, size):
        take = min(size, steps - start)
        if finished:
            samples, scores = last_chunk
            pad = functools.partial(jnp.full_like, fill_value=0)
            chunk_samples = jnp.full_like(samples, request.values.processors.eos_id)
            chunk_scores = jax.tree.map(pad, scores)
        else:
            state, chunk_samples, chunk_scores = _compiled_chunk(
                model, state, request.key, np.int32(start), request.values, size=size,
                options=options)
            last_chunk = (chunk_samples, chunk_scores)
            finished = options.processors.stops and bool(jnp.all(state.done))
        cut = lambda a: jnp.swapaxes(a[:take], 0, 1)  # noqa: E731
        yield Generation(
            cut(chunk_samples),
            jnp.minimum(state.lengths, start + take),
            jax.tree.map(cut, chunk_scores),
        )
