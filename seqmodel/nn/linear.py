"""Linear recurrences: minGRU, minLSTM and RG-LRU cells (their residual block: :mod:`seqmodel.nn.blocks`).

Their gates depend on the input only, so ``project`` computes every gate for all steps in one
matmul and the state follows ``h_t = a_t * h_{t-1} + b_t`` elementwise. ``scan`` runs that
recurrence with one of the scans of :mod:`seqmodel.nn.scans` (training); ``recur`` takes one
step of it (inference). Both evaluate the same coefficient functions, so they give the same
numbers up to the rounding of the scan.

Every module follows the cell contract:

- ``init_carry(batch_size)`` -> carry, a pytree of ``(b, ...)`` arrays
- ``project(x)``: ``(..., in)`` -> ``(..., P)``, per element (time-parallel)
- ``scan(carry, xp)``: time-major ``(t, b, P)`` -> ``(carry, ys (t, b, hidden_size))``
- ``recur(carry, xp)``: ``(b, P)`` -> ``(carry, y (b, hidden_size))``
- ``__call__(carry, x) = recur(carry, project(x))``

The recurrent state is float32 whatever ``dtype`` is (as recurrentgemma keeps its RG-LRU state):
a bfloat16 state would lose the small updates of long memories. Outputs come back in ``dtype``.

Sources: Feng et al. 2024, "Were RNNs All We Needed?" (minGRU, minLSTM, the ``g()`` activation
and the log-space form); De et al. 2024, "Griffin" (RG-LRU and its recurrent block), and its JAX
code, google-deepmind/recurrentgemma ``recurrentgemma/jax/layers.py`` (``RGLRU``,
``rnn_param_init``, ``Conv1D``, ``sqrt_bound_derivative``) and ``modules.py``
(``RecurrentBlock``, ``MLPBlock``, ``ResidualBlock``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqmodel.nn import scans, sequence_parallel

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# The paper's activations (Feng et al. 2024, appendix)
# ---------------------------------------------------------------------------------------------


def g(x: Array) -> Array:
    """minGRU/minLSTM's positive activation: ``x + 1/2`` for ``x >= 0``, ``sigmoid(x)`` below.

    Continuous at 0 and always positive, so a state built from ``g`` values stays positive and
    has a logarithm (the log-space scan needs one)."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def log_g(x: Array) -> Array:
    """``log(g(x))`` computed without forming ``g`` (finite for every finite ``x``)."""
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


@jax.custom_vjp
def sqrt_bounded_derivative(x: Array) -> Array:
    """``sqrt(x)`` whose derivative is capped at 1000 (reached at ``x = 2.5e-7``).

    The RG-LRU's ``sqrt(1 - a^2)`` has an unbounded derivative as ``a -> 1``; recurrentgemma
    caps it (``sqrt_bound_derivative``) to keep bfloat16 training free of NaNs."""
    return jnp.sqrt(x)


def _sqrt_forward(x):
    return jnp.sqrt(x), x


def _sqrt_backward(x, cotangent):
    floor = 1.0 / (4.0 * 1000.0**2)
    return (cotangent * 0.5 * jax.lax.rsqrt(jnp.maximum(x, floor)),)


sqrt_bounded_derivative.defvjp(_sqrt_forward, _sqrt_backward)


# ---------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------


def _state_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def check_sizes(input_size, hidden_size) -> None:
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _LinearCell(nnx.Module):
    """Shared plumbing: subclasses define ``project`` and the coefficients ``(a, b)``."""

    log_space_allowed = False

    def __init__(self, input_size: int, hidden_size: int, *, dtype: Any, param_dtype: Any,
                 scan: str, chunk_size: int):
        check_sizes(input_size, hidden_size)
        self._check_scan(scan, chunk_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.scan_method = scan
        self.chunk_size = chunk_size

    def _check_scan(self, scan: str, chunk_size: int) -> None:
        name = type(self).__name__
        resolved = scans.resolve(scan)
        if resolved == "log_space" and not self.log_space_allowed:
            raise ValueError(
                f"{name} got scan='log_space', which needs positive inputs b_t (only minGRU and "
                "minLSTM have them); use 'auto', 'sequential', 'associative' or 'chunked'"
            )
        scans.check_chunk_size(chunk_size)

    def coefficients(self, xp: Array) -> tuple[Array, Array]:
        """``(a, b)`` of ``h_t = a h_{t-1} + b``, float32, from ``xp`` ``(..., P)``."""
        raise NotImplementedError

    def log_coefficients(self, xp: Array) -> tuple[Array, Array]:
        """``(log a, log b)`` for the log-space scan (minGRU and minLSTM only)."""
        raise NotImplementedError

    def init_carry(self, batch_size: int) -> Array:
        """Zero state ``(batch_size, hidden_size)``, float32."""
        return jnp.zeros((batch_size, self.hidden_size), _state_dtype(self.dtype))

    def output(self, carry: Array) -> Array:
        """The output ``(b, hidden_size)`` that goes with a carry: the state itself."""
        return carry.astype(self.dtype)

    def recur(self, carry: Array, xp: Array) -> tuple[Array, Array]:
        """One step: state ``(b, h)``, xp ``(b, P)`` -> ``(state, y (b, h))``."""
        a, b = self.coefficients(xp)
        state = a * carry.astype(a.dtype) + b
        return state, state.astype(self.dtype)

    def scan(self, carry: Array, xp_sequence: Array) -> tuple[Array, Array]:
        """Training mode: state ``(b, h)``, xp ``(t, b, P)`` -> ``(state, ys (t, b, h))``.

        Runs the scan chosen by ``scan=`` (``"auto"`` is resolved for the backend now, see
        :data:`seqmodel.nn.scans.AUTO_SCAN`); its backward pass is the reverse recurrence
        (:func:`seqmodel.nn.sequence_parallel.linear_recurrence`), except in log space.
        With a time split in force (:func:`seqmodel.nn.sequence_parallel.split_time`) each
        device scans its chunk of time and the chunks' summaries cross the devices. The same as
        ``scan_over_time(carry, scan_coefficients(xp_sequence))``."""
        return self.scan_over_time(carry, self.scan_coefficients(xp_sequence))

    def scan_coefficients(self, xp_sequence: Array) -> tuple[Array, Array]:
        """The per-position half of :meth:`scan`: ``(a, b)`` ``(t, b, h)`` float32, or
        ``(log a, log b)`` for ``scan="log_space"``."""
        if scans.resolve(self.scan_method) == "log_space":
            return self.log_coefficients(xp_sequence)
        return self.coefficients(xp_sequence)

    def scan_over_time(self, carry: Array, coefficients: tuple[Array, Array]
                       ) -> tuple[Array, Array]:
        """The across-time half of :meth:`scan`: state ``(b, h)`` and
        :meth:`scan_coefficients` -> ``(state, ys (t, b, h))``."""
        method = scans.resolve(self.scan_method)
        initial = carry.astype(_state_dtype(self.dtype))
        layout = sequence_parallel.current()
        if method == "log_space":
            if layout is not None:
                raise sequence_parallel.SequenceSplitError(
                    f"{type(self).__name__} with scan='log_space' cannot split time over the "
                    f"{layout.axis!r} axis; use scan='sequential', 'associative' or 'chunked' "
                    f"(or 'auto')")
            state, states = scans.log_space(*coefficients, initial)
        else:
            state, states = sequence_parallel.linear_recurrence(
                method, *coefficients, initial, chunk_size=self.chunk_size, layout=layout)
        return state, states.astype(self.dtype)

    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:
        return self.recur(carry, self.project(x))


class _GatedProjection(_LinearCell):
    """A cell whose ``project`` is one linear map onto ``parts * hidden_size`` columns."""

    parts = 1

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, scan: str = "auto",
                 chunk_size: int = scans.DEFAULT_CHUNK_SIZE):
        super().__init__(input_size, hidden_size, dtype=dtype, param_dtype=param_dtype,
                         scan=scan, chunk_size=chunk_size)
        self.input_projection = nnx.Linear(input_size, self.parts * hidden_size, rngs=rngs,
                                           dtype=dtype, param_dtype=param_dtype)

    def project(self, x: Array) -> Array:
        """``(..., input_size)`` -> ``(..., parts * hidden_size)``, every gate at once."""
        return self.input_projection(x)

    def _split(self, xp: Array) -> list[Array]:
        return jnp.split(xp.astype(_state_dtype(self.dtype)), self.parts, axis=-1)


class MinGRUCell(_GatedProjection):
    """minGRU (Feng et al. 2024): ``h_t = (1 - z_t) h_{t-1} + z_t g(h~_t)``.

    ``z_t = sigmoid(k_t)`` and ``h~_t`` are both linear in ``x_t`` (``project`` gives
    ``[k, h~]``, ``P = 2h``). The paper's ``g`` keeps the state positive so that the log-space
    scan (``scan="log_space"``) applies; the step uses the same ``g``.

    Example::

        cell = MinGRUCell(8, 16, rngs=nnx.Rngs(0), scan="associative")
        carry, ys = cell.scan(cell.init_carry(4), cell.project(x))   # x (t, 4, 8) -> ys (t, 4, 16)
    """

    parts = 2
    log_space_allowed = True

    def coefficients(self, xp):
        gate, candidate = self._split(xp)
        return jax.nn.sigmoid(-gate), jax.nn.sigmoid(gate) * g(candidate)

    def log_coefficients(self, xp):
        gate, candidate = self._split(xp)
        return -jax.nn.softplus(gate), -jax.nn.softplus(-gate) + log_g(candidate)


class MinLSTMCell(_GatedProjection):
    """minLSTM (Feng et al. 2024) with the normalised gates ``f' = f / (f + i)``, ``i' = 1 - f'``.

    ``h_t = f'_t h_{t-1} + i'_t g(h~_t)`` with ``f = sigmoid(k_f)``, ``i = sigmoid(k_i)``;
    ``project`` gives ``[k_f, k_i, h~]`` (``P = 3h``). ``f'`` is computed as
    ``sigmoid(-d)`` with ``d = softplus(-k_f) - softplus(-k_i) = log i - log f``: no division,
    and the same ``d`` as the paper's log-space code.

    Example::

        cell = MinLSTMCell(8, 16, rngs=nnx.Rngs(0))
        carry, y = cell.recur(cell.init_carry(4), cell.project(x_t))   # x_t (4, 8) -> y (4, 16)
    """

    parts = 3
    log_space_allowed = True

    def _difference(self, xp):
        forget, input_gate, candidate = self._split(xp)
        return jax.nn.softplus(-forget) - jax.nn.softplus(-input_gate), candidate

    def coefficients(self, xp):
        difference, candidate = self._difference(xp)
        return jax.nn.sigmoid(-difference), jax.nn.sigmoid(difference) * g(candidate)

    def log_coefficients(self, xp):
        difference, candidate = self._difference(xp)
        return -jax.nn.softplus(difference), -jax.nn.softplus(-difference) + log_g(candidate)


def rglru_lambda_init(minimum: float = 0.9, maximum: float = 0.999, *, exponent: float = 8.0):
    """Initialiser of the RG-LRU's ``Λ`` such that ``a^c = sigmoid(Λ)^c`` lies in
    ``[minimum, maximum]``, spread uniformly over the area of that ring (``(a^c)^2`` uniform), as
    recurrentgemma's ``rnn_param_init`` spreads its radius.

    Griffin's paper puts ``a^c`` in ``[0.9, 0.999]``; recurrentgemma's code puts the base
    ``a = sigmoid(Λ)`` there instead (so its ``a^c`` starts in ``[0.43, 0.992]``). This follows
    the paper. Returns an ``nnx`` initialiser ``(key, shape, dtype) -> Λ``.
    """

    def init(key, shape, dtype=jnp.float32):
        uniform = jax.random.uniform(key, shape, jnp.float32)
        log_power = 0.5 * jnp.log(uniform * (maximum**2 - minimum**2) + minimum**2)
        # sigmoid(Λ) = (a^c)^(1/c)  <=>  Λ = -log(exp(-log(a^c) / c) - 1)
        return (-jnp.log(jnp.expm1(-log_power / exponent))).astype(dtype)

    return init


class RGLRU(_LinearCell):
    """Griffin's real-gated linear recurrent unit (De et al. 2024).

    With recurrence gate ``r_t = sigmoid(W_r x_t + b_r)`` and input gate
    ``i_t = sigmoid(W_i x_t + b_i)``: ``log a_t = c r_t log sigmoid(Λ)`` (``c = 8``, computed in
    log space) and ``h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t * v_t)``. The value ``v_t`` is
    ``x_t`` itself when ``input_size == hidden_size`` (as in Griffin, where the block's
    convolution feeds it) and ``W_v x_t + b_v`` otherwise. ``project`` gives ``[v, k_r, k_i]``
    (``P = 3h``). The gates are dense (Griffin uses block-diagonal ones, one block per head).

    Example::

        cell = RGLRU(16, 16, rngs=nnx.Rngs(0))
        carry, ys = cell.scan(cell.init_carry(4), cell.project(x))   # x (t, 4, 16)
    """

    exponent = 8.0

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, scan: str = "auto",
                 chunk_size: int = scans.DEFAULT_CHUNK_SIZE):
        super().__init__(input_size, hidden_size, dtype=dtype, param_dtype=param_dtype,
                         scan=scan, chunk_size=chunk_size)
        self.gates = nnx.Linear(input_size, 2 * hidden_size, rngs=rngs, dtype=dtype,
                                param_dtype=param_dtype)
        self.value = (None if input_size == hidden_size else
                      nnx.Linear(input_size, hidden_size, rngs=rngs, dtype=dtype,
                                 param_dtype=param_dtype))
        self.recurrence_parameter = nnx.Param(
            rglru_lambda_init(exponent=self.exponent)(rngs.params(), (hidden_size,),
                                                      param_dtype))

    def project(self, x: Array) -> Array:
        """``(..., input_size)`` -> ``(..., 3 hidden_size)``: value and the two gates' logits."""
        value = x.astype(self.dtype) if self.value is None else self.value(x)
        return jnp.concatenate([value, self.gates(x)], axis=-1)

    def log_decay(self, xp: Array) -> Array:
        """``log a_t = c r_t log sigmoid(Λ)`` ``(..., h)``, float32."""
        _, recurrence_gate, _ = jnp.split(xp.astype(_state_dtype(self.dtype)), 3, axis=-1)
        log_base = -jax.nn.softplus(-self.recurrence_parameter[...].astype(recurrence_gate.dtype))
        return self.exponent * jax.nn.sigmoid(recurrence_gate) * log_base

    def coefficients(self, xp):
        value, _, input_gate = jnp.split(xp.astype(_state_dtype(self.dtype)), 3, axis=-1)
        log_a = self.log_decay(xp)
        # 1 - a^2 = -expm1(2 log a): exact where a is close to 1, where 1 - exp(.) cancels.
        normaliser = sqrt_bounded_derivative(-jnp.expm1(2.0 * log_a))
        return jnp.exp(log_a), normaliser * (jax.nn.sigmoid(input_gate) * value)


# The cell of each linear recurrence, by its ModelConfig.cell name.
CELLS = {"mingru": MinGRUCell, "minlstm": MinLSTMCell, "rglru": RGLRU}
