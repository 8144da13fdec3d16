"""SequenceModel: encoder -> stacked recurrent cells -> output head, in two modes.

- ``model(inputs, carry)``: teacher forced over a whole ``(b, t)`` / ``(b, t, d)`` sequence. The
  input projection of every step is one matmul (or one gather, see ``fold_embedding``), then
  ``lax.scan`` runs only the recurrence, and the head is applied to all steps at once.
- ``model.step(x_t, carry)``: one element through every layer, for free running. It calls the same
  ``project`` and ``recur`` functions, so the two modes compute the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqmodel import cells as cells_module
from seqmodel import heads as heads_module
from seqmodel import linear as linear_module
from seqmodel import linear_scan
from seqmodel.configs import DictConfig

Array = jax.Array

# Every recurrence a layer can run: the serial cells, then the linear recurrences (as blocks).
CELLS = (*cells_module.CELLS, *linear_module.CELLS)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig(DictConfig):
    """Hyperparameters of a :class:`SequenceModel`.

    Give exactly one of ``vocab_size`` (token inputs ``(b, t)``, categorical head) or ``input_size``
    (real inputs ``(b, t, d)`` with a gaussian, mdn or bernoulli head whose elements have ``d``
    features, fed back as the next input).

    Example::

        config = ModelConfig(vocab_size=65, cell="lstm", hidden_size=256, num_layers=2)
    """

    vocab_size: int | None = None
    input_size: int | None = None
    # Real-valued models: features of an element that the head predicts (default: input_size).
    # Smaller than input_size when every input carries, after the element, conditioning features
    # that the model reads but does not predict (lags, covariates, time features, scales).
    target_size: int | None = None
    # DeepAR's mean scaling: the first target_size conditioning features of every input (input
    # indices target_size .. 2 * target_size - 1) hold log(s), the scale of the row's series, by
    # which the element (and its lags) in the input were divided; the head's distribution is
    # multiplied back by s (head.rescale), so outputs, log-likelihoods and samples are in data
    # units while the network sees values of order 1 (seqmodel.features builds such inputs).
    input_scaling: bool = False
    # Tuned with TrainConfig's defaults: the argument-free `seqmodel train` (python-stdlib) learns
    # Python-looking text within a few minutes on 2 CPU cores, and tinyshakespeare under 110 s
    # reaches a validation loss at or below 1.60 nats per character (benchmarks/bench_quality.py).
    cell: str = "gru"
    hidden_size: int = 512
    num_layers: int = 1
    embed_size: int = 64
    dropout: float = 0.0
    head: str = "categorical"
    num_mixtures: int = 5
    dtype: str = "float32"
    # Linear recurrences (cell "mingru", "minlstm", "rglru") run as residual blocks: how the
    # training path scans h_t = a_t h_{t-1} + b_t ("auto": what bench_linear measured fastest on
    # the backend; see seqmodel.linear_scan.AUTO_SCAN), the chunk of the chunked scan, the
    # recurrence's width (expansion x hidden_size) and the gated MLP's (mlp_expansion x).
    scan: str = "auto"
    chunk_size: int = linear_scan.DEFAULT_CHUNK_SIZE
    expansion: int = 1
    mlp_expansion: int = 3
    # Fold the embedding into the first layer's input projection: one (vocab, G) table gathered per
    # token instead of an embedding gather plus a matmul. Exact (no dropout sits between them).
    fold_embedding: bool = True
    # Teacher-forced scans use the custom-VJP recurrences of seqmodel.recurrence (same values and
    # gradients as differentiating lax.scan, faster); False keeps the plain lax.scan (for jax.jvp).
    fast_recurrence: bool = True

    def __post_init__(self):
        def bad(field: str, allowed: str):
            value = getattr(self, field)
            raise ValueError(f"ModelConfig.{field}={value!r} is invalid: {allowed}")

        if (self.vocab_size is None) == (self.input_size is None):
            raise ValueError(
                "ModelConfig needs exactly one of vocab_size (token sequences) or input_size "
                f"(real-valued sequences); got vocab_size={self.vocab_size!r}, "
                f"input_size={self.input_size!r}"
            )
        for field in ("vocab_size", "input_size", "target_size"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                bad(field, "must be a positive integer")
        if self.cell not in CELLS:
            bad("cell", f"allowed: {', '.join(CELLS)}")
        if self.scan not in linear_scan.METHODS + ("auto",):
            bad("scan", f"allowed: auto, {', '.join(linear_scan.METHODS)}")
        for field in ("hidden_size", "num_layers", "embed_size", "num_mixtures", "chunk_size",
                      "expansion", "mlp_expansion"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                bad(field, "must be a positive integer")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            bad("dropout", "must be in [0, 1)")
        if self.head not in heads_module.HEADS:
            bad("head", f"allowed: {', '.join(heads_module.HEADS)}")
        if self.dtype not in DTYPES:
            bad("dtype", f"allowed: {', '.join(DTYPES)}")
        if self.vocab_size is not None and self.head != "categorical":
            bad("head", "token inputs (vocab_size) need head='categorical'; for real-valued "
                "heads give input_size instead of vocab_size")
        if self.target_size is not None and (
                self.input_size is None or self.target_size > self.input_size):
            bad("target_size", "needs input_size and must be at most input_size (the element's "
                "features come first in each input, conditioning features after them)")
        if self.input_scaling and (not self.conditioned or self.head == "bernoulli"
                                   or self.input_size < 2 * self.target_size):
            bad("input_scaling", "needs real-valued inputs with target_size set and at least "
                "target_size conditioning features (the log scales), and a head other than "
                "bernoulli (0/1 elements cannot be scaled)")
        if self.input_size is not None and self.head == "categorical":
            real_valued = ", ".join(repr(name) for name in heads_module.HEADS
                                    if name != "categorical")
            bad("head", f"real-valued inputs (input_size) need one of {real_valued}; for "
                "tokens give vocab_size instead of input_size")

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Like :meth:`DictConfig.from_dict`; run folders written before the Elman cell was named
        ``"elman"`` say ``cell="rnn"``, which still loads."""
        if values.get("cell") == "rnn":
            values = {**values, "cell": "elman"}
        return super().from_dict(values)

    @property
    def discrete(self) -> bool:
        """True for token sequences."""
        return self.vocab_size is not None

    @property
    def linear(self) -> bool:
        """True for the linear recurrences, which run as residual blocks."""
        return self.cell in linear_module.CELLS

    @property
    def element_size(self) -> int | None:
        """Features of one predicted element: ``target_size`` or ``input_size`` (None for tokens)."""
        return self.target_size if self.target_size is not None else self.input_size

    @property
    def conditioned(self) -> bool:
        """True when inputs carry conditioning features after the element."""
        return self.target_size is not None and self.target_size < self.input_size

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[self.dtype]



def _make_layer(config: ModelConfig, input_size: int, rngs: nnx.Rngs):
    """One layer: a serial cell, or a residual block around a linear recurrence."""
    dtype = config.compute_dtype
    if config.linear:
        return linear_module.ResidualBlock(
            input_size, config.hidden_size, rngs=rngs, dtype=dtype, cell=config.cell,
            expansion=config.expansion, mlp_expansion=config.mlp_expansion, scan=config.scan,
            chunk_size=config.chunk_size)
    return cells_module.CELLS[config.cell](input_size, config.hidden_size, rngs=rngs, dtype=dtype,
                                           fast_recurrence=config.fast_recurrence)


def _make_head(config: ModelConfig, rngs: nnx.Rngs):
    h, dtype = config.hidden_size, config.compute_dtype
    if config.head == "categorical":
        return heads_module.Categorical(h, config.vocab_size, rngs=rngs, dtype=dtype)
    if config.head == "mdn":
        return heads_module.MixtureGaussian(
            h, config.element_size, config.num_mixtures, rngs=rngs, dtype=dtype
        )
    real_valued = {
        "gaussian": heads_module.Gaussian,
        "bernoulli": heads_module.Bernoulli,
        "student_t": heads_module.StudentT,
        "negbin": heads_module.NegativeBinomial,
    }
    return real_valued[config.head](h, config.element_size, rngs=rngs, dtype=dtype)


class SequenceModel(nnx.Module):
    """An autoregressive recurrent model with a teacher-forced and a one-step path.

    Shapes: ``b`` batch, ``t`` time, ``d`` features, ``h`` hidden size, ``V`` vocabulary.

    Example::

        model = SequenceModel(ModelConfig(vocab_size=65), rngs=nnx.Rngs(0))
        logits, carry = model(tokens)            # tokens (b, t) int -> logits (b, t, 65)
        logits_t, carry = model.step(tokens[:, 0], model.init_carry(b))   # (b, 65)
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = config.compute_dtype
        if config.discrete:
            self.embed = nnx.Embed(config.vocab_size, config.embed_size, rngs=rngs)
            first_input = config.embed_size
        else:
            self.embed = None
            first_input = config.input_size
        self.cells = nnx.List([
            _make_layer(config, first_input if layer == 0 else config.hidden_size, rngs)
            for layer in range(config.num_layers)
        ])
        # Residual blocks leave an unnormalised stream; the head reads it normalised (Griffin).
        self.final_norm = (nnx.RMSNorm(config.hidden_size, rngs=rngs, dtype=dtype)
                           if config.linear else None)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.head = _make_head(config, rngs)

    # -- carry ------------------------------------------------------------------------------

    def init_carry(self, batch_size: int) -> tuple:
        """Zero carry: a tuple with one cell carry per layer, each leaf ``(batch_size, ...)``."""
        return tuple(cell.init_carry(batch_size) for cell in self.cells)

    # -- input half of layer 0 ----------------------------------------------------------------

    def input_table(self) -> Array | None:
        """The folded ``(V, G)`` table ``project(embedding)`` of layer 0, or None when there is no
        fold (real-valued inputs, ``fold_embedding=False``). A scan over steps builds it once."""
        if not (self.config.discrete and self.config.fold_embedding):
            return None
        return self.cells[0].project(self.embed.embedding[...])

    def project_inputs(self, inputs: Array, table: Array | None = None) -> Array:
        """Layer 0's input projection for any leading axes: ``(...)`` tokens or ``(..., d)`` ->
        ``(..., G)``. ``table`` (from :meth:`input_table`) skips recomputing the fold."""
        if not self.config.discrete:
            return self.cells[0].project(inputs)
        if self.config.fold_embedding:
            table = self.input_table() if table is None else table
            return jnp.take(table, inputs, axis=0)
        return self.cells[0].project(self.embed(inputs))

    # -- checks ---------------------------------------------------------------------------------

    def _check_inputs(self, inputs: Array, time_axis: bool) -> None:
        config = self.config
        where = "inputs" if time_axis else "x_t"
        expected = ("(b, t)" if time_axis else "(b,)") if config.discrete else (
            f"(b, t, {config.input_size})" if time_axis else f"(b, {config.input_size})"
        )
        rank = (2 if time_axis else 1) + (0 if config.discrete else 1)
        if inputs.ndim != rank or (not config.discrete and inputs.shape[-1] != config.input_size):
            raise ValueError(f"{where} must have shape {expected}, got {tuple(inputs.shape)}")
        if config.discrete and not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"{where} must hold integer token ids, got dtype {inputs.dtype}")
        if config.discrete and not isinstance(inputs, jax.core.Tracer) and inputs.size:
            # NumPy, not jnp: under jit a concrete array closed over by the traced function would
            # turn jnp.min into a tracer that int() cannot read.
            values = np.asarray(inputs)
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= config.vocab_size:
                raise ValueError(
                    f"{where} holds token ids in [{low}, {high}], outside the vocabulary "
                    f"[0, {config.vocab_size - 1}]"
                )

    # -- the one driver of the layer stack --------------------------------------------------------

    def run_layers(self, projected: Array, carry: tuple, *, active: Array | None = None,
                   key: Array | None = None) -> tuple[Array, tuple]:
        """Every layer over a time-major sequence whose layer-0 input half is known.

        This is the one walk over the layer stack: the teacher-forced pass, the prefill of
        :func:`seqmodel.generate`, the scheduled-sampling rollout and :meth:`step` all call it.

        Args:
          projected: ``(t, b, G)``, layer 0's projected inputs (:meth:`project_inputs`).
          carry: one carry per layer (:meth:`init_carry`).
          active: optional ``(t, b)`` bool. Where False, that row's carry stays as it was (a
            right-padded prompt: each row's carry stops at its own length). Without it every
            step updates every row and the scan is the cells' fast (custom-VJP) one.
          key: PRNG key for dropout in train mode (``fold_in(key, layer)`` per layer); without it
            dropout draws from the model's own RNG stream.

        Returns:
          ``(hidden, carry)``: the top layer's states ``(t, b, h)`` (dropout applied in train
          mode) and the new carry. A sequence of length 1 is one ``recur`` per layer: a scan
          of one step is exactly that, and it keeps a generation step free of loop overhead.
        """
        length = projected.shape[0]
        hidden = None
        new_carry = []
        for layer, cell in enumerate(self.cells):
            xp = projected if layer == 0 else cell.project(self._dropout(hidden, key, layer))
            if active is not None:
                layer_carry, hidden = jax.lax.scan(
                    functools.partial(_masked_recur, cell), carry[layer], (xp, active))
            elif length == 1:
                layer_carry, output = cell.recur(carry[layer], xp[0])
                hidden = output[None]
            else:
                layer_carry, hidden = cell.scan(carry[layer], xp)
            new_carry.append(layer_carry)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        return self._dropout(hidden, key, len(self.cells)), tuple(new_carry)

    def _dropout(self, hidden: Array, key: Array | None, layer: int) -> Array:
        if key is None:
            return self.dropout(hidden)
        return self.dropout(hidden, rngs=jax.random.fold_in(key, layer))

    # -- the two modes, built on the driver -------------------------------------------------------

    def hidden_states(self, inputs: Array, carry: tuple | None = None, *,
                      reset: Array | None = None, key: Array | None = None):
        """Teacher-forced top-layer states. inputs ``(b, t)`` or ``(b, t, d)`` ->
        ``(hidden (t, b, h) time-major, carry)``. ``reset`` ``(b,)`` bool zeroes those rows'
        carry first (a row that starts a new sequence)."""
        self._check_inputs(inputs, time_axis=True)
        batch = inputs.shape[0]
        carry = self.init_carry(batch) if carry is None else carry
        if reset is not None:
            carry = reset_carry(carry, reset)
        # Time-major from here on: lax.scan walks the leading axis, and transposing the inputs is
        # cheaper than transposing the (t, b, G) projections.
        projected = self.project_inputs(jnp.swapaxes(inputs, 0, 1))
        return self.run_layers(projected, carry, key=key)

    def __call__(self, inputs: Array, carry: tuple | None = None, *, reset: Array | None = None,
                 key: Array | None = None):
        """Teacher forced: inputs ``(b, t)`` tokens or ``(b, t, d)`` values ->
        ``(outputs, carry)``, outputs the head's parameters for every step with leading ``(b, t)``
        (logits ``(b, t, V)`` for tokens). ``outputs[:, i]`` predicts element ``i + 1``.
        ``reset`` ``(b,)`` zeroes the carry of those rows first; ``key`` drives dropout."""
        hidden, carry = self.hidden_states(inputs, carry, reset=reset, key=key)
        return self._in_data_units(self.head(jnp.swapaxes(hidden, 0, 1)), inputs), carry

    def step(self, x_t: Array, carry: tuple, *, key: Array | None = None, table: Array | None = None):
        """One step through every layer: ``x_t`` ``(b,)`` tokens or ``(b, d)`` values ->
        ``(out_t, carry)`` with ``out_t`` the head's parameters ``(b, ...)``: the length-1 case
        of the teacher-forced call.

        ``key`` drives dropout in train mode (the model's own RNG stream when omitted; pass a key
        inside ``lax.scan``). ``table`` is the precomputed :meth:`input_table`, so a scan over
        steps builds it once."""
        projected = self.project_inputs(x_t, table)[None]
        hidden, carry = self.run_layers(projected, carry, key=key)
        return self._in_data_units(self.head(hidden[0]), x_t), carry

    def _in_data_units(self, outputs, inputs: Array):
        """With ``input_scaling``, the head's parameters scaled back by each input's scale (read
        from the input itself, so both modes agree); else ``outputs`` as they are."""
        if not self.config.input_scaling:
            return outputs
        size = self.config.target_size
        return self.head.rescale(outputs, jnp.exp(inputs[..., size : 2 * size]))


def _masked_recur(cell, carry, scanned):
    """One ``recur`` that leaves the carry of inactive rows as it was. scanned: ``(xp (b, G),
    active (b,))``."""
    xp, active = scanned
    updated, output = cell.recur(carry, xp)
    carry = jax.tree.map(
        lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
        updated, carry)
    # An inactive row's output feeds only the next layer's inactive (frozen) step.
    return carry, output


def reset_carry(carry, reset: Array):
    """Zero the carry of the rows where ``reset`` ``(b,)`` is True (any carry pytree with leading
    batch axes)."""
    def zero_rows(leaf):
        keep = jnp.logical_not(reset).reshape((-1,) + (1,) * (leaf.ndim - 1))
        return jnp.where(keep, leaf, jnp.zeros_like(leaf))

    return jax.tree.map(zero_rows, carry)
