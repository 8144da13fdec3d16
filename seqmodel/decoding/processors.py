"""Logits processors: rules that change a token model's logits from what was generated so far.

They run inside the compiled programs of :func:`seqmodel.generate`, :func:`seqmodel.generate_stream`
and :func:`seqmodel.beam_search`, on the raw logits of each step, in this order (then the sampling
controls of :mod:`seqmodel.decoding.sampling`: temperature, top-k, top-p, draw):

1. ``repetition_penalty`` (CTRL, Keskar et al. 2019): a token already seen has its logit divided
   by the penalty when positive and multiplied by it when negative (``> 1`` discourages repeats).
2. ``presence_penalty`` / ``frequency_penalty`` (OpenAI's): ``logit - presence * [count > 0] -
   frequency * count``.
3. ``token_bias`` (``{token: added logit}``) and ``banned_tokens`` (logit ``-inf``).
4. ``min_new_tokens``: ``eos_id`` is banned, and stop sequences do not end a row, before that
   many new tokens.
5. ``logits_processor``: a user function ``(logits (b, V), tokens (b, steps) int32, step () int32)
   -> logits (b, V)``, jittable; ``tokens[:, :step]`` are the tokens generated so far (the rest
   is zero).

"Seen" and the counts cover the prompt and the generated tokens (as Hugging Face's repetition
penalty does). Stop sequences are matched against the generated tokens only; the row's length then
includes the whole stop sequence, as with ``eos_id``.

The caller's settings travel as one :class:`ProcessorOptions`; :func:`check_processors` splits
them in two: :class:`ProcessorRules` (static: which rules run, shapes) and
:class:`ProcessorValues` (traced: the numbers), so that new penalty values do not recompile.

Example::

    rules, values = check_processors(
        65, ProcessorOptions(repetition_penalty=1.3, banned_tokens=[0]), eos_id=None)
    history = initial_history(rules, prompt, prompt_lengths, vocab_size=65, steps=100)
    logits = process_logits(logits, history, step, rules, values)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqmodel.decoding.feed import REASON_CODES

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ProcessorOptions:
    """The logits processors a caller asks for: the eight processor keywords of
    :func:`seqmodel.generate`, :func:`seqmodel.generate_stream` and :func:`seqmodel.beam_search`,
    gathered once by the public function and passed whole through decoding (unchecked here:
    :func:`check_processors` checks them). Every field None means no processor.

    Example::

        options = ProcessorOptions(repetition_penalty=1.3, banned_tokens=[0])
        rules, values = check_processors(65, options, eos_id=None)
    """

    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    token_bias: dict[int, float] | None = None
    banned_tokens: Sequence[int] | None = None
    min_new_tokens: int | None = None
    stop_sequences: Sequence[Sequence[int]] | None = None
    logits_processor: Callable | None = None

    def given(self) -> dict[str, Any]:
        """``{keyword: value}`` of the processors asked for (None fields left out)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if getattr(self, field.name) is not None}


@dataclasses.dataclass(frozen=True)
class ProcessorRules:
    """Which processors run (static: part of the compiled program's key).

    Attributes:
      counts: a count-based penalty is on (repetition, presence or frequency).
      bias: ``token_bias`` or ``banned_tokens`` is given.
      min_new_tokens: ``min_new_tokens`` is given.
      stop_width: length of the longest stop sequence (0: none).
      custom: the user's ``logits_processor`` (None: none).
      eos: ``eos_id`` is given (``min_new_tokens`` bans it).
    """

    counts: bool = False
    bias: bool = False
    min_new_tokens: bool = False
    stop_width: int = 0
    custom: Callable | None = None
    eos: bool = False

    @property
    def active(self) -> bool:
        """Whether any rule changes the logits."""
        return self.counts or self.bias or self.min_new_tokens or self.custom is not None

    @property
    def may_ban_all(self) -> bool:
        """Whether the rules can leave a row no token at all (bans and ``-inf`` from a user
        function; penalties keep finite logits finite)."""
        return self.bias or (self.min_new_tokens and self.eos) or self.custom is not None

    @property
    def stops(self) -> bool:
        """Whether rows can stop early (``eos_id`` or stop sequences)."""
        return self.eos or self.stop_width > 0


class ProcessorValues(NamedTuple):
    """The traced numbers of the processors (unused ones hold neutral values)."""

    repetition_penalty: Any  # () float32, 1 = off
    presence_penalty: Any  # () float32
    frequency_penalty: Any  # () float32
    bias: Any  # (V,) float32 added logits, -inf for banned tokens; None without bias
    min_new_tokens: Any  # () int32
    eos_id: Any  # () int32 (0 when unused)
    stop_tokens: Any  # (S, W) int32, each sequence right-aligned, -1 left of it; None without
    stop_lengths: Any  # (S,) int32; None without stop sequences


class History(NamedTuple):
    """What the processors remember of a row (each field None when no rule needs it).

    Attributes:
      counts: ``(b, V)`` int32 occurrences of each token in the prompt and the new tokens.
      window: ``(b, W)`` int32, the last ``W`` new tokens (newest last; -1 before the first).
      tokens: ``(b, steps)`` int32, the new tokens so far (for a user processor).
      scale, offset: ``(b, V)`` float32, the count penalties made ready for the next step
        (:func:`penalty_terms`; None: computed from ``counts`` when needed).
    """

    counts: Any = None
    window: Any = None
    tokens: Any = None
    scale: Any = None
    offset: Any = None


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_number(name: str, value: Any, *, low: float, low_open: bool, neutral: float) -> float:
    if value is None:
        return neutral
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or (value <= low if low_open else value < low)):
        relation = ">" if low_open else ">="
        raise ValueError(f"{name}={value!r} is invalid: allowed is None or a finite number "
                         f"{relation} {low:g}")
    return float(value)


def _check_token(name: str, token: Any, vocab_size: int) -> int:
    if not _is_int(token) or not 0 <= token < vocab_size:
        raise ValueError(f"{name} holds {token!r}: allowed are token ids in [0, {vocab_size - 1}]")
    return int(token)


def check_processors(
    vocab_size: int,
    options: ProcessorOptions | None = None,
    *,
    eos_id: int | None = None,
) -> tuple[ProcessorRules, ProcessorValues]:
    """Check the processors asked for in ``options`` (None: none) for a vocabulary of
    ``vocab_size`` tokens; see the module docstring.

    Raises ``ValueError`` naming the argument, the value and what is allowed.
    """
    options = ProcessorOptions() if options is None else options
    repetition_penalty, presence_penalty = options.repetition_penalty, options.presence_penalty
    frequency_penalty, token_bias = options.frequency_penalty, options.token_bias
    banned_tokens, min_new_tokens = options.banned_tokens, options.min_new_tokens
    stop_sequences, logits_processor = options.stop_sequences, options.logits_processor
    repetition = _check_number("repetition_penalty", repetition_penalty, low=0.0, low_open=True,
                               neutral=1.0)
    presence = _check_number("presence_penalty", presence_penalty, low=-math.inf,
                             low_open=True, neutral=0.0)
    frequency = _check_number("frequency_penalty", frequency_penalty, low=-math.inf,
                              low_open=True, neutral=0.0)
    bias = None
    if token_bias is not None or banned_tokens is not None:
        bias = np.zeros((vocab_size,), np.float32)
        if token_bias is not None:
            if not isinstance(token_bias, dict):
                raise ValueError(f"token_bias={token_bias!r} is invalid: allowed is None or a dict "
                                 "{token id: logit to add}")
            for token, value in token_bias.items():
                token = _check_token("token_bias", token, vocab_size)
                bias[token] = _check_number(f"token_bias[{token}]", value, low=-math.inf,
                                            low_open=True, neutral=0.0)
        if banned_tokens is not None:
            for token in banned_tokens:
                bias[_check_token("banned_tokens", token, vocab_size)] = -np.inf
    if min_new_tokens is not None and (not _is_int(min_new_tokens) or min_new_tokens < 0):
        raise ValueError(f"min_new_tokens={min_new_tokens!r} is invalid: allowed is None or an "
                         "integer >= 0")
    stop_tokens = stop_lengths = None
    width = 0
    if stop_sequences is not None:
        if isinstance(stop_sequences, (str, bytes)) or not all(
                isinstance(sequence, (list, tuple, np.ndarray)) for sequence in stop_sequences):
            raise ValueError(f"stop_sequences={stop_sequences!r} is invalid: allowed is None or a "
                             "list of token-id sequences, e.g. [[10, 10], [5, 7, 9]] (encode text "
                             "with the tokenizer first)")
        sequences = [[_check_token("stop_sequences", token, vocab_size) for token in sequence]
                     for sequence in stop_sequences]
        if not sequences or any(len(sequence) == 0 for sequence in sequences):
            raise ValueError(f"stop_sequences={stop_sequences!r} is invalid: allowed are one or "
                             "more non-empty token-id sequences")
        width = max(len(sequence) for sequence in sequences)
        stop_tokens = np.full((len(sequences), width), -1, np.int32)
        for row, sequence in enumerate(sequences):
            stop_tokens[row, width - len(sequence):] = sequence
        stop_lengths = np.array([len(sequence) for sequence in sequences], np.int32)
    if logits_processor is not None and not callable(logits_processor):
        raise ValueError(f"logits_processor={logits_processor!r} is invalid: allowed is None or a "
                         "jittable function (logits, tokens, step) -> logits")
    rules = ProcessorRules(
        counts=repetition != 1.0 or presence != 0.0 or frequency != 0.0,
        bias=bias is not None,
        min_new_tokens=bool(min_new_tokens),
        stop_width=width,
        custom=logits_processor,
        eos=eos_id is not None,
    )
    values = ProcessorValues(
        repetition_penalty=np.float32(repetition),
        presence_penalty=np.float32(presence),
        frequency_penalty=np.float32(frequency),
        bias=bias,
        min_new_tokens=np.int32(min_new_tokens or 0),
        eos_id=np.int32(0 if eos_id is None else eos_id),
        stop_tokens=stop_tokens,
        stop_lengths=stop_lengths,
    )
    return rules, values


# ---------------------------------------------------------------------------------------------
# The traced rules
# ---------------------------------------------------------------------------------------------


def penalty_terms(counts: Array, values: ProcessorValues) -> tuple[Array, Array]:
    """The count penalties as ``(scale, offset)`` ``(b, V)`` float32: the repetition penalty
    where a token was seen (1 elsewhere) and ``-presence * seen - frequency * count``.

    A step's logits ``l`` then become ``where(l > 0, l / scale, l * scale) + offset``: CTRL's
    rule and OpenAI's penalties in four operations on two ready arrays. Made once per token in
    the history update, they keep the step's sampling fusion small (on XLA:CPU a larger one
    is split over threads, which costs more than it saves)."""
    seen = counts > 0
    scale = jnp.where(seen, values.repetition_penalty, 1.0).astype(jnp.float32)
    offset = (-values.presence_penalty * seen.astype(jnp.float32)
              - values.frequency_penalty * counts.astype(jnp.float32))
    return scale, offset


def initial_history(rules: ProcessorRules, prompt: Array, prompt_lengths: Array, *,
                    vocab_size: int, steps: int, values: ProcessorValues | None = None) -> History:
    """The history of rows that start from ``prompt`` ``(b, p)`` with ``prompt_lengths`` ``(b,)``
    (only the first ``length`` tokens of a row count); with ``values``, the count penalties are
    made ready (:func:`penalty_terms`)."""
    rows, length = prompt.shape
    counts = window = tokens = scale = offset = None
    if rules.counts:
        real = (jnp.arange(length)[None, :] < prompt_lengths[:, None]).astype(jnp.int32)
        counts = jnp.zeros((rows, vocab_size), jnp.int32).at[
            jnp.arange(rows)[:, None], prompt].add(real)
        if values is not None:
            scale, offset = penalty_terms(counts, values)
    if rules.stop_width:
        window = jnp.full((rows, rules.stop_width), -1, jnp.int32)
    if rules.custom is not None:
        tokens = jnp.zeros((rows, steps), jnp.int32)
    return History(counts, window, tokens, scale, offset)


def process_logits(logits: Array, history: History, step, rules: ProcessorRules,
                   values: ProcessorValues) -> Array:
    """Apply the processors in the documented order. logits ``(b, V)`` -> ``(b, V)``; ``step``
    is the index of the token being chosen (0 for the first new token)."""
    if rules.counts:
        scale, offset = history.scale, history.offset
        if scale is None:
            scale, offset = penalty_terms(history.counts, values)
        logits = jnp.where(logits > 0, logits / scale, logits * scale) + offset
    if rules.bias:
        logits = logits + values.bias
    if rules.min_new_tokens and rules.eos:
        too_early = step < values.min_new_tokens
        is_eos = jnp.arange(logits.shape[-1]) == values.eos_id
        logits = jnp.where(too_early & is_eos, -jnp.inf, logits)
    if rules.custom is not None:
        logits = rules.custom(logits, history.tokens, jnp.asarray(step, jnp.int32))
    return logits


def update_history(history: History, token: Array, step, rules: ProcessorRules,
                   values: ProcessorValues | None = None) -> History:
    """Record the new ``token`` ``(b,)`` chosen at ``step`` (and, where the history holds them,
    make the count penalties ready for the next step with ``values``)."""
    counts, window, tokens, scale, offset = history
    if counts is not None:
        # A one-hot add, not a scatter: XLA:CPU runs a (b, V) elementwise add far faster than a
        # scatter of b elements inside a loop (measured 3x on the processors' cost).
        counts = counts + jax.nn.one_hot(token, counts.shape[-1], dtype=counts.dtype)
        if scale is not None:
            scale, offset = penalty_terms(counts, values)
    if window is not None:
        window = jnp.concatenate([window[:, 1:], token[:, None]], axis=1)
    if tokens is not None:
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, step, axis=1)
    return History(counts, window, tokens, scale, offset)


def ends_row(history: History, token: Array, step, rules: ProcessorRules,
             values: ProcessorValues) -> Array | None:
    """``(b,)`` int32: why the row stops after ``token`` (a code of
    :data:`seqmodel.decoding.feed.STOP_REASONS`: ``eos``, ``stop_sequence``), 0 where it goes
    on; ``history`` already holds ``token``. None when nothing can stop a row."""
    if not rules.stops:
        return None
    reason = jnp.zeros(token.shape, jnp.int32)
    if rules.stop_width:
        # (b, 1, W) against (1, S, W): a sequence matches where every position it covers agrees.
        covered = values.stop_tokens[None] >= 0
        agree = (history.window[:, None, :] == values.stop_tokens[None]) | ~covered
        matched = jnp.any(jnp.all(agree, axis=-1), axis=-1)
        reason = jnp.where(matched, REASON_CODES["stop_sequence"], reason)
    if rules.eos:
        reason = jnp.where(token == values.eos_id, REASON_CODES["eos"], reason)
    if rules.min_new_tokens:
        reason = jnp.where(step + 1 >= values.min_new_tokens, reason, 0)
    return reason
