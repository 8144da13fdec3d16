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
   with what they remember of each row carried in the loop state. A **constraint**
   (:mod:`seqmodel.decoding.constraints`) masks the logits before them, its automaton state one
   int32 per row in the loop state. Without top-p, the temperature (and a constant bias) are
   folded into the noise before the scan (:func:`seqmodel.decoding.sampling.fold_noise`).
4. **Early stop.** With ``eos_id``, stop sequences or a constraint that can end rows, the scan
   runs in chunks of :data:`EARLY_STOP_CHUNK` steps inside a ``lax.while_loop`` that ends once
   every row has stopped: no recompiling, at most one chunk of wasted steps. Otherwise it is one
   plain scan. Why each row stopped comes back in ``Generation.stop_reasons``.

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

from seqmodel.decoding import constraints, feed, processors, sampling
from seqmodel.decoding.feed import REASON_CODES, STOP_REASONS, FeedState, Stop, feed_steps
from seqmodel.decoding.processors import ProcessorOptions
from seqmodel.decoding.prompts import check_positive_int, prefill
from seqmodel.decoding.requests import GenerateOptions, GenerateValues, Request, check_request

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
      stop_reasons: ``(b,)`` int32, why each row stopped: a code of :data:`STOP_REASONS`
        (``length``: it did not stop, ``eos``, ``stop_sequence``, ``complete``: the
        constraint's text is whole, ``no_continuation``: no token was left);
        :meth:`stop_reason_names` spells them.
    """

    samples: Array
    lengths: Array
    scores: Any = None
    stop_reasons: Any = None

    def stop_reason_names(self) -> list[str]:
        """``stop_reasons`` as names, one per row (e.g. ``["eos", "length"]``)."""
        return [STOP_REASONS[int(code)] for code in np.asarray(self.stop_reasons).reshape(-1)]


class TokenHistory(NamedTuple):
    """What the loop remembers of a token row: the processors' history and the constraint's
    automaton state ``(b,)`` int32 (None without a constraint)."""

    processors: processors.History
    automaton: Any = None


# ---------------------------------------------------------------------------------------------
# The traced pieces
# ---------------------------------------------------------------------------------------------


def start_loop(model, prompt, prompt_lengths, automaton, values: processors.ProcessorValues,
               options: GenerateOptions) -> FeedState:
    """The prefilled loop state of ``b * num_samples`` rows, with the processors' history and
    the constraint's states (traceable; the arguments are those of a :class:`Request`).

    Example::

        request = check_request(model, key=key, steps=10, prompt=tokens)
        state = start_loop(model, request.prompt, request.prompt_lengths, request.automaton,
                           request.values.processors, request.options)
    """
    state = prefill(model, prompt, prompt_lengths, options.num_samples)
    if not model.config.discrete:
        return state._replace(history=processors.History())
    repeat = functools.partial(jnp.repeat, repeats=options.num_samples, axis=0)
    history = processors.initial_history(
        options.processors, repeat(prompt), repeat(prompt_lengths),
        vocab_size=model.config.vocab_size, steps=options.steps, values=values)
    automaton = repeat(jnp.asarray(automaton, jnp.int32)) if options.constrained else None
    return state._replace(history=TokenHistory(history, automaton))


def _constrained_stop(reason, logits, automaton, following, tables, options: GenerateOptions):
    """The stop of a constrained row: stop sequences end it only in accepting states; a row
    whose state (or the processors) left it no token stops before this step's element."""
    if reason is not None and options.processors.stop_width:
        ended_outside = (reason == REASON_CODES["stop_sequence"]) & ~tables.accepting[following]
        reason = jnp.where(ended_outside, 0, reason)
    if options.stuck_check is None:
        return None if reason is None else Stop(reason)
    if options.stuck_check == "state":
        stuck = tables.stuck[automaton]
    else:
        stuck = ~jnp.any(logits > -jnp.inf, axis=-1)
    why = jnp.where(tables.accepting[automaton], REASON_CODES["complete"],
                    REASON_CODES["no_continuation"])
    reason = jnp.where(stuck, why, 0 if reason is None else reason)
    return Stop(reason, emitted=~stuck)


def _run_chunk(model, table, state: FeedState, key, start, values: GenerateValues, *, size: int,
               options: GenerateOptions):
    """Exactly ``size`` free-running steps with global indices ``start ...`` (the feed policy
    with no truth). Returns the new state and time-major ``(samples (size, b[, d]), scores or
    None)``, padded past each row's length."""
    head = model.head
    rules, numbers, tables = options.processors, values.processors, values.constraint
    # Categorical draws without top-p take the temperature (and, without top-k or a user
    # function after it, the constant bias) in their noise: see sampling.fold_noise.
    fold = head.discrete and not options.greedy and not options.use_top_p
    fold_bias = fold and rules.bias and rules.custom is None and options.top_k is None
    step_rules = dataclasses.replace(rules, bias=False) if fold_bias else rules

    def prepare_noise(noise):
        return sampling.fold_noise(noise, temperature=values.temperature,
                                   bias=numbers.bias if fold_bias else None)

    def draw(noise, out, history, index):
        logits = out
        if options.constrained:  # before every other control
            logits = constraints.mask_logits(logits, history.automaton, tables)
        if step_rules.active:
            logits = processors.process_logits(logits, history.processors, index, step_rules,
                                               numbers)
        if fold:
            candidates = logits + noise  # -inf where a token is not allowed
            sample = sampling.sample_folded(noise, logits, top_k=options.top_k)
        else:
            candidates = logits
            sample = sampling.sample_with_noise(
                head, noise, logits, temperature=values.temperature, top_k=options.top_k,
                top_p=values.top_p if options.use_top_p else None, greedy=options.greedy)
        if not head.discrete:
            return sample, history, None
        seen = processors.update_history(history.processors, sample, index, rules, numbers)
        reason = processors.ends_row(seen, sample, index, rules, numbers)
        stop = None if reason is None else Stop(reason)
        automaton = history.automaton
        if options.constrained:
            following = constraints.advance(automaton, sample, tables)
            stop = _constrained_stop(reason, candidates, automaton, following, tables, options)
            automaton = following
        if stop is not None:
            # A stop in the steps past `steps` (the tail of the last chunk) does not count.
            stop = stop._replace(reason=jnp.where(index < options.steps, stop.reason, 0))
        return sample, TokenHistory(seen, automaton), stop

    state, (samples, _, scores) = feed_steps(
        model, state, key=key, start=start, size=size, draw=draw, table=table,
        greedy=options.greedy, noise_budget=NOISE_BUDGET, record_outputs=options.return_scores,
        prepare_noise=prepare_noise if fold else None)
    if not options.stops:  # every row is still going: no per-step bookkeeping needed
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


def _generate_program(model, prompt, prompt_lengths, automaton, key, values: GenerateValues, *,
                      options: GenerateOptions) -> Generation:
    TRACE_COUNTS["generate"] += 1
    model.eval()  # the traced copy only: the caller's model keeps its mode
    table = model.input_table()
    state = start_loop(model, prompt, prompt_lengths, automaton, values.processors, options)
    run = functools.partial(_run_chunk, model, table, key=key, values=values, options=options)
    steps = options.steps
    if not options.stops:
        state, samples, scores = run(state, start=0, size=steps)
        return Generation(_batch_major(samples), state.lengths, _batch_major(scores),
                          state.stop_reasons)

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
    return Generation(_batch_major(samples), lengths, _batch_major(scores), state.stop_reasons)


_compiled_generate = jax.jit(_generate_program, static_argnames=("options",))


def _prefill_program(model, prompt, prompt_lengths, automaton, values, *,
                     options: GenerateOptions) -> FeedState:
    TRACE_COUNTS["prefill"] += 1
    model.eval()
    return start_loop(model, prompt, prompt_lengths, automaton, values, options)


def _chunk_program(model, state, key, start, values, *, size: int, options: GenerateOptions):
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
    constraint: constraints.Constraint | None = None,
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
      constraint: a :class:`~seqmodel.decoding.constraints.Constraint` (``seqmodel.Regex``,
        ``seqmodel.JsonSchema``) built with the model's tokenizer: every row's prompt and new
        tokens stay a text of its language; ``eos_id`` only where that text is whole; a row
        whose text cannot go on stops (see :mod:`seqmodel.decoding.constraints`).
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
      :class:`Generation` with ``samples`` ``(b * n, steps[, d])``, ``lengths`` ``(b * n,)``,
      ``scores`` (or ``None``) and ``stop_reasons`` ``(b * n,)``.

    Example::

        generation = generate(model, key=jax.random.key(0), steps=200,
                              prompt=tokens, prompt_lengths=lengths, top_k=20, eos_id=0,
                              repetition_penalty=1.2)
        generation.samples   # (b, 200) int32
    """
    wanted = ProcessorOptions(
        repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, token_bias=token_bias, banned_tokens=banned_tokens,
        min_new_tokens=min_new_tokens, stop_sequences=stop_sequences,
        logits_processor=logits_processor)
    request = check_request(
        model, key=key, steps=steps, prompt=prompt, prompt_lengths=prompt_lengths,
        batch_size=batch_size, num_samples=num_samples, temperature=temperature, top_k=top_k,
        top_p=top_p, greedy=greedy, eos_id=eos_id, return_scores=return_scores,
        processors=wanted, constraint=constraint)
    return _compiled_generate(model, request.prompt, request.prompt_lengths, request.automaton,
                              request.key, request.values, options=request.options)


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
    constraint: constraints.Constraint | None = None,
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
    ``(b, c[, d])``, the ``lengths`` and ``stop_reasons`` so far ``(b,)`` and the chunk's
    ``scores``. Once every row
    has stopped the remaining chunks are padding, made without running the model.

    Example::

        for chunk in generate_stream(model, key=key, steps=2000, chunk_size=100, prompt=tokens):
            print(tokenizer.decode(chunk.samples[0]), end="", flush=True)
    """
    chunk_size = check_positive_int("chunk_size", chunk_size)
    wanted = ProcessorOptions(
        repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, token_bias=token_bias, banned_tokens=banned_tokens,
        min_new_tokens=min_new_tokens, stop_sequences=stop_sequences,
        logits_processor=logits_processor)
    request = check_request(
        model, key=key, steps=steps, prompt=prompt, prompt_lengths=prompt_lengths,
        batch_size=batch_size, num_samples=num_samples, temperature=temperature, top_k=top_k,
        top_p=top_p, greedy=greedy, eos_id=eos_id, return_scores=return_scores,
        processors=wanted, constraint=constraint)
    return _stream(model, request, min(chunk_size, request.options.steps))


def _stream(model, request: Request, size: int) -> Iterator[Generation]:
    options, steps = request.options, request.options.steps
    state = _compiled_prefill(model, request.prompt, request.prompt_lengths, request.automaton,
                              request.values.processors, options=options)
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
            finished = options.stops and bool(jnp.all(state.done))
        cut = lambda a: jnp.swapaxes(a[:take], 0, 1)  # noqa: E731
        yield Generation(
            cut(chunk_samples),
            jnp.minimum(state.lengths, start + take),
            jax.tree.map(cut, chunk_scores),
            state.stop_reasons,
        )
