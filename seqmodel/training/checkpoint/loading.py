"""Reading checkpoints: metadata, the training state of a resumed run and a model for sampling,
each falling back past a step that cannot be read."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from seqmodel.errors import CheckpointError
from seqmodel.training.checkpoint.folders import RunFolder, SavedStep, inspect_run
from seqmodel.training.checkpoint.trees import (
    TRAIN_STATE_FIELDS,
    check_shape,
    flat_names,
    from_numpy,
    nested,
    path_name,
    to_numpy,
    train_state_tree,
    zeros_like,
)

log = logging.getLogger("seqmodel")


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
    if not run.steps and run.damaged:
        reasons = "; ".join(f"step {saved.step}: {reason}" for saved, reason in run.damaged)
        raise CheckpointError(f"no readable checkpoint in {run.path} ({reasons})")
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
    """orbax's restore of ``items`` of one step; a damaged step raises :class:`_Unreadable`.

    The step's folder is read by itself, not through a ``CheckpointManager``: a manager reads
    the records of every step of the folder when it opens, so a damaged newer step would fail
    the restore of an intact older one."""
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        return checkpointer.restore(saved.path.absolute(), args=ocp.args.Composite(**items))
    except CheckpointError:
        raise
    except Exception as error:  # orbax raises a variety of types for damaged folders
        raise _Unreadable(_first_line(error)) from None
    finally:
        checkpointer.close()


def _check_array_files(saved: SavedStep, item: str) -> None:
    """Read every stored value of ``item`` (an OCDBT database, orbax's default array store)
    once, synchronously, and raise :class:`_Unreadable` at the first truncated or missing file.

    orbax reads a step's arrays concurrently on an event loop that it closes at the first
    failure; the reads still in flight then report "Event loop is closed" tracebacks on stderr.
    Finding the damage first keeps a fallback to the older step to its one warning. The cost is
    a second read of the item's files, once per restore."""
    folder = (saved.path / item).absolute()
    if not (folder / "manifest.ocdbt").is_file():
        return  # another store (an earlier orbax): left to orbax's restore
    import tensorstore

    try:
        store = tensorstore.KvStore.open({"driver": "ocdbt",
                                          "base": f"file://{folder}/"}).result()
        for key in store.list().result():
            store.read(key).result()
    except Exception as error:  # tensorstore reports damage as ValueError or OSError
        raise _Unreadable(f"its {item} cannot be read ({_first_line(error)})") from None


def _saved_shapes(saved: SavedStep, item: str) -> dict[str, tuple]:
    """``{name: (shape, dtype)}`` of the arrays of ``item`` in ``saved``, from orbax's metadata
    (orbax reads the tree's description and each array's header), once every stored value of
    the item is found readable (:func:`_check_array_files`)."""
    _check_array_files(saved, item)
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
    return {path_name(path): (tuple(leaf.shape), leaf.dtype) for path, leaf in flat}


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
        check_shape(shape, dtype, array.shape, array.dtype, f"{where}: {what} {name}")


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
    current = json.loads(json.dumps(config.to_dict()))  # as saved: tuples are lists in JSON
    different = [f"{key}={saved.get(key)!r} (now {current[key]!r})" for key in current
                 if key in saved and saved[key] != current[key]]
    if different:
        raise CheckpointError(f"{where} was trained with another model: {', '.join(different)}; "
                              f"use the same flags or another run folder")


def _restore_params(saved: SavedStep, template_params) -> nnx.State:
    expected = {name: to_numpy(leaf)
                for name, leaf in flat_names(nnx.to_pure_dict(template_params)).items()}
    _check_names(saved, "params", expected, "parameter")
    restored = _restore_items(saved, params=ocp.args.StandardRestore(
        zeros_like(nested(expected))))["params"]
    values = flat_names(restored)
    where = f"checkpoint {saved.path}: parameter"
    pure = nested({name: from_numpy(np.asarray(values[name]), leaf, f"{where} {name}")
                    for name, leaf in flat_names(nnx.to_pure_dict(template_params)).items()})
    params = jax.tree.map(lambda leaf: leaf, template_params)  # a copy to fill
    nnx.replace_by_pure_dict(params, pure)
    return params


def _restore_rest(saved: SavedStep, template) -> dict:
    """The fields of :data:`TRAIN_STATE_FIELDS`, restored into the structure of ``template``."""
    tree = train_state_tree(template)
    flat_template = flat_names(tree)
    where = f"checkpoint {saved.path}"
    saved_names = _saved_shapes(saved, "train_state")
    if saved_names and all(re.fullmatch(r"leaf_\d{5}", name) for name in saved_names):
        return _restore_numbered(saved, tree, saved_names)
    expected = {name: to_numpy(leaf) for name, leaf in flat_template.items()}
    _check_names(saved, "train_state", expected, "training state")
    restored = flat_names(_restore_items(saved, train_state=ocp.args.StandardRestore(
        zeros_like(nested(expected))))["train_state"])
    values = [from_numpy(np.asarray(restored[name]), leaf, f"{where}: training state {name}")
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
    values = [from_numpy(np.asarray(restored[f"leaf_{i:05d}"]), leaf, f"{where}: state {i}")
              for i, leaf in enumerate(leaves)]
    return dict(zip(TRAIN_STATE_FIELDS, jax.tree.unflatten(treedef, values)))


class RestoredRun(NamedTuple):
    """What :func:`restore_train_state` returns: the state, its step's metadata, and the steps
    that could not be read, as ``(step, reason)``, newest first: the newer steps it skipped and
    any damaged step folder (:attr:`RunFolder.damaged`)."""

    state: Any
    metadata: dict
    skipped: tuple[tuple[int, str], ...]


def restore_train_state(run_dir: str | os.PathLike, template, model_config) -> RestoredRun:
    """Restore the newest readable step of ``run_dir`` into the structure of ``template`` (a
    fresh :class:`~seqmodel.training.optimization.TrainState`). A newest step that cannot be read (truncated,
    half written by another tool) gives way to the step before it, and is reported in
    ``skipped``. A checkpoint of another configuration raises :class:`CheckpointError` naming
    the field.

    Example::

        state, metadata, skipped = restore_train_state("runs/demo", state, model.config)
    """
    run = _checked_folder(run_dir)
    skipped = [(saved.step, reason) for saved, reason in run.damaged]
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
        return RestoredRun(state, metadata, tuple(sorted(skipped, key=lambda item: -item[0])))
    reasons = "; ".join(f"step {step}: {reason}"
                        for step, reason in sorted(skipped, key=lambda item: -item[0]))
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
    skipped = [f"step {saved.step} ({reason})" for saved, reason in run.damaged
               if saved.step > chosen.step]
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
    from seqmodel.nn.model import ModelConfig, SequenceModel

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
