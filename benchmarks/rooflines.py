"""How close a train step runs to the machine's matmul speed.

:func:`gemm_worker` measures two ceilings (in a worker process of its own): a large ``2048^3``
GEMM, and the serial small GEMMs of a recurrence (``(b, h) @ (h, G)`` forward and
``(b, G) @ (G, h)`` backward, chained in a ``lax.scan`` so that each depends on the last).
:func:`roofline` then gives the time the step's FLOPs (:func:`step_flops`) would take at those
ceilings (serial matmuls at the serial rate, the rest at the large-GEMM rate) as a fraction of
the measured step time.
"""

from __future__ import annotations

import time

from benchmarks.workload import BATCH, EMBED, GATES, SEQUENCE, VOCAB


def step_flops(cell: str, hidden: int) -> dict:
    """FLOPs of one train step, split into the serial recurrent matmuls and the rest."""
    width = GATES[cell] * hidden
    recurrent = 2 * BATCH * SEQUENCE * hidden * width  # one pass of h @ W_h over all steps
    head = 2 * BATCH * SEQUENCE * hidden * VOCAB
    table = 2 * VOCAB * EMBED * width
    return {
        "serial_forward": recurrent,
        "serial_backward": recurrent,  # dh @ W_h^T
        # dW_h (one GEMM after the loop), head forward + 2 backward GEMMs, folded input table.
        "parallel": recurrent + 3 * head + 3 * table,
    }


def roofline(cell: str, hidden: int, seconds_per_step: float, ceilings: dict) -> dict:
    """``{"gflops"}`` achieved, and with every ceiling known ``"bound_seconds"`` (the step's
    FLOPs at the ceilings) and ``"roofline"`` (that bound over the measured time)."""
    flops = step_flops(cell, hidden)
    gates = GATES[cell]
    forward = ceilings.get(f"serial_gflops_h{hidden}x{gates}_forward")
    backward = ceilings.get(f"serial_gflops_h{hidden}x{gates}_backward")
    large = ceilings.get("large_gflops")
    total = sum(flops.values())
    achieved = total / seconds_per_step / 1e9
    if not (forward and backward and large):
        return {"gflops": achieved}
    bound = (flops["serial_forward"] / forward + flops["serial_backward"] / backward
             + flops["parallel"] / large) / 1e9
    return {"gflops": achieved, "bound_seconds": bound, "roofline": bound / seconds_per_step}


def serial_chain(rows: int, inner: int, cols: int):
    """``(jitted chain, kernel)``: SEQUENCE dependent ``tanh((rows, inner) @ (inner, cols))``
    steps in a ``lax.scan``, each step's input the last step's output, as in a recurrence (the
    serial GEMMs that neither framework can spread over time). Call ``chain(kernel)``."""
    import jax
    import jax.numpy as jnp

    kernel = jnp.full((inner, cols), 0.01, jnp.float32)

    def chain(kernel):
        def body(state, _):
            out = jnp.tanh(state @ kernel)
            if cols > inner:
                return out[:, :inner], None
            return jnp.tile(out, (1, inner // cols)), None

        return jax.lax.scan(body, jnp.ones((rows, inner)), None, length=SEQUENCE)[0]

    return jax.jit(chain), kernel


def gemm_worker(spec: dict):
    """The ceilings in GFLOP/s: ``large_gflops`` and, for each ``(hidden, gates)`` of
    ``options['serial_shapes']``, ``serial_gflops_h{hidden}x{gates}_{forward,backward}``."""
    import jax
    import jax.numpy as jnp

    size = int(spec["options"].get("size", 2048))
    large = jax.jit(lambda a, b: a @ b)
    a = jnp.ones((size, size), jnp.float32)
    results = {}

    def timed(function, *args, repeats=7):
        # A ceiling is the best the machine does: the fastest repetition, not the median.
        jax.block_until_ready(function(*args))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(function(*args))
            times.append(time.perf_counter() - start)
        return min(times)

    results["large_gflops"] = 2 * size**3 / timed(large, a, a) / 1e9
    for hidden, gates in spec["options"].get("serial_shapes", []):
        width = gates * hidden
        for direction, (rows, inner, cols) in {
            "forward": (BATCH, hidden, width), "backward": (BATCH, width, hidden),
        }.items():
            chain, kernel = serial_chain(rows, inner, cols)
            seconds = timed(chain, kernel)
            results[f"serial_gflops_h{hidden}x{gates}_{direction}"] = (
                2 * rows * inner * cols * SEQUENCE / seconds / 1e9
            )
    return None, None, {"result": results}
