"""SequenceModel: the teacher-forced path equals a scan of the step path; config and input checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm

CELLS = ["lstm", "gru", "elman", "mingru", "minlstm", "rglru"]
HEADS = ["categorical", "gaussian", "mdn", "bernoulli", "student_t", "negbin"]


def make_config(head: str, **overrides) -> sm.ModelConfig:
    base = dict(cell="lstm", hidden_size=8, num_layers=1, embed_size=5, num_mixtures=2, head=head)
    if head == "categorical":
        base["vocab_size"] = 11
    else:
        base["input_size"] = 3
    base.update(overrides)
    return sm.ModelConfig(**base)


def make_inputs(config: sm.ModelConfig, batch: int, length: int, seed: int = 0):
    key = jax.random.key(seed)
    if config.discrete:
        return jax.random.randint(key, (batch, length), 0, config.vocab_size)
    if config.head == "bernoulli":
        return jax.random.bernoulli(key, 0.5, (batch, length, config.input_size)).astype(jnp.float32)
    return jax.random.normal(key, (batch, length, config.input_size))


def scan_of_step(model, inputs):
    """The free-running machinery fed the truth: ``lax.scan(model.step)``."""

    def body(carry, x_t):
        out, carry = model.step(x_t, carry)
        return carry, out

    carry, outputs = jax.lax.scan(body, model.init_carry(inputs.shape[0]), jnp.swapaxes(inputs, 0, 1))
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), outputs), carry


@nnx.jit
def both_paths(model, inputs):
    return model(inputs), scan_of_step(model, inputs)


def assert_trees_close(actual, expected, atol):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == e.shape
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), atol=atol)


# Two heads for every cell and two cells for every head at 2 layers (the layer stack's carry
# hand-over included; the head reads the top layer's state whatever the cell, so pairs cover
# what the full product did at 42 compilations), and each pair of the quick subset once at 1
# layer: one layer runs the same code as the first of two, and the suite's time is mostly
# compiling. The quick subset (-m "not slow") keeps each cell and each head once, at 2 layers.
QUICK_PAIRS = {("lstm", "categorical"), ("gru", "gaussian"), ("elman", "mdn"),
               ("mingru", "bernoulli"), ("minlstm", "student_t"), ("rglru", "negbin")}
SECOND_PAIRS = {(cell, HEADS[(index + 1) % len(HEADS)]) for index, cell in enumerate(CELLS)}
CELL_HEAD_PAIRS = [pytest.param(cell, head, marks=() if (cell, head) in QUICK_PAIRS
                                else pytest.mark.slow)
                   for cell, head in sorted(QUICK_PAIRS | SECOND_PAIRS)]
TEACHER_FORCED_CASES = ([pytest.param(*pair.values, 2, marks=pair.marks)
                         for pair in CELL_HEAD_PAIRS]
                        + [pytest.param(cell, head, 1, marks=pytest.mark.slow)
                           for cell, head in sorted(QUICK_PAIRS)])


@pytest.mark.parametrize("cell, head, num_layers", TEACHER_FORCED_CASES)
def test_teacher_forced_equals_scan_of_step(cell, head, num_layers):
    config = make_config(head, cell=cell, num_layers=num_layers)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    for length in (1, 7):
        inputs = make_inputs(config, 3, length)
        (outputs, carry), (step_outputs, step_carry) = both_paths(model, inputs)
        leading = jax.tree.leaves(outputs)[0].shape[:2]
        assert leading == (3, length)
        assert_trees_close(outputs, step_outputs, atol=1e-5)
        assert_trees_close(carry, step_carry, atol=1e-5)


@pytest.mark.parametrize("cell, head", [("gru", "student_t"), ("rglru", "gaussian")])
def test_input_skip_is_a_linear_path_from_the_input_in_both_modes(cell, head):
    config = make_config(head, cell=cell, num_layers=2, input_skip=True)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    inputs = make_inputs(config, 3, 7)
    plain = sm.SequenceModel(dataclasses.replace(config, input_skip=False), rngs=nnx.Rngs(0))
    # W starts at zero: the same numbers as the network without the path.
    assert_trees_close(model(inputs)[0], plain(inputs)[0], atol=1e-6)
    model.input_skip.kernel[...] = jax.random.normal(jax.random.key(1),
                                                     model.input_skip.kernel[...].shape)
    (outputs, carry), (step_outputs, step_carry) = both_paths(model, inputs)
    assert_trees_close(outputs, step_outputs, atol=1e-5)
    assert_trees_close(carry, step_carry, atol=1e-5)
    # The head's location moves linearly with an input the recurrence never saw.
    hidden, _ = model.hidden_states(inputs)
    expected = model.head(jnp.swapaxes(hidden, 0, 1) + inputs @ model.input_skip.kernel[...])
    assert_trees_close(outputs, expected, atol=1e-5)


@pytest.mark.parametrize("head, scaling", [("student_t", "std"), ("gaussian", "mean"),
                                           ("mdn", "none")])
def test_anchor_moves_the_location_by_the_anchor_value_in_both_modes(head, scaling):
    # Inputs laid out as seqmodel.data.features does: element, log s, m (std), then 2 lags.
    size = {"std": 5, "mean": 4, "none": 3}[scaling]
    anchor_index = size - 1  # the last lag
    config = sm.ModelConfig(input_size=size, target_size=1, head=head, hidden_size=8,
                            num_mixtures=2, input_scaling=scaling != "none",
                            input_location=scaling == "std", anchor_index=anchor_index)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    plain = sm.SequenceModel(dataclasses.replace(config, anchor_index=None), rngs=nnx.Rngs(0))
    inputs = jax.random.normal(jax.random.key(2), (3, 6, size))
    (outputs, carry), (step_outputs, step_carry) = both_paths(model, inputs)
    assert_trees_close(outputs, step_outputs, atol=1e-5)
    assert_trees_close(carry, step_carry, atol=1e-5)
    # The same network as without the anchor, its location moved by the anchor's value in data
    # units: loc + scale * anchor (the lag was fed as (y - loc) / scale, so by y itself).
    scale = jnp.exp(inputs[..., 1:2]) if scaling != "none" else 1.0
    value = scale * inputs[..., anchor_index : anchor_index + 1]
    expected = plain(inputs)[0]
    if head == "mdn":
        assert_trees_close(outputs.mean, expected.mean + value[..., None, :], atol=1e-5)
        assert_trees_close(outputs.logits, expected.logits, atol=1e-6)
    else:
        location = "loc" if head == "student_t" else "mean"
        assert_trees_close(getattr(outputs, location), getattr(expected, location) + value,
                           atol=1e-5)
        assert_trees_close(outputs.log_scale, expected.log_scale, atol=1e-6)


@pytest.mark.parametrize("scaling", ["std", "mean"])
def test_several_anchors_move_the_location_by_their_mean_in_both_modes(scaling):
    # element, log s, (m), then 3 lags: the location is relative to the mean of the last two.
    size = {"std": 6, "mean": 5}[scaling]
    indices = (size - 2, size - 1)
    config = sm.ModelConfig(input_size=size, target_size=1, head="student_t", hidden_size=8,
                            input_scaling=True, input_location=scaling == "std",
                            anchor_index=indices[0], anchor_indices=indices)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    plain = sm.SequenceModel(dataclasses.replace(config, anchor_index=None, anchor_indices=()),
                             rngs=nnx.Rngs(0))
    inputs = jax.random.normal(jax.random.key(3), (2, 5, size))
    (outputs, carry), (step_outputs, step_carry) = both_paths(model, inputs)
    assert_trees_close(outputs, step_outputs, atol=1e-5)
    assert_trees_close(carry, step_carry, atol=1e-5)
    value = jnp.exp(inputs[..., 1:2]) * inputs[..., size - 2:].mean(axis=-1, keepdims=True)
    assert_trees_close(outputs.loc, plain(inputs)[0].loc + value, atol=1e-5)
    assert_trees_close(outputs.log_scale, plain(inputs)[0].log_scale, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (dict(anchor_indices=(2,)), r"anchor_indices=\(2,\) is invalid: give a tuple of 2 or more"),
    (dict(anchor_indices=(1, 2)), r"anchor_indices=\(1, 2\) is invalid"),  # not anchor first
    (dict(anchor_indices=(2, 3)), r"anchor_indices=\(2, 3\) is invalid"),  # past the input
    (dict(anchor_indices=[2, 1]), r"anchor_indices=\[2, 1\] is invalid"),  # not a tuple
    (dict(head="negbin"), "anchor_index=2 is invalid: needs real-valued inputs with a continuous"),
    (dict(anchor_index=3), "anchor_index=3 is invalid"),
    (dict(anchor_index=-1), "anchor_index=-1 is invalid"),
])
def test_anchor_needs_a_continuous_head_and_an_index_inside_the_input(overrides, message):
    fields = {**dict(input_size=3, target_size=1, head="gaussian", anchor_index=2), **overrides}
    with pytest.raises(ValueError, match=message):
        sm.ModelConfig(**fields)
    with pytest.raises(ValueError, match="anchor_index=0 is invalid"):
        sm.ModelConfig(vocab_size=5, anchor_index=0)


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_bfloat16_paths_agree(cell):
    config = make_config("categorical", cell=cell, num_layers=2, dtype="bfloat16")
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    inputs = make_inputs(config, 2, 5)
    (outputs, _), (step_outputs, _) = both_paths(model, inputs)
    assert model.cells[0].project(jnp.ones((1, 5))).dtype == jnp.bfloat16
    assert_trees_close(outputs, step_outputs, atol=2e-2)


def test_fold_embedding_is_exact():
    config = make_config("categorical", num_layers=2)
    folded = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    plain = sm.SequenceModel(dataclasses.replace(config, fold_embedding=False), rngs=nnx.Rngs(0))
    inputs = make_inputs(config, 2, 6)
    np.testing.assert_allclose(folded(inputs)[0], plain(inputs)[0], atol=1e-5)


@pytest.mark.slow
def test_carry_continues_a_sequence():
    config = make_config("gaussian", cell="gru", num_layers=2)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    inputs = make_inputs(config, 2, 8)
    whole, whole_carry = model(inputs)
    first, carry = model(inputs[:, :3])
    second, second_carry = model(inputs[:, 3:], carry)
    np.testing.assert_allclose(jnp.concatenate([first.mean, second.mean], 1), whole.mean, atol=1e-5)
    assert_trees_close(second_carry, whole_carry, atol=1e-5)


@pytest.mark.slow
def test_dropout_only_in_train_mode():
    config = make_config("categorical", num_layers=2, dropout=0.5)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    inputs = make_inputs(config, 2, 6)
    model.eval()
    first, second = model(inputs)[0], model(inputs)[0]
    np.testing.assert_array_equal(first, second)
    undropped = sm.SequenceModel(dataclasses.replace(config, dropout=0.0), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(first, undropped(inputs)[0], atol=1e-6)
    model.train()
    assert not np.allclose(model(inputs)[0], first)
    # the step path uses dropout too in train mode, keyed explicitly inside a scan
    out_a, _ = model.step(inputs[:, 0], model.init_carry(2), key=jax.random.key(1))
    out_b, _ = model.step(inputs[:, 0], model.init_carry(2), key=jax.random.key(1))
    out_c, _ = model.step(inputs[:, 0], model.init_carry(2), key=jax.random.key(2))
    np.testing.assert_array_equal(out_a, out_b)
    assert not np.allclose(out_a, out_c)


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_are_finite_and_nonzero(cell):
    config = make_config("mdn", cell=cell, num_layers=2)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    inputs = make_inputs(config, 2, 6)

    def loss(model):
        params, _ = model(inputs[:, :-1])
        return -model.head.log_prob(params, inputs[:, 1:]).mean()

    grads = nnx.grad(loss)(model)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in leaves)


def test_same_shape_does_not_recompile():
    traces = []

    @nnx.jit
    def forward(model, inputs):
        traces.append(inputs.shape)
        return model(inputs)[0]

    config = make_config("categorical")
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    forward(model, make_inputs(config, 2, 5, seed=0))
    forward(model, make_inputs(config, 2, 5, seed=1))
    assert len(traces) == 1
    forward(model, make_inputs(config, 2, 6))
    assert len(traces) == 2


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(vocab_size=None), "exactly one"),
        (dict(input_size=3), "exactly one"),
        (dict(cell="transformer"), "cell='transformer'"),
        (dict(head="poisson"), "head='poisson'"),
        (dict(head="gaussian"), "head='gaussian'"),
        (dict(hidden_size=0), "hidden_size=0"),
        (dict(num_layers=-1), "num_layers=-1"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(dtype="float64x"), "dtype='float64x'"),
        (dict(vocab_size=0), "vocab_size=0"),
        (dict(input_skip=True), "input_skip=True"),
    ],
)
def test_bad_config_names_field_and_value(overrides, field):
    base = dict(vocab_size=5)
    base.update(overrides)
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        sm.ModelConfig(**base)


def test_real_valued_config_rejects_categorical_head():
    with pytest.raises(ValueError, match="head='categorical'"):
        sm.ModelConfig(input_size=2, head="categorical")


def test_bad_inputs_raise_clear_errors():
    tokens = sm.SequenceModel(make_config("categorical"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"shape \(b, t\)"):
        tokens(jnp.zeros((2, 3, 1), jnp.int32))
    with pytest.raises(ValueError, match="integer token ids"):
        tokens(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 10\]"):
        tokens(jnp.array([[1, 11]]))
    values = sm.SequenceModel(make_config("gaussian"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(b, t, 3\)"):
        values(jnp.zeros((2, 3, 4)))


def test_config_round_trips_through_a_dict():
    config = make_config("mdn", cell="gru", num_layers=2)
    assert sm.ModelConfig.from_dict(config.to_dict()) == config


def test_concrete_inputs_closed_over_under_jit_are_checked_without_error():
    model = sm.SequenceModel(make_config("categorical"), rngs=nnx.Rngs(0))
    tokens = jnp.array([[1, 2, 3]])

    @nnx.jit
    def forward(model):
        return model(tokens)[0]

    np.testing.assert_allclose(forward(model), model(tokens)[0], atol=1e-6)


def test_conditioned_inputs_predict_only_the_element():
    config = sm.ModelConfig(input_size=5, target_size=2, head="gaussian", hidden_size=8)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    inputs = jax.random.normal(jax.random.key(0), (3, 4, 5))
    (outputs, carry), (step_outputs, step_carry) = both_paths(model, inputs)
    assert outputs.mean.shape == (3, 4, 2)
    assert_trees_close(outputs, step_outputs, atol=1e-5)
    with pytest.raises(ValueError, match="conditioning features"):
        sm.generate(model, key=jax.random.key(0), steps=2)
    with pytest.raises(ValueError, match="target_size"):
        sm.ModelConfig(input_size=2, target_size=3, head="gaussian")
