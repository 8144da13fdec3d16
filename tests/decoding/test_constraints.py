"""Constraints: samples match in full, the distribution is the model's renormalised over the
language, beam search finds the best text of the language, one int per row in the carry."""

import functools
import itertools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm
from seqmodel.decoding import constraints
from seqmodel.decoding.generate import TRACE_COUNTS, start_loop
from seqmodel.decoding.processors import ProcessorOptions
from seqmodel.decoding.requests import check_request

pytest.importorskip("outlines_core", reason="constraints need the constraints extra")

CSV = r"[abc]{1,4},[0-9]{2}(;[ab]+)?"
CSV_LINE = CSV + r"\n"  # whole once its newline is written
CHARS = "\n,;0123456789abc"


@functools.cache
def char_model(vocabulary: str = CHARS, seed: int = 0, hidden: int = 16):
    config = sm.ModelConfig(vocab_size=len(vocabulary), cell="gru", hidden_size=hidden,
                            embed_size=8)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(seed))
    model.eval()
    return model


def texts(generation, tokenizer):
    """(text, reason) per row; the text without its ending eos."""
    out = []
    for row, length, reason in zip(np.asarray(generation.samples),
                                   np.asarray(generation.lengths),
                                   generation.stop_reason_names()):
        length -= int(reason == "eos")
        out.append((tokenizer.decode(row[:length]), reason))
    return out


# ---------------------------------------------------------------------------------------------
# The automaton: exactly the language of the pattern
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", [
    "(ab)*", "a(bc)+", "a?(ab)*c?", "(ab){0,3}", "(a|ab)(c|bcb)*", "[abc]{2,3}|ab(ca)*", "",
    "a*b*", "(a|b)*abb",
])
def test_the_automaton_accepts_exactly_what_fullmatch_accepts(pattern):
    """Every text of up to 6 letters over the vocabulary, against Python's ``re``."""
    letters = "abc"
    constraint = sm.Regex(pattern, list(letters))
    for size in range(7):
        for text in map("".join, itertools.product(letters, repeat=size)):
            tokens = [letters.index(char) for char in text]
            assert constraint.accepts(tokens) == bool(re.fullmatch(pattern, text)), text
            # A prefix is allowed exactly when some text of the language extends it.
            state, offending = constraint.walk(tokens)
            extends = any(re.fullmatch(pattern, text + "".join(tail)) for extra in range(5)
                          for tail in itertools.product(letters, repeat=extra))
            assert (offending is None) == extends, text


# ---------------------------------------------------------------------------------------------
# Every finished sample is in the language
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eos", [False, True])
def test_finished_samples_fullmatch_the_pattern_over_many_seeds(eos):
    tokenizer = sm.CharTokenizer(CHARS)
    pattern = CSV if eos else CSV_LINE
    constraint = sm.Regex(pattern, tokenizer)
    eos_id = 0 if eos else None  # "\n" ends a row: as eos, or as the text's last character
    finished = 0
    for seed in range(4):
        generation = sm.generate(char_model(), key=jax.random.key(seed), steps=16, batch_size=64,
                                 constraint=constraint, eos_id=eos_id, temperature=1.5)
        for text, reason in texts(generation, tokenizer):
            assert reason in (("eos", "length") if eos else ("complete", "length"))
            if reason != "length":
                finished += 1
                assert re.fullmatch(pattern, text), text
            else:  # unfinished: still the start of a text of the language
                assert constraint.walk(tokenizer.encode(text))[1] is None
    assert finished > 128


def test_byte_tokenizer_spells_multibyte_characters():
    tokenizer = sm.ByteTokenizer()
    pattern = r"(é|ab)+!"
    constraint = sm.Regex(pattern, tokenizer)
    model = char_model("".join(chr(value) for value in range(256)), hidden=8)
    generation = sm.generate(model, key=jax.random.key(0), steps=12, batch_size=32,
                             constraint=constraint)
    finished = [text for text, reason in texts(generation, tokenizer) if reason == "complete"]
    assert finished and all(re.fullmatch(pattern, text) for text in finished)
    assert any("é" in text for text in finished)


def test_json_schema_samples_validate():
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 4}, "n": {"type": "integer"},
        "ok": {"type": "boolean"}}, "required": ["name", "n", "ok"]}
    vocabulary = "".join(sorted(set('{}[]":,-0123456789abcdefghijklmnopqrstuvwxyz \n')))
    tokenizer = sm.CharTokenizer(vocabulary)
    constraint = sm.JsonSchema(schema, tokenizer, whitespace="")
    generation = sm.generate(char_model(vocabulary), key=jax.random.key(3), steps=60,
                             batch_size=32, constraint=constraint)
    finished = [text for text, reason in texts(generation, tokenizer) if reason == "complete"]
    assert len(finished) >= 16
    for text in finished:
        jsonschema.validate(json.loads(text), schema)


# ---------------------------------------------------------------------------------------------
# The distribution: the model's, renormalised over the tokens that keep the text in the language
# ---------------------------------------------------------------------------------------------

TINY = ["a", "b", "c", "$"]  # "$" is eos: never a character of the text
TINY_PATTERN = r"[ab]c?|cc"
TINY_WORDS = ["a", "b", "ac", "bc", "cc"]


def allowed_after(prefix: str) -> set[int]:
    """The tokens that keep ``prefix`` the start of a word (eos where it is a word), from the
    word list alone (independent of the automaton)."""
    tokens = {TINY.index(word[len(prefix)]) for word in TINY_WORDS
              if word.startswith(prefix) and len(word) > len(prefix)}
    return tokens | ({3} if prefix in TINY_WORDS else set())


@jax.jit
def _teacher_forced(model, inputs):
    return model(inputs)[0]


def renormalised_probability(model, word: str) -> float:
    """P(word, then eos) when each step's model distribution is renormalised over the allowed
    tokens; the model starts from token 0 (generate without a prompt)."""
    tokens = [TINY.index(char) for char in word] + [3]
    logits = np.asarray(_teacher_forced(model, jnp.asarray([[0] + tokens[:-1]])))[0]
    probability = 1.0
    for step, token in enumerate(tokens):
        p = np.exp(logits[step] - logits[step].max())
        allowed = sorted(allowed_after(word[:step]))
        probability *= p[token] / p[allowed].sum()
    return probability


def test_constrained_distribution_is_the_renormalised_model_exactly():
    model = char_model("abc$", seed=4, hidden=8)
    constraint = sm.Regex(TINY_PATTERN, TINY)
    tables, _ = constraint.tables(3)
    expected = {word: renormalised_probability(model, word) for word in TINY_WORDS}
    assert sum(expected.values()) == pytest.approx(1.0, abs=1e-6)
    # The library's masked logits give the same distribution, step by step, for every word.
    for word in TINY_WORDS:
        tokens = [TINY.index(char) for char in word] + [3]
        logits = _teacher_forced(model, jnp.asarray([[0] + tokens[:-1]]))[0]
        states = [constraint.walk(tokens[:step])[0] for step in range(len(tokens))]
        masked = constraints.mask_logits(logits, jnp.asarray(states), tables)
        probability = np.prod(np.asarray(jax.nn.softmax(masked))[np.arange(len(tokens)), tokens])
        assert probability == pytest.approx(expected[word], rel=1e-5)
    # The sampler draws from it: frequencies of 40000 rows within 0.01 (> 4 standard errors).
    generation = sm.generate(model, key=jax.random.key(0), steps=3, batch_size=40000,
                             constraint=constraint, eos_id=3)
    words = ["".join(TINY[t] for t in row[:length - 1]) for row, length in
             zip(np.asarray(generation.samples), np.asarray(generation.lengths))]
    assert set(generation.stop_reason_names()) == {"eos"}
    for word in TINY_WORDS:
        assert words.count(word) / len(words) == pytest.approx(expected[word], abs=0.01)
    assert set(words) == set(TINY_WORDS)


def test_greedy_follows_the_most_likely_allowed_token():
    model = char_model("abc$", seed=5, hidden=8)
    generation = sm.generate(model, key=jax.random.key(0), steps=3, greedy=True,
                             constraint=sm.Regex(TINY_PATTERN, TINY), eos_id=3)
    word = ""
    while True:
        logits = np.asarray(_teacher_forced(
            model, jnp.asarray([[0] + [TINY.index(c) for c in word]])))[0, -1]
        allowed = sorted(allowed_after(word))
        token = allowed[int(np.argmax(logits[allowed]))]
        if token == 3:
            break
        word += TINY[token]
    length = int(generation.lengths[0])
    assert "".join(TINY[t] for t in np.asarray(generation.samples[0, :length - 1])) == word


# ---------------------------------------------------------------------------------------------
# Beam search: the best text of the language (exhaustive check)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_returns_the_best_text_of_the_language(length_penalty):
    model = char_model("abc$", seed=6, hidden=8)
    pattern = r"a[ab]{0,2}c?"  # after the prompt "a": every word, then eos
    words = ["".join(letters) + end for size in range(3)
             for letters in itertools.product("ab", repeat=size) for end in ("", "c")]
    scores = {}
    for word in words:
        tokens = [0] + [TINY.index(c) for c in word] + [3]
        log_probs = jax.nn.log_softmax(_teacher_forced(model, jnp.asarray([tokens[:-1]]))[0])
        total = float(sum(log_probs[step, token] for step, token in enumerate(tokens[1:])))
        scores[word] = total / (len(tokens) - 1) ** length_penalty
    best = max(scores, key=scores.get)
    result = sm.beam_search(model, prompt=np.array([[0]]), steps=5, num_beams=16, eos_id=3,
                            length_penalty=length_penalty, num_return_sequences=3,
                            constraint=sm.Regex(pattern, TINY))
    length = int(result.lengths[0, 0])
    found = "".join(TINY[t] for t in np.asarray(result.sequences[0, 0, :length - 1]))
    assert found == best
    assert float(result.scores[0, 0]) == pytest.approx(scores[best], rel=1e-5)
    ranked = sorted(scores.values(), reverse=True)[:3]
    np.testing.assert_allclose(np.asarray(result.scores[0]), ranked, rtol=1e-5)
    assert result.stop_reason_names() == [["eos"] * 3]


def test_beam_search_without_eos_ends_hypotheses_whose_text_is_whole():
    model = char_model("abc$", seed=6, hidden=8)
    result = sm.beam_search(model, prompt=np.array([[0]]), steps=6, num_beams=4,
                            num_return_sequences=4, length_penalty=0.0,
                            constraint=sm.Regex(r"a(bc|cb)", TINY))
    assert result.stop_reason_names() == [["complete", "complete", "length", "length"]]
    texts_found = {"".join(TINY[t] for t in np.asarray(row[:length]))
                   for row, length in zip(result.sequences[0, :2], result.lengths[0, :2])}
    assert texts_found == {"bc", "cb"}
    assert np.all(np.isneginf(np.asarray(result.scores[0, 2:])))


# ---------------------------------------------------------------------------------------------
# The loop: one int per row, streaming, stop reasons, the invariant, nothing else changes
# ---------------------------------------------------------------------------------------------


def loop_state_leaves(model, **arguments):
    request = check_request(model, key=jax.random.key(0), steps=4, **arguments)
    state = jax.eval_shape(
        lambda prompt, lengths, automaton: start_loop(
            model, prompt, lengths, automaton, request.values.processors, request.options),
        jnp.asarray(request.prompt), jnp.asarray(request.prompt_lengths), request.automaton)
    return sorted((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves(state))


@pytest.mark.parametrize("eos_id", [None, 0])
def test_the_carry_grows_by_one_int32_per_row(eos_id):
    tokenizer = sm.CharTokenizer(CHARS)
    arguments = dict(batch_size=5, eos_id=eos_id,
                     processors=ProcessorOptions(repetition_penalty=1.2))
    plain = loop_state_leaves(char_model(), **arguments)
    constrained = loop_state_leaves(char_model(), constraint=sm.Regex(CSV, tokenizer),
                                    **arguments)
    for leaf in plain:
        constrained.remove(leaf)
    assert constrained == [((5,), "int32")]


def universal(vocabulary):
    return sm.Regex(r"[\s\S]*", sm.CharTokenizer(vocabulary))


@pytest.mark.parametrize("arguments", [
    dict(),
    dict(eos_id=0, top_k=5, repetition_penalty=1.3),
    dict(top_p=0.8, stop_sequences=[[4, 4]], banned_tokens=[3]),
])
@pytest.mark.slow
def test_a_constraint_that_allows_everything_changes_nothing(arguments):
    model = char_model()
    common = dict(key=jax.random.key(7), steps=40, prompt=np.array([[1, 2, 3], [4, 5, 0]]),
                  prompt_lengths=np.array([3, 2]), return_scores=True, **arguments)
    plain = sm.generate(model, **common)
    constrained = sm.generate(model, constraint=universal(CHARS), **common)
    np.testing.assert_array_equal(constrained.samples, plain.samples)
    np.testing.assert_array_equal(constrained.lengths, plain.lengths)
    np.testing.assert_array_equal(constrained.stop_reasons, plain.stop_reasons)
    np.testing.assert_allclose(constrained.scores, plain.scores, atol=1e-6)
    beam = dict(prompt=common["prompt"], prompt_lengths=common["prompt_lengths"], steps=12,
                num_beams=3, eos_id=arguments.get("eos_id"))
    np.testing.assert_array_equal(
        sm.beam_search(model, constraint=universal(CHARS), **beam).sequences,
        sm.beam_search(model, **beam).sequences)


@pytest.mark.slow
def test_stream_equals_generate_and_scores_equal_teacher_forcing():
    tokenizer = sm.CharTokenizer(CHARS)
    model = char_model()
    arguments = dict(key=jax.random.key(9), steps=20, prompt=tokenizer.encode("ab")[None],
                     num_samples=6, constraint=sm.Regex(CSV, tokenizer), eos_id=0,
                     return_scores=True)
    whole = sm.generate(model, **arguments)
    chunks = list(sm.generate_stream(model, chunk_size=6, **arguments))
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks], axis=1),
                                  whole.samples)
    np.testing.assert_array_equal(chunks[-1].lengths, whole.lengths)
    np.testing.assert_array_equal(chunks[-1].stop_reasons, whole.stop_reasons)
    for row in range(6):
        length = int(whole.lengths[row])
        tokens = np.concatenate([tokenizer.encode("ab"), whole.samples[row, :length]])
        outputs = np.asarray(_teacher_forced(model, jnp.asarray(tokens[None, :-1])))[0]
        np.testing.assert_allclose(whole.scores[row, :length], outputs[1:], atol=1e-5)
        if whole.stop_reason_names()[row] == "eos":
            assert re.fullmatch(CSV, "ab" + tokenizer.decode(whole.samples[row, :length - 1]))


@pytest.mark.slow
def test_rows_stop_with_their_reason():
    tokenizer = sm.CharTokenizer(CHARS)
    model = char_model()
    run = functools.partial(sm.generate, model, key=jax.random.key(1), steps=10, batch_size=2)
    # The text "ab" is whole after two tokens: no eos to end it, so the row stops there.
    complete = run(constraint=sm.Regex("ab", tokenizer))
    assert complete.stop_reason_names() == ["complete"] * 2
    np.testing.assert_array_equal(complete.lengths, [2, 2])
    np.testing.assert_array_equal(complete.samples[:, :2], [tokenizer.encode("ab")] * 2)
    assert np.all(np.asarray(complete.samples[:, 2:]) == 0)  # padding
    # With eos, the whole text can only end with it.
    ended = run(constraint=sm.Regex("ab", tokenizer), eos_id=0)
    assert ended.stop_reason_names() == ["eos"] * 2
    np.testing.assert_array_equal(ended.lengths, [3, 3])
    # Banning the only allowed token leaves the row nothing: it stops before it.
    blocked = run(constraint=sm.Regex("ab", tokenizer), banned_tokens=[int(
        tokenizer.encode("b")[0])])
    assert blocked.stop_reason_names() == ["no_continuation"] * 2
    np.testing.assert_array_equal(blocked.lengths, [1, 1])
    # A stop sequence ends a row only where the text is whole.
    stopped = run(constraint=sm.Regex("a;b;", tokenizer), stop_sequences=[
        list(tokenizer.encode(";"))])
    assert stopped.stop_reason_names() == ["stop_sequence"] * 2
    np.testing.assert_array_equal(stopped.lengths, [4, 4])  # not at the first ";"
    # Without a constraint the reasons are reported too.
    plain = run(eos_id=int(tokenizer.encode("a")[0]), steps=60, temperature=3.0)
    assert "eos" in plain.stop_reason_names()
    assert set(plain.stop_reason_names()) <= {"eos", "length"}


def test_a_prompt_outside_the_language_names_the_first_offending_position():
    tokenizer = sm.CharTokenizer(CHARS)
    constraint = sm.Regex(CSV, tokenizer)
    prompt = np.stack([tokenizer.encode("ab,1"), tokenizer.encode("abc;")]).astype(np.int32)
    with pytest.raises(ValueError, match=r"prompt row 1 .* at position 3 \(token \d+, ';'\)"):
        sm.generate(char_model(), key=jax.random.key(0), steps=3, prompt=prompt,
                    constraint=constraint)
    with pytest.raises(ValueError, match="position 0"):
        sm.beam_search(char_model(), prompt=tokenizer.encode(",")[None], steps=3, num_beams=2,
                       constraint=constraint)


@pytest.mark.parametrize("build, message", [
    (lambda t: sm.Regex("(", t), "not a regular expression"),
    (lambda t: sm.Regex("xy|zz", t), "lacks"),
    (lambda t: sm.JsonSchema({"type": "objectx"}, t), "JSON schema is invalid"),
    (lambda t: sm.Regex("a", object()), "tokenizer=.* is invalid"),
])
def test_bad_patterns_raise_a_constraint_error(build, message):
    with pytest.raises(sm.ConstraintError, match=message):
        build(sm.CharTokenizer(CHARS))


def test_a_constraint_for_another_vocabulary_is_refused():
    with pytest.raises(ValueError, match="built for 4 tokens, the model has 16"):
        sm.generate(char_model(), key=jax.random.key(0), steps=3,
                    constraint=sm.Regex("ab", TINY))


def test_a_new_pattern_of_the_same_size_does_not_recompile():
    tokenizer = sm.CharTokenizer(CHARS)
    run = functools.partial(sm.generate, char_model(), key=jax.random.key(0), steps=8,
                            batch_size=3, eos_id=0)
    run(constraint=sm.Regex("a[0-9]+", tokenizer))
    traced = TRACE_COUNTS["generate"]
    run(constraint=sm.Regex("b[0-9]+", tokenizer))
    assert TRACE_COUNTS["generate"] == traced
