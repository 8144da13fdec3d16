"""What a run folder holds, read from the file system alone (no orbax, no JAX): the one reading
that ``seqmodel train --out`` and ``--resume`` both decide by.

Example::

    run = inspect_run("runs/demo")
    run.holds_run, run.holds_checkpoint, run.newest().step
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

from seqmodel.errors import CheckpointError

CHECKPOINTS = "checkpoints"  # RUN/checkpoints/<step>
LEGACY_KINDS = ("latest", "best")  # RUN/latest/<step>, RUN/best/<step> of earlier versions
KIND_PREFERENCES = ("best", "latest")
RECORDS = "metrics.jsonl"
# Where a resumed run moves the steps it could not read (newer than the one it resumed from).
UNREADABLE = "unreadable-checkpoints"
# orbax renames the steps it drops into RUN/checkpoints/.deleted (one atomic rename: a process
# killed while deleting leaves no half-deleted step), and RunCheckpoints empties it.
DELETED = ".deleted"
TEMPORARY_MARK = ".orbax-checkpoint-tmp"
# What orbax writes into every step: its record of the step (JSON), and since orbax 0.12 a
# commit mark that it writes last, before the rename (an older orbax writes none).
STEP_RECORD = "_CHECKPOINT_METADATA"
COMMIT_MARK = "commit_success.txt"
# The items every step of a run holds (``metrics`` only in steps written with a metric).
REQUIRED_ITEMS = ("params", "train_state", "metadata")


@dataclasses.dataclass(frozen=True)
class SavedStep:
    """One complete step on disk: ``folder/<step>`` (``folder`` is ``RUN/checkpoints``, or
    ``RUN/latest`` / ``RUN/best`` of the earlier layout: ``legacy``)."""

    folder: pathlib.Path
    step: int
    legacy: bool = False

    @property
    def path(self) -> pathlib.Path:
        return self.folder / str(self.step)

    def read_metadata(self) -> dict:
        """The step's JSON metadata, read as a plain file (no orbax, no JAX)."""
        return json.loads((self.path / "metadata" / "metadata").read_text(encoding="utf-8"))

    def damage(self) -> str | None:
        """Why the step's folder is not a complete step, judged from its files alone (None:
        nothing found). A bad copy or a full disk leaves an empty folder, a missing commit mark,
        a truncated JSON record or item; truncated array files show only when orbax reads
        them. Checking first keeps orbax from reading a damaged step's records at all: its
        manager reads every step's ``_CHECKPOINT_METADATA`` and metrics when it opens."""
        try:
            names = {child.name for child in self.path.iterdir()}
        except OSError as error:
            return f"its folder cannot be listed ({error.strerror})"
        if not names:
            return "its folder is empty"
        if STEP_RECORD not in names:
            return f"its {STEP_RECORD} is missing"
        # A step written by an orbax that marks commits has a mark in each item: then the
        # step's own mark, written last, must be there too.
        if COMMIT_MARK not in names and any(
                (self.path / name / COMMIT_MARK).is_file() for name in names):
            return f"its {COMMIT_MARK} is missing (the save or the copy did not complete)"
        missing = [item for item in REQUIRED_ITEMS if item not in names and not self.legacy]
        if missing:
            return f"its {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        records = [self.path / STEP_RECORD] + [
            self.path / name / record for name in sorted(names) if (self.path / name).is_dir()
            for record in ("_METADATA", name) if (self.path / name / record).is_file()]
        for record in records:
            try:
                json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                where = record.relative_to(self.path)
                return f"its {where} cannot be read ({_first_line(error)})"
        return None


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """What a run folder holds, from :func:`inspect_run`.

    Attributes:
      path: the run folder.
      steps: the complete checkpoint steps, newest first (this layout before the earlier one at
        the same step).
      partial: the folders of steps whose save never completed (a killed process).
      damaged: ``(step, reason)`` of the step folders that :meth:`SavedStep.damage` finds
        incomplete (a bad copy, a full disk), newest first; not in ``steps``.
      has_records: whether ``metrics.jsonl`` exists.
    """

    path: pathlib.Path
    steps: tuple[SavedStep, ...] = ()
    partial: tuple[pathlib.Path, ...] = ()
    damaged: tuple[tuple[SavedStep, str], ...] = ()
    has_records: bool = False

    @property
    def holds_checkpoint(self) -> bool:
        """A complete step to resume from or load."""
        return bool(self.steps)

    @property
    def holds_run(self) -> bool:
        """Anything a run left: a step, a partial step or metric records. A folder that holds a
        run is continued (``resume``), never started again over."""
        return (self.holds_checkpoint or bool(self.partial) or bool(self.damaged)
                or self.has_records)

    def newest(self) -> SavedStep:
        if not self.steps:
            raise CheckpointError(f"{str(self.path)!r} holds no checkpoint (expected a run folder "
                                  f"written by `seqmodel train --out`)")
        return self.steps[0]

    def best(self) -> SavedStep:
        """The step with the lowest validation loss among those evaluated when saved (ties: the
        newest), else the newest."""
        candidates = []
        for saved in self.steps:
            try:
                metadata = saved.read_metadata()
            except (OSError, ValueError):
                continue  # damaged: not a candidate
            if saved.legacy:
                loss = metadata.get("best_val_loss") if saved.folder.name == "best" else None
            else:
                loss = metadata.get("step_val_loss")
            if loss is not None and math.isfinite(loss):
                candidates.append((loss, -saved.step, saved))
        return min(candidates, key=lambda item: item[:2])[2] if candidates else self.newest()

    def pick(self, prefer: str) -> SavedStep:
        if prefer not in KIND_PREFERENCES:
            raise ValueError(f"prefer={prefer!r} is invalid: allowed {', '.join(KIND_PREFERENCES)}")
        return self.best() if prefer == "best" else self.newest()


def _step_folders(folder: pathlib.Path) -> tuple[list[int], list[pathlib.Path]]:
    """(complete steps, partial step folders) directly in ``folder``."""
    steps, partial = [], []
    if folder.is_dir():
        for child in folder.iterdir():
            if not child.is_dir():
                continue
            if child.name.isdigit():
                steps.append(int(child.name))
            elif TEMPORARY_MARK in child.name and child.name.split(".")[0].isdigit():
                partial.append(child)
    return steps, partial


def inspect_run(path: str | os.PathLike) -> RunFolder:
    """What the folder ``path`` holds: a run folder (``RUN/checkpoints``, or ``RUN/latest`` and
    ``RUN/best`` of earlier versions), or one of those checkpoint folders itself. A folder that
    does not exist holds nothing. Reads the file system only (no orbax, no JAX).

    Example::

        run = inspect_run("runs/demo")
        run.holds_run, run.holds_checkpoint, run.newest().step
    """
    path = pathlib.Path(path).expanduser()
    if path.name in (CHECKPOINTS, *LEGACY_KINDS) and not (path / CHECKPOINTS).is_dir():
        folders = [(path, path.name != CHECKPOINTS)]  # a checkpoint folder given itself
    else:
        folders = [(path / CHECKPOINTS, False)] + [(path / kind, True) for kind in LEGACY_KINDS]
    saved, partial = [], []
    for folder, legacy in folders:
        steps, unfinished = _step_folders(folder)
        saved += [SavedStep(folder, step, legacy) for step in steps]
        partial += unfinished
    # Newest first; at one step, this layout, then legacy latest, then legacy best.
    order = {CHECKPOINTS: 0, "latest": 1, "best": 2}
    saved.sort(key=lambda s: (-s.step, s.legacy, order.get(s.folder.name, 0)))
    checked = [(step, step.damage()) for step in saved]
    return RunFolder(path=path, steps=tuple(step for step, reason in checked if reason is None),
                     partial=tuple(sorted(partial)),
                     damaged=tuple((step, reason) for step, reason in checked if reason),
                     has_records=(path / RECORDS).is_file())


def _first_line(error: BaseException, *, limit: int = 160) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."



def set_aside_unreadable_steps(run_dir: str | os.PathLike, step: int) -> list[pathlib.Path]:
    """Move out of ``RUN/checkpoints``, into ``RUN/unreadable-checkpoints/``, the steps newer
    than ``step`` (unreadable ones that a resumed run skipped) and every damaged step folder
    (:attr:`RunFolder.damaged`), so that the run saves those steps anew and orbax's manager,
    which reads every step's records when it opens, meets none of them. Returns where they
    went."""
    run_dir = pathlib.Path(run_dir)
    run = inspect_run(run_dir)
    moved = []
    newer = [saved for saved in run.steps if saved.step > step]
    for saved in newer + [saved for saved, _ in run.damaged]:
        if saved.legacy:
            continue  # the earlier layout's folders: a resumed run writes RUN/checkpoints
        target = run_dir / UNREADABLE / str(saved.step)
        target.parent.mkdir(parents=True, exist_ok=True)
        number = 2
        while target.exists():
            target = run_dir / UNREADABLE / f"{saved.step}-{number}"
            number += 1
        saved.path.rename(target)
        moved.append(target)
    return moved
