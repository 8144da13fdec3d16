"""Logits processors: each rule against a plain NumPy reference, and inside generate's program."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm
from seqmodel.decoding import processors
from seqmodel.decoding.generate import TRACE_COUNTS

VOCAB = 7


# ---------------------------------------------------------------------------------------------
# NumPy references of the rules, written from their published definitions
# ---------------------------------------------------------------------------------------------


def numpy_repetition(logits, counts, penalty):
    out = logits.copy()
    seen = counts > 0
    out[seen] = np.where(out[seen] > 0, out[seen] / penalty, out[seen] * penalty)
    return out


def numpy_presence_frequency(logits, counts, presence, frequency):
    return logits - presence * (counts > 0) - frequency * counts


def numpy_bias(logits, bias: dict, banned):
    out = logits.copy()
    for token, value in bias.items():
        out[:, token] += value
    out[:, list(banned)] = -np.inf
    return out


def numpy_min_new(logits, step, minimum, eos_id):
    out = logits.copy()
    if step < minimum:
        out[:, eos_id] = -np.inf
    return out


def numpy_ends_with(generated, sequences):
    return any(len(generated) >= len(s) and list(generated[-len(s):]) == list(s)
               for s in sequences)


def random_case(seed=0, rows=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, VOCAB)).astype(np.float32) * 3
    counts = rng.integers(0, 3, size=(rows, VOCAB)).astype(np.int32)
    return logits, counts


def checked(eos_id=None, **arguments):
    """The rules and values of the processor keywords ``arguments``."""
    return processors.check_processors(VOCAB, processors.ProcessorOptions(**arguments),
                                       eos_id=eos_id)


def history_of(counts):
    return processors.History(counts=jnp.asarray(counts))


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_ctrl(penalty):
    logits, counts = random_case(1)
    options, values = checked(repetition_penalty=penalty)
    got = processors.process_logits(jnp.asarray(logits), history_of(counts), 0, options, values)
    np.testing.assert_allclose(got, numpy_repetition(logits, counts, penalty), rtol=1e-6)


def test_presence_and_frequency_penalties():
    logits, counts = random_case(2)
    options, values = checked(presence_penalty=0.5, frequency_penalty=0.25)
    got = processors.process_logits(jnp.asarray(logits), history_of(counts), 0, options, values)
    np.testing.assert_allclose(got, numpy_presence_frequency(logits, counts, 0.5, 0.25),
                               rtol=1e-6)


def test_bias_and_bans():
    logits, _ = random_case(3)
    options, values = checked(token_bias={1: 2.0, 4: -1.5}, banned_tokens=[0, 6])
    got = processors.process_logits(jnp.asarray(logits), processors.History(), 0, options,
                                    values)
    np.testing.assert_array_equal(got, numpy_bias(logits, {1: 2.0, 4: -1.5}, [0, 6]))


@pytest.mark.parametrize("step", [0, 2, 3, 5])
def test_min_new_tokens_bans_eos_before_the_minimum(step):
    logits, _ = random_case(4)
    options, values = checked(min_new_tokens=3, eos_id=2)
    got = processors.process_logits(jnp.asarray(logits), processors.History(), step, options,
                                    values)
    np.testing.assert_array_equal(got, numpy_min_new(logits, step, 3, 2))


def test_rules_compose_in_the_documented_order():
    logits, counts = random_case(5)
    options, values = checked(
        repetition_penalty=1.5, presence_penalty=0.2, frequency_penalty=0.1,
        token_bias={3: 1.0}, banned_tokens=[5], min_new_tokens=4, eos_id=0)
    got = processors.process_logits(jnp.asarray(logits), history_of(counts), 1, options, values)
    expected = numpy_repetition(logits, counts, 1.5)
    expected = numpy_presence_frequency(expected, counts, 0.2, 0.1)
    expected = numpy_bias(expected, {3: 1.0}, [5])
    expected = numpy_min_new(expected, 1, 4, 0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_history_counts_the_prompt_and_matches_stop_sequences():
    sequences = [[3, 3], [1, 2, 4]]
    options, values = checked(repetition_penalty=1.2, stop_sequences=sequences)
    prompt = jnp.array([[1, 1, 5], [2, 0, 0]])
    history = processors.initial_history(options, prompt, jnp.array([3, 1]), vocab_size=VOCAB,
                                         steps=6)
    np.testing.assert_array_equal(history.counts[0], np.bincount([1, 1, 5], minlength=VOCAB))
    np.testing.assert_array_equal(history.counts[1], np.bincount([2], minlength=VOCAB))
    rng = np.random.default_rng(0)
    generated = [[], []]
    for step in range(6):
        token = jnp.asarray(rng.choice([1, 2, 3, 4], size=2), jnp.int32)
        history = processors.update_history(history, token, step, options)
        stopped = processors.ends_row(history, token, step, options, values)
        for row in range(2):
            generated[row].append(int(token[row]))
            assert bool(stopped[row]) == numpy_ends_with(generated[row], sequences)


@pytest.mark.parametrize("arguments, message", [
    (dict(repetition_penalty=0.0), "repetition_penalty=0.0"),
    (dict(token_bias={VOCAB: 1.0}), "token_bias holds 7"),
    (dict(banned_tokens=[-1]), "banned_tokens holds -1"),
    (dict(min_new_tokens=-2), "min_new_tokens=-2"),
    (dict(stop_sequences="ab"), "stop_sequences='ab'"),
    (dict(stop_sequences=[[]]), "non-empty"),
    (dict(logits_processor=3), "logits_processor=3"),
])
def test_bad_processor_arguments_name_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        checked(**arguments)


# ---------------------------------------------------------------------------------------------
# Inside generate: a greedy run equals a Python loop that applies the NumPy rules
# ---------------------------------------------------------------------------------------------


@functools.cache
def tiny_model():
    config = sm.ModelConfig(vocab_size=VOCAB, cell="gru", hidden_size=8, embed_size=4)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(3))
    model.eval()
    return model


@jax.jit
def _step(model, x, carry):
    return model.step(x, carry)


def reference_greedy(model, prompt, steps, *, repetition=1.0, presence=0.0, frequency=0.0,
                     bias=None, banned=(), min_new=0, eos_id=None, stop=()):
    """Greedy decoding by hand: model.step for the logits, the NumPy rules, argmax."""
    rows = prompt.shape[0]
    carry = model.init_carry(rows)
    for t in range(prompt.shape[1] - 1):
        _, carry = _step(model, jnp.asarray(prompt[:, t]), carry)
    x = prompt[:, -1]
    counts = np.stack([np.bincount(row, minlength=VOCAB) for row in prompt])
    samples, lengths = np.zeros((rows, steps), np.int32), np.full(rows, steps)
    done = np.zeros(rows, bool)
    for step in range(steps):
        logits, carry = _step(model, jnp.asarray(x), carry)
        logits = np.asarray(logits, np.float32)
        logits = numpy_repetition(logits, counts, repetition)
        logits = numpy_presence_frequency(logits, counts, presence, frequency)
        logits = numpy_bias(logits, bias or {}, banned)
        if eos_id is not None:
            logits = numpy_min_new(logits, step, min_new, eos_id)
        x = logits.argmax(-1).astype(np.int32)
        for row in range(rows):
            if done[row]:
                continue
            samples[row, step] = x[row]
            counts[row, x[row]] += 1
            ended = (eos_id is not None and x[row] == eos_id) or (
                step + 1 >= min_new and numpy_ends_with(samples[row, :step + 1], stop))
            if ended:
                done[row], lengths[row] = True, step + 1
    return samples, lengths


PROMPT = np.array([[1, 2, 3], [4, 4, 0]], np.int32)


@pytest.mark.parametrize("arguments", [
    dict(repetition_penalty=1.8),
    dict(presence_penalty=0.7, frequency_penalty=0.4),
    dict(token_bias={5: 1.5}, banned_tokens=[1, 2]),
    dict(min_new_tokens=6, eos_id=0, repetition_penalty=1.3),
])
def test_greedy_generate_with_processors_matches_the_reference(arguments):
    model = tiny_model()
    generation = sm.generate(model, key=jax.random.key(0), steps=12, prompt=PROMPT, greedy=True,
                             **arguments)
    reference = dict(repetition=arguments.get("repetition_penalty", 1.0),
                     presence=arguments.get("presence_penalty", 0.0),
                     frequency=arguments.get("frequency_penalty", 0.0),
                     bias=arguments.get("token_bias"), banned=arguments.get("banned_tokens", ()),
                     min_new=arguments.get("min_new_tokens", 0), eos_id=arguments.get("eos_id"))
    samples, lengths = reference_greedy(model, PROMPT, 12, **reference)
    np.testing.assert_array_equal(generation.lengths, lengths)
    for row, length in enumerate(lengths):
        np.testing.assert_array_equal(generation.samples[row, :length], samples[row, :length])


def test_stop_sequences_end_each_row_after_the_sequence():
    model = tiny_model()
    free = sm.generate(model, key=jax.random.key(4), steps=20, prompt=PROMPT)
    row = np.asarray(free.samples[0])
    stop = [int(row[5]), int(row[6])]  # a pair that the unconstrained run does produce
    generation = sm.generate(model, key=jax.random.key(4), steps=20, prompt=PROMPT,
                             stop_sequences=[stop, [VOCAB - 1] * 5])
    for index in range(2):
        produced = np.asarray(free.samples[index])
        ends = [t + 1 for t in range(20) if numpy_ends_with(produced[:t + 1], [stop])]
        expected = ends[0] if ends else 20
        assert int(generation.lengths[index]) == expected
        np.testing.assert_array_equal(generation.samples[index, :expected], produced[:expected])
        assert np.all(np.asarray(generation.samples[index, expected:]) == 0)  # padding


def test_user_processor_sees_the_tokens_so_far_and_the_step():
    def force_previous_plus_one(logits, tokens, step):
        previous = jnp.where(step > 0, tokens[jnp.arange(tokens.shape[0]), step - 1], 0)
        target = (previous + 1) % VOCAB
        return jnp.where(jnp.arange(VOCAB) == target[:, None], 0.0, -jnp.inf)

    generation = sm.generate(tiny_model(), key=jax.random.key(1), steps=9, prompt=PROMPT,
                             logits_processor=force_previous_plus_one)
    np.testing.assert_array_equal(generation.samples, np.tile(np.arange(1, 10) % VOCAB, (2, 1)))


def test_banned_tokens_are_never_sampled_and_stream_equals_generate():
    arguments = dict(key=jax.random.key(2), steps=40, prompt=PROMPT, banned_tokens=[0, 3],
                     repetition_penalty=1.4, stop_sequences=[[5, 5]])
    whole = sm.generate(tiny_model(), **arguments)
    assert not np.isin(np.asarray(whole.samples)[np.arange(40)[None] < np.asarray(
        whole.lengths)[:, None]], [0, 3]).any()
    chunks = list(sm.generate_stream(tiny_model(), chunk_size=16, **arguments))
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks], axis=1),
                                  whole.samples)
    np.testing.assert_array_equal(chunks[-1].lengths, whole.lengths)


def test_new_penalty_values_do_not_recompile():
    model = tiny_model()
    sm.generate(model, key=jax.random.key(0), steps=4, prompt=PROMPT, repetition_penalty=1.1)
    before = TRACE_COUNTS["generate"]
    sm.generate(model, key=jax.random.key(0), steps=4, prompt=PROMPT, repetition_penalty=1.9)
    assert TRACE_COUNTS["generate"] == before


def test_processors_are_refused_for_real_valued_heads():
    config = sm.ModelConfig(input_size=2, head="gaussian", hidden_size=4)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="repetition_penalty=1.2 is invalid for a Gaussian"):
        sm.generate(model, key=jax.random.key(0), steps=3, repetition_penalty=1.2)
