"""PyTorch weights in and out: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` stacks (with an optional
``nn.Embedding`` in front and ``nn.Linear`` head) to a :class:`~seqmodel.nn.model.SequenceModel`
and back.

- :func:`from_torch` builds a model from torch modules, or from a state dict (e.g. a whole
  model's ``torch.load(...)``) with the key prefix of each part.
- :func:`to_torch` returns ``TorchModules(embedding, rnn, head)`` holding the model's weights,
  ``batch_first=True``.

The conventions the two functions translate (shapes: ``h`` hidden, ``G`` gate width):

- PyTorch weights are ``(G, in)`` matrices applied as ``x @ W.T``; seqmodel kernels are ``(in, G)``
  (``input_kernel``, ``recurrent_kernel``).
- LSTM: PyTorch's gate order is ``[i, f, g, o]``, seqmodel's ``[i, f, o, g]``; seqmodel has one
  bias, so :func:`from_torch` sums ``b_ih + b_hh`` and :func:`to_torch` puts the bias into
  ``bias_ih`` and zeros ``bias_hh``.
- GRU: seqmodel follows PyTorch's equations (gate order ``[r, z, n]``, the reset gate applied to
  ``W_hn h + b_hn``): ``bias`` is ``b_ih`` and ``recurrent_bias`` is ``b_hh``, unchanged.
- ``nn.RNN`` (tanh) is seqmodel's ``"elman"`` cell, one bias ``b_ih + b_hh``.

Dropout between layers has no weights and maps as it is; what has no seqmodel counterpart
(``bidirectional=True``, ``proj_size > 0``, ``nonlinearity='relu'``, other module types) is a
``ValueError`` that names the attribute. Nothing here imports torch until a torch module is given
or made, so a state dict of NumPy arrays loads without PyTorch installed.

Example::

    import torch
    import seqmodel as sm

    embedding = torch.nn.Embedding(65, 64)
    lstm = torch.nn.LSTM(64, 256, num_layers=2, batch_first=True)
    linear = torch.nn.Linear(256, 65)
    model = sm.from_torch(lstm, embedding=embedding, head=linear)
    logits, carry = model(tokens)      # tokens (b, t) int -> (b, t, 65) = linear(lstm(embedding(tokens))[0])

    # A whole model's checkpoint: the prefix of each part's keys.
    model = sm.from_torch(torch.load("char_rnn.pt"), embedding="encoder.", head="decoder.")

    embedding, lstm, linear = sm.to_torch(model)
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqmodel.nn.model import ModelConfig, SequenceModel

# Gate blocks per cell, as PyTorch stacks them along the weights' first axis.
GATES = {"lstm": 4, "gru": 3, "elman": 1}
TORCH_CLASS_NAMES = {"lstm": "LSTM", "gru": "GRU", "elman": "RNN"}
# ModelConfig fields that from_torch reads off the weights (the others may be passed on).
_FIELDS_FROM_WEIGHTS = ("vocab_size", "input_size", "cell", "hidden_size", "num_layers",
                        "embed_size", "head")


class TorchModules(NamedTuple):
    """What :func:`to_torch` returns; ``linear(rnn(embedding(tokens))[0])`` is the model's output.

    Attributes:
        embedding: ``nn.Embedding(V, E)``, or ``None`` for a real-valued model (inputs
            ``(b, t, d)`` go straight into ``rnn``).
        rnn: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``, ``batch_first=True``: ``(b, t, in)`` ->
            ``(b, t, h)``.
        head: ``nn.Linear(h, width)``: the logits ``(b, t, V)`` of a categorical head; for
            real-valued heads the raw parameters the head reads (see :mod:`seqmodel.nn.heads`).
    """

    embedding: Any
    rnn: Any
    head: Any


# ---------------------------------------------------------------------------------------------
# Arrays and gate blocks
# ---------------------------------------------------------------------------------------------


def _as_array(value: Any) -> np.ndarray:
    """A float32 NumPy copy of a torch tensor (any device, any float dtype) or array-like."""
    if hasattr(value, "detach"):  # a torch tensor: bfloat16 has no NumPy twin, so via float32
        value = value.detach().to("cpu").float().numpy()
    return np.array(value, dtype=np.float32)


def _swap_cell_and_output_gates(array: np.ndarray, axis: int) -> np.ndarray:
    """``[i, f, g, o]`` <-> ``[i, f, o, g]`` along ``axis`` (its own inverse)."""
    i, f, third, fourth = np.split(array, 4, axis=axis)
    return np.concatenate([i, f, fourth, third], axis=axis)


# ---------------------------------------------------------------------------------------------
# Reading PyTorch weights
# ---------------------------------------------------------------------------------------------


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError("seqmodel.interop needs PyTorch for torch modules: "
                          "pip install 'seqmodel[interop]' (or give a state dict of arrays)"
                          ) from error
    return torch


def _check_recurrent_module(module) -> str:
    """The seqmodel cell name of a supported torch module; a ValueError naming what is not."""
    torch = _import_torch()
    kinds = {torch.nn.LSTM: "lstm", torch.nn.GRU: "gru", torch.nn.RNN: "elman"}
    cell = next((name for kind, name in kinds.items() if isinstance(module, kind)), None)
    if cell is None:
        raise ValueError(f"from_torch: the recurrent module must be nn.LSTM, nn.GRU or "
                         f"nn.RNN(nonlinearity='tanh'), got {type(module).__name__}; give one "
                         "of those, or a state dict of its weights")
    name = type(module).__name__
    if module.bidirectional:
        raise ValueError(f"from_torch: {name}.bidirectional=True is not supported: seqmodel's "
                         "models run forward in time only; use a unidirectional stack")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"from_torch: {name}.proj_size={module.proj_size} is not supported: "
                         "seqmodel's LSTM cell has no output projection; use proj_size=0")
    if cell == "elman" and module.nonlinearity != "tanh":
        raise ValueError(f"from_torch: {name}.nonlinearity={module.nonlinearity!r} is not "
                         "supported: seqmodel's 'elman' cell is tanh; use nonlinearity='tanh'")
    return cell


def _part_state(part, source_state: Mapping | None, argument: str, module_check) -> dict | None:
    """The state dict of ``part``: a module (checked by ``module_check``), its own state dict,
    or a key prefix into ``source_state`` (the state dict given as :func:`from_torch`'s source)."""
    if part is None:
        return None
    if isinstance(part, str):
        if source_state is None:
            raise ValueError(f"from_torch: {argument}={part!r} is a key prefix, which needs a "
                             "state dict as the first argument; give the module itself instead")
        prefix = part if part == "" or part.endswith(".") else part + "."
        state = {key[len(prefix):]: value for key, value in source_state.items()
                 if key.startswith(prefix)}
        if "weight" not in state:
            raise ValueError(f"from_torch: {argument}={part!r}: the state dict has no key "
                             f"{prefix + 'weight'!r}; its keys start with "
                             f"{sorted({key.split('.')[0] for key in source_state})}")
        return state
    if isinstance(part, Mapping):
        state = dict(part)
        if "weight" not in state:
            raise ValueError(f"from_torch: the state dict given as {argument} has no 'weight' "
                             f"key (keys: {sorted(state)}); give the module's own state dict")
        return state
    module_check(part)
    return dict(part.state_dict())


def _check_embedding(module) -> None:
    torch = _import_torch()
    if not isinstance(module, torch.nn.Embedding):
        raise ValueError(f"from_torch: embedding must be an nn.Embedding (or its state dict, or "
                         f"a key prefix), got {type(module).__name__}")
    if module.max_norm is not None:
        raise ValueError(f"from_torch: Embedding.max_norm={module.max_norm} is not supported: "
                         "it rescales rows at lookup time; use max_norm=None")


def _check_linear(module) -> None:
    torch = _import_torch()
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"from_torch: head must be an nn.Linear (or its state dict, or a key "
                         f"prefix), got {type(module).__name__}")


def _recurrent_prefix(state: Mapping) -> str:
    """The prefix of the one ``...weight_ih_l0`` key of a state dict."""
    prefixes = sorted(key[: -len("weight_ih_l0")] for key in state
                      if key.endswith("weight_ih_l0"))
    if len(prefixes) != 1:
        found = f"several: {prefixes}" if prefixes else "none"
        raise ValueError(f"from_torch: cannot tell the recurrent layers' keys in the state dict "
                         f"(keys ending in 'weight_ih_l0': {found}); pass rnn_prefix=")
    return prefixes[0]


def _recurrent_layers(state: Mapping, prefix: str, cell: str | None) -> tuple[str, list[dict]]:
    """``(cell, layers)``: per layer the PyTorch arrays ``weight_ih (G, in)``, ``weight_hh (G, h)``,
    ``bias_ih (G,)``, ``bias_hh (G,)`` (zeros where the module has ``bias=False``)."""
    keys = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if any(key.endswith("_reverse") for key in keys):
        raise ValueError("from_torch: bidirectional=True is not supported (the state dict has "
                         "'_reverse' weights): seqmodel's models run forward in time only")
    if any(key.startswith("weight_hr_") for key in keys):
        raise ValueError("from_torch: proj_size > 0 is not supported (the state dict has "
                         "'weight_hr_l*' weights): seqmodel's LSTM cell has no output projection")
    if "weight_ih_l0" not in keys:
        raise ValueError(f"from_torch: no key {prefix + 'weight_ih_l0'!r} in the state dict; "
                         "pass the recurrent layers' key prefix as rnn_prefix=")
    layers = []
    while f"weight_ih_l{len(layers)}" in keys:
        layer = len(layers)
        weight_ih = _as_array(keys[f"weight_ih_l{layer}"])
        weight_hh = _as_array(keys[f"weight_hh_l{layer}"])
        zeros = np.zeros((weight_hh.shape[0],), np.float32)
        layers.append({
            "weight_ih": weight_ih,
            "weight_hh": weight_hh,
            "bias_ih": _as_array(keys[f"bias_ih_l{layer}"]) if f"bias_ih_l{layer}" in keys else zeros,
            "bias_hh": _as_array(keys[f"bias_hh_l{layer}"]) if f"bias_hh_l{layer}" in keys else zeros,
        })
    hidden = layers[0]["weight_hh"].shape[1]
    gates = layers[0]["weight_hh"].shape[0] // hidden
    inferred = {count: name for name, count in GATES.items()}.get(gates)
    if cell is None:
        if inferred is None:
            raise ValueError(f"from_torch: weight_hh_l0 has shape "
                             f"{layers[0]['weight_hh'].shape}, which is no LSTM (4h, h), "
                             "GRU (3h, h) or RNN (h, h) weight")
        cell = inferred
    return cell, layers


def _cell_parameters(cell: str, layer: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """seqmodel's parameters of one layer (kernels ``(in, G)``) from PyTorch's arrays."""
    if cell == "lstm":
        return {
            "input_kernel": _swap_cell_and_output_gates(layer["weight_ih"], 0).T,
            "recurrent_kernel": _swap_cell_and_output_gates(layer["weight_hh"], 0).T,
            "bias": _swap_cell_and_output_gates(layer["bias_ih"] + layer["bias_hh"], 0),
        }
    if cell == "gru":
        return {"input_kernel": layer["weight_ih"].T, "recurrent_kernel": layer["weight_hh"].T,
                "bias": layer["bias_ih"], "recurrent_bias": layer["bias_hh"]}
    return {"input_kernel": layer["weight_ih"].T, "recurrent_kernel": layer["weight_hh"].T,
            "bias": layer["bias_ih"] + layer["bias_hh"]}


def _assign(variable: nnx.Variable, value: np.ndarray, name: str) -> None:
    current = variable.get_value()
    if tuple(value.shape) != tuple(current.shape):
        raise ValueError(f"from_torch: {name} has shape {tuple(value.shape)}, the model needs "
                         f"{tuple(current.shape)}")
    variable.set_value(jnp.asarray(value, current.dtype))


# ---------------------------------------------------------------------------------------------
# The two directions
# ---------------------------------------------------------------------------------------------


def from_torch(source, *, embedding=None, head=None, rnn_prefix: str | None = None,
               distribution: str | None = None, rngs: nnx.Rngs | None = None,
               **config: Any) -> SequenceModel:
    """A :class:`SequenceModel` holding PyTorch weights.

    Args:
        source: the recurrent stack, an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (tanh) of any
            number of layers, ``batch_first`` either way; or a state dict holding its weights
            (tensors or arrays; the cell is read off the shapes: ``weight_hh_l0`` ``(4h, h)``
            LSTM, ``(3h, h)`` GRU, ``(h, h)`` RNN).
        embedding: ``nn.Embedding(V, E)`` in front of the stack (a token model, inputs ``(b, t)``),
            its state dict, or, when ``source`` is a state dict, the prefix of its keys in it
            (``"encoder."``). ``None``: a real-valued model, inputs ``(b, t, d)``.
        head: ``nn.Linear(h, V)`` on top (the logits), its state dict or a key prefix; ``None``
            keeps the freshly initialised head (drawn from ``rngs``).
        rnn_prefix: with a state dict, the prefix of the recurrent layers' keys (``"rnn."``);
            found on its own when exactly one key ends in ``weight_ih_l0``.
        distribution: the model's head (``ModelConfig.head``): ``"categorical"`` with an
            embedding (the default), else ``"gaussian"`` (default), ``"mdn"`` or ``"bernoulli"``;
            a given ``head`` then fills that head's output layer.
        rngs: initialises what the weights do not give (default ``nnx.Rngs(0)``).
        **config: further :class:`ModelConfig` fields (``dropout``, ``dtype``,
            ``fold_embedding``, ``fast_recurrence``, ``num_mixtures``); the others come from the
            weights.

    Returns:
        The model; ``model(tokens)`` ``(b, t)`` -> logits ``(b, t, V)`` equal to
        ``head(rnn(embedding(tokens))[0])`` (``batch_first=True`` layout).

    Example::

        model = from_torch(lstm, embedding=embedding, head=linear)
        model = from_torch(torch.load("model.pt"), embedding="encoder.", head="decoder.")
    """
    derived = sorted(set(config) & set(_FIELDS_FROM_WEIGHTS))
    if derived:
        given = ", ".join(f"{name}={config[name]!r}" for name in derived)
        raise ValueError(f"from_torch: got {given}, which the weights decide; drop it (the "
                         "head's kind is distribution=; ModelConfig fields such as dropout, "
                         "dtype or fold_embedding may be passed)")
    if isinstance(source, Mapping):
        source_state = dict(source)
        prefix = _recurrent_prefix(source_state) if rnn_prefix is None else rnn_prefix
        cell, layers = _recurrent_layers(source_state, prefix, cell=None)
    else:
        if rnn_prefix is not None:
            raise ValueError(f"from_torch: rnn_prefix={rnn_prefix!r} applies to a state dict "
                             f"only, and the source is a {type(source).__name__}; drop it")
        source_state = None
        cell = _check_recurrent_module(source)
        cell, layers = _recurrent_layers(dict(source.state_dict()), "", cell=cell)
    embedding_state = _part_state(embedding, source_state, "embedding", _check_embedding)
    head_state = _part_state(head, source_state, "head", _check_linear)

    hidden_size = layers[0]["weight_hh"].shape[1]
    input_size = layers[0]["weight_ih"].shape[1]
    if embedding_state is not None:
        table = _as_array(embedding_state["weight"])
        if table.shape[1] != input_size:
            raise ValueError(f"from_torch: the embedding has {table.shape[1]} columns but the "
                             f"recurrent stack takes inputs of size {input_size}; they must match")
        sizes = dict(vocab_size=table.shape[0], embed_size=table.shape[1])
        distribution = "categorical" if distribution is None else distribution
    else:
        sizes = dict(input_size=input_size)
        distribution = "gaussian" if distribution is None else distribution
    model_config = ModelConfig(cell=cell, hidden_size=hidden_size, num_layers=len(layers),
                               head=distribution, **sizes, **config)
    model = SequenceModel(model_config, rngs=nnx.Rngs(0) if rngs is None else rngs)

    for index, (model_cell, layer) in enumerate(zip(model.cells, layers)):
        for name, value in _cell_parameters(cell, layer).items():
            _assign(getattr(model_cell, name), value, f"layer {index} {name}")
    if embedding_state is not None:
        _assign(model.embed.embedding, table, "embedding weight")
    if head_state is not None:
        weight = _as_array(head_state["weight"])
        bias = (_as_array(head_state["bias"]) if "bias" in head_state
                else np.zeros((weight.shape[0],), np.float32))
        _assign(model.head.linear.kernel, weight.T, f"head weight (transposed; {distribution} head)")
        _assign(model.head.linear.bias, bias, f"head bias ({distribution} head)")
    return model


def to_torch(model: SequenceModel) -> TorchModules:
    """PyTorch modules holding ``model``'s weights, ``batch_first=True``, in float32.

    ``model`` ``(b, t)`` -> logits ``(b, t, V)`` equals ``head(rnn(embedding(tokens))[0])``
    (``embedding`` is ``None`` for a real-valued model). The recurrent module gets the model's
    ``dropout`` between layers (seqmodel also drops out the top layer's output in train mode,
    which PyTorch's module does not).

    Example::

        embedding, lstm, linear = to_torch(model)
        logits = linear(lstm(embedding(torch.from_numpy(tokens).long()))[0])
    """
    config = model.config
    if config.cell not in GATES:
        raise ValueError(f"to_torch: ModelConfig.cell={config.cell!r} has no PyTorch module; "
                         f"supported: {', '.join(GATES)}")
    torch = _import_torch()

    def tensor(variable: nnx.Variable, transpose: bool = False, swap_gates: bool = False):
        array = np.asarray(variable.get_value(), np.float32)
        array = array.T if transpose else array
        if swap_gates:
            array = _swap_cell_and_output_gates(array, 0)
        return torch.from_numpy(np.array(array, np.float32, order="C"))  # a writable copy

    first = model.cells[0]
    rnn = getattr(torch.nn, TORCH_CLASS_NAMES[config.cell])(
        first.input_size, config.hidden_size, num_layers=config.num_layers, batch_first=True,
        dropout=config.dropout if config.num_layers > 1 else 0.0)
    swap = config.cell == "lstm"
    with torch.no_grad():
        for index, cell in enumerate(model.cells):
            getattr(rnn, f"weight_ih_l{index}").copy_(tensor(cell.input_kernel, True, swap))
            getattr(rnn, f"weight_hh_l{index}").copy_(tensor(cell.recurrent_kernel, True, swap))
            getattr(rnn, f"bias_ih_l{index}").copy_(tensor(cell.bias, False, swap))
            recurrent_bias = getattr(rnn, f"bias_hh_l{index}")
            if config.cell == "gru":
                recurrent_bias.copy_(tensor(cell.recurrent_bias))
            else:  # seqmodel's one bias is all in bias_ih
                recurrent_bias.zero_()
        embedding = None
        if config.discrete:
            embedding = torch.nn.Embedding(config.vocab_size, config.embed_size)
            embedding.weight.copy_(tensor(model.embed.embedding))
        kernel = model.head.linear.kernel
        head = torch.nn.Linear(*kernel.get_value().shape)
        head.weight.copy_(tensor(kernel, transpose=True))
        head.bias.copy_(tensor(model.head.linear.bias))
    return TorchModules(embedding, rnn, head)
