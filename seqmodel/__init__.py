"""seqmodel: autoregressive recurrent sequence models in JAX (Flax NNX + Optax).

Public API (re-exports only)::

    import seqmodel as sm
    model = sm.SequenceModel(sm.ModelConfig(vocab_size=65), rngs=nnx.Rngs(0))

The names are imported on first use (:func:`__getattr__`): ``import seqmodel`` alone, and so the
``seqmodel`` command's ``--help``, does not import JAX, Flax or orbax.
"""

import importlib
from typing import TYPE_CHECKING

from seqmodel._version import __version__  # noqa: F401  (the package version)

# The public names, by the module that defines them. A name is imported from its module the first
# time it is read (seqmodel.SequenceModel), so importing the package stays cheap.
_EXPORTS = {
    "seqmodel.decoding.beam": ("BeamSearchResult", "beam_search"),
    "seqmodel.nn.cells": ("ElmanCell", "GRUCell", "LSTMCell"),
    "seqmodel.training.checkpoint": ("RunCheckpoints", "load_model"),
    "seqmodel.data": ("Batch", "ByteTokenizer", "CharTokenizer", "DataError", "SeriesDataset",
                      "TextDataset", "load_dataset"),
    "seqmodel.data.normalization": ("Normalizer",),
    "seqmodel.data.preparation": ("Preparation",),
    "seqmodel.data.series": ("NumericDataset",),
    "seqmodel.training.distributed": ("DataParallel", "DistributedError"),
    "seqmodel.errors": ("CheckpointError", "TrainingError", "UserError"),
    "seqmodel.training.fitting": ("FitResult", "fit"),
    "seqmodel.forecasting.forecaster": ("Forecast", "Forecaster"),
    "seqmodel.forecasting.paths": ("sample_paths",),
    "seqmodel.forecasting.reports": ("exposure_bias_report",),
    "seqmodel.forecasting.scores": ("crps_from_samples",),
    "seqmodel.decoding.generate": ("Generation", "generate", "generate_stream"),
    "seqmodel.nn.heads": ("Bernoulli", "Categorical", "Gaussian", "MixtureGaussian",
                       "NegativeBinomial", "StudentT"),
    "seqmodel.interop": ("from_torch", "to_torch"),
    "seqmodel.nn.model": ("ModelConfig", "SequenceModel"),
    "seqmodel.training.evaluation": ("EvalResult", "evaluate"),
    "seqmodel.training.optimization": ("TrainConfig", "TrainState", "init_train_state",
                                       "make_multi_step", "make_optimizer", "make_train_step",
                                       "stack_batches"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from seqmodel.data import (
        Batch,
        ByteTokenizer,
        CharTokenizer,
        DataError,
        SeriesDataset,
        TextDataset,
        load_dataset,
    )
    from seqmodel.data.normalization import Normalizer
    from seqmodel.data.preparation import Preparation
    from seqmodel.data.series import NumericDataset
    from seqmodel.decoding.beam import BeamSearchResult, beam_search
    from seqmodel.decoding.generate import Generation, generate, generate_stream
    from seqmodel.errors import CheckpointError, TrainingError, UserError
    from seqmodel.forecasting.forecaster import Forecast, Forecaster
    from seqmodel.forecasting.paths import sample_paths
    from seqmodel.forecasting.reports import exposure_bias_report
    from seqmodel.forecasting.scores import crps_from_samples
    from seqmodel.interop import from_torch, to_torch
    from seqmodel.nn.cells import ElmanCell, GRUCell, LSTMCell
    from seqmodel.nn.heads import (
        Bernoulli,
        Categorical,
        Gaussian,
        MixtureGaussian,
        NegativeBinomial,
        StudentT,
    )
    from seqmodel.nn.model import ModelConfig, SequenceModel
    from seqmodel.training.checkpoint import RunCheckpoints, load_model
    from seqmodel.training.distributed import DataParallel, DistributedError
    from seqmodel.training.evaluation import EvalResult, evaluate
    from seqmodel.training.fitting import FitResult, fit
    from seqmodel.training.optimization import (
        TrainConfig,
        TrainState,
        init_train_state,
        make_multi_step,
        make_optimizer,
        make_train_step,
        stack_batches,
    )

def __getattr__(name: str):
    """A public name, imported from its module on first use (then cached in the package); a
    submodule (``seqmodel.training.optimization``), imported on first use too."""
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise  # the submodule exists but imports something missing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Batch",
    "BeamSearchResult",
    "Bernoulli",
    "ByteTokenizer",
    "Categorical",
    "CharTokenizer",
    "CheckpointError",
    "DataError",
    "DataParallel",
    "DistributedError",
    "ElmanCell",
    "EvalResult",
    "FitResult",
    "Forecast",
    "Forecaster",
    "GRUCell",
    "Gaussian",
    "Generation",
    "LSTMCell",
    "MixtureGaussian",
    "ModelConfig",
    "NegativeBinomial",
    "Normalizer",
    "NumericDataset",
    "Preparation",
    "RunCheckpoints",
    "SequenceModel",
    "SeriesDataset",
    "StudentT",
    "TextDataset",
    "TrainConfig",
    "TrainState",
    "TrainingError",
    "UserError",
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
