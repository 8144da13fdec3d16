"""Time split over devices (seqmodel.nn.sequence_parallel): the recurrence and the convolution on
meshes of 2 and 4 virtual CPU devices equal one device, forward and backward.

In this process (one CPU device): the custom-VJP recurrence against the scans and against
differentiating them, and the errors. Device counts are fixed when JAX starts, so the mesh checks
run in one subprocess with ``--xla_force_host_platform_device_count=4``.

Tolerances, normwise relative (max |x - ref| / max |ref|), fp32 on CPU: 1e-6 for the recurrence
in this process (measured up to 2e-7); 1e-5 on the meshes for the recurrence's states and
gradients (measured up to 4e-6 on 2 x 2 devices with a cubed final state in the loss: the state
entering a chunk is composed in another order), the convolution (3e-7) and a whole block under
every remat, outputs, carry and gradients (up to 2e-6).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqmodel.errors import UserError
from seqmodel.nn import scans, sequence_parallel

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT = 300


def coefficients(length, batch=3, width=4, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    a = jax.nn.sigmoid(2.0 * jax.random.normal(keys[0], (length, batch, width)))
    b = jax.random.normal(keys[1], (length, batch, width))
    initial = jax.random.normal(keys[2], (batch, width))
    weights = jax.random.normal(keys[3], (length, batch, width))
    final_weights = jax.random.normal(keys[4], (batch, width))
    return a, b, initial, weights, final_weights


def relative_error(value, expected):
    value, expected = np.asarray(value, np.float64), np.asarray(expected, np.float64)
    return np.max(np.abs(value - expected)) / max(np.max(np.abs(expected)), 1e-30)


@pytest.mark.parametrize("method", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("length", [1, 9, 64])
def test_recurrence_and_its_backward_equal_the_differentiated_scan(method, length):
    a, b, initial, weights, final_weights = coefficients(length)

    def loss(scan):
        def of(a, b, initial):
            final, states = scan(a, b, initial)
            return jnp.sum(states * weights) + jnp.sum(final * final_weights) + jnp.sum(states**2)
        return jax.jit(jax.value_and_grad(of, argnums=(0, 1, 2)))

    reference = loss(lambda a, b, h: scans.sequential(a, b, h))(a, b, initial)
    result = loss(lambda a, b, h: sequence_parallel.linear_recurrence(
        method, a, b, h, chunk_size=4))(a, b, initial)
    for got, want in zip(jax.tree.leaves(result), jax.tree.leaves(reference)):
        assert relative_error(got, want) < 1e-6


def test_reverse_scans_and_summaries():
    a, b, initial, _, _ = coefficients(37)
    # The reverse recurrence h_t = a_t h_{t+1} + b_t, by a float64 loop.
    expected, h = [], np.asarray(initial, np.float64)
    for a_t, b_t in zip(np.asarray(a, np.float64)[::-1], np.asarray(b, np.float64)[::-1]):
        h = a_t * h + b_t
        expected.append(h)
    expected = np.stack(expected[::-1])
    for method in ("sequential", "associative", "chunked"):
        final, states = scans.scan(method, a, b, initial, chunk_size=8, reverse=True)
        assert relative_error(states, expected) < 1e-6, method
        np.testing.assert_array_equal(final, states[0])
        # The summary is the span as one map: A h0 + B is the scan's last state.
        product, offset = scans.summary(method, a, b, chunk_size=8)
        final_forward = scans.sequential(a, b, initial)[0]
        assert relative_error(product * initial + offset, final_forward) < 1e-6, method
        product, offset = scans.summary(method, a, b, chunk_size=8, reverse=True)
        assert relative_error(product * initial + offset, expected[0]) < 1e-6, method


def test_without_a_layout_nothing_is_split():
    assert sequence_parallel.current() is None
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "sequence"))
    with sequence_parallel.split_time(sequence_parallel.SequenceLayout(mesh)):
        assert sequence_parallel.current() is None  # one device along time: no split
        sequence_parallel.refuse_serial("gru")      # nothing to refuse
    assert sequence_parallel.current() is None


def test_errors_name_what_cannot_split():
    a, b, initial, _, _ = coefficients(8)
    with pytest.raises(UserError, match="scan='log_space'.*no linear_recurrence form"):
        sequence_parallel.linear_recurrence("log_space", a, b, initial)

    class FourAlongTime(sequence_parallel.SequenceLayout):  # the arithmetic only
        size = 4

    layout = FourAlongTime(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("sequence",)))
    assert layout.check_length(64) == 16
    with pytest.raises(UserError, match=r"has 62 time steps, which do not split over 4 devices "
                                        r"of the 'sequence' axis .* a multiple of 4"):
        layout.check_length(62)
    with pytest.raises(UserError, match=r"at least 3 step\(s\).*at least 12"):
        layout.check_length(8, at_least=3)


# ---------------------------------------------------------------------------------------------
# Meshes of virtual CPU devices, in a subprocess
# ---------------------------------------------------------------------------------------------

MESHES = """
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh
from seqmodel.nn import blocks, remat, scans, sequence_parallel

remat.SEGMENT = 8  # several segments per device at these lengths
devices = np.array(jax.devices())

def layout(rows, time):
    mesh = Mesh(devices[: rows * time].reshape(rows, time), ("data", "sequence"),
                axis_types=(AxisType.Auto, AxisType.Auto))
    return sequence_parallel.SequenceLayout(mesh)

def error(got, want):
    return max(float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64)))
                     / max(float(np.max(np.abs(np.asarray(w, np.float64)))), 1e-30))
               for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)))

keys = jax.random.split(jax.random.key(0), 6)
length, batch, width = 64, 4, 6
a = jax.nn.sigmoid(2.0 * jax.random.normal(keys[0], (length, batch, width)))
b = jax.random.normal(keys[1], (length, batch, width))
initial = jax.random.normal(keys[2], (batch, width))
weights = jax.random.normal(keys[3], (length, batch, width))

def recurrence_loss(method, where):
    def of(a, b, initial):
        final, states = sequence_parallel.linear_recurrence(method, a, b, initial, chunk_size=4,
                                                            layout=where)
        return jnp.sum(states * weights) + jnp.sum(final ** 3), (final, states)
    return jax.jit(jax.value_and_grad(of, argnums=(0, 1, 2), has_aux=True))

window = jax.random.normal(keys[4], (3, batch, width))
x = jax.random.normal(keys[5], (16, batch, width))
kernel = jax.random.normal(keys[0], (4, width))
bias = jax.random.normal(keys[1], (width,))

def conv_loss(where):
    def of(window, x, kernel, bias):
        convolve = (blocks.causal_conv if where is None else
                    lambda *args: sequence_parallel.causal_conv(where, blocks.causal_conv, *args))
        y, last = convolve(window, x, kernel, bias)
        return jnp.sum(y * jnp.sin(y)) + jnp.sum(last ** 2), (y, last)
    return jax.jit(jax.value_and_grad(of, argnums=(0, 1, 2, 3), has_aux=True))

def block_loss(cell, mode, where):
    block = blocks.ResidualBlock(width, width, rngs=nnx.Rngs(0), cell=cell, remat=mode,
                                 chunk_size=4)
    carry = jax.tree.map(lambda leaf: jax.random.normal(keys[3], leaf.shape, leaf.dtype),
                         block.init_carry(batch))
    inputs = jax.random.normal(keys[2], (length, batch, width))

    @nnx.jit
    def run(block, carry):
        def of(block, carry):
            with sequence_parallel.split_time(where):
                new_carry, ys = block.scan(carry, inputs)
            carried = sum(jnp.sum(leaf) for leaf in jax.tree.leaves(new_carry))
            return jnp.sum(ys * jnp.cos(ys)) + carried, (new_carry, ys)
        (value, outputs), grads = nnx.value_and_grad(of, argnums=(0, 1), has_aux=True)(block, carry)
        return value, outputs, nnx.state(grads[0]), grads[1]
    return run(block, carry)

report = {}
# The one-device results, computed once (each call of the *_loss builders compiles anew).
references = {cell: block_loss(cell, "none", None) for cell in ("rglru", "mingru")}
METHODS = ("sequential", "associative", "chunked")
recurrence_references = {method: recurrence_loss(method, None)(a, b, initial)
                         for method in METHODS}
conv_reference = conv_loss(None)(window, x, kernel, bias)
for rows, time in [(1, 2), (1, 4), (2, 2)]:
    where = layout(rows, time)
    for method in METHODS:
        report[f"recurrence {method} {rows}x{time}"] = error(
            recurrence_loss(method, where)(a, b, initial), recurrence_references[method])
    report[f"conv {rows}x{time}"] = error(conv_loss(where)(window, x, kernel, bias),
                                          conv_reference)
    if time == 2 and rows == 1:
        continue  # the blocks: 4 devices along time, and 2 x 2
    # Every remat mode where each device holds the most segments (4 along time); on 2 x 2 the
    # data axis adds nothing to remat, so one mode there (the suite's time is mostly compiling).
    for cell in ("rglru", "mingru"):
        for mode in ("none", "scan", "block") if rows == 1 else ("block",):
            report[f"block {cell} {mode} {rows}x{time}"] = error(
                block_loss(cell, mode, where), references[cell])
# A chunk shorter than the convolution's window, and a length that does not split: clear errors.
messages = []
for bad_x in (x[:8], x[:15]):
    try:
        conv_loss(layout(1, 4))(window, bad_x, kernel, bias)
    except Exception as caught:
        messages.append(str(caught).splitlines()[0])
report["messages"] = messages
print("RESULT " + json.dumps(report), flush=True)
"""


@pytest.mark.slow
def test_meshes_of_two_and_four_devices_equal_one_device():
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu",
                       XLA_FLAGS="--xla_force_host_platform_device_count=4",
                       JAX_DEFAULT_MATMUL_PRECISION="highest")
    run = subprocess.run([sys.executable, "-c", MESHES], env=environment, capture_output=True,
                         text=True, timeout=SUBPROCESS_TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    report = json.loads(line[len("RESULT "):])
    messages = report.pop("messages")
    assert len(report) == 3 * (3 + 1) + 2 * 3 + 2 * 1
    for name, value in report.items():
        assert value < 1e-5, f"{name}: {value:.2e}"
    assert "at least 3 step(s)" in messages[0]  # 2 steps a device, a window of 3
    assert "15 time steps, which do not split over 4 devices" in messages[1]
