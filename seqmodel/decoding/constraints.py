"""Constraints: sample only texts of a regular language (a regular expression, a JSON schema).

A constraint is a deterministic automaton over the model's tokenizer, stored as a dense
``(states, V)`` transition table. Inside the compiled programs of :func:`seqmodel.generate`,
:func:`seqmodel.generate_stream` and :func:`seqmodel.beam_search` its state is one int32 per row
of the loop's carry; each step

1. masks the tokens without a transition from the row's state (before the logits processors,
   temperature, top-k and top-p, so sampling renormalises the model's distribution over the
   tokens that keep the text in the language),
2. allows ``eos_id`` only in accepting states (it ends the text; it is never a character of it),
3. moves the row's state along the token drawn.

A row whose state allows no token at all stops before its next element: reason ``complete``
when its text is whole (an accepting state: the language has no longer word, and there is no
``eos_id`` to end it), ``no_continuation`` when the processors banned every token the language
allowed. A stop sequence ends a row only in an accepting state.

The constrained text is the prompt followed by the new tokens: a prompt must be the start of a
text in the language (:func:`start_states` names the first position where it is not). Without a
prompt the text is the new tokens alone.

The automaton is built by outlines-core (the ``constraints`` extra): its ``Index`` compiles a
regular expression over a token vocabulary of strings or bytes (one table for char and byte
tokenizers alike, UTF-8 handled) and hands back every transition at once, which is exactly the
dense table the compiled loop wants; its ``build_regex_from_schema`` turns a JSON schema into a
regular expression. (interegular builds a character automaton only, so a byte tokenizer needs a
UTF-8 expansion written by hand; llguidance and xgrammar compute a mask per step from an opaque
matcher, with no state numbers to tabulate; benchmarks/bench_constraints.py measures the first.)

Example::

    constraint = Regex(r"[0-9]{1,3}(,[0-9]{1,3})*", tokenizer)
    generation = seqmodel.generate(model, key=key, steps=40, constraint=constraint, eos_id=eos)
    constraint.accepts(generation.samples[0, :generation.lengths[0] - 1])   # True
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqmodel.errors import UserError

Array = jax.Array


class ConstraintError(UserError):
    """A pattern or schema that cannot be built into an automaton over the tokenizer (a bad
    regular expression, characters the vocabulary lacks, a missing ``constraints`` extra)."""


class ConstraintTables(NamedTuple):
    """The traced arrays of a constraint for one ``eos_id``; row ``S`` is a dead state.

    Attributes:
      mask: ``(S + 1, V)`` float32: 0 where the token is allowed, ``-inf`` elsewhere.
      next: ``(S + 1, V)`` int32: the state after the token (``S`` where it is not allowed).
      accepting: ``(S + 1,)`` bool: the text so far is in the language.
      stuck: ``(S + 1,)`` bool: no token is allowed (not even ``eos_id``).
    """

    mask: Array
    next: Array
    accepting: Array
    stuck: Array


def token_texts(tokenizer) -> list[str | bytes]:
    """What each token id spells: a char tokenizer's characters, a byte tokenizer's bytes, or
    the items of a sequence of strings / bytes (one per token id)."""
    kind = getattr(tokenizer, "kind", None)
    if kind == "char":
        return list(tokenizer.vocabulary)
    if kind == "byte":
        return [bytes([value]) for value in range(256)]
    if isinstance(tokenizer, (list, tuple)) and tokenizer and all(
            isinstance(text, (str, bytes)) and len(text) > 0 for text in tokenizer):
        return list(tokenizer)
    raise ConstraintError(
        f"tokenizer={tokenizer!r} is invalid for a constraint: allowed is a CharTokenizer, a "
        "ByteTokenizer or a list of non-empty token strings (one per token id)")


def _outlines_core():
    try:
        import outlines_core
    except ImportError:
        raise ConstraintError("constraints need the outlines-core package: pip install "
                              "'seqmodel[constraints]'") from None
    return outlines_core


# A character no tokenizer here spells (a noncharacter): appended to every pattern, it makes the
# texts of the language the states it leads from. outlines-core drops the transitions that leave
# an accepting state for a non-accepting one (0.2.11 to 0.2.14: "(ab)*" allows "" only); with the
# sentinel appended no state of the language is accepting in outlines-core's sense.
SENTINEL = "\U0010ffff"


def build_automaton(pattern: str, texts: Sequence[str | bytes], *, what: str):
    """The trimmed automaton of ``pattern`` (matched in full) over tokens spelling ``texts``.

    Returns ``(transitions (S, V) int32, -1 where no transition; accepting (S,) bool)``, state
    0 initial; every state can still reach an accepting one. ``what`` names the pattern in
    errors."""
    outlines_core = _outlines_core()
    vocab_size = len(texts)
    ids: dict[bytes, list[int]] = {}  # outlines-core reads tokens as UTF-8 bytes
    for token, text in enumerate(texts):
        ids.setdefault(text.encode() if isinstance(text, str) else text, []).append(token)
    if SENTINEL.encode() in ids:
        raise ConstraintError("the tokenizer spells U+10FFFF: constraints reserve it")
    ids[SENTINEL.encode()] = [vocab_size]
    # outlines-core wants an end-of-sequence id; one past the sentinel keeps it out of the table
    # (seqmodel places eos_id itself: see ConstraintTables).
    vocabulary = outlines_core.Vocabulary(vocab_size + 1, ids)
    try:
        index = outlines_core.Index(f"(?:{pattern}){SENTINEL}", vocabulary)
    except ValueError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        missing = re.search(r"following characters: (\[.*?\])", message)
        if missing:
            raise ConstraintError(
                f"{what} needs a character that the tokenizer's vocabulary lacks (one of "
                f"{missing.group(1)}): no text in the language can be spelled") from None
        raise ConstraintError(f"{what} is not a regular expression that outlines-core can "
                              f"compile: {message}") from None
    found = index.get_transitions()
    ended = set(index.get_final_states())  # the states after the sentinel
    # The states of the language: reachable from the start by tokens (not the sentinel).
    start = index.get_initial_state()
    order, number = [start], {start: 0}
    for state in order:
        for token, target in sorted(found.get(state, {}).items()):
            if token < vocab_size and target not in number and target not in ended:
                number[target] = len(order)
                order.append(target)
    transitions = np.full((len(order), vocab_size), -1, np.int32)
    accepting = np.zeros(len(order), bool)
    for state, row in number.items():
        for token, target in found.get(state, {}).items():
            if token < vocab_size and target in number:
                transitions[row, token] = number[target]
        accepting[row] = found.get(state, {}).get(vocab_size) in ended
    # Trim: a state that cannot reach an accepting one is a dead end; no transition enters it.
    alive = accepting.copy()
    while True:
        reaches = alive | np.any((transitions >= 0) & alive[np.maximum(transitions, 0)], axis=1)
        if np.array_equal(reaches, alive):
            break
        alive = reaches
    if not alive[0]:
        raise ConstraintError(f"{what} matches no text that the tokenizer's vocabulary can "
                              "spell")
    transitions[(transitions >= 0) & ~alive[np.maximum(transitions, 0)]] = -1
    return transitions, accepting


class Constraint:
    """An automaton over a tokenizer's vocabulary (see the module docstring); build one with
    :class:`Regex` or :class:`JsonSchema`.

    Attributes:
      pattern: the regular expression (a JSON schema's regular-expression form).
      transitions: ``(S, V)`` int32, the state after each token, -1 where none; state 0 starts.
      accepting: ``(S,)`` bool, the states whose text is in the language.
      texts: what each token spells (for messages).
      build_seconds: how long building the automaton took.
    """

    def __init__(self, pattern: str, tokenizer, *, what: str | None = None):
        if not isinstance(pattern, str):
            raise ConstraintError(f"pattern={pattern!r} is invalid: allowed is a regular "
                                  "expression (str)")
        self.texts = token_texts(tokenizer)
        self.pattern = pattern
        self.what = what or f"the pattern {pattern!r}"
        started = time.perf_counter()
        self.transitions, self.accepting = build_automaton(pattern, self.texts, what=self.what)
        self.build_seconds = time.perf_counter() - started
        self._tables: dict[int | None, tuple[ConstraintTables, bool]] = {}

    @property
    def vocab_size(self) -> int:
        return self.transitions.shape[1]

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.what}, {self.num_states} states x "
                f"{self.vocab_size} tokens)")

    # -- on the host -------------------------------------------------------------------------

    def walk(self, tokens: Sequence[int], state: int = 0) -> tuple[int, int | None]:
        """Follow ``tokens`` from ``state``: ``(state reached, None)``, or ``(last state,
        position of the first token without a transition)``."""
        for position, token in enumerate(np.asarray(tokens, np.int64).tolist()):
            following = int(self.transitions[state, token]) if 0 <= token < self.vocab_size \
                else -1
            if following < 0:
                return state, position
            state = following
        return state, None

    def accepts(self, tokens: Sequence[int]) -> bool:
        """Whether the text that ``tokens`` spell is in the language (in full)."""
        state, offending = self.walk(tokens)
        return offending is None and bool(self.accepting[state])

    def tables(self, eos_id: int | None) -> tuple[ConstraintTables, bool]:
        """The device arrays for ``eos_id`` (cached) and whether a row can get stuck (some
        state other than the dead one allows no token)."""
        if eos_id not in self._tables:
            states, vocab = self.transitions.shape
            transitions = self.transitions.copy()
            if eos_id is not None:
                # eos ends the text: allowed exactly in accepting states, never a character.
                transitions[:, eos_id] = np.where(self.accepting, np.arange(states), -1)
            dead = np.full((1, vocab), -1, np.int32)
            transitions = np.concatenate([transitions, dead])
            allowed = transitions >= 0
            stuck = ~allowed.any(axis=1)
            tables = ConstraintTables(
                mask=jnp.asarray(np.where(allowed, 0.0, -np.inf).astype(np.float32)),
                next=jnp.asarray(np.where(allowed, transitions, states).astype(np.int32)),
                accepting=jnp.asarray(np.append(self.accepting, False)),
                stuck=jnp.asarray(stuck))
            self._tables[eos_id] = (tables, bool(stuck[:-1].any()))
        return self._tables[eos_id]

    def start_states(self, prompt: np.ndarray | None, prompt_lengths: np.ndarray, *,
                     eos_id: int | None) -> np.ndarray:
        """``(b,)`` int32: each row's state after its prompt ``prompt[r, :prompt_lengths[r]]``
        (``prompt`` None: the initial state). Raises :class:`ConstraintError` (a ``ValueError``)
        naming the row and the first position where the prompt leaves the language."""
        if prompt is None:
            return np.zeros(len(prompt_lengths), np.int32)
        states = np.zeros(len(prompt_lengths), np.int32)
        for row, (tokens, length) in enumerate(zip(np.asarray(prompt), prompt_lengths)):
            tokens = tokens[:length]
            state, offending = self.walk(tokens)
            if offending is None and eos_id is not None and np.any(tokens == eos_id):
                offending = int(np.flatnonzero(tokens == eos_id)[0])
            if offending is not None:
                token = int(tokens[offending])
                raise ConstraintError(
                    f"prompt row {row} leaves the constraint's language at position {offending} "
                    f"(token {token}, {self.texts[token]!r}): {self.what} allows no text that "
                    "starts like this prompt; give a prompt that begins a text of the language "
                    "(or none)")
            states[row] = state
        return states


class Regex(Constraint):
    """Texts that match ``pattern`` in full (outlines-core's regular-expression syntax, close
    to Python's ``re`` without look-around or back-references), over ``tokenizer`` (a
    CharTokenizer, a ByteTokenizer or a list of token strings).

    Example::

        constraint = Regex(r"(19|20)[0-9]{2}-[01][0-9]-[0-3][0-9]", tokenizer)
        constraint.num_states, constraint.vocab_size      # (11, 65)
    """

    def __init__(self, pattern: str, tokenizer):
        super().__init__(pattern, tokenizer, what=f"the pattern {pattern!r}")


class JsonSchema(Constraint):
    """JSON texts valid under ``schema`` (a dict or a JSON string), by outlines-core's
    regular-expression form of the schema (``whitespace``: the regular expression allowed
    between tokens of the JSON text; None: outlines-core's default).

    Example::

        schema = {"type": "object", "properties": {"age": {"type": "integer"}},
                  "required": ["age"]}
        constraint = JsonSchema(schema, tokenizer, whitespace="")
    """

    def __init__(self, schema: Any, tokenizer, *, whitespace: str | None = None):
        outlines_core = _outlines_core()
        if isinstance(schema, dict):
            text = json.dumps(schema)
        elif isinstance(schema, str):
            text = schema
        else:
            raise ConstraintError(f"schema={schema!r} is invalid: allowed is a dict or a JSON "
                                  "string")
        try:
            json.loads(text)
            pattern = outlines_core.json_schema.build_regex_from_schema(
                text, whitespace_pattern=whitespace)
        except ValueError as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConstraintError(f"the JSON schema is invalid: {first}") from None
        self.schema = json.loads(text)
        super().__init__(pattern, tokenizer, what="the JSON schema")


# ---------------------------------------------------------------------------------------------
# The traced steps
# ---------------------------------------------------------------------------------------------


def mask_logits(logits: Array, state: Array, tables: ConstraintTables) -> Array:
    """``-inf`` for the tokens that ``state`` ``(b,)`` allows no transition on. logits
    ``(b, V)`` -> ``(b, V)``."""
    return logits + tables.mask[state]


def advance(state: Array, token: Array, tables: ConstraintTables) -> Array:
    """The states ``(b,)`` after ``token`` ``(b,)`` (the dead state where not allowed)."""
    return tables.next[state, token]
