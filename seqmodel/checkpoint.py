"""Checkpoints with orbax-checkpoint: the full training state, device-independent.

A run folder holds the steps of one orbax ``CheckpointManager``::

    RUN/checkpoints/<step>/{params, train_state, metadata, metrics}

kept by orbax's preservation policy: the newest :data:`KEEP_LATEST` steps (so that a damaged
newest step still leaves the one before it) and the step with the lowest validation loss (the
*best* one). Saves are asynchronous: :meth:`RunCheckpoints.save` returns once the state is copied
to the host, and the files are written while training goes on. orbax writes a step into
``<step>.orbax-checkpoint-tmp*`` and renames it when complete, so a process killed during a save
leaves the steps before it intact (the next run removes the partial one).

- ``params``: the model parameters as a plain nested dict of arrays (``nnx.to_pure_dict``).
- ``train_state``: everything else that changes during training (optimizer state, step, the
  lanes' carry, RNG keys, schedule horizon), as a nested dict named by the fields of
  :class:`~seqmodel.train.TrainState` and the paths inside them (``opt_state/0/mu/...``), so that
  an incompatible checkpoint names the field.
- ``metadata``: JSON with the model and train configs, the data side (tokenizer or normaliser),
  the data position, step, tokens, elapsed seconds and validation losses.
- ``metrics``: orbax's record of the step's validation loss, by which it keeps the best step.

Arrays are written as NumPy arrays and read back as NumPy arrays, then placed on the default
device: a checkpoint written on a GPU loads on a CPU (nothing pins a device or a sharding).

Run folders written before this layout (``RUN/latest/<step>``, ``RUN/best/<step>``, the training
state as numbered leaves) still load for sampling, evaluation and resuming; a resumed run writes
``RUN/checkpoints``.

:func:`inspect_run` is the one reading of what a folder holds (steps, partial steps, records);
``seqmodel train --out`` and ``--resume`` both decide by it.

Example::

    model, metadata = load_model("runs/demo")                 # best if present, else latest
    tokenizer = tokenizer_from_dict(metadata["data"]["tokenizer"])
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import logging
import pathlib
import re
import shutil
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from seqmodel.errors import CheckpointError

log = logging.getLogger("seqmodel")

CHECKPOINTS = "checkpoints"  # RUN/checkpoints/<step>
LEGACY_KINDS = ("latest", "best")  # RUN/latest/<step>, RUN/best/<step> of earlier versions
KIND_PREFERENCES = ("best", "latest")
KEEP_LATEST = 2
RECORDS = "metrics.jsonl"
# Where a resumed run moves the steps it could not read (newer than the one it resumed from).
UNREADABLE = "unreadable-checkpoints"
# orbax renames the steps it drops into RUN/checkpoints/.deleted (one atomic rename: a process
# killed while deleting leaves no half-deleted step), and RunCheckpoints empties it.
DELETED = ".deleted"
TEMPORARY_MARK = ".orbax-checkpoint-tmp"

# The fields of a TrainState that `train_state` holds (params are their own item).
TRAIN_STATE_FIELDS = ("step", "opt_state", "model_state", "carry", "key", "horizon")


# ---------------------------------------------------------------------------------------------
# What a folder holds: the file system alone, no orbax call
# ---------------------------------------------------------------------------------------------


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


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """What a run folder holds, from :func:`inspect_run`.

    Attributes:
      path: the run folder.
      steps: the complete checkpoint steps, newest first (this layout before the earlier one at
        the same step).
      partial: the folders of steps whose save never completed (a killed process).
      has_records: whether ``metrics.jsonl`` exists.
    """

    path: pathlib.Path
    steps: tuple[SavedStep, ...] = ()
    partial: tuple[pathlib.Path, ...] = ()
    has_records: bool = False

    @property
    def holds_checkpoint(self) -> bool:
        """A complete step to resume from or load."""
        return bool(self.steps)

    @property
    def holds_run(self) -> bool:
        """Anything a run left: a step, a partial step or metric records. A folder that holds a
        run is continued (``resume``), never started again over."""
        return self.holds_checkpoint or bool(self.partial) or self.has_records

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
    return RunFolder(path=path, steps=tuple(saved), partial=tuple(sorted(partial)),
                     has_records=(path / RECORDS).is_file())


# ---------------------------------------------------------------------------------------------
# Array conversion and names
# ---------------------------------------------------------------------------------------------


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_numpy(leaf) -> np.ndarray:
    if _is_key(leaf):
        leaf = jax.random.key_data(leaf)
    # A copy: the save is written in the background while the next train steps reuse (donate)
    # the device buffers that a zero-copy view would share.
    return np.array(jax.device_get(leaf), copy=True)


def _from_numpy(value: np.ndarray, template, where: str):
    if not hasattr(template, "shape"):
        return template  # a Python constant inside an optax state: static, nothing to restore
    expected = jax.random.key_data(template) if _is_key(template) else template
    _check_shape(value.shape, value.dtype, expected.shape, expected.dtype, where)
    array = jnp.asarray(value)
    if _is_key(template):
        return jax.random.wrap_key_data(array, impl=jax.random.key_impl(template))
    return array


def _check_shape(shape, dtype, expected_shape, expected_dtype, where: str) -> None:
    shape, expected_shape = tuple(shape), tuple(expected_shape)
    dtype, expected_dtype = np.dtype(dtype), np.dtype(expected_dtype)
    if shape != expected_shape or dtype != expected_dtype:
        raise CheckpointError(
            f"{where} is {dtype}{list(shape)} in the checkpoint but this model expects "
            f"{expected_dtype}{list(expected_shape)}: the checkpoint comes from another "
            f"configuration")


def _part_name(part) -> str:
    return str(getattr(part, "key", getattr(part, "idx", getattr(part, "name", part))))


def _path_name(path) -> str:
    return "/".join(_part_name(part) for part in path)


def _flat(tree) -> dict[str, Any]:
    """``{"a/b/0": leaf}`` for every leaf of ``tree`` (a pytree, or orbax's nested dicts)."""
    return {_path_name(path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _nested(flat: dict[str, Any]) -> dict:
    """The nested dict of ``{"a/b/0": leaf}``: what orbax stores under named keys."""
    nested: dict = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return nested


def _train_state_tree(state) -> dict:
    return {field: getattr(state, field) for field in TRAIN_STATE_FIELDS}


def _named_arrays(tree) -> dict:
    """``tree`` as a nested dict of NumPy arrays named by its paths."""
    return _nested({name: _to_numpy(leaf) for name, leaf in _flat(tree).items()})


def _zeros_like(named: dict) -> dict:
    # Restore targets: zero NumPy arrays of the right shape and dtype, so orbax returns NumPy.
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), named)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _validation_loss(metrics: dict) -> float:
    """The metric that orbax ranks steps by (lower is better); a step saved without an
    evaluation ranks last."""
    loss = metrics.get("val_loss") if metrics else None
    return math.inf if loss is None or not math.isfinite(loss) else float(loss)


class RunCheckpoints:
    """The checkpoints of one run folder: one orbax ``CheckpointManager`` on
    ``RUN/checkpoints`` that keeps the newest ``keep_latest`` steps and the best one, saving
    asynchronously. Opening it removes the partial steps of a killed save. Steps that the policy
    drops leave the step listing in one rename (into ``.deleted``, emptied at the next save), so
    that a process killed while deleting leaves no half-deleted step.

    Example::

        checkpoints = RunCheckpoints("runs/demo")
        checkpoints.save(step, state, metadata, val_loss=2.31)   # returns while the disk writes
        checkpoints.wait()                                        # raises if the write failed
        checkpoints.close()
    """

    def __init__(self, run_dir: str | os.PathLike, *, keep_latest: int = KEEP_LATEST):
        self.run_dir = pathlib.Path(run_dir)
        self.folder = self.run_dir / CHECKPOINTS
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(n=keep_latest),
            # reverse: sorted from the highest loss down, the last n are kept.
            checkpoint_managers.BestN(get_metric_fn=_validation_loss, reverse=True, n=1,
                                      keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            create=True, cleanup_tmp_directories=True, enable_async_checkpointing=True,
            preservation_policy=policy, todelete_subdir=DELETED,
            # With best_fn orbax writes each step's metrics, so a resumed run still knows
            # which earlier step is the best one.
            best_fn=_validation_loss, best_mode="min")
        self.manager = ocp.CheckpointManager(self.folder.absolute(), options=options)
        self._empty_deleted()

    def _empty_deleted(self) -> None:
        """Remove the steps orbax dropped (process 0 writes and deletes for the run)."""
        if jax.process_index() == 0:
            shutil.rmtree(self.folder / DELETED, ignore_errors=True)

    def save(self, step: int, state, metadata: dict, *, val_loss: float | None) -> bool:
        """Start saving ``state`` (a :class:`~seqmodel.train.TrainState`) at ``step``, evaluated
        at ``val_loss`` (None: saved without an evaluation). Copies the state to the host, waits
        for the previous save, and returns while the files are written; :meth:`wait` raises if
        writing failed. A step already on disk is not saved again (returns False)."""
        self.manager.wait_until_finished()  # the previous save, and the steps it dropped
        self._empty_deleted()
        if step in self.manager.all_steps():
            return False
        params = _named_arrays(nnx.to_pure_dict(state.params))
        rest = _named_arrays(_train_state_tree(state))
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train_state=ocp.args.StandardSave(rest),
            metadata=ocp.args.JsonSave(metadata),
        )
        self.manager.save(step, args=args, metrics={"val_loss": val_loss})
        return True

    def wait(self) -> None:
        """Wait for the save in progress; raises its error if it failed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
        self._empty_deleted()


def set_aside_newer_steps(run_dir: str | os.PathLike, step: int) -> list[pathlib.Path]:
    """Move the steps of ``RUN/checkpoints`` newer than ``step`` (unreadable ones that a resumed
    run skipped) to ``RUN/unreadable-checkpoints/``, so that the run saves those steps anew.
    Returns where they went."""
    run_dir = pathlib.Path(run_dir)
    moved = []
    for saved in inspect_run(run_dir).steps:
        if saved.step > step and not saved.legacy:
            target = run_dir / UNREADABLE / str(saved.step)
            target.parent.mkdir(parents=True, exist_ok=True)
            number = 2
            while target.exists():
                target = run_dir / UNREADABLE / f"{saved.step}-{number}"
                number += 1
            saved.path.rename(target)
            moved.append(target)
    return moved


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _first_line(error: BaseException, *, limit: int = 240) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class _Unreadable(Exception):
    """A damaged step: its files cannot be read (truncated, half deleted)."""


def _checked_folder(path: str | os.PathLike) -> RunFolder:
    run = inspect_run(path)
    if not run.path.exists():
        raise CheckpointError(f"{str(run.path)!r}: no such folder")
    run.newest()  # raises when there is no step
    return run


def find_checkpoint(path: str | os.PathLike, *,
                    prefer: str = "best") -> tuple[pathlib.Path, int]:
    """``(checkpoint folder, step)`` of the ``prefer`` step (``best`` or ``latest``) of a run
    folder (see :func:`inspect_run`).

    Example::

        find_checkpoint("runs/demo", prefer="latest")   # (Path("runs/demo/checkpoints"), 2000)
    """
    saved = _checked_folder(path).pick(prefer)
    return saved.folder, saved.step


def _restore_items(saved: SavedStep, **items) -> dict:
    """orbax's restore of ``items`` of one step; a damaged step raises :class:`_Unreadable`."""
    options = ocp.CheckpointManagerOptions(create=False)
    try:
        manager = ocp.CheckpointManager(saved.folder.absolute(), options=options)
    except Exception as error:  # orbax raises a variety of types for damaged folders
        raise _Unreadable(_first_line(error)) from None
    try:
        return manager.restore(saved.step, args=ocp.args.Composite(**items))
    except CheckpointError:
        raise
    except Exception as error:
        raise _Unreadable(_first_line(error)) from None
    finally:
        manager.close()


def _saved_shapes(saved: SavedStep, item: str) -> dict[str, tuple]:
    """``{name: (shape, dtype)}`` of the arrays of ``item`` in ``saved``, from orbax's metadata
    (nothing is read but the tree's description)."""
    handler = ocp.StandardCheckpointHandler()
    try:
        metadata = handler.metadata((saved.path / item).absolute())
    except Exception as error:
        raise _Unreadable(_first_line(error)) from None
    finally:
        handler.close()
    tree = getattr(metadata, "tree", metadata)
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda leaf: hasattr(leaf, "shape") and hasattr(leaf, "dtype"))[0]
    return {_path_name(path): (tuple(leaf.shape), leaf.dtype) for path, leaf in flat}


def _check_names(saved: SavedStep, item: str, expected: dict[str, np.ndarray], what: str) -> None:
    """Raise :class:`CheckpointError` naming the first field of ``expected`` that ``saved``
    lacks or holds with another shape or dtype."""
    where = f"checkpoint {saved.path}"
    shapes = _saved_shapes(saved, item)
    for name, array in expected.items():
        if name not in shapes:
            held = ", ".join(sorted(shapes)[:4])
            raise CheckpointError(f"{where}: {what} {name} is missing from the checkpoint (it "
                                  f"holds {held}, ...): it comes from another configuration")
        shape, dtype = shapes[name]
        _check_shape(shape, dtype, array.shape, array.dtype, f"{where}: {what} {name}")


def _read_metadata(saved: SavedStep) -> dict:
    try:
        return saved.read_metadata()
    except (OSError, ValueError) as error:
        raise _Unreadable(f"its metadata cannot be read ({_first_line(error)})") from None


def peek_metadata(path: str | os.PathLike, *, prefer: str = "best") -> dict:
    """The JSON metadata of the ``prefer`` step at ``path`` (see :func:`find_checkpoint`), a
    plain read of the file that orbax wrote, so that it can run before JAX starts (``seqmodel
    train --resume`` picks its device count from the checkpoint's batch size). With
    ``prefer="latest"`` a step whose metadata cannot be read gives way to the one before it, as
    :func:`restore_train_state` does."""
    run = _checked_folder(path)
    candidates = list(run.steps) if prefer == "latest" else [run.pick(prefer)]
    errors = []
    for saved in candidates:
        try:
            return _read_metadata(saved)
        except _Unreadable as error:
            errors.append(f"step {saved.step}: {error}")
    raise CheckpointError(f"no readable checkpoint in {run.path} ({'; '.join(errors)})")


def read_metadata(path: str | os.PathLike, *, prefer: str = "best") -> dict:
    """The JSON metadata of the ``prefer`` step at ``path`` (see :func:`find_checkpoint`),
    restored by orbax."""
    saved = _checked_folder(path).pick(prefer)
    try:
        return dict(_restore_items(saved, metadata=ocp.args.JsonRestore())["metadata"])
    except _Unreadable as error:
        raise CheckpointError(f"cannot read checkpoint {saved.path}: {error}") from None


def check_model_config(saved: dict, config, where: str) -> None:
    """Raise :class:`CheckpointError` naming the fields where ``config`` differs from ``saved``."""
    current = config.to_dict()
    different = [f"{key}={saved.get(key)!r} (now {current[key]!r})" for key in current
                 if key in saved and saved[key] != current[key]]
    if different:
        raise CheckpointError(f"{where} was trained with another model: {', '.join(different)}; "
                              f"use the same flags or another run folder")


def _restore_params(saved: SavedStep, template_params) -> nnx.State:
    expected = {name: _to_numpy(leaf)
                for name, leaf in _flat(nnx.to_pure_dict(template_params)).items()}
    _check_names(saved, "params", expected, "parameter")
    restored = _restore_items(saved, params=ocp.args.StandardRestore(
        _zeros_like(_nested(expected))))["params"]
    values = _flat(restored)
    where = f"checkpoint {saved.path}: parameter"
    pure = _nested({name: _from_numpy(np.asarray(values[name]), leaf, f"{where} {name}")
                    for name, leaf in _flat(nnx.to_pure_dict(template_params)).items()})
    params = jax.tree.map(lambda leaf: leaf, template_params)  # a copy to fill
    nnx.replace_by_pure_dict(params, pure)
    return params


def _restore_rest(saved: SavedStep, template) -> dict:
    """The fields of :data:`TRAIN_STATE_FIELDS`, restored into the structure of ``template``."""
    tree = _train_state_tree(template)
    flat_template = _flat(tree)
    where = f"checkpoint {saved.path}"
    saved_names = _saved_shapes(saved, "train_state")
    if saved_names and all(re.fullmatch(r"leaf_\d{5}", name) for name in saved_names):
        return _restore_numbered(saved, tree, saved_names)
    expected = {name: _to_numpy(leaf) for name, leaf in flat_template.items()}
    _check_names(saved, "train_state", expected, "training state")
    restored = _flat(_restore_items(saved, train_state=ocp.args.StandardRestore(
        _zeros_like(_nested(expected))))["train_state"])
    values = [_from_numpy(np.asarray(restored[name]), leaf, f"{where}: training state {name}")
              for name, leaf in flat_template.items()]
    return jax.tree.unflatten(jax.tree.structure(tree), values)


def _restore_numbered(saved: SavedStep, tree: dict, saved_names: dict) -> dict:
    """The training state of the earlier layout: the leaves of ``(step, opt_state, model_state,
    carry, key, horizon)`` numbered in their flattening order."""
    where = f"checkpoint {saved.path}"
    leaves, treedef = jax.tree.flatten(tuple(tree[field] for field in TRAIN_STATE_FIELDS))
    if len(saved_names) != len(leaves):
        raise CheckpointError(f"{where} holds {len(saved_names)} training-state arrays, this run "
                              f"expects {len(leaves)}: it comes from another configuration")
    target = {name: np.zeros(shape, dtype) for name, (shape, dtype) in saved_names.items()}
    restored = _restore_items(saved, train_state=ocp.args.StandardRestore(target))["train_state"]
    values = [_from_numpy(np.asarray(restored[f"leaf_{i:05d}"]), leaf, f"{where}: state {i}")
              for i, leaf in enumerate(leaves)]
    return dict(zip(TRAIN_STATE_FIELDS, jax.tree.unflatten(treedef, values)))


class RestoredRun(NamedTuple):
    """What :func:`restore_train_state` returns: the state, its step's metadata, and the newer
    steps that could not be read, as ``(step, reason)``."""

    state: Any
    metadata: dict
    skipped: tuple[tuple[int, str], ...]


def restore_train_state(run_dir: str | os.PathLike, template, model_config) -> RestoredRun:
    """Restore the newest readable step of ``run_dir`` into the structure of ``template`` (a
    fresh :class:`~seqmodel.train.TrainState`). A newest step that cannot be read (truncated,
    half written by another tool) gives way to the step before it, and is reported in
    ``skipped``. A checkpoint of another configuration raises :class:`CheckpointError` naming
    the field.

    Example::

        state, metadata, skipped = restore_train_state("runs/demo", state, model.config)
    """
    run = _checked_folder(run_dir)
    skipped = []
    for saved in run.steps:
        try:
            metadata = _read_metadata(saved)
            where = f"checkpoint {saved.path}"
            check_model_config(metadata.get("model_config", {}), model_config, where)
            params = _restore_params(saved, template.params)
            rest = _restore_rest(saved, template)
        except _Unreadable as error:
            skipped.append((saved.step, str(error)))
            continue
        state = template.replace(params=params, **rest)
        return RestoredRun(state, metadata, tuple(skipped))
    reasons = "; ".join(f"step {step}: {reason}" for step, reason in skipped)
    raise CheckpointError(f"no readable checkpoint in {run.path} ({reasons}); move the folder "
                          f"away to start the run again")


def load_model(path: str | os.PathLike, *, prefer: str = "best", seed: int = 0):
    """Rebuild the model saved at ``path`` (a run folder: its ``best`` step, else its newest).
    A step that cannot be read gives way to the others, newest first, with a warning (logger
    ``seqmodel``).

    Returns ``(model, metadata)``; ``metadata["data"]`` rebuilds the tokenizer or normaliser.

    Example::

        model, metadata = load_model("runs/demo")
    """
    run = _checked_folder(path)
    chosen = run.pick(prefer)
    # The chosen step first; should it be unreadable, the others, newest first.
    candidates = [chosen] + [saved for saved in run.steps if saved != chosen]
    skipped = []
    for saved in candidates:
        try:
            model, metadata = _load_step(saved, seed)
        except _Unreadable as error:
            skipped.append(f"step {saved.step} ({error})")
            continue
        if skipped:
            log.warning(f"loaded step {saved.step} of {run.path}: {'; '.join(skipped)} cannot "
                        f"be read")
        return model, metadata
    raise CheckpointError(f"no readable checkpoint in {run.path}: {'; '.join(skipped)}")


def _load_step(saved: SavedStep, seed: int):
    from seqmodel.model import ModelConfig, SequenceModel

    where = f"checkpoint {saved.path}"
    metadata = _read_metadata(saved)
    if "model_config" not in metadata:
        raise CheckpointError(f"{where} has no model_config in its metadata")
    try:
        config = ModelConfig.from_dict(metadata["model_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: its model_config is not valid here ({error})") from None
    model = SequenceModel(config, rngs=nnx.Rngs(seed))
    _, template_params, _ = nnx.split(model, nnx.Param, ...)
    nnx.update(model, _restore_params(saved, template_params))
    model.eval()
    return model, metadata
