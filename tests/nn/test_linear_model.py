"""The linear recurrences inside SequenceModel: the fit loop, exact resume and the CLI.

(The step/scan equalities of the cells and blocks are in tests/test_linear.py; the model-level
teacher-forced/step and generate-score equalities cover every cell in tests/test_model.py and
tests/test_generate.py.)
"""

import jax
import numpy as np
import pytest
from flax import nnx

from seqmodel import ModelConfig, SequenceModel
from seqmodel.cli import main
from seqmodel.data import ByteTokenizer, TextDataset
from seqmodel.training.fitting import fit
from seqmodel.training.optimization import TrainConfig

VOCAB = 6


def dataset():
    tokens = ((np.arange(1200) * 7 // 3) % VOCAB).astype(np.uint8)
    data = TextDataset(tokens, ByteTokenizer(), val_fraction=0.1, name="pattern")
    data.model_fields = lambda: {"vocab_size": VOCAB}
    return data


def model(cell):
    config = ModelConfig(vocab_size=VOCAB, cell=cell, hidden_size=8, embed_size=4, num_layers=2,
                         dropout=0.1, scan="chunked", chunk_size=4)
    return SequenceModel(config, rngs=nnx.Rngs(1))


CONFIG = TrainConfig(steps=8, batch_size=2, seq_len=6, eval_every=4, eval_batch_size=2,
                     eval_seq_len=6, warmup_steps=2, log_every=1, steps_per_call=2)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["rglru", "mingru"])
def test_stopped_and_resumed_run_equals_uninterrupted(cell, tmp_path):
    straight = fit(model(cell), dataset(), CONFIG, out_dir=tmp_path / "straight", progress=False)
    first = fit(model(cell), dataset(), CONFIG, out_dir=tmp_path / "resumed", progress=False,
                callback=lambda step, metrics: step >= 5)
    assert first.interrupted and first.steps < CONFIG.steps
    resumed = fit(model(cell), dataset(), CONFIG, out_dir=tmp_path / "resumed", resume=True,
                  progress=False)
    assert resumed.steps == CONFIG.steps and np.isfinite(resumed.val_loss)
    for got, want in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(straight.state.params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow
def test_cli_trains_and_samples_a_linear_recurrence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    common = ["--cell", "minlstm", "--scan", "associative", "--hidden-size", "8",
              "--embed-size", "8", "--num-layers", "2", "--batch-size", "2", "--seq-len", "8",
              "--no-progress", "--devices", "1"]
    assert main(["train", "--data", "corpus.txt", "--steps", "6", "--out", "run", *common]) == 0
    assert main(["sample", "--checkpoint", "run", "--prompt", "the ", "--steps", "20"]) == 0
    assert capsys.readouterr().out.strip()
