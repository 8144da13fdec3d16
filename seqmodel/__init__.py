"""seqmodel: autoregressive recurrent sequence models in JAX (Flax NNX + Optax).

Public API (re-exports only)::

    import seqmodel as sm
    model = sm.SequenceModel(sm.ModelConfig(vocab_size=65), rngs=nnx.Rngs(0))
"""

from seqmodel.cells import ElmanCell, GRUCell, LSTMCell
from seqmodel.data.numeric import Normalizer, NumericDataset
from seqmodel.forecast import crps_from_samples, exposure_bias_report, sample_paths
from seqmodel.generate import Generation, generate, generate_stream
from seqmodel.heads import Bernoulli, Categorical, Gaussian, MixtureGaussian
from seqmodel.model import ModelConfig, SequenceModel

__version__ = "0.1.0"

__all__ = [
    "Bernoulli",
    "Categorical",
    "ElmanCell",
    "GRUCell",
    "Gaussian",
    "Generation",
    "LSTMCell",
    "MixtureGaussian",
    "ModelConfig",
    "Normalizer",
    "NumericDataset",
    "SequenceModel",
    "crps_from_samples",
    "exposure_bias_report",
    "generate",
    "generate_stream",
    "sample_paths",
]
