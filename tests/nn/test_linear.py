"""minGRU, minLSTM, RG-LRU and the residual block: the step loop equals every scan.

Tolerances are normwise, max|x - ref| / max|ref|, per output and per carry leaf; ref is the
``recur`` loop (``lax.scan(module.recur)``). Measured in fp32 on CPU: sequential, associative and
chunked scans 0 to 6e-7 at t in {1, 7, 64, 2048} (tolerance 2e-6); log space up to 1e-4 at 2048
(its error grows with the length: tolerance 1e-3 there, 3e-5 at 64); gradients at t = 9 up to
7e-7, log space included. bf16 against the fp32 loop at t = 64: 3e-3 (minGRU), 1.1e-2 (RG-LRU
block), tolerance 3e-2. The whole file is about 40 XLA compiles (~75 s of CPU on a loaded 2-core
machine).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqmodel.nn import linear
from seqmodel.nn.blocks import ResidualBlock, causal_conv
from seqmodel.nn.linear import RGLRU, MinGRUCell, MinLSTMCell

TOLERANCE = 2e-6
LOG_TOLERANCE = {1: 2e-6, 7: 2e-6, 9: 2e-5, 23: 1e-5, 64: 3e-5, 2048: 1e-3}
BF16_TOLERANCE = 3e-2
CHUNK = 5  # pads 7, 64 and 2048 and gives them 2, 13 and 410 chunks

# name -> (factory(input_size, hidden_size, **options), input_size offset, log space allowed).
# The cells take input_size = hidden_size - 1 (RGLRU then projects its value; the blocks cover its
# identity value path); "block-minlstm" projects its input and convolves before the cell.
MODULES = {
    "mingru": (MinGRUCell, -1, True),
    "minlstm": (MinLSTMCell, -1, True),
    "rglru": (RGLRU, -1, False),
    "block-rglru": (ResidualBlock, 0, False),
    "block-mingru": (functools.partial(ResidualBlock, cell="mingru", expansion=2), 0, True),
    "block-minlstm": (functools.partial(ResidualBlock, cell="minlstm", conv_width=3), -1, True),
}


def methods(name):
    """Every scan for a cell. A block runs its cell's scan, so it tests one parallel scan
    (chunked, which nests the associative one) and the log space where its cell has one: each
    scan costs a compile of a second or two, and the cells already test them all."""
    scans = ("chunked",) if name.startswith("block") else ("sequential", "associative", "chunked")
    return scans + (("log_space",) if MODULES[name][2] else ())


def build(name, width, method, *, dtype=jnp.float32):
    factory, offset, _ = MODULES[name]
    return factory(width + offset, width, rngs=nnx.Rngs(0), scan=method, chunk_size=CHUNK,
                   dtype=dtype)


def random_carry(module, batch, seed=3):
    carry = module.init_carry(batch)
    leaves, tree = jax.tree.flatten(carry)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(key, leaf.shape, leaf.dtype)
                                     for key, leaf in zip(keys, leaves)])


def inputs(module, length, batch, seed=1):
    return jax.random.normal(jax.random.key(seed), (length, batch, module.input_size))


def relative_error(value, expected):
    value, expected = np.asarray(value, np.float64), np.asarray(expected, np.float64)
    return np.max(np.abs(value - expected)) / max(np.max(np.abs(expected)), 1e-30)


def assert_close(got, want, tolerance, label):
    for leaf_got, leaf_want in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert leaf_got.shape == leaf_want.shape, label
        error = relative_error(leaf_got, leaf_want)
        assert error < tolerance, f"{label}: relative error {error:.2e} >= {tolerance:.0e}"


@nnx.jit
def loop_and_scans(modules, carry, x):
    """The recur loop of the first module and the scan of every module, on the same inputs."""
    first = modules[0]
    xp = first.project(x)
    loop = jax.lax.scan(first.recur, carry, xp)
    return loop, [module.scan(carry, xp) for module in modules]


CELL_NAMES = [name for name in MODULES if not name.startswith("block")]
BLOCK_NAMES = [name for name in MODULES if name.startswith("block")]
# Every cell at every length; the blocks (whose scan is their cell's) at 1 and 2048 only, to save
# compiles (t = 23 in the two-window test covers a short sequence longer than the convolution).
# The quick subset (-m "not slow") keeps every cell at 64 steps and every block at 2048.
LENGTH_CASES = ([pytest.param(name, length, marks=() if length == 64 else pytest.mark.slow)
                 for name in CELL_NAMES for length in (1, 7, 64, 2048)]
                + [pytest.param(name, length, marks=() if length == 2048 else pytest.mark.slow)
                   for name in BLOCK_NAMES for length in (1, 2048)])


@pytest.mark.parametrize("name, length", LENGTH_CASES)
def test_step_loop_equals_every_scan(name, length):
    width, batch = (4, 1) if length == 2048 else (8, 3)
    modules = [build(name, width, method) for method in methods(name)]
    carry = random_carry(modules[0], batch)
    (loop_carry, loop_ys), scans = loop_and_scans(modules, carry, inputs(modules[0], length, batch))
    assert loop_ys.shape == (length, batch, width)
    for method, (scan_carry, ys) in zip(methods(name), scans):
        tolerance = LOG_TOLERANCE[length] if method == "log_space" else TOLERANCE
        assert_close(ys, loop_ys, tolerance, f"{name} {method} outputs")
        assert_close(scan_carry, loop_carry, tolerance, f"{name} {method} carry")


@pytest.mark.slow
@pytest.mark.parametrize("name", CELL_NAMES + ["block-rglru", "block-mingru"])
def test_gradients_agree(name):
    length, batch, width = 9, 2, 8
    modules = [build(name, width, method) for method in methods(name)]
    carry = random_carry(modules[0], batch)
    x = inputs(modules[0], length, batch)
    weights = jax.random.normal(jax.random.key(7), (length, batch, width))

    def loss(module, carry, scanned):
        xp = module.project(x)
        final, ys = (jax.lax.scan(module.recur, carry, xp) if not scanned
                     else module.scan(carry, xp))
        return jnp.sum(ys * weights) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(final))

    @nnx.jit
    def gradients(modules, carry):
        of = nnx.grad(loss, argnums=(0, 1))
        return of(modules[0], carry, False), [of(module, carry, True) for module in modules]

    reference, results = gradients(modules, carry)
    for method, result in zip(methods(name), results):
        tolerance = LOG_TOLERANCE[length] if method == "log_space" else TOLERANCE
        assert_close(nnx.state(result[0]), nnx.state(reference[0]), tolerance,
                     f"{name} {method} parameter gradients")
        assert_close(result[1], reference[1], tolerance, f"{name} {method} carry gradients")


@pytest.mark.parametrize("name", ["mingru", "block-rglru", "block-minlstm"])
def test_carry_across_two_windows_equals_one_window(name):
    module = build(name, 8, "chunked")
    carry = random_carry(module, 2)
    x = inputs(module, 23, 2)

    @nnx.jit
    def windows(module, carry):
        xp = module.project(x)
        whole = module.scan(carry, xp)
        middle, first = module.scan(carry, xp[:10])
        end, second = module.scan(middle, xp[10:])
        return whole, (end, jnp.concatenate([first, second]))

    (whole_carry, whole_ys), (end, ys) = windows(module, carry)
    assert_close(ys, whole_ys, TOLERANCE, f"{name} outputs")
    assert_close(end, whole_carry, TOLERANCE, f"{name} carry")


@pytest.mark.parametrize("cell", [MinGRUCell, MinLSTMCell])
def test_log_space_stays_finite_at_65536(cell):
    modules = [cell(2, 2, rngs=nnx.Rngs(0), scan=method) for method in ("log_space", "sequential")]
    x = jax.random.normal(jax.random.key(5), (65_536, 1, 2))
    _, [(log_carry, log_ys), (carry, ys)] = loop_and_scans(modules, modules[0].init_carry(1), x)
    assert np.isfinite(np.asarray(log_ys)).all() and np.isfinite(np.asarray(log_carry)).all()
    # Finite, but a few digits lost over this length (measured 1e-3; see linear_scan).
    assert relative_error(log_ys, ys) < 2e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mingru", "block-rglru"])
def test_bfloat16_within_tolerance(name):
    width, batch, length = 8, 2, 64
    names = methods(name)
    modules = [build(name, width, method, dtype=jnp.bfloat16) for method in names]
    reference_module = build(name, width, "sequential")
    carry = random_carry(modules[0], batch)
    x = inputs(reference_module, length, batch)
    (_, reference), _ = loop_and_scans(
        [reference_module], jax.tree.map(lambda leaf: leaf.astype(jnp.float32), carry), x)
    (loop_carry, loop_ys), scans = loop_and_scans(modules, carry, x)
    assert loop_ys.dtype == jnp.bfloat16
    # The recurrent state stays float32 in a bfloat16 model (the first leaf: "state" < "window").
    assert jax.tree.leaves(loop_carry)[0].dtype == jnp.float32
    assert_close(loop_ys, reference, BF16_TOLERANCE, f"{name} bf16 step loop")
    for method, (_, ys) in zip(names, scans):
        assert_close(ys, reference, BF16_TOLERANCE, f"{name} bf16 {method}")


# -- the equations, checked directly ----------------------------------------------------------


def numpy_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_g(x):
    return np.where(x >= 0, x + 0.5, numpy_sigmoid(x))


def test_min_cell_coefficients_follow_the_paper():
    xp = np.asarray(jax.random.normal(jax.random.key(2), (5, 24)) * 3, np.float64)
    cell = MinGRUCell(4, 12, rngs=nnx.Rngs(0))
    z, candidate = xp[:, :12], xp[:, 12:]
    a, b = jax.jit(cell.coefficients)(jnp.asarray(xp, jnp.float32))
    np.testing.assert_allclose(a, 1 - numpy_sigmoid(z), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b, numpy_sigmoid(z) * numpy_g(candidate), rtol=1e-5, atol=1e-7)

    cell = MinLSTMCell(4, 8, rngs=nnx.Rngs(0))
    f, i, candidate = numpy_sigmoid(xp[:, :8]), numpy_sigmoid(xp[:, 8:16]), xp[:, 16:]
    a, b = jax.jit(cell.coefficients)(jnp.asarray(xp, jnp.float32))
    np.testing.assert_allclose(a, f / (f + i), rtol=1e-5)
    np.testing.assert_allclose(b, i / (f + i) * numpy_g(candidate), rtol=1e-5)
    for module in (cell, MinGRUCell(4, 8, rngs=nnx.Rngs(0))):
        columns = module.parts * 8
        log_a, log_b = jax.jit(module.log_coefficients)(jnp.asarray(xp[:, :columns], jnp.float32))
        a, b = jax.jit(module.coefficients)(jnp.asarray(xp[:, :columns], jnp.float32))
        np.testing.assert_allclose(np.exp(log_a), a, rtol=1e-5)
        np.testing.assert_allclose(np.exp(log_b), b, rtol=1e-5)


def test_g_is_positive_and_log_g_is_its_log():
    x = jnp.linspace(-30.0, 30.0, 601)
    assert (np.asarray(linear.g(x)) > 0).all()
    np.testing.assert_allclose(linear.log_g(x), np.log(numpy_g(np.asarray(x, np.float64))),
                               rtol=1e-5, atol=1e-6)


def test_rglru_initial_decay_range():
    parameter = linear.rglru_lambda_init()(jax.random.key(0), (20_000,))
    power = numpy_sigmoid(np.asarray(parameter, np.float64)) ** 8
    assert power.min() >= 0.9 - 1e-6 and power.max() <= 0.999 + 1e-6
    assert power.min() < 0.901 and power.max() > 0.998  # the whole ring is covered
    # (a^c)^2 uniform on [0.9^2, 0.999^2]: its mean is the midpoint.
    assert abs(np.mean(power**2) - (0.9**2 + 0.999**2) / 2) < 3e-3
    cell = RGLRU(4, 16, rngs=nnx.Rngs(0))
    parameter = np.asarray(cell.recurrence_parameter[...], np.float64)
    assert ((numpy_sigmoid(parameter) ** 8 >= 0.9 - 1e-6)
            & (numpy_sigmoid(parameter) ** 8 <= 0.999 + 1e-6)).all()


def test_rglru_coefficients_and_input_normalisation():
    cell = RGLRU(6, 6, rngs=nnx.Rngs(0))
    xp = np.asarray(jax.random.normal(jax.random.key(4), (5, 18)) * 2, np.float64)
    value, recurrence_gate, input_gate = xp[:, :6], xp[:, 6:12], xp[:, 12:]
    base = numpy_sigmoid(np.asarray(cell.recurrence_parameter[...], np.float64))
    expected_a = base ** (8 * numpy_sigmoid(recurrence_gate))
    expected_b = np.sqrt(1 - expected_a**2) * numpy_sigmoid(input_gate) * value
    a, b = jax.jit(cell.coefficients)(jnp.asarray(xp, jnp.float32))
    np.testing.assert_allclose(a, expected_a, rtol=1e-5)
    np.testing.assert_allclose(b, expected_b, rtol=2e-5, atol=1e-7)
    # Identity value path: project puts x itself first.
    x = jax.random.normal(jax.random.key(6), (3, 6))
    np.testing.assert_array_equal(cell.project(x)[:, :6], x)
    assert RGLRU(5, 6, rngs=nnx.Rngs(0)).project(x[:, :5]).shape == (3, 18)


def test_sqrt_derivative_is_bounded():
    gradient = jax.grad(lambda x: linear.sqrt_bounded_derivative(x))
    assert float(gradient(0.0)) == pytest.approx(1000.0)
    assert float(gradient(0.25)) == pytest.approx(1.0)
    assert float(linear.sqrt_bounded_derivative(0.25)) == pytest.approx(0.5)


def test_causal_conv_matches_numpy_and_carries_its_window():
    width, length, batch, features = 4, 9, 2, 3
    keys = jax.random.split(jax.random.key(8), 4)
    window = jax.random.normal(keys[0], (width - 1, batch, features))
    x = jax.random.normal(keys[1], (length, batch, features))
    kernel = jax.random.normal(keys[2], (width, features))
    bias = jax.random.normal(keys[3], (features,))
    y, new_window = causal_conv(window, x, kernel, bias)
    full = np.concatenate([np.asarray(window), np.asarray(x)])
    for row in range(batch):
        for feature in range(features):
            # np.convolve flips its kernel; kernel[-1] weighs the current input.
            expected = np.convolve(full[:, row, feature], np.asarray(kernel)[::-1, feature],
                                   mode="valid") + float(bias[feature])
            np.testing.assert_allclose(y[:, row, feature], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new_window, x[-(width - 1):])


def test_block_shapes_and_carry():
    block = ResidualBlock(5, 8, rngs=nnx.Rngs(0), cell="rglru", expansion=2)
    carry = block.init_carry(3)
    assert carry["state"].shape == (3, 16) and carry["window"].shape == (3, 3, 16)
    assert set(ResidualBlock(8, 8, rngs=nnx.Rngs(0), cell="mingru").init_carry(2)) == {"state"}
    x = jax.random.normal(jax.random.key(0), (4, 3, 5))
    # project is per element: a sequence projects like its steps.
    np.testing.assert_allclose(block.project(x)[2], block.project(x[2]), rtol=1e-6)
    carry, ys = jax.eval_shape(lambda carry, x: block.scan(carry, block.project(x)), carry, x)
    assert ys.shape == (4, 3, 8) and carry["window"].shape == (3, 3, 16)


def test_errors_name_the_argument():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match="RGLRU got scan='log_space'"):
        RGLRU(4, 4, rngs=rngs, scan="log_space")
    with pytest.raises(ValueError, match="scan='fast'"):
        MinGRUCell(4, 4, rngs=rngs, scan="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        MinGRUCell(4, 4, rngs=rngs, chunk_size=0)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, got 0"):
        MinLSTMCell(4, 0, rngs=rngs)
    with pytest.raises(ValueError, match="cell='lstm' is not a linear recurrence"):
        ResidualBlock(4, 4, rngs=rngs, cell="lstm")
    with pytest.raises(ValueError, match="mlp_expansion"):
        ResidualBlock(4, 4, rngs=rngs, mlp_expansion=0)
    for conv_width in (-1, 1):
        with pytest.raises(ValueError, match=f"conv_width must be 0 .* got {conv_width}"):
            ResidualBlock(4, 4, rngs=rngs, conv_width=conv_width)
