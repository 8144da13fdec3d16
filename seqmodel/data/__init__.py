"""Data for training and evaluation: sources, tokenizers, batches.

Everything the train loop needs from data goes through the :class:`Dataset` protocol, and every
``--data SOURCE`` goes through :func:`load_dataset`.

Example::

    from seqmodel.data import load_dataset
    dataset = load_dataset("python-stdlib", val_fraction=0.1)
    batches = dataset.train_batches(batch_size=32, seq_len=128, batching="lanes", seed=0)
    batch = next(batches)             # Batch(inputs (32, 128), targets (32, 128), mask, reset)
    position = batches.position       # stored in checkpoints; pass back as position=... to resume
"""

from __future__ import annotations

import pathlib
from typing import Any, Protocol, runtime_checkable

from seqmodel.configs import DEFAULT_TOKENIZER
from seqmodel.data import numeric
from seqmodel.data.batching import (
    BATCHINGS,
    Batch,
    BatchIterator,
    DataError,
    LaneIterator,
    RandomWindowIterator,
    evaluation_batches,
    make_batch_iterator,
)
from seqmodel.data.numeric import NUMERIC_SUFFIXES
from seqmodel.data.text import (
    TEXT_BUILTINS,
    TOKENIZERS,
    ByteTokenizer,
    CharTokenizer,
    TextDataset,
    load_text_dataset,
    tokenizer_from_dict,
)


@runtime_checkable
class Dataset(Protocol):
    """What the train loop, evaluation and checkpoints need from a dataset.

    - ``kind``: ``"text"`` or ``"numeric"``; ``name``: the source it came from.
    - ``model_fields()``: the :class:`seqmodel.ModelConfig` fields the data fixes, e.g.
      ``{"vocab_size": 65, "head": "categorical"}`` or ``{"input_size": 3}``.
    - ``train_batches(batch_size=, seq_len=, batching=, seed=, position=)``: an endless iterator of
      :class:`Batch` with a JSON-compatible ``position`` attribute (resume by passing it back).
    - ``validation_batches(batch_size=, seq_len=)``: the whole validation part exactly once, masked
      (``mask`` weighs every target once); an empty list when there is no validation data.
    - ``bits_per_unit``: ``"char"`` / ``"byte"`` to report bits per unit, or ``None``.
    - ``metadata()``: JSON-compatible dict saved with checkpoints (tokenizer / normaliser, name)
      that ``load_dataset(source, metadata=...)`` uses to encode new data as in training.
    """

    kind: str
    name: str

    def model_fields(self) -> dict: ...

    def train_batches(self, *, batch_size: int, seq_len: int, batching: str = "lanes",
                      seed: int = 0, position: dict | None = None) -> Any: ...

    def validation_batches(self, *, batch_size: int, seq_len: int) -> list[Batch]: ...

    @property
    def bits_per_unit(self) -> str | None: ...

    def metadata(self) -> dict: ...


# Built-in numeric sources. The file suffixes are the numeric loader's own list, so that every
# file it reads is routed to it (a .tsv read as text would train a character model on digits).
NUMERIC_BUILTINS = ("sine", "bimodal", "binary-patterns")


def is_numeric_source(source: str) -> bool:
    """Whether ``--data source`` is numeric: a built-in numeric name or a file whose suffix is in
    :data:`NUMERIC_SUFFIXES` (``.csv``, ``.tsv``, ``.tab``, ``.npy``)."""
    return source in NUMERIC_BUILTINS or pathlib.Path(source).suffix.lower() in NUMERIC_SUFFIXES


def load_dataset(source: str, *, val_fraction: float = 0.1, tokenizer: Any = DEFAULT_TOKENIZER,
                 metadata: dict | None = None, **options) -> Dataset:
    """Resolve ``--data SOURCE`` into a :class:`Dataset`.

    Args:
      source: a built-in name (text: ``python-stdlib``, ``tinyshakespeare``; numeric:
        ``sine``, ``bimodal``, ``binary-patterns``) or a path (``.csv``, ``.tsv``, ``.tab``,
        ``.npy``: numeric; anything else, ``.txt`` included: a UTF-8 text file).
      val_fraction: the last fraction of the stream (or of the sequences) kept for validation.
      tokenizer: text only: ``"char"``, ``"byte"`` or a tokenizer object.
      metadata: the ``dataset.metadata()`` stored in a checkpoint: rebuilds the same tokenizer (or
        normaliser, or a forecaster's feature layout: :mod:`seqmodel.data.series`) instead
        of fitting a new one, so data is encoded as the model was trained.
      options: numeric sources only: ``missing=``, ``normalize=``, ``time_column=``,
        ``id_column=`` (see :func:`seqmodel.data.numeric.load_numeric_dataset`).

    Raises:
      DataError: one clear line (missing file, empty corpus, unknown characters, ...).
    """
    if not isinstance(source, str) or not source:
        raise DataError(f"--data {source!r} is invalid: give a built-in name or a file path")
    if metadata is not None and metadata.get("kind") == "forecast":
        from seqmodel.data.series import load_forecast_dataset

        return load_forecast_dataset(source, val_fraction=val_fraction, metadata=metadata,
                                     **options)
    numeric_metadata = metadata is not None and metadata.get("kind", "text") != "text"
    if numeric_metadata or is_numeric_source(source):
        return numeric.load_numeric_dataset(source, val_fraction=val_fraction, metadata=metadata,
                                            **options)
    if options:
        raise DataError(f"options {sorted(options)} do not apply to text data {source!r}")
    if metadata is not None:
        tokenizer = tokenizer_from_dict(metadata["tokenizer"])
    return load_text_dataset(source, tokenizer=tokenizer, val_fraction=val_fraction)


__all__ = [
    "BATCHINGS",
    "Batch",
    "BatchIterator",
    "ByteTokenizer",
    "CharTokenizer",
    "DataError",
    "Dataset",
    "LaneIterator",
    "NUMERIC_BUILTINS",
    "NUMERIC_SUFFIXES",
    "RandomWindowIterator",
    "TEXT_BUILTINS",
    "TOKENIZERS",
    "TextDataset",
    "evaluation_batches",
    "load_dataset",
    "make_batch_iterator",
    "tokenizer_from_dict",
]
