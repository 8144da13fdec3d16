"""SequenceModel: encoder -> stacked recurrent cells -> output head, in two modes.

- ``model(inputs, carry)``: teacher forced over a whole ``(b, t)`` / ``(b, t, d)`` sequence. The
  input projection of every step is one matmul (or one gather, see ``fold_embedding``), then
  ``lax.scan`` runs only the recurrence, and the head is applied to all steps at once.
- ``model.step(x_t, carry)``: one element through every layer, for free running. It calls the same
  ``project`` and ``recur`` functions, so the two modes compute the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqmodel import heads as heads_module
from seqmodel.cells import CELLS
from seqmodel.configs import DictConfig

Array = jax.Array

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
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 1
    embed_size: int = 64
    dropout: float = 0.0
    head: str = "categorical"
    num_mixtures: int = 5
    dtype: str = "float32"
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
        for field in ("vocab_size", "input_size"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                bad(field, "must be a positive integer")
        if self.cell not in CELLS:
            bad("cell", f"allowed: {', '.join(sorted(CELLS))}")
        for field in ("hidden_size", "num_layers", "embed_size", "num_mixtures"):
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
        if self.input_size is not None and self.head == "categorical":
            real_valued = ", ".join(repr(name) for name in heads_module.HEADS
                                    if name != "categorical")
            bad("head", f"real-valued inputs (input_size) need one of {real_valued}; for "
                "tokens give vocab_size instead of input_size")

    @property
    def discrete(self) -> bool:
        """True for token sequences."""
        return self.vocab_size is not None

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[self.dtype]



def _make_head(config: ModelConfig, rngs: nnx.Rngs):
    h, dtype = config.hidden_size, config.compute_dtype
    if config.head == "categorical":
        return heads_module.Categorical(h, config.vocab_size, rngs=rngs, dtype=dtype)
    if config.head == "mdn":
        return heads_module.MixtureGaussian(
            h, config.input_size, config.num_mixtures, rngs=rngs, dtype=dtype
        )
    real_valued = {
        "gaussian": heads_module.Gaussian,
        "bernoulli": heads_module.Bernoulli,
        "student_t": heads_module.StudentT,
        "negbin": heads_module.NegativeBinomial,
    }
    return real_valued[config.head](h, config.input_size, rngs=rngs, dtype=dtype)


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
        cell_class = CELLS[config.cell]
        self.cells = nnx.List(
            [
                cell_class(first_input if layer == 0 else config.hidden_size, config.hidden_size,
                           rngs=rngs, dtype=dtype, fast_recurrence=config.fast_recurrence)
                for layer in range(config.num_layers)
            ]
        )
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.head = _make_head(config, rngs)

    # -- carry ------------------------------------------------------------------------------

    def init_carry(self, batch_size: int) -> tuple:
        """Zero carry: a tuple with one cell carry per layer, each leaf ``(batch_size, h)``."""
        return tuple(cell.initialize_carry(batch_size) for cell in self.cells)

    # -- input half of layer 0 ----------------------------------------------------------------

    def input_table(self) -> Array:
        """The folded ``(V, G)`` table ``embedding @ W_i + b`` of layer 0 (token models)."""
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

    # -- the two modes --------------------------------------------------------------------------

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

    def hidden_states(self, inputs: Array, carry: tuple | None = None):
        """Teacher-forced top-layer states. inputs ``(b, t)`` or ``(b, t, d)`` ->
        ``(hidden (t, b, h) time-major, carry)``. Dropout acts between layers in train mode."""
        self._check_inputs(inputs, time_axis=True)
        batch = inputs.shape[0]
        carry = self.init_carry(batch) if carry is None else carry
        # Time-major from here on: lax.scan walks the leading axis, and transposing the inputs is
        # cheaper than transposing the (t, b, G) projections.
        hidden = None
        new_carry = []
        for layer, cell in enumerate(self.cells):
            if layer == 0:
                xp = self.project_inputs(jnp.swapaxes(inputs, 0, 1))
            else:
                xp = cell.project(self.dropout(hidden))
            layer_carry, hidden = cell.scan(carry[layer], xp)
            new_carry.append(layer_carry)
        return self.dropout(hidden), tuple(new_carry)

    def __call__(self, inputs: Array, carry: tuple | None = None):
        """Teacher forced: inputs ``(b, t)`` tokens or ``(b, t, d)`` values ->
        ``(outputs, carry)``, outputs the head's parameters for every step with leading ``(b, t)``
        (logits ``(b, t, V)`` for tokens). ``outputs[:, i]`` predicts element ``i + 1``."""
        hidden, carry = self.hidden_states(inputs, carry)
        return self.head(jnp.swapaxes(hidden, 0, 1)), carry

    def step(self, x_t: Array, carry: tuple, *, key: Array | None = None, table: Array | None = None):
        """One step through every layer: ``x_t`` ``(b,)`` tokens or ``(b, d)`` values ->
        ``(out_t, carry)`` with ``out_t`` the head's parameters ``(b, ...)``.

        ``key`` drives dropout in train mode (the model's own RNG stream when omitted; pass a key
        inside ``lax.scan``). ``table`` is the precomputed :meth:`input_table`, so a scan over
        steps builds it once."""
        hidden = None
        new_carry = []
        for layer, cell in enumerate(self.cells):
            if layer == 0:
                xp = self.project_inputs(x_t, table)
            else:
                xp = cell.project(self._step_dropout(hidden, key, layer))
            layer_carry, hidden = cell.recur(carry[layer], xp)
            new_carry.append(layer_carry)
        hidden = self._step_dropout(hidden, key, len(self.cells))
        return self.head(hidden), tuple(new_carry)

    def _step_dropout(self, hidden: Array, key: Array | None, layer: int) -> Array:
        if key is None:
            return self.dropout(hidden)
        return self.dropout(hidden, rngs=jax.random.fold_in(key, layer))
