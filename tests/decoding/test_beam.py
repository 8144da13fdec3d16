"""beam_search: one beam is greedy, a wide beam is exhaustive search, scores are teacher-forced
log-probabilities with the length penalty, rows are independent, processors apply."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm
from seqmodel.decoding.beam import TRACE_COUNTS

VOCAB = 3


@functools.cache
def tiny_model(vocab: int = VOCAB, seed: int = 0):
    config = sm.ModelConfig(vocab_size=vocab, cell="lstm", hidden_size=8, embed_size=4,
                            num_layers=2, dropout=0.3)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(seed))
    model.train()  # beam_search must switch to eval on its own copy
    return model


@jax.jit
def _log_probs(model, tokens):
    model.eval()
    logits, _ = model(tokens)
    return jax.nn.log_softmax(logits, axis=-1)


def sequence_log_prob(model, prompt_row, new_tokens) -> float:
    """Teacher-forced sum of log p(new token | past) over ``new_tokens``."""
    tokens = np.concatenate([prompt_row, new_tokens]).astype(np.int32)
    log_probs = np.asarray(_log_probs(model, jnp.asarray(tokens)[None]))[0]
    start = len(prompt_row) - 1
    return float(sum(log_probs[start + i, token] for i, token in enumerate(new_tokens)))


def exhaustive(model, prompt_row, steps, eos_id, length_penalty):
    """Every hypothesis: ends at its first eos, or runs ``steps`` tokens without one."""
    hypotheses = []
    for length in range(1, steps + 1):
        for tokens in itertools.product(range(VOCAB), repeat=length):
            ends = tokens[-1] == eos_id
            if eos_id in tokens[:-1] or (not ends and length < steps):
                continue
            score = sequence_log_prob(model, prompt_row, tokens) / length ** length_penalty
            hypotheses.append((score, tokens))
    return sorted(hypotheses, key=lambda item: -item[0])


@pytest.mark.slow
def test_one_beam_is_greedy_decoding():
    model = tiny_model(vocab=11)
    prompt = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    result = sm.beam_search(model, prompt=prompt, steps=12, num_beams=1)
    greedy = sm.generate(model, key=jax.random.key(0), steps=12, prompt=prompt, greedy=True)
    np.testing.assert_array_equal(result.sequences[:, 0], greedy.samples)


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, -0.5, 2.0])
def test_a_wide_beam_equals_exhaustive_search(length_penalty):
    model = tiny_model()
    prompt_row = np.array([1, 2], np.int32)
    steps, eos_id = 4, 0
    result = sm.beam_search(model, prompt=prompt_row[None], steps=steps, num_beams=VOCAB ** steps,
                            eos_id=eos_id, length_penalty=length_penalty, num_return_sequences=4)
    expected = exhaustive(model, prompt_row, steps, eos_id, length_penalty)[:4]
    for rank, (score, tokens) in enumerate(expected):
        length = int(result.lengths[0, rank])
        assert tuple(np.asarray(result.sequences[0, rank, :length])) == tokens
        np.testing.assert_allclose(float(result.scores[0, rank]), score, rtol=1e-5, atol=1e-5)


def test_scores_equal_teacher_forced_log_probabilities_with_ragged_prompts():
    model = tiny_model(vocab=11)
    prompt = np.array([[1, 2, 3, 4], [5, 0, 0, 0], [6, 7, 0, 0]], np.int32)
    lengths = np.array([4, 1, 2])
    result = sm.beam_search(model, prompt=prompt, prompt_lengths=lengths, steps=8, num_beams=4,
                            eos_id=3, length_penalty=1.3, num_return_sequences=3)
    for row in range(3):
        previous = np.inf
        for rank in range(3):
            length = int(result.lengths[row, rank])
            tokens = np.asarray(result.sequences[row, rank, :length])
            expected = sequence_log_prob(model, prompt[row, :lengths[row]], tokens) / \
                length ** 1.3
            np.testing.assert_allclose(float(result.scores[row, rank]), expected, rtol=1e-5,
                                       atol=1e-5)
            assert float(result.scores[row, rank]) <= previous  # best first
            previous = float(result.scores[row, rank])
            if length < 8:
                assert tokens[-1] == 3 and 3 not in tokens[:-1]
                assert np.all(np.asarray(result.sequences[row, rank, length:]) == 3)


def test_rows_are_independent_and_no_recompile():
    model = tiny_model(vocab=11)
    prompt = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    arguments = dict(steps=6, num_beams=3, eos_id=2, num_return_sequences=2)
    both = sm.beam_search(model, prompt=prompt, **arguments)
    before = TRACE_COUNTS["beam_search"]
    again = sm.beam_search(model, prompt=prompt[::-1].copy(), **arguments)
    assert TRACE_COUNTS["beam_search"] == before
    np.testing.assert_array_equal(again.sequences[::-1], both.sequences)
    alone = sm.beam_search(model, prompt=prompt[1:], **arguments)
    np.testing.assert_array_equal(alone.sequences[0], both.sequences[1])
    np.testing.assert_allclose(alone.scores[0], both.scores[1], rtol=1e-6)


@pytest.mark.slow
def test_processors_apply_inside_beam_search():
    model = tiny_model(vocab=11)
    prompt = np.array([[1, 2, 3]], np.int32)
    plain = sm.beam_search(model, prompt=prompt, steps=10, num_beams=4)
    banned = sorted(set(np.asarray(plain.sequences[0, 0]).tolist()))[:2]
    result = sm.beam_search(model, prompt=prompt, steps=10, num_beams=4, banned_tokens=banned,
                            num_return_sequences=4)
    assert not np.isin(np.asarray(result.sequences), banned).any()
    stop = [int(plain.sequences[0, 0, 2]), int(plain.sequences[0, 0, 3])]
    # length_penalty 0 ranks by the plain sum, so the short hypothesis that stops is the best.
    stopped = sm.beam_search(model, prompt=prompt, steps=10, num_beams=4, stop_sequences=[stop],
                             length_penalty=0.0,
                             num_return_sequences=4)
    ended = 0
    for rank in range(4):
        length = int(stopped.lengths[0, rank])
        tokens = list(np.asarray(stopped.sequences[0, rank, :length]))
        pairs = [tokens[i:i + 2] for i in range(length - 1)]
        # A completed stop sequence ends its hypothesis: it occurs only as the last two tokens.
        assert stop not in pairs[:-1]
        ended += pairs[-1:] == [stop]
    assert ended >= 1


@pytest.mark.parametrize("arguments, message", [
    (dict(num_beams=0), "num_beams=0"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences=3"),
    (dict(num_beams=2, length_penalty=float("nan")), "length_penalty=nan"),
    (dict(num_beams=2, eos_id=99), "eos_id=99"),
    (dict(num_beams=2, prompt=None), "prompt=None"),
])
def test_bad_arguments_name_argument_and_value(arguments, message):
    arguments = dict(prompt=np.array([[1]]), steps=3) | arguments
    with pytest.raises(ValueError, match=message):
        sm.beam_search(tiny_model(vocab=11), **arguments)


def test_real_valued_models_are_refused():
    config = sm.ModelConfig(input_size=2, head="gaussian", hidden_size=4)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="token model"):
        sm.beam_search(model, prompt=np.zeros((1, 2, 2)), steps=3, num_beams=2)
