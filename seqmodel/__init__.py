"""seqmodel: autoregressive recurrent sequence models in JAX (Flax NNX + Optax).

Public API (re-exports only)::

    import seqmodel as sm
    model = sm.SequenceModel(sm.ModelConfig(vocab_size=65), rngs=nnx.Rngs(0))

The names are imported on first use (:func:`__getattr__`): ``import seqmodel`` alone, and so the
``seqmodel`` command's ``--help``, does not import JAX, Flax or orbax.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING

from seqmodel._version import __version__  # noqa: F401  (the package version)

# The public names, by the module that defines them. A name is imported from its module the first
# time it is read (seqmodel.SequenceModel), so importing the package stays cheap.
_EXPORTS = {
    "seqmodel.beam": ("BeamSearchResult", "beam_search"),
    "seqmodel.cells": ("ElmanCell", "GRUCell", "LSTMCell"),
    "seqmodel.checkpoint": ("RunCheckpoints", "load_model"),
    "seqmodel.data": ("Batch", "ByteTokenizer", "CharTokenizer", "DataError", "TextDataset",
                      "load_dataset"),
    "seqmodel.data.numeric": ("Normalizer", "NumericDataset"),
    "seqmodel.distributed": ("DataParallel", "DistributedError"),
    "seqmodel.errors": ("CheckpointError", "TrainingError", "UserError"),
    "seqmodel.fit": ("FitResult", "fit"),
    "seqmodel.forecast": ("crps_from_samples", "exposure_bias_report", "sample_paths"),
    "seqmodel.generate": ("Generation", "generate", "generate_stream"),
    "seqmodel.heads": ("Bernoulli", "Categorical", "Gaussian", "MixtureGaussian",
                       "NegativeBinomial", "StudentT"),
    "seqmodel.interop": ("from_torch", "to_torch"),
    "seqmodel.model": ("ModelConfig", "SequenceModel"),
    "seqmodel.train": ("EvalResult", "TrainConfig", "TrainState", "evaluate", "init_train_state",
                       "make_multi_step", "make_optimizer", "make_train_step", "stack_batches"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from seqmodel.beam import BeamSearchResult, beam_search
    from seqmodel.cells import ElmanCell, GRUCell, LSTMCell
    from seqmodel.checkpoint import RunCheckpoints, load_model
    from seqmodel.data import (
        Batch,
        ByteTokenizer,
        CharTokenizer,
        DataError,
        TextDataset,
        load_dataset,
    )
    from seqmodel.data.numeric import Normalizer, NumericDataset
    from seqmodel.distributed import DataParallel, DistributedError
    from seqmodel.errors import CheckpointError, TrainingError, UserError
    from seqmodel.fit import FitResult, fit
    from seqmodel.forecast import crps_from_samples, exposure_bias_report, sample_paths
    from seqmodel.generate import Generation, generate, generate_stream
    from seqmodel.heads import (
        Bernoulli,
        Categorical,
        Gaussian,
        MixtureGaussian,
        NegativeBinomial,
        StudentT,
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


def __getattr__(name: str):
    """A public name, imported from its module on first use (then cached in the package); a
    submodule (``seqmodel.train``), imported on first use too."""
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


class _Package(types.ModuleType):
    """The package's module type: importing the submodule ``seqmodel.fit`` (or
    ``seqmodel.generate``) sets the package attribute of that name to the submodule; the public
    name is the function of the same name, so the submodule is not stored there."""

    def __setattr__(self, name, value):
        if name in _MODULE_OF and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
    "RunCheckpoints",
    "SequenceModel",
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
