"""seqmodel: autoregressive recurrent sequence models in JAX (Flax NNX + Optax).

Public API (re-exports only)::

    import seqmodel as sm
    model = sm.SequenceModel(sm.ModelConfig(vocab_size=65), rngs=nnx.Rngs(0))
"""

from seqmodel.beam import BeamSearchResult, beam_search
from seqmodel.cells import ElmanCell, GRUCell, LSTMCell
from seqmodel.data import Batch, ByteTokenizer, CharTokenizer, DataError, TextDataset, load_dataset
from seqmodel.data.numeric import Normalizer, NumericDataset
from seqmodel.distributed import DataParallel, DistributedError
from seqmodel.errors import CheckpointError
from seqmodel.fit import FitResult, TrainingError, fit
from seqmodel.forecast import crps_from_samples, exposure_bias_report, sample_paths
from seqmodel.generate import Generation, generate, generate_stream
from seqmodel.heads import (
    Bernoulli, Categorical, Gaussian, MixtureGaussian, NegativeBinomial, StudentT,
)
from seqmodel.interop import from_torch, to_torch
from seqmodel.model import ModelConfig, SequenceModel
from seqmodel.train import (
    EvalResult,
    TrainConfig,
    TrainState,
    evaluate,
    init_train_state,
    make_multi_step,
    make_optimizer,
    make_train_step,
    stack_batches,
)

from seqmodel._version import __version__  # noqa: F401  (the package version)


def __getattr__(name):
    # Checkpoint functions import orbax, which is slow to import: only on first use.
    if name in ("load_model", "RunCheckpoints"):
        from seqmodel import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'seqmodel' has no attribute {name!r}")


__all__ = [
    "Batch",
    "BeamSearchResult",
    "Bernoulli",
    "ByteTokenizer",
    "CharTokenizer",
    "Categorical",
    "CheckpointError",
    "DataError",
    "DataParallel",
    "DistributedError",
    "ElmanCell",
    "EvalResult",
    "FitResult",
    "GRUCell",
    "Gaussian",
    "Generation",
    "LSTMCell",
    "MixtureGaussian",
    "ModelConfig",
    "NegativeBinomial",
    "Normalizer",
    "NumericDataset",
    "SequenceModel",
    "StudentT",
    "TextDataset",
    "TrainConfig",
    "TrainState",
    "TrainingError",
    "beam_search",
    "crps_from_samples",
    "evaluate",
    "exposure_bias_report",
    "fit",
    "from_torch",
    "generate",
    "generate_stream",
    "init_train_state",
    "load_dataset",
    "load_model",
    "make_multi_step",
    "make_optimizer",
    "make_train_step",
    "sample_paths",
    "stack_batches",
    "to_torch",
]
