"""SequenceModel: encoder -> stacked recurrent cells -> output head, in two modes.

- ``model(inputs, carry)``: teacher forced over a whole ``(b, t)`` / ``(b, t, d)`` sequence. The
  input projection of every step is one matmul (or one gather, see ``fold_embedding``), then
  ``lax.scan`` runs only the recurrence, and the head is applied to all steps at once.
- ``model.step(x_t, carry)``: one element through every layer, for free running. It calls the same
  ``project`` and ``recur`` functions, so the two modes compute the same numbers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqmodel.configs import ModelConfig  # noqa: F401  (re-exported: the model's configuration)
from seqmodel.nn import blocks
from seqmodel.nn import cells as cells_module
from seqmodel.nn import heads as heads_module
from seqmodel.nn import linear as linear_module
from seqmodel.nn import sequence_parallel

Array = jax.Array

# Every recurrence a layer can run: the serial cells, then the linear recurrences (as blocks).
CELLS = (*cells_module.CELLS, *linear_module.CELLS)

def _make_layer(config: ModelConfig, input_size: int, rngs: nnx.Rngs):
    """One layer: a serial cell, or a residual block around a linear recurrence."""
    dtype = config.compute_dtype
    if config.linear:
        return blocks.ResidualBlock(
            input_size, config.hidden_size, rngs=rngs, dtype=dtype, cell=config.cell,
            expansion=config.expansion, mlp_expansion=config.mlp_expansion, scan=config.scan,
            chunk_size=config.chunk_size, remat=config.remat)
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
        # ModelConfig.input_skip: the head reads hidden + W x_t. W starts at zero and is made
        # last (after every random draw), so a new model starts as the network without it.
        self.input_skip = (nnx.Linear(config.input_size, config.hidden_size, use_bias=False,
                                      kernel_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)
                           if config.input_skip else None)

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
        if sequence_parallel.current() is not None:
            # A time split (the train step of a "sequence" mesh) needs every layer to scan in
            # parallel over time: no serial cell, no per-step feeding or masking.
            if not self.config.linear:
                sequence_parallel.refuse_serial(self.config.cell)
            if active is not None:
                raise sequence_parallel.SequenceSplitError(
                    "a run with per-row lengths or fed-back samples (prompts, scheduled "
                    "sampling) steps through time and cannot split it over devices")
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
        head_input = self._with_skip(jnp.swapaxes(hidden, 0, 1), inputs)
        return self._in_data_units(self.head(head_input), inputs), carry

    def step(self, x_t: Array, carry: tuple, *, key: Array | None = None, table: Array | None = None):
        """One step through every layer: ``x_t`` ``(b,)`` tokens or ``(b, d)`` values ->
        ``(out_t, carry)`` with ``out_t`` the head's parameters ``(b, ...)``: the length-1 case
        of the teacher-forced call.

        ``key`` drives dropout in train mode (the model's own RNG stream when omitted; pass a key
        inside ``lax.scan``). ``table`` is the precomputed :meth:`input_table`, so a scan over
        steps builds it once."""
        projected = self.project_inputs(x_t, table)[None]
        hidden, carry = self.run_layers(projected, carry, key=key)
        return self._in_data_units(self.head(self._with_skip(hidden[0], x_t)), x_t), carry

    def _with_skip(self, hidden: Array, inputs: Array) -> Array:
        """What the head reads: ``hidden`` ``(..., h)``, plus ``W inputs`` ``(..., d)`` with
        ``input_skip`` (both modes call it, so they agree)."""
        if self.input_skip is None:
            return hidden
        return hidden + self.input_skip(inputs).astype(hidden.dtype)

    def _in_data_units(self, outputs, inputs: Array):
        """With ``input_scaling``, the head's parameters scaled back by each input's scale (and
        moved back by its location with ``input_location``), and with ``anchor_index`` moved by
        the anchor's value (the mean of ``anchor_indices``' values where given; in the input's
        scaled units, so by its value in data units), all
        read from the input itself so that both modes agree; else ``outputs`` as they are."""
        config = self.config
        if not config.input_scaling and config.anchor_index is None:
            return outputs
        size = config.target_size or config.input_size
        scale = (jnp.exp(inputs[..., size : 2 * size]) if config.input_scaling
                 else jnp.ones(inputs.shape[:-1] + (size,), inputs.dtype))
        loc = inputs[..., 2 * size : 3 * size] if config.input_location else None
        if config.anchor_index is not None:
            if config.anchor_indices:  # the mean of several anchors' values
                anchor = jnp.mean(jnp.stack([inputs[..., index : index + size]
                                             for index in config.anchor_indices]), axis=0)
            else:
                anchor = inputs[..., config.anchor_index : config.anchor_index + size]
            # loc + scale * (anchor + X): the anchor's own value plus the predicted distance.
            loc = scale * anchor if loc is None else loc + scale * anchor
        return self.head.rescale(outputs, scale, loc)


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
