"""generate / generate_stream: scores equal teacher forcing, ragged prompts, eos, keys, compiles."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm
from seqmodel.decoding import sampling
from seqmodel.decoding.generate import TRACE_COUNTS

CELLS = ["lstm", "gru", "elman", "mingru", "minlstm", "rglru"]
HEADS = ["categorical", "gaussian", "mdn", "bernoulli", "student_t", "negbin"]
STEPS = 5
PROMPT_LENGTHS = np.array([4, 1, 2])  # ragged, right-padded to 4


@functools.cache
def make_model(head: str = "categorical", cell: str = "lstm", num_layers: int = 2,
               seed: int = 0) -> sm.SequenceModel:
    """A tiny model left in train mode with dropout, so generate must switch to eval itself."""
    kwargs = dict(vocab_size=11) if head == "categorical" else dict(input_size=3)
    config = sm.ModelConfig(cell=cell, head=head, hidden_size=8, num_layers=num_layers,
                            embed_size=5, num_mixtures=2, dropout=0.5, **kwargs)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(seed))
    model.train()
    return model


def make_prompt(model, batch: int = 3, length: int = 4, seed: int = 1):
    key = jax.random.key(seed)
    config = model.config
    if config.discrete:
        return np.array(jax.random.randint(key, (batch, length), 0, config.vocab_size))
    if config.head == "bernoulli":
        return np.array(jax.random.bernoulli(key, 0.5, (batch, length, 3)), np.float32)
    return np.array(jax.random.normal(key, (batch, length, 3)))


def teacher_forced_scores(model, prompt, prompt_lengths, samples, num_samples=1):
    """The head's outputs at the generated positions, from one teacher-forced pass over each row's
    prompt followed by its samples (right-padded; the model is causal)."""
    prompt = np.repeat(prompt, num_samples, axis=0)
    prompt_lengths = np.repeat(prompt_lengths, num_samples, axis=0)
    samples = np.asarray(samples)
    steps = samples.shape[1]
    rows = []
    for row, length in enumerate(prompt_lengths):
        sequence = np.concatenate([prompt[row, :length], samples[row]])
        pad = np.zeros((prompt.shape[1] - length,) + sequence.shape[1:], sequence.dtype)
        rows.append(np.concatenate([sequence, pad]))
    outputs = _teacher_forced(model, jnp.asarray(np.stack(rows)))
    positions = prompt_lengths[:, None] - 1 + np.arange(steps)[None, :]
    return jax.tree.map(lambda a: np.take_along_axis(
        np.asarray(a), positions.reshape(positions.shape + (1,) * (a.ndim - 2)), axis=1), outputs)


@jax.jit
def _teacher_forced(model, inputs):
    model.eval()  # on jit's copy of the model
    return model(inputs)[0]


def assert_trees_close(actual, expected, atol=1e-5):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol)


# Each cell with two heads and each head with two cells (tests/nn/test_model.py checks every
# cell with every head, teacher forced against a scan of steps, which is what generation runs;
# a generate program is among the suite's longest compiles). The quick subset (-m "not slow")
# keeps each cell and each head once.
QUICK_PAIRS = {("lstm", "categorical"), ("gru", "gaussian"), ("elman", "mdn"),
               ("mingru", "bernoulli"), ("minlstm", "student_t"), ("rglru", "negbin")}
SHIFTED_PAIRS = {(cell, HEADS[(index + 2) % len(HEADS)]) for index, cell in enumerate(CELLS)}
CELL_HEAD_PAIRS = ([pytest.param(cell, head) for cell, head in sorted(QUICK_PAIRS)]
                   + [pytest.param(cell, head, marks=pytest.mark.slow)
                      for cell, head in sorted(SHIFTED_PAIRS)])


@pytest.mark.parametrize("cell, head", CELL_HEAD_PAIRS)
def test_scores_equal_teacher_forcing_with_ragged_prompts(cell, head):
    model = make_model(head, cell)
    prompt = make_prompt(model)
    generation = sm.generate(model, key=jax.random.key(0), steps=STEPS, prompt=prompt,
                             prompt_lengths=PROMPT_LENGTHS, temperature=0.8, return_scores=True)
    event = () if model.config.discrete else (3,)
    assert generation.samples.shape == (3, STEPS) + event
    np.testing.assert_array_equal(generation.lengths, [STEPS] * 3)
    assert_trees_close(
        generation.scores, teacher_forced_scores(model, prompt, PROMPT_LENGTHS, generation.samples)
    )
    assert model.dropout.deterministic is False  # the caller's mode is untouched
    if head == "bernoulli":
        assert set(np.unique(generation.samples)) <= {0.0, 1.0}


def test_a_row_does_not_depend_on_the_other_rows():
    model = make_model()
    prompt = make_prompt(model)
    other = make_prompt(model, seed=7)
    other[0] = prompt[0]
    results = [
        sm.generate(model, key=jax.random.key(3), steps=STEPS, prompt=p, prompt_lengths=lengths,
                    return_scores=True)
        for p, lengths in ((prompt, PROMPT_LENGTHS), (other, np.array([4, 3, 4])))
    ]
    np.testing.assert_array_equal(results[0].samples[0], results[1].samples[0])
    np.testing.assert_array_equal(results[0].scores[0], results[1].scores[0])
    # Padding content past a row's length is ignored too.
    padded = prompt.copy()
    padded[1, 1:] = 0
    again = sm.generate(model, key=jax.random.key(3), steps=STEPS, prompt=padded,
                        prompt_lengths=PROMPT_LENGTHS, return_scores=True)
    np.testing.assert_array_equal(again.samples, results[0].samples)


# Tests below share compiled programs: the same model structure, shapes and static options.
CONTROLLED = dict(steps=STEPS, prompt_lengths=PROMPT_LENGTHS, top_k=4, return_scores=True)
EOS_RUN = dict(steps=40, batch_size=6, return_scores=True)  # 40 > one early-stop chunk


def test_generated_tokens_stay_inside_top_k_and_top_p():
    model = make_model()
    controls = dict(temperature=2.0, top_k=4, top_p=0.6)
    allowed_any, seen = [], set()
    for seed in range(3):
        generation = sm.generate(model, key=jax.random.key(seed), prompt=make_prompt(model),
                                 **(CONTROLLED | controls))
        allowed = np.isfinite(np.asarray(sampling.filter_logits(generation.scores, **controls)))
        allowed_any.append(np.take_along_axis(allowed, np.asarray(generation.samples)[..., None], -1))
        seen |= set(np.asarray(generation.samples).ravel().tolist())
    assert np.all(allowed_any)
    assert len(seen) > 1


def test_same_key_same_samples_and_no_recompile():
    model = make_model()
    arguments = dict(prompt=make_prompt(model), top_p=0.9, **CONTROLLED)
    first = sm.generate(model, key=jax.random.key(5), temperature=1.3, **arguments)
    traces = TRACE_COUNTS["generate"]
    again = sm.generate(model, key=jax.random.key(5), temperature=1.3, **arguments)
    np.testing.assert_array_equal(first.samples, again.samples)
    # New key, temperature, top_p value and prompt content: same shapes, so nothing is traced.
    arguments.update(prompt=make_prompt(model, seed=9), top_p=0.5)
    other = sm.generate(model, key=jax.random.key(6), temperature=0.7, **arguments)
    assert TRACE_COUNTS["generate"] == traces
    assert not np.array_equal(first.samples, other.samples)
    model.eval()  # the same model in the other mode is another program, compiled once
    try:
        sm.generate(model, key=jax.random.key(6), temperature=0.7, **arguments)
        assert TRACE_COUNTS["generate"] == traces + 1
    finally:
        model.train()
    sm.generate(model, key=jax.random.key(6), temperature=0.7, **arguments)
    assert TRACE_COUNTS["generate"] == traces + 1


def test_greedy_is_the_argmax_of_teacher_forced_logits():
    model = make_model()
    prompt = make_prompt(model)
    results = [
        sm.generate(model, key=jax.random.key(seed), steps=STEPS, prompt=prompt,
                    prompt_lengths=PROMPT_LENGTHS, return_scores=True, **kwargs)
        for seed, kwargs in ((0, dict(greedy=True)), (1, dict(temperature=0, top_k=3)))
    ]
    logits = teacher_forced_scores(model, prompt, PROMPT_LENGTHS, results[0].samples)
    np.testing.assert_array_equal(results[0].samples, np.argmax(logits, axis=-1))
    np.testing.assert_array_equal(results[1].samples, results[0].samples)


def test_without_prompt_starts_from_the_start_element():
    model = make_model("gaussian", "gru")
    generation = sm.generate(model, key=jax.random.key(2), steps=STEPS, batch_size=2,
                             return_scores=True)
    start = np.zeros((2, 1, 3), np.float32)
    assert_trees_close(
        generation.scores,
        teacher_forced_scores(model, start, np.array([1, 1]), generation.samples),
    )


def test_num_samples_draws_several_continuations_per_row():
    model = make_model()
    prompt = make_prompt(model)[:2]
    lengths = PROMPT_LENGTHS[:2]
    generation = sm.generate(model, key=jax.random.key(4), steps=STEPS, prompt=prompt,
                             prompt_lengths=lengths, num_samples=3, return_scores=True)
    assert generation.samples.shape == (6, STEPS)
    assert_trees_close(
        generation.scores,
        teacher_forced_scores(model, prompt, lengths, generation.samples, num_samples=3),
    )
    assert len({tuple(row) for row in np.asarray(generation.samples)}) > 1


def eos_of_row_zero(model, key) -> tuple[int, np.ndarray]:
    """An eos token that row 0 emits at step 3 of the free run with ``key``."""
    free = np.asarray(sm.generate(model, key=key, **(EOS_RUN | dict(return_scores=False))).samples)
    return int(free[0, 3]), free


def test_eos_stops_each_row_and_pads():
    model = make_model(num_layers=1)
    key = jax.random.key(8)
    eos_id, free_samples = eos_of_row_zero(model, key)
    stopped = sm.generate(model, key=key, eos_id=eos_id, **EOS_RUN)
    samples = np.asarray(stopped.samples)
    for row in range(6):
        hits = np.flatnonzero(free_samples[row] == eos_id)
        length = hits[0] + 1 if hits.size else EOS_RUN["steps"]
        assert stopped.lengths[row] == length
        np.testing.assert_array_equal(samples[row, :length], free_samples[row, :length])
        np.testing.assert_array_equal(samples[row, length:], eos_id)  # padding
        np.testing.assert_array_equal(np.asarray(stopped.scores)[row, length:], 0.0)
    assert stopped.lengths[0] <= 4


def test_all_rows_stopped_ends_the_loop_with_padding():
    model = make_model(num_layers=1, seed=1)
    # A head that always says eos: every row stops at its first step.
    model.head.linear.bias[...] = model.head.linear.bias[...].at[7].set(100.0)
    generation = sm.generate(model, key=jax.random.key(0), eos_id=7, **EOS_RUN)
    np.testing.assert_array_equal(generation.lengths, [1] * 6)
    np.testing.assert_array_equal(generation.samples, 7)


def assert_stream_equals_generate(model, chunk_size, **arguments):
    whole = sm.generate(model, **arguments)
    chunks = list(sm.generate_stream(model, chunk_size=chunk_size, **arguments))
    steps = arguments["steps"]
    assert [chunk.samples.shape[1] for chunk in chunks] == (
        [chunk_size] * (steps // chunk_size) + ([steps % chunk_size] if steps % chunk_size else [])
    )
    np.testing.assert_allclose(
        np.concatenate([chunk.samples for chunk in chunks], axis=1), whole.samples, atol=1e-6
    )
    assert_trees_close(
        jax.tree.map(lambda *parts: np.concatenate(parts, axis=1), *[c.scores for c in chunks]),
        whole.scores,
    )
    np.testing.assert_array_equal(chunks[-1].lengths, whole.lengths)
    return chunks


def test_stream_chunks_concatenate_to_generate_with_eos():
    model = make_model(num_layers=1)
    key = jax.random.key(8)
    eos_id, _ = eos_of_row_zero(model, key)
    chunks = assert_stream_equals_generate(model, 16, key=key, eos_id=eos_id, **EOS_RUN)
    assert chunks[0].lengths[0] <= 4


def test_stream_chunks_concatenate_to_generate_for_real_values():
    model = make_model("mdn")
    assert_stream_equals_generate(
        model, 2, key=jax.random.key(0), steps=STEPS, prompt=make_prompt(model),
        prompt_lengths=PROMPT_LENGTHS, temperature=0.8, return_scores=True,
    )


@pytest.mark.parametrize(
    "head, kwargs, message",
    [
        ("categorical", dict(temperature=-0.5), r"temperature=-0.5 is invalid.*>= 0"),
        ("categorical", dict(temperature=float("inf")), r"temperature=inf is invalid"),
        ("categorical", dict(top_k=0), r"top_k=0 is invalid.*>= 1"),
        ("categorical", dict(top_k=12), r"top_k=12 is invalid.*vocabulary size 11"),
        ("categorical", dict(top_p=1.5), r"top_p=1.5 is invalid.*\(0, 1\]"),
        ("categorical", dict(eos_id=11), r"eos_id=11 is invalid.*\[0, 10\]"),
        ("categorical", dict(steps=0), r"steps=0 is invalid.*>= 1"),
        ("categorical", dict(num_samples=0), r"num_samples=0 is invalid"),
        ("categorical", dict(key=0), r"key=0 is invalid.*PRNG key"),
        ("categorical", dict(prompt=[[1, 11]]), r"prompt holds token ids in \[1, 11\].*\[0, 10\]"),
        ("categorical", dict(prompt=[[1.0, 2.0]]), r"prompt of dtype float64 is invalid"),
        ("categorical", dict(prompt=[1, 2]), r"prompt of shape \(2,\) is invalid.*\(b, p\)"),
        ("categorical", dict(prompt=[[1, 2]], prompt_lengths=[3]),
         r"prompt_lengths=\[3\] is invalid.*1\.\.2"),
        ("categorical", dict(prompt_lengths=[1]), r"prompt_lengths=\[1\] is invalid without"),
        ("categorical", dict(prompt=[[1, 2]], batch_size=2), r"batch_size=2 is invalid"),
        ("gaussian", dict(top_k=3), r"top_k=3 is invalid for a Gaussian head"),
        ("bernoulli", dict(eos_id=0), r"eos_id=0 is invalid for a Bernoulli head"),
        ("mdn", dict(prompt=np.zeros((1, 2, 4))), r"prompt of shape \(1, 2, 4\).*\(b, p, 3\)"),
    ],
)
def test_bad_arguments_name_argument_value_and_allowed(head, kwargs, message):
    arguments = dict(key=jax.random.key(0), steps=3) | kwargs
    with pytest.raises(ValueError, match=message):
        sm.generate(make_model(head), **arguments)
    if "steps" not in kwargs:
        with pytest.raises(ValueError, match=message):
            next(sm.generate_stream(make_model(head), chunk_size=2, **arguments))


@pytest.mark.slow
def test_noise_drawn_in_segments_gives_the_same_samples(monkeypatch):
    """A small noise budget cuts the loop into several scan segments plus a remainder."""
    generate_module = importlib.import_module("seqmodel.decoding.generate")
    model = make_model()
    arguments = dict(key=jax.random.key(12), prompt=make_prompt(model), top_p=0.9, **CONTROLLED)
    whole = sm.generate(model, **arguments)
    monkeypatch.setattr(generate_module, "NOISE_BUDGET", 50)  # 3 rows x 11 tokens per step
    jax.clear_caches()  # the budget is read when the program is traced
    try:
        traced = generate_module.TRACE_COUNTS["generate"]
        segmented = sm.generate(model, **arguments)
        assert generate_module.TRACE_COUNTS["generate"] == traced + 1
    finally:
        jax.clear_caches()  # later tests trace with the usual budget again
    np.testing.assert_array_equal(segmented.samples, whole.samples)
    assert_trees_close(segmented.scores, whole.scores)
