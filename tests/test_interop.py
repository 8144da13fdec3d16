"""seqmodel.interop against PyTorch itself: the same outputs as nn.LSTM / nn.GRU / nn.RNN stacks
(with nn.Embedding and nn.Linear), exact weight round trips, clear errors for what cannot map."""

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="seqmodel.interop's tests compare against PyTorch, "
                            "which is not installed (pip install 'seqmodel[interop]')")

from seqmodel import interop  # noqa: E402
from seqmodel.nn.model import ModelConfig, SequenceModel  # noqa: E402

VOCAB, EMBED, HIDDEN, BATCH, TIME = 11, 5, 7, 3, 6
TORCH_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}


def torch_stack(cell: str, layers: int, *, batch_first: bool = True, seed: int = 0):
    """Embedding -> recurrent stack -> Linear with PyTorch's random initialisation."""
    torch.manual_seed(seed)
    return (torch.nn.Embedding(VOCAB, EMBED),
            TORCH_CLASSES[cell](EMBED, HIDDEN, num_layers=layers, batch_first=batch_first),
            torch.nn.Linear(HIDDEN, VOCAB))


def tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (BATCH, TIME)).astype(np.int32)


def torch_forward(modules, inputs: np.ndarray):
    """(logits (b, t, V), final hidden states (layers, b, h)) of PyTorch, from (b, t) tokens."""
    embedding, rnn, linear = modules
    with torch.no_grad():
        embedded = embedding(torch.from_numpy(inputs).long())
        if not rnn.batch_first:
            embedded = embedded.transpose(0, 1)
        outputs, state = rnn(embedded)
        if not rnn.batch_first:
            outputs = outputs.transpose(0, 1)
        hidden = state[0] if isinstance(state, tuple) else state
        return linear(outputs).numpy(), hidden.numpy()


def final_hidden(carry) -> np.ndarray:
    """Our per-layer carry as PyTorch's h_n (layers, b, h): an LSTM carry is (c, h)."""
    return np.stack([np.asarray(layer[1] if isinstance(layer, tuple) else layer)
                     for layer in carry])


def randomized(model: SequenceModel, seed: int = 0) -> SequenceModel:
    """Every parameter redrawn (the GRU's zero recurrent bias included), so that no mapping
    error hides behind a zero or a symmetric initialisation."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    for _, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Param):
            value = variable.get_value()
            variable.set_value(0.5 * jax.random.normal(next(keys), value.shape, value.dtype))
    return model


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_outputs_equal_pytorch(cell, layers, batch_first):
    modules = torch_stack(cell, layers, batch_first=batch_first, seed=layers)
    embedding, rnn, linear = modules
    model = interop.from_torch(rnn, embedding=embedding, head=linear)
    assert (model.config.cell, model.config.num_layers, model.config.vocab_size) == (
        cell, layers, VOCAB)
    inputs = tokens(layers)
    logits, carry = model(inputs)
    expected_logits, expected_hidden = torch_forward(modules, inputs)
    np.testing.assert_allclose(np.asarray(logits), expected_logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(final_hidden(carry), expected_hidden, rtol=0, atol=1e-5)


def test_elman_rnn_equals_pytorch_rnn():
    modules = torch_stack("elman", 2)
    model = interop.from_torch(modules[1], embedding=modules[0], head=modules[2])
    logits, _ = model(tokens())
    np.testing.assert_allclose(np.asarray(logits), torch_forward(modules, tokens())[0],
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman"])
def test_round_trip_returns_the_same_weights(cell):
    config = ModelConfig(vocab_size=VOCAB, cell=cell, hidden_size=HIDDEN, num_layers=2,
                         embed_size=EMBED)
    model = randomized(SequenceModel(config, rngs=nnx.Rngs(1)))
    embedding, rnn, linear = interop.to_torch(model)
    assert rnn.batch_first and isinstance(rnn, TORCH_CLASSES[cell])
    back = interop.from_torch(rnn, embedding=embedding, head=linear)
    assert back.config == model.config
    original = nnx.to_flat_state(nnx.state(model, nnx.Param))
    returned = dict(nnx.to_flat_state(nnx.state(back, nnx.Param)))
    assert [path for path, _ in original] == list(returned)
    for path, variable in original:
        np.testing.assert_array_equal(np.asarray(returned[path].get_value()),
                                      np.asarray(variable.get_value()), err_msg=str(path))
    # and the torch modules compute what the model computes
    logits, _ = model(tokens())
    np.testing.assert_allclose(torch_forward((embedding, rnn, linear), tokens())[0],
                               np.asarray(logits), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_to_seqmodel_to_torch_gives_the_same_outputs(cell):
    modules = torch_stack(cell, 2, batch_first=False)
    with torch.no_grad():  # nonzero recurrent biases everywhere (PyTorch draws them already)
        for parameter in modules[1].parameters():
            parameter.mul_(3.0)
    again = interop.to_torch(interop.from_torch(modules[1], embedding=modules[0],
                                                head=modules[2]))
    np.testing.assert_allclose(torch_forward(again, tokens())[0],
                               torch_forward(modules, tokens())[0], rtol=0, atol=1e-5)


def test_state_dict_of_a_whole_model_with_prefixes():
    embedding, rnn, linear = torch_stack("lstm", 2)
    whole = torch.nn.ModuleDict({"encoder": embedding, "lstm": rnn, "decoder": linear})
    state = whole.state_dict()
    # The recurrent keys are found on their own; the parts are named by prefix (dot optional).
    model = interop.from_torch(state, embedding="encoder.", head="decoder")
    logits, _ = model(tokens())
    np.testing.assert_allclose(np.asarray(logits),
                               torch_forward((embedding, rnn, linear), tokens())[0],
                               rtol=0, atol=1e-5)
    # Plain NumPy arrays and each part's own state dict work the same way.
    arrays = {key: value.numpy() for key, value in rnn.state_dict().items()}
    same = interop.from_torch(arrays, embedding=embedding.state_dict(), head=linear)
    np.testing.assert_array_equal(np.asarray(same(tokens())[0]), np.asarray(logits))
    with pytest.raises(ValueError, match="embedding='embed'.*no key 'embed.weight'.*encoder"):
        interop.from_torch(state, embedding="embed")


def test_real_valued_stack_fills_the_gaussian_head():
    torch.manual_seed(0)
    gru, linear = torch.nn.GRU(2, HIDDEN, batch_first=True), torch.nn.Linear(HIDDEN, 4)
    model = interop.from_torch(gru, head=linear)
    assert (model.config.input_size, model.config.head) == (2, "gaussian")
    values = np.random.default_rng(0).normal(size=(BATCH, TIME, 2)).astype(np.float32)
    params, _ = model(values)
    with torch.no_grad():
        expected = linear(gru(torch.from_numpy(values))[0]).numpy()
    np.testing.assert_allclose(np.asarray(params.mean), expected[..., :2], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"head weight.*shape \(7, 5\).*needs \(7, 4\)"):
        interop.from_torch(gru, head=torch.nn.Linear(HIDDEN, 5))


def test_what_cannot_map_is_a_clear_error():
    with pytest.raises(ValueError, match="LSTM.bidirectional=True is not supported"):
        interop.from_torch(torch.nn.LSTM(EMBED, HIDDEN, bidirectional=True))
    state = torch.nn.LSTM(EMBED, HIDDEN, bidirectional=True).state_dict()
    with pytest.raises(ValueError, match="bidirectional=True is not supported"):
        interop.from_torch(state)
    with pytest.raises(ValueError, match="LSTM.proj_size=3 is not supported"):
        interop.from_torch(torch.nn.LSTM(EMBED, HIDDEN, proj_size=3))
    with pytest.raises(ValueError, match="RNN.nonlinearity='relu' is not supported"):
        interop.from_torch(torch.nn.RNN(EMBED, HIDDEN, nonlinearity="relu"))
    with pytest.raises(ValueError, match="must be nn.LSTM, nn.GRU or .*got Linear"):
        interop.from_torch(torch.nn.Linear(EMBED, HIDDEN))
    with pytest.raises(ValueError, match="embedding must be an nn.Embedding.*got Linear"):
        interop.from_torch(torch.nn.GRU(EMBED, HIDDEN), embedding=torch.nn.Linear(2, EMBED))
    with pytest.raises(ValueError, match="got hidden_size=4, which the weights decide"):
        interop.from_torch(torch.nn.GRU(EMBED, HIDDEN), hidden_size=4)
    with pytest.raises(ValueError, match="ModelConfig.cell='mingru'"):
        model = SequenceModel(ModelConfig(vocab_size=VOCAB, hidden_size=HIDDEN), rngs=nnx.Rngs(0))
        object.__setattr__(model.config, "cell", "mingru")  # a cell PyTorch has no module for
        interop.to_torch(model)


def test_dropout_between_layers_maps():
    embedding, _, linear = torch_stack("gru", 2)
    model = interop.from_torch(torch.nn.GRU(EMBED, HIDDEN, num_layers=2, dropout=0.3),
                               embedding=embedding, head=linear, dropout=0.3)
    assert model.config.dropout == 0.3
    assert interop.to_torch(model).rnn.dropout == 0.3
