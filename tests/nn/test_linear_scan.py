"""The scans of h_t = a_t h_{t-1} + b_t against a float64 NumPy loop, and against each other.

Measured (fp32, CPU), normwise relative error max|h - ref| / max|ref|: sequential, associative
and chunked 4e-8 to 1e-7 at every length from 1 to 65,536; log_space 1e-7 at t = 1, 2e-6 at 64,
1e-4 at 2048, 2e-3 at 65,536 (its error grows with the length; on the minGRU-like coefficients
of the module docstring of seqmodel.nn.scans 5e-4 at 2048 and 2e-2 at 65,536). Gradients at
t = 50: associative and chunked within 1.4e-7 of sequential; log_space 4e-4 (d/da).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqmodel.nn import scans as linear_scan

LINEAR_TOLERANCE = 1e-6
LOG_TOLERANCE = {1: 1e-6, 7: 2e-6, 64: 2e-5, 2048: 1e-3}
CHUNK = 16  # 7: one padded chunk; 2048: 128 chunks; chunk_size=48 below pads 2048 as well


def coefficients(length, width, *, seed=0, batch=2):
    """minGRU-like a in (0, 1), b of both signs, positive b for the log form, nonzero h_0."""
    keys = jax.random.split(jax.random.key(seed), 4)
    gate = 2.0 * jax.random.normal(keys[0], (length, batch, width))
    a = jax.nn.sigmoid(-gate)
    b = jax.nn.sigmoid(gate) * jax.random.normal(keys[1], (length, batch, width))
    positive = jax.nn.sigmoid(gate) * jnp.exp(jax.random.normal(keys[2], (length, batch, width)))
    initial = jax.random.normal(keys[3], (batch, width))
    return a, b, positive, initial


def reference(a, b, initial):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    h = np.asarray(initial, np.float64)
    states = []
    for a_t, b_t in zip(a, b):
        h = a_t * h + b_t
        states.append(h)
    return np.stack(states)


def relative_error(value, expected):
    value, expected = np.asarray(value, np.float64), np.asarray(expected, np.float64)
    return np.max(np.abs(value - expected)) / np.max(np.abs(expected))


@jax.jit
def all_scans(a, b, positive, initial):
    return {
        "sequential": linear_scan.sequential(a, b, initial),
        "associative": linear_scan.associative(a, b, initial),
        "chunked": linear_scan.chunked(a, b, initial, chunk_size=CHUNK),
        "chunked_48": linear_scan.chunked(a, b, initial, chunk_size=48),
        "log_space": linear_scan.log_space(jnp.log(a), jnp.log(positive), initial),
    }


@pytest.mark.parametrize("length", [pytest.param(1, marks=pytest.mark.slow), 7,
                                    pytest.param(64, marks=pytest.mark.slow), 2048])
def test_scans_match_float64_loop(length):
    width = 4 if length == 2048 else 8
    a, b, positive, initial = coefficients(length, width)
    results = all_scans(a, b, positive, initial)
    expected = reference(a, b, initial)
    for name in ("sequential", "associative", "chunked", "chunked_48"):
        final, states = results[name]
        assert states.shape == (length, 2, width)
        assert relative_error(states, expected) < LINEAR_TOLERANCE, name
        np.testing.assert_array_equal(final, states[-1])
    final, states = results["log_space"]
    error = relative_error(states, reference(a, positive, initial))
    assert error < LOG_TOLERANCE[length]
    np.testing.assert_array_equal(final, states[-1])


@pytest.mark.slow
def test_gradients_agree():
    a, b, positive, initial = coefficients(50, 4, seed=1)
    weights = jax.random.normal(jax.random.key(9), (50, 2, 4))

    def loss(scan):
        def of(a, b, initial):
            final, states = scan(a, b, initial)
            return jnp.sum(states * weights) + jnp.sum(final)
        return jax.grad(of, argnums=(0, 1, 2))

    @jax.jit
    def gradients(a, b, positive, initial):
        log_grads = loss(lambda la, lb, h: linear_scan.log_space(la, lb, h))(
            jnp.log(a), jnp.log(positive), initial)
        # d/da through log a is (d/dlog a) / a: compare in the linear parametrisation.
        log_grads = (log_grads[0] / a, log_grads[1] / positive, log_grads[2])
        return {
            "sequential": loss(linear_scan.sequential)(a, b, initial),
            "associative": loss(linear_scan.associative)(a, b, initial),
            "chunked": loss(lambda *args: linear_scan.chunked(*args, chunk_size=8))(a, b, initial),
            "log_space": log_grads,
            "sequential_positive": loss(linear_scan.sequential)(a, positive, initial),
        }

    results = gradients(a, b, positive, initial)
    for name in ("associative", "chunked"):
        for got, want in zip(results[name], results["sequential"]):
            assert relative_error(got, want) < 1e-6, name
    for got, want in zip(results["log_space"], results["sequential_positive"]):
        assert relative_error(got, want) < 2e-3  # measured 4e-4 (d/da), see the header


@pytest.mark.slow
def test_long_sequence_stays_finite():
    a, b, positive, initial = coefficients(65_536, 2, batch=1, seed=2)
    results = all_scans(a, b, positive, initial)
    for name, (final, states) in results.items():
        assert np.isfinite(np.asarray(states)).all(), name
    # log space is finite but loses digits with the length; the others do not.
    sequential = results["sequential"][1]
    assert relative_error(results["associative"][1], sequential) < LINEAR_TOLERANCE
    assert relative_error(results["chunked"][1], sequential) < LINEAR_TOLERANCE


@pytest.mark.slow
def test_dispatch_and_auto():
    a, b, _, initial = coefficients(9, 3)
    expected = linear_scan.sequential(a, b, initial)[1]
    for method in ("auto", "sequential", "associative", "chunked"):
        states = linear_scan.scan(method, a, b, initial, chunk_size=4)[1]
        assert relative_error(states, expected) < LINEAR_TOLERANCE
    assert linear_scan.resolve("auto", backend="cpu") == linear_scan.AUTO_SCAN["cpu"]
    assert set(linear_scan.AUTO_SCAN.values()) <= set(linear_scan.SCANS)


def test_serial_depth():
    assert linear_scan.serial_depth("sequential", 2048) == 2048
    assert linear_scan.serial_depth("associative", 2048) == 22
    assert linear_scan.serial_depth("chunked", 2048, chunk_size=64) == 32 + 12 + 1
    assert linear_scan.serial_depth("chunked", 100, chunk_size=64) == 2 + 12 + 1
    assert linear_scan.serial_depth("log_space", 1024) == 40
    assert linear_scan.serial_depth("associative", 1) == 1
    for method in linear_scan.METHODS:
        assert linear_scan.serial_depth(method, 8192) <= linear_scan.serial_depth(method, 8193)


def test_errors_name_the_argument():
    a = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="scan='parallel'"):
        linear_scan.resolve("parallel")
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        linear_scan.chunked(a, a, jnp.zeros(2), chunk_size=0)
    with pytest.raises(ValueError, match="initial"):
        linear_scan.sequential(a, a, jnp.zeros(3))
    with pytest.raises(ValueError, match="log_space"):
        linear_scan.scan("log_space", a, a, jnp.zeros(2))
    with pytest.raises(ValueError, match="length"):
        linear_scan.serial_depth("sequential", 0)
