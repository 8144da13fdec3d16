"""Linear recurrences (minGRU, minLSTM, RG-LRU) and the residual block they need.

Their gates depend on the input only, so ``project`` computes every gate for all steps in one
matmul and the state follows ``h_t = a_t * h_{t-1} + b_t`` elementwise. ``scan`` runs that
recurrence with one of the scans of :mod:`seqmodel.linear_scan` (training); ``recur`` takes one
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

from seqmodel import linear_scan

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


def _check_sizes(input_size, hidden_size) -> None:
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _LinearCell(nnx.Module):
    """Shared plumbing: subclasses define ``project`` and the coefficients ``(a, b)``."""

    log_space_allowed = False

    def __init__(self, input_size: int, hidden_size: int, *, dtype: Any, param_dtype: Any,
                 scan: str, chunk_size: int):
        _check_sizes(input_size, hidden_size)
        self._check_scan(scan, chunk_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.scan_method = scan
        self.chunk_size = chunk_size

    def _check_scan(self, scan: str, chunk_size: int) -> None:
        name = type(self).__name__
        resolved = linear_scan.resolve(scan)
        if resolved == "log_space" and not self.log_space_allowed:
            raise ValueError(
                f"{name} got scan='log_space', which needs positive inputs b_t (only minGRU and "
                "minLSTM have them); use 'auto', 'sequential', 'associative' or 'chunked'"
            )
        linear_scan.check_chunk_size(chunk_size)

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
        :data:`seqmodel.linear_scan.AUTO_SCAN`)."""
        method = linear_scan.resolve(self.scan_method)
        initial = carry.astype(_state_dtype(self.dtype))
        if method == "log_space":
            log_a, log_b = self.log_coefficients(xp_sequence)
            state, states = linear_scan.log_space(log_a, log_b, initial)
        else:
            a, b = self.coefficients(xp_sequence)
            state, states = linear_scan.scan(method, a, b, initial, chunk_size=self.chunk_size)
        return state, states.astype(self.dtype)

    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:
        return self.recur(carry, self.project(x))


class _GatedProjection(_LinearCell):
    """A cell whose ``project`` is one linear map onto ``parts * hidden_size`` columns."""

    parts = 1

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, scan: str = "auto",
                 chunk_size: int = linear_scan.DEFAULT_CHUNK_SIZE):
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
                 chunk_size: int = linear_scan.DEFAULT_CHUNK_SIZE):
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


# ---------------------------------------------------------------------------------------------
# The residual block
# ---------------------------------------------------------------------------------------------


CELLS = {"mingru": MinGRUCell, "minlstm": MinLSTMCell, "rglru": RGLRU}


def causal_conv(window: Array, x: Array, kernel: Array, bias: Array) -> tuple[Array, Array]:
    """Depthwise causal convolution over time that carries its last inputs.

    Args:
      window: ``(w - 1, b, d)``, the inputs before ``x`` (zeros at the start of a sequence).
      x: ``(t, b, d)``, time-major (``t = 1`` for one step).
      kernel: ``(w, d)``; ``kernel[w - 1]`` weighs the current input.
      bias: ``(d,)``.

    Returns:
      ``(y (t, b, d), window (w - 1, b, d))``, the window for the next call. The same sum runs for
      any ``t``, so a sequence equals its steps exactly.
    """
    width = kernel.shape[0]
    length = x.shape[0]
    padded = jnp.concatenate([window.astype(x.dtype), x], axis=0)
    y = bias
    for shift in range(width):
        y = y + padded[shift : shift + length] * kernel[shift]
    return y, padded[length:]


class ResidualBlock(nnx.Module):
    """Pre-norm residual block around a linear recurrence, as a layer with the cell contract.

    ``y = r + MLP(RMSNorm(r))`` with ``r = x + Temporal(RMSNorm(x))``, where ``MLP`` is gated
    (``down(gelu(gate(u)) * up(u))``, ``mlp_expansion`` times wider) and ``Temporal`` is

    - ``cell="rglru"``: Griffin's recurrent block (recurrentgemma ``RecurrentBlock``):
      ``out(gelu(W_y u) * RGLRU(conv(W_x u)))`` with a causal convolution of width ``conv_width``
      (default 4), its last ``conv_width - 1`` inputs kept in the carry;
    - ``cell="mingru"`` / ``"minlstm"``: ``out(cell(u))`` (``conv_width`` default 0: none).

    The recurrence is ``expansion * hidden_size`` wide. ``project`` is the identity when
    ``input_size == hidden_size`` and a linear map otherwise (per element either way, so a token
    model may fold it into its embedding table). The carry is ``{"state": (b, E)}`` plus
    ``"window": (b, conv_width - 1, E)`` when there is a convolution.

    Example::

        block = ResidualBlock(16, 16, rngs=nnx.Rngs(0), cell="rglru")
        carry, ys = block.scan(block.init_carry(4), block.project(x))   # x (t, 4, 16) -> (t, 4, 16)
        carry, y = block.recur(carry, block.project(x_t))               # x_t (4, 16)
    """

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 cell: str = "rglru", expansion: int = 1, mlp_expansion: int = 3,
                 conv_width: int | None = None, scan: str = "auto",
                 chunk_size: int = linear_scan.DEFAULT_CHUNK_SIZE):
        _check_sizes(input_size, hidden_size)
        if cell not in CELLS:
            raise ValueError(f"cell={cell!r} is not a linear recurrence; allowed: "
                             + ", ".join(repr(name) for name in CELLS))
        for name, value in (("expansion", expansion), ("mlp_expansion", mlp_expansion)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        griffin = cell == "rglru"
        conv_width = (4 if griffin else 0) if conv_width is None else conv_width
        if (not isinstance(conv_width, int) or isinstance(conv_width, bool) or conv_width < 0
                or conv_width == 1):
            raise ValueError(
                f"conv_width must be 0 (no convolution) or an integer >= 2 (time steps the "
                f"causal convolution sees), got {conv_width!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.cell_name = cell
        self.conv_width = conv_width
        width = expansion * hidden_size
        self.width = width
        linear = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        norm = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)

        self.input_projection = (None if input_size == hidden_size else
                                 nnx.Linear(input_size, hidden_size, **linear))
        self.temporal_norm = nnx.RMSNorm(hidden_size, **norm)
        # Griffin projects into the recurrence's width before the convolution; the min cells'
        # own input projection already does that.
        self.recurrence_input = nnx.Linear(hidden_size, width, **linear) if griffin else None
        conv_features = width if griffin else hidden_size
        if conv_width:
            # recurrentgemma's Conv1D initialisation: variance 0.01 / fan_in over (w, d).
            kernel_init = nnx.initializers.variance_scaling(0.01, "fan_in", "normal")
            self.conv_kernel = nnx.Param(kernel_init(rngs.params(), (conv_width, conv_features),
                                                     param_dtype))
            self.conv_bias = nnx.Param(jnp.zeros((conv_features,), param_dtype))
        self.recurrence = CELLS[cell](conv_features, width, rngs=rngs, dtype=dtype,
                                      param_dtype=param_dtype, scan=scan, chunk_size=chunk_size)
        self.gate = nnx.Linear(hidden_size, width, **linear) if griffin else None
        self.temporal_output = nnx.Linear(width, hidden_size, **linear)
        self.mlp_norm = nnx.RMSNorm(hidden_size, **norm)
        self.mlp_input = nnx.Linear(hidden_size, 2 * mlp_expansion * hidden_size, **linear)
        self.mlp_output = nnx.Linear(mlp_expansion * hidden_size, hidden_size, **linear)

    @property
    def has_window(self) -> bool:
        """True when the block convolves over time (and the carry holds a window)."""
        return self.conv_width > 0

    def init_carry(self, batch_size: int) -> dict[str, Array]:
        """Zero carry: ``{"state": (b, E) float32}`` and ``"window": (b, conv_width - 1, d)``."""
        carry = {"state": self.recurrence.init_carry(batch_size)}
        if self.has_window:
            features = self.conv_kernel.shape[1]
            carry["window"] = jnp.zeros((batch_size, self.conv_width - 1, features), self.dtype)
        return carry

    def project(self, x: Array) -> Array:
        """``(..., input_size)`` -> ``(..., hidden_size)``: identity or one linear map."""
        if self.input_projection is None:
            return x.astype(self.dtype)
        return self.input_projection(x)

    def _temporal(self, carry: dict, normed: Array, *, sequence: bool) -> tuple[dict, Array]:
        """The temporal mixing of ``normed`` ``(t, b, h)`` (``sequence``) or ``(b, h)`` (a step)."""
        new_carry = {}
        features = normed if self.recurrence_input is None else self.recurrence_input(normed)
        if self.has_window:
            window = jnp.swapaxes(carry["window"], 0, 1)
            features, window = causal_conv(window, features if sequence else features[None],
                                           self.conv_kernel[...].astype(self.dtype),
                                           self.conv_bias[...].astype(self.dtype))
            features = features if sequence else features[0]
            new_carry["window"] = jnp.swapaxes(window, 0, 1)
        xp = self.recurrence.project(features)
        run = self.recurrence.scan if sequence else self.recurrence.recur
        new_carry["state"], h = run(carry["state"], xp)
        if self.gate is not None:
            h = h * jax.nn.gelu(self.gate(normed))
        return new_carry, self.temporal_output(h)

    def _block(self, carry: dict, x: Array, *, sequence: bool) -> tuple[dict, Array]:
        carry, mixed = self._temporal(carry, self.temporal_norm(x), sequence=sequence)
        residual = x + mixed
        gate, value = jnp.split(self.mlp_input(self.mlp_norm(residual)), 2, axis=-1)
        return carry, residual + self.mlp_output(jax.nn.gelu(gate) * value)

    def scan(self, carry: dict, xp_sequence: Array) -> tuple[dict, Array]:
        """Training mode: xp ``(t, b, h)`` -> ``(carry, ys (t, b, h))``."""
        return self._block(carry, xp_sequence, sequence=True)

    def recur(self, carry: dict, xp: Array) -> tuple[dict, Array]:
        """One step: xp ``(b, h)`` -> ``(carry, y (b, h))``."""
        return self._block(carry, xp, sequence=False)

    def __call__(self, carry: dict, x: Array) -> tuple[dict, Array]:
        return self.recur(carry, self.project(x))
