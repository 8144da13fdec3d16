"""Beam search for token models, as one compiled program.

A recurrent model makes beam search cheap: a beam's whole past lives in its carry, so moving a
beam to a new parent is a gather of ``(b * k, h)`` rows, not a cache copy. The search follows
Hugging Face's ``generate(num_beams=k)`` semantics:

- each step scores every continuation of every running beam (``beam score + log p(token)``, after
  the logits processors of :mod:`seqmodel.decoding.processors`) and keeps the best ``2k`` candidates;
- a candidate that ends its hypothesis (``eos_id`` or a stop sequence) and ranks among the first
  ``k`` becomes a finished hypothesis with score ``sum log p / length ** length_penalty``
  (``length`` counts the new tokens, the ending one included); each prompt row keeps its best
  ``k`` finished hypotheses;
- the best ``k`` candidates that do not end become the next beams;
- with a ``constraint`` (:mod:`seqmodel.decoding.constraints`), continuations that leave its
  language get ``-inf`` after the log-softmax (the scores stay the model's log-probabilities, as
  in Hugging Face's constrained beam search, so the search looks for the most likely text of
  the language); ``eos_id`` and stop sequences end a hypothesis only in accepting states, and a
  hypothesis whose text allows no further token ends after its last token; at ``steps`` only
  running beams whose text is in the language count;
- a row is done when it holds ``k`` finished hypotheses and no running beam can still beat the
  worst of them (an exact bound: the sum of log-probabilities never grows, so the best a beam can
  reach is its sum over the most favourable length); the loop ends when every row is done;
- at ``steps``, the running beams of rows not done are scored as hypotheses of length ``steps``.

Example::

    result = beam_search(model, prompt=tokens, steps=100, num_beams=8, eos_id=eos,
                         num_return_sequences=3)
    result.sequences   # (b, 3, 100) int32, best first
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqmodel.decoding import constraints, processors
from seqmodel.decoding.feed import REASON_CODES, STOP_REASONS
from seqmodel.decoding.processors import ProcessorOptions
from seqmodel.decoding.prompts import check_positive_int, check_prompt, prefill
from seqmodel.decoding.requests import check_constraint, check_eos_id

Array = jax.Array

TRACE_COUNTS: collections.Counter = collections.Counter()


class BeamSearchResult(NamedTuple):
    """What :func:`beam_search` returns, best hypothesis first in each row.

    Attributes:
      sequences: ``(b, r, steps)`` int32 new tokens (``r = num_return_sequences``); past a
        hypothesis' length, padding (``eos_id``, or 0 without one).
      lengths: ``(b, r)`` int32 new tokens up to and including the ending token.
      scores: ``(b, r)`` float32, ``sum of log-probabilities / length ** length_penalty``
        (``-inf``: no hypothesis, e.g. none in a constraint's language within ``steps``).
      stop_reasons: ``(b, r)`` int32 codes of :data:`seqmodel.decoding.feed.STOP_REASONS`
        (``length``: it ran ``steps`` tokens); :meth:`stop_reason_names` spells them.
    """

    sequences: Array
    lengths: Array
    scores: Array
    stop_reasons: Any = None

    def stop_reason_names(self) -> list[list[str]]:
        """``stop_reasons`` as names, ``[row][hypothesis]``."""
        return [[STOP_REASONS[int(code)] for code in row]
                for row in np.asarray(self.stop_reasons)]


@dataclasses.dataclass(frozen=True)
class _Options:
    steps: int
    num_beams: int
    num_return_sequences: int
    processors: processors.ProcessorRules
    constrained: bool = False


class _State(NamedTuple):
    step: Array  # () int32, index of the token chosen next
    carry: Any  # model carry, leaves (b * k, ...)
    x: Array  # (b * k,) the token fed next
    history: processors.History  # (b * k, ...) rows
    tokens: Array  # (b, k, steps) running beams' tokens
    running: Array  # (b, k) running beams' sums of log-probabilities (-inf: no beam)
    finished_tokens: Array  # (b, k, steps)
    finished_scores: Array  # (b, k) normalised scores (-inf: empty slot)
    finished_lengths: Array  # (b, k)
    finished_reasons: Array  # (b, k) stop-reason codes
    done: Array  # (b,)
    automaton: Any = None  # (b * k,) int32 constraint states (None without a constraint)


def _normalise(sums: Array, lengths, length_penalty) -> Array:
    return sums / jnp.asarray(lengths, jnp.float32) ** length_penalty


def _keep_best(scores: Array, count: int, *values: Array):
    """Sort ``scores`` ``(b, n)`` descending and keep ``count``; gather ``values`` ``(b, n, ...)``
    alike."""
    best, order = jax.lax.top_k(scores, count)
    return (best,) + tuple(jnp.take_along_axis(
        value, order.reshape(order.shape + (1,) * (value.ndim - 2)), axis=1) for value in values)


def _search_program(model, prompt, prompt_lengths, automaton, length_penalty, values, tables, *,
                    options: _Options) -> BeamSearchResult:
    TRACE_COUNTS["beam_search"] += 1
    model.eval()  # the traced copy only
    rules = options.processors
    beams, steps = options.num_beams, options.steps
    vocab = model.config.vocab_size
    batch = prompt.shape[0]
    table = model.input_table()
    start = prefill(model, prompt, prompt_lengths, beams)
    repeat = functools.partial(jnp.repeat, repeats=beams, axis=0)
    history = processors.initial_history(rules, repeat(prompt), repeat(prompt_lengths),
                                         vocab_size=vocab, steps=steps, values=values)
    # Only the first beam of each row is alive at first: the others would repeat it.
    running = jnp.full((batch, beams), -jnp.inf).at[:, 0].set(0.0)
    zeros = jnp.zeros((batch, beams, steps), jnp.int32)
    no_hypotheses = jnp.zeros((batch, beams), jnp.int32)
    automaton = repeat(jnp.asarray(automaton, jnp.int32)) if options.constrained else None
    state = _State(jnp.int32(0), start.carry, start.x, history, zeros, running, zeros,
                   jnp.full((batch, beams), -jnp.inf), no_hypotheses, no_hypotheses,
                   jnp.zeros((batch,), bool), automaton)
    candidates = min(2 * beams, beams * vocab)
    rows = jnp.arange(batch)[:, None]

    def body(state: _State) -> _State:
        step = state.step
        logits, carry = model.step(state.x, state.carry, table=table)
        if rules.active:
            logits = processors.process_logits(logits, state.history, step, rules, values)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        if options.constrained:
            log_probs = constraints.mask_logits(log_probs, state.automaton, tables)
        totals = (state.running[..., None] + log_probs.reshape(batch, beams, vocab))
        sums, flat = jax.lax.top_k(totals.reshape(batch, beams * vocab), candidates)
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)  # (b, 2k)
        parent_rows = (rows * beams + parent).reshape(-1)  # (b * 2k,) rows of the flat carry
        candidate_history = jax.tree.map(lambda a: a[parent_rows], state.history)
        candidate_history = processors.update_history(candidate_history, token.reshape(-1),
                                                      step, rules, values)
        reasons = processors.ends_row(candidate_history, token.reshape(-1), step, rules, values)
        reasons = (jnp.zeros((batch * candidates,), jnp.int32) if reasons is None else reasons)
        candidate_automaton = None
        if options.constrained:
            candidate_automaton = constraints.advance(state.automaton[parent_rows],
                                                      token.reshape(-1), tables)
            accepting = tables.accepting[candidate_automaton]
            reasons = jnp.where((reasons == REASON_CODES["stop_sequence"]) & ~accepting, 0,
                                reasons)
            # A text that allows no further token (no eos_id to end it) is a finished hypothesis.
            complete = tables.stuck[candidate_automaton] & accepting & (reasons == 0)
            reasons = jnp.where(complete, REASON_CODES["complete"], reasons)
        reasons = reasons.reshape(batch, candidates)
        ends = reasons > 0
        alive = jnp.isfinite(sums) & ~state.done[:, None]
        candidate_tokens = jnp.take_along_axis(state.tokens, parent[..., None], axis=1)
        candidate_tokens = candidate_tokens.at[:, :, step].set(token)
        # Finished hypotheses: ending candidates among the first k ranks (Hugging Face's rule).
        in_top = jnp.arange(candidates)[None, :] < beams
        new_scores = jnp.where(ends & in_top & alive,
                               _normalise(sums, step + 1, length_penalty), -jnp.inf)
        finished_scores, finished_tokens, finished_lengths, finished_reasons = _keep_best(
            jnp.concatenate([state.finished_scores, new_scores], axis=1), beams,
            jnp.concatenate([state.finished_tokens, candidate_tokens], axis=1),
            jnp.concatenate([state.finished_lengths,
                             jnp.full((batch, candidates), step + 1, jnp.int32)], axis=1),
            jnp.concatenate([state.finished_reasons, reasons], axis=1))
        # The next beams: the best k candidates that go on.
        running, order = jax.lax.top_k(jnp.where(ends, -jnp.inf, sums), beams)
        pick = lambda a: jnp.take_along_axis(a, order, axis=1)  # noqa: E731
        chosen = (rows * candidates + order).reshape(-1)  # rows of the (b * 2k) candidates
        carry = jax.tree.map(lambda a: a[pick(parent_rows.reshape(batch, candidates))
                                         .reshape(-1)], carry)
        history = jax.tree.map(lambda a: a[chosen], candidate_history)
        automaton = None if candidate_automaton is None else candidate_automaton[chosen]
        tokens = jnp.take_along_axis(candidate_tokens, order[..., None], axis=1)
        # Done: k finished, and no running beam can reach the worst of them.
        best_sum = jnp.max(running, axis=1)
        best_length = jnp.where(length_penalty > 0, steps, step + 1)
        attainable = _normalise(best_sum, best_length, length_penalty)
        full = jnp.all(jnp.isfinite(finished_scores), axis=1)
        done = state.done | (full & (finished_scores[:, -1] >= attainable)) | ~jnp.isfinite(
            best_sum)
        # A row that was done stays as it was.
        keep = lambda new, old: jnp.where(  # noqa: E731
            state.done.reshape((-1,) + (1,) * (new.ndim - 1)), old, new)
        return _State(
            step + 1, carry, pick(token).reshape(-1), history,
            keep(tokens, state.tokens), keep(running, state.running),
            keep(finished_tokens, state.finished_tokens),
            keep(finished_scores, state.finished_scores),
            keep(finished_lengths, state.finished_lengths),
            keep(finished_reasons, state.finished_reasons), done, automaton)

    state = jax.lax.while_loop(lambda s: (s.step < steps) & ~jnp.all(s.done), body, state)
    # Rows that ran out of steps: their running beams are hypotheses of length `steps`.
    counts = ~state.done[:, None]
    if options.constrained:  # an unfinished text outside the language is no hypothesis
        counts = counts & tables.accepting[state.automaton].reshape(batch, beams)
    last = jnp.where(counts, _normalise(state.running, steps, length_penalty), -jnp.inf)
    scores, sequences, lengths, reasons = _keep_best(
        jnp.concatenate([state.finished_scores, last], axis=1), options.num_return_sequences,
        jnp.concatenate([state.finished_tokens, state.tokens], axis=1),
        jnp.concatenate([state.finished_lengths, jnp.full((batch, beams), steps, jnp.int32)],
                        axis=1),
        jnp.concatenate([state.finished_reasons, jnp.zeros((batch, beams), jnp.int32)], axis=1))
    padding = values.eos_id if rules.eos else jnp.int32(0)
    real = jnp.arange(steps)[None, None, :] < lengths[..., None]
    return BeamSearchResult(jnp.where(real, sequences, padding), lengths, scores, reasons)


_compiled_search = jax.jit(_search_program, static_argnames=("options",))


def beam_search(
    model,
    *,
    prompt: Any,
    steps: int,
    num_beams: int,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
    num_return_sequences: int = 1,
    prompt_lengths: Any = None,
    constraint: constraints.Constraint | None = None,
    repetition_penalty: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    token_bias: dict[int, float] | None = None,
    banned_tokens: Sequence[int] | None = None,
    min_new_tokens: int | None = None,
    stop_sequences: Sequence[Sequence[int]] | None = None,
    logits_processor: Callable | None = None,
) -> BeamSearchResult:
    """The most likely continuations of each prompt row by beam search (see the module docstring).

    Args:
      model: a :class:`seqmodel.SequenceModel` with a categorical head (run in eval mode inside
        the call; its own mode is left untouched).
      prompt: ``(b, p)`` token ids, right-padded when rows differ in length.
      steps: the most new tokens per hypothesis (``>= 1``).
      num_beams: beams per prompt row (``k >= 1``; 1 is greedy decoding).
      length_penalty: exponent of the length that divides a hypothesis' log-probability
        (``> 0`` favours longer hypotheses, ``< 0`` shorter ones).
      eos_id: the token that ends a hypothesis (None: every hypothesis runs ``steps`` tokens).
      num_return_sequences: hypotheses returned per row, ``<= num_beams``.
      prompt_lengths: ``(b,)`` each row's real prompt length (default ``p``).
      constraint: a :class:`~seqmodel.decoding.constraints.Constraint` (``seqmodel.Regex``,
        ``seqmodel.JsonSchema``): hypotheses are texts of its language (the prompt is their
        start; see the module docstring).
      repetition_penalty, presence_penalty, frequency_penalty, token_bias, banned_tokens,
      min_new_tokens, stop_sequences, logits_processor: the logits processors, as in
        :func:`seqmodel.generate`; they act on each beam's logits before the log-softmax, and a
        completed stop sequence ends a hypothesis like ``eos_id``.

    Returns:
      :class:`BeamSearchResult`: ``sequences (b, r, steps)``, ``lengths (b, r)``,
      ``scores (b, r)``, ``stop_reasons (b, r)``.

    Example::

        result = beam_search(model, prompt=tokenizer.encode("ROMEO:")[None], steps=80,
                             num_beams=8, eos_id=tokenizer.encode("\\n")[0])
        tokenizer.decode(result.sequences[0, 0, :result.lengths[0, 0]])
    """
    config = model.config
    if not config.discrete:
        raise ValueError(f"beam_search needs a token model (categorical head); this model has a "
                         f"{type(model.head).__name__} head: use generate(..., greedy=True) "
                         "for real-valued sequences")
    steps = check_positive_int("steps", steps)
    num_beams = check_positive_int("num_beams", num_beams)
    num_return_sequences = check_positive_int("num_return_sequences", num_return_sequences)
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} is invalid: allowed is at "
                         f"most num_beams={num_beams}")
    if (isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float))
            or not np.isfinite(length_penalty)):
        raise ValueError(f"length_penalty={length_penalty!r} is invalid: allowed is a finite "
                         "number (1.0: the mean log-probability per token)")
    eos_id = check_eos_id(eos_id, config.vocab_size)
    check_constraint(constraint, model, config.vocab_size)
    if prompt is None:
        raise ValueError("prompt=None is invalid for beam_search: allowed is a (b, p) array of "
                         "token ids (e.g. [[0]] to start from token 0)")
    prompt, prompt_lengths = check_prompt(model, prompt, prompt_lengths, None)
    wanted = ProcessorOptions(
        repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, token_bias=token_bias, banned_tokens=banned_tokens,
        min_new_tokens=min_new_tokens, stop_sequences=stop_sequences,
        logits_processor=logits_processor)
    rules, values = processors.check_processors(config.vocab_size, wanted, eos_id=eos_id)
    tables = automaton = None
    if constraint is not None:
        tables, _ = constraint.tables(eos_id)
        automaton = constraint.start_states(np.asarray(prompt), prompt_lengths, eos_id=eos_id)
    options = _Options(steps, num_beams, num_return_sequences, rules, constraint is not None)
    return _compiled_search(model, prompt, prompt_lengths, automaton, np.float32(length_penalty),
                            values, tables, options=options)
