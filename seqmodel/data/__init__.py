"""Data for training and evaluation: sources, tokenizers, tables, preparations, batches.

Everything the train loop needs from data goes through the :class:`Dataset` protocol, and every
source goes through :func:`load_dataset`, the one router: text (a file or a built-in corpus) ->
:class:`TextDataset`; real values (a CSV / TSV / ``.npy`` file, a built-in series, a NumPy array,
a list of variable-length arrays, a long pandas DataFrame) -> a :class:`~seqmodel.data.tables.
Table` read once -> a fitted :class:`~seqmodel.data.preparation.Preparation` -> one
:class:`~seqmodel.data.series.SeriesDataset`.

Modules: ``text`` (tokenizers, text streams), ``batching`` (batches, lanes, random windows),
``tables`` (the table and in-memory sources), ``readers`` (files), ``normalization``,
``calendar`` (frequency, seasons, time features), ``features`` (the input layout),
``preparation`` (fitting it), ``series`` (the dataset and its batching policies), ``padding``,
``synthetic``. May import ``seqmodel.configs`` and ``seqmodel.errors`` only (no JAX).

Example::

    from seqmodel.data import load_dataset
    dataset = load_dataset("python-stdlib", val_fraction=0.1)
    batches = dataset.train_batches(batch_size=32, seq_len=128, batching="lanes", seed=0)
    batch = next(batches)             # Batch(inputs (32, 128), targets (32, 128), mask, reset)
    position = batches.position       # stored in checkpoints; pass back as position=... to resume
    series = load_dataset(np.random.randn(500, 2))   # one series of 2 features, mean-scaled
"""

from __future__ import annotations

import pathlib
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from seqmodel.configs import DEFAULT_TOKENIZER
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
from seqmodel.data.readers import NUMERIC_SUFFIXES
from seqmodel.data.series import NumericDataset, SeriesDataset
from seqmodel.data.tables import Table, from_arrays, from_frame, from_sequences
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


# The options of real-valued data (the keywords of seqmodel.data.preparation.prepare, plus how
# the table is read, split and batched): the CLI maps its flags onto these.
SERIES_OPTIONS = ("missing", "normalize", "time_column", "id_column", "target_columns",
                  "covariates", "static_columns", "lags", "scaling", "context_length", "head",
                  "season", "anchor", "holdout", "validation", "batching")


def _is_frame(source: Any) -> bool:
    return type(source).__name__ == "DataFrame" and hasattr(source, "columns")


def read_source(source: Any, *, missing: str = "reject", time_column: str | None = None,
                id_column: str | None = None, static_columns: Sequence[str] = (),
                numeric_columns: Sequence[str] = (), target_columns: Sequence[str] | None = None
                ) -> tuple[Table, str]:
    """``(table, name)`` of a real-valued source: a built-in name, a file, a NumPy array, a list
    of arrays, a DataFrame or a :class:`Table`. Raises :class:`DataError` (one line)."""
    from seqmodel.data import readers, synthetic

    try:
        if isinstance(source, Table):
            return source, "table"
        if _is_frame(source):
            return from_frame(source, id_column=id_column, time_column=time_column,
                              target_columns=target_columns, static_columns=static_columns,
                              missing=missing), "DataFrame"
        if isinstance(source, np.ndarray):
            _no_columns(source, time_column, id_column, static_columns)
            return from_arrays(source, missing=missing), "array"
        if isinstance(source, (list, tuple)):
            _no_columns(source, time_column, id_column, static_columns)
            return from_sequences(list(source), missing=missing), "sequences"
        if source in synthetic.SOURCES:
            _no_columns(source, time_column, id_column, static_columns)
            return from_sequences(synthetic.load_synthetic(source, seed=0)), source
        return readers.read_table(source, missing=missing, time_column=time_column,
                                  id_column=id_column, category_columns=static_columns,
                                  numeric_columns=numeric_columns), source
    except FileNotFoundError as error:
        raise DataError(str(error)) from None
    except DataError:
        raise
    except ValueError as error:
        raise DataError(str(error).splitlines()[0]) from None


def _no_columns(source, time_column, id_column, static_columns) -> None:
    what = source if isinstance(source, str) else f"a {type(source).__name__}"
    for name, value in (("time_column", time_column), ("id_column", id_column),
                        ("static_columns", tuple(static_columns) or None)):
        if value is not None:
            raise DataError(f"{name}={value!r} names columns of a delimited file or a "
                            f"DataFrame, but the data is {what}; leave it out")


def load_dataset(source: Any, *, val_fraction: float = 0.1, tokenizer: Any = DEFAULT_TOKENIZER,
                 metadata: dict | None = None, **options) -> Dataset:
    """The dataset of a source: the one router of data (the CLI's ``--data`` comes here too).

    Args:
      source: text: a built-in corpus (``python-stdlib``, ``tinyshakespeare``) or a text file
        (any suffix but the numeric ones). Real values: a built-in series (``sine``,
        ``bimodal``, ``binary-patterns``), a ``.csv`` / ``.tsv`` / ``.tab`` / ``.npy`` file, a
        NumPy array ``(t,)``, ``(t, d)`` or ``(n, t, d)``, a list of ``(t_i, d)`` arrays, or a
        long pandas DataFrame (``unique_id``, ``ds``, value columns by default).
      val_fraction: the last fraction of the stream, of every series' steps or of the sequences
        kept for validation.
      tokenizer: text only: ``"char"``, ``"byte"`` or a tokenizer object.
      metadata: the ``dataset.metadata()`` stored in a checkpoint: rebuilds the same tokenizer
        or preparation instead of fitting a new one, so data is encoded as the model was trained.
      options: real values only (:data:`SERIES_OPTIONS`): ``missing`` (``"reject"`` /
        ``"mask"``), ``time_column``, ``id_column``, ``target_columns``, ``covariates``,
        ``static_columns``, ``lags``, ``scaling``, ``context_length``, ``head``, ``season``,
        ``anchor``,
        ``normalize``, ``holdout`` (steps of every series kept out of training and validation),
        ``validation`` (``"time"`` / ``"sequences"``), ``batching`` (``"windows"``,
        ``"sequences"``, ``"lanes"``); see :func:`seqmodel.data.preparation.prepare` and
        :func:`seqmodel.data.series.build_dataset` for their defaults.

    Raises:
      DataError: one clear line (missing file, empty corpus, unknown characters, a bad option...).
    """
    from seqmodel.data.series import build_dataset, series_dataset_from_metadata

    unknown = sorted(set(options) - set(SERIES_OPTIONS))
    if unknown:
        raise DataError(f"unknown data option(s) {', '.join(unknown)}: allowed are "
                        f"{', '.join(SERIES_OPTIONS)}")
    if isinstance(source, str) and not source:
        raise DataError(f"--data {source!r} is invalid: give a built-in name or a file path")
    kind = None if metadata is None else metadata.get("kind", "text")
    text = isinstance(source, str) and not is_numeric_source(source) and kind in (None, "text")
    if text:
        if options:
            raise DataError(f"options {sorted(options)} do not apply to text data {source!r}")
        if metadata is not None:
            tokenizer = tokenizer_from_dict(metadata["tokenizer"])
        return load_text_dataset(source, tokenizer=tokenizer, val_fraction=val_fraction)
    if source is None:
        if metadata is None or not metadata.get("name"):
            raise DataError("no --data source given")
        source = metadata["name"]
    if metadata is not None:
        read = _saved_read_options(metadata)
        read["missing"] = options.get("missing") or read["missing"]
        table, name = read_source(source, **read)
        return series_dataset_from_metadata(table, metadata, name=name, val_fraction=val_fraction)
    missing = options.pop("missing", None) or "reject"
    read = {key: options.get(key) for key in ("time_column", "id_column")}
    static = tuple(options.get("static_columns") or ())
    numeric = tuple(options.get("covariates") or ()) + tuple(options.get("target_columns") or ())
    targets = options.get("target_columns")
    value_columns = None if targets is None else tuple(targets) + tuple(
        options.get("covariates") or ())
    table, name = read_source(source, missing=missing, static_columns=static,
                              numeric_columns=numeric, target_columns=value_columns, **read)
    settings = {key: value for key, value in options.items() if value is not None
                and key not in ("time_column", "id_column")}
    return build_dataset(table, name=name, val_fraction=val_fraction, missing=missing,
                         id_column=table.id_column, **settings)


def _saved_read_options(metadata: dict) -> dict:
    """How to read a file the way a checkpoint's data was read."""
    kind = metadata.get("kind")
    if kind == "numeric":
        return {"missing": metadata.get("missing", "reject"),
                "time_column": metadata.get("time_column"),
                "id_column": metadata.get("id_column")}
    saved = metadata["features"] if kind == "forecast" else metadata["preparation"]["features"]
    extra = metadata if kind == "forecast" else metadata["preparation"]
    targets = tuple(saved["target_columns"])
    return {"missing": extra.get("missing", "reject"), "time_column": saved.get("time_column"),
            "id_column": extra.get("id_column"),
            "static_columns": tuple(saved.get("static_columns", ())),
            "numeric_columns": tuple(saved.get("covariate_columns", ())) + targets,
            "target_columns": targets + tuple(saved.get("covariate_columns", ()))}


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
    "NumericDataset",
    "RandomWindowIterator",
    "SERIES_OPTIONS",
    "SeriesDataset",
    "TEXT_BUILTINS",
    "TOKENIZERS",
    "TextDataset",
    "Table",
    "evaluation_batches",
    "from_arrays",
    "from_frame",
    "from_sequences",
    "load_dataset",
    "make_batch_iterator",
    "read_source",
    "tokenizer_from_dict",
]
