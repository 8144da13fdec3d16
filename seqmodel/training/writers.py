"""Where a run's metric records go: a small writer interface and its writers.

A record is a flat dict with a ``step`` and numbers, one per log interval (``loss``,
``learning_rate``, ``grad_norm``, ``tokens_per_second``, ``elapsed``, ...) or per evaluation
(``val_loss``, ``val_bits_per_char``, ``elapsed``). :func:`seqmodel.training.fitting.fit` hands every record to
its writers, in process 0 only:

- :class:`JsonlWriter`: one JSON object per line (``RUN/metrics.jsonl``, always written when
  ``fit`` has a run folder);
- :class:`TensorBoardWriter`: TensorBoard event files through tensorboardX (``pip install
  'seqmodel[tensorboard]'``; ``seqmodel train --tensorboard``);
- :class:`CallbackWriter`: a function of the record;
- :class:`MemoryWriter`: a list in memory (``fit`` draws ``loss.png`` from one with
  :func:`plot_losses`).

Any object with ``write(record)`` and ``close()`` is a writer (:class:`MetricWriter`). A writer
may also have ``rewind(step)``: a resumed run calls it before its first record, to drop what the
interrupted run recorded past the step it resumes from (so that each step is recorded once).

Example::

    from seqmodel.training.writers import MemoryWriter, TensorBoardWriter
    memory = MemoryWriter()
    fit(model, dataset, config, out_dir="runs/demo",
        writers=[TensorBoardWriter("runs/demo/tensorboard"), memory])
    plot_losses(memory.records, "loss.png")
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
from typing import Callable, Iterable, Protocol, runtime_checkable


@runtime_checkable
class MetricWriter(Protocol):
    """Receives the records of a run, in order, then ``close()`` once at its end."""

    def write(self, record: dict) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    """Appends each record as one JSON line to ``path`` and flushes it (a crash loses nothing
    already written). ``append=False`` starts the file anew; a resumed run appends, after
    :meth:`rewind` to the step it resumes from.

    Example::

        writer = JsonlWriter("runs/demo/metrics.jsonl")
        writer.write({"step": 20, "loss": 2.31})
        writer.close()
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def rewind(self, step: int) -> None:
        """Drop the records past ``step`` from the file (and a last line cut short by a
        crash). The file is replaced in one rename, so a crash here leaves the old or the new
        file, never a mix."""
        self._file.close()
        kept = [record for record in read_jsonl(self.path, skip_damaged=True)
                if record.get("step", 0) <= step]
        temporary = self.path.with_name(self.path.name + ".rewind")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | os.PathLike, *, skip_damaged: bool = False) -> list[dict]:
    """The records of a :class:`JsonlWriter` file, in order (``[]`` when there is no file).
    ``skip_damaged``: leave out lines that are not JSON (a line cut short by a killed process)
    instead of raising."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if not skip_damaged:
                    raise
    return records


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of a record's key: ``val_*`` under ``validation/``, the rest under
    ``train/`` (``"loss"`` -> ``"train/loss"``, ``"val_loss"`` -> ``"validation/loss"``)."""
    return f"validation/{key[4:]}" if key.startswith("val_") else f"train/{key}"


class TensorBoardWriter:
    """Writes each number of a record as a TensorBoard scalar (tag :func:`tensorboard_tag`) at
    the record's ``step``, with tensorboardX (a maintained writer of event files that needs
    neither TensorFlow nor PyTorch). ``step`` and ``elapsed`` are not plotted; missing or
    non-finite values are skipped.

    The event file opens at the first record, so a writer that is never written to (e.g. in
    processes other than 0) leaves no file. ``purge_step``: events at and past this step that
    earlier runs wrote are dropped by TensorBoard; a resumed run sets it through :meth:`rewind`
    (to the step after its checkpoint), so the interrupted run's steps past it show once.

    Example::

        writer = TensorBoardWriter("runs/demo/tensorboard")
        writer.write({"step": 20, "loss": 2.31, "learning_rate": 1e-3})
        writer.close()          # then: tensorboard --logdir runs/demo/tensorboard
    """

    SKIPPED = ("step", "elapsed")

    def __init__(self, logdir: str | os.PathLike, *, purge_step: int | None = None):
        try:
            import tensorboardX  # noqa: F401  (fail here, at set-up, not at the first record)
        except ImportError:
            raise ImportError("TensorBoard event files need tensorboardX: pip install "
                              "'seqmodel[tensorboard]' (or pip install tensorboardX)") from None
        self.logdir = pathlib.Path(logdir)
        self.purge_step = purge_step
        self._writer = None

    def rewind(self, step: int) -> None:
        """Drop what earlier runs logged past ``step`` (call before the first record)."""
        if self._writer is not None:
            raise RuntimeError("TensorBoardWriter.rewind must come before the first record")
        self.purge_step = step + 1

    def write(self, record: dict) -> None:
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=str(self.logdir), purge_step=self.purge_step)
        step = int(record["step"])
        for key, value in record.items():
            if key in self.SKIPPED or isinstance(value, bool):
                continue
            if isinstance(value, numbers.Real) and math.isfinite(value):
                self._writer.add_scalar(tensorboard_tag(key), float(value), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class CallbackWriter:
    """Calls ``function(record)`` for each record (a copy: the function may keep or change it).

    Example::

        losses = []
        writer = CallbackWriter(lambda record: losses.append(record.get("loss")))
    """

    def __init__(self, function: Callable[[dict], object]):
        if not callable(function):
            raise TypeError(f"CallbackWriter(function={function!r}): function must be callable, "
                            f"e.g. lambda record: print(record)")
        self.function = function

    def write(self, record: dict) -> None:
        self.function(dict(record))

    def close(self) -> None:
        return None


class MemoryWriter:
    """Keeps every record in :attr:`records` (a list, in order).

    Example::

        memory = MemoryWriter()
        memory.write({"step": 20, "loss": 2.31})
        memory.records          # [{"step": 20, "loss": 2.31}]
    """

    def __init__(self, records: Iterable[dict] = ()):
        self.records: list[dict] = [dict(record) for record in records]

    def write(self, record: dict) -> None:
        self.records.append(dict(record))

    def rewind(self, step: int) -> None:
        """Drop the records past ``step``."""
        self.records = [record for record in self.records if record.get("step", 0) <= step]

    def close(self) -> None:
        return None


def plot_losses(records: Iterable[dict], image_path: str | os.PathLike) -> bool:
    """Draw train ``loss`` and validation ``val_loss`` against ``step`` from ``records`` into an
    image (PNG by the file name), with matplotlib's object API (no global backend switch).

    Returns False (and draws nothing) when matplotlib is not installed or no record has a loss.

    Example::

        plot_losses(memory.records, "runs/demo/loss.png")
    """
    train, validation = [], []
    for record in records:
        if "loss" in record:
            train.append((record["step"], record["loss"]))
        if "val_loss" in record:
            validation.append((record["step"], record["val_loss"]))
    if not train and not validation:
        return False
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    if train:
        axes.plot(*zip(*train), label="train")
    if validation:
        axes.plot(*zip(*validation), "o-", label="validation")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per element)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(image_path, dpi=100)
    return True
