"""Checkpoints with orbax-checkpoint: the full training state, device-independent.

A run folder holds two checkpoint folders, each keeping its newest step only::

    RUN/latest/<step>/{params, train_state, metadata}     written at every evaluation and at the end
    RUN/best/<step>/...                                   the lowest validation loss so far

- ``params``: the model parameters as a plain nested dict of arrays (``nnx.State.to_pure_dict``).
- ``train_state``: everything else that changes during training (optimizer state, step, the
  lanes' carry, RNG keys, schedule horizon), as numbered leaves of the :class:`TrainState` tree.
- ``metadata``: JSON with the model and train configs, the data side (tokenizer or normaliser),
  the data position, step, tokens, elapsed seconds and validation losses.

Arrays are written as NumPy arrays and read back as NumPy arrays, then placed on the default
device: a checkpoint written on a GPU loads on a CPU (nothing pins a device or a sharding).

Example::

    model, metadata = load_model("runs/demo")                 # best if present, else latest
    tokenizer = tokenizer_from_dict(metadata["data"]["tokenizer"])
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from seqmodel.errors import CheckpointError

KINDS = ("best", "latest")


# ---------------------------------------------------------------------------------------------
# Array conversion
# ---------------------------------------------------------------------------------------------


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_numpy(leaf):
    if _is_key(leaf):
        leaf = jax.random.key_data(leaf)
    return np.asarray(jax.device_get(leaf))


def _from_numpy(value: np.ndarray, template, where: str):
    if not hasattr(template, "shape"):
        return template  # a Python constant inside an optax state: static, nothing to restore
    expected = jax.random.key_data(template) if _is_key(template) else template
    expected_shape, expected_dtype = tuple(expected.shape), np.dtype(expected.dtype)
    if tuple(value.shape) != expected_shape or np.dtype(value.dtype) != np.dtype(expected_dtype):
        raise CheckpointError(
            f"{where} is {value.dtype}{list(value.shape)} in the checkpoint but this model expects "
            f"{np.dtype(expected_dtype)}{list(expected_shape)}: the checkpoint comes from another "
            f"configuration"
        )
    array = jnp.asarray(value)
    if _is_key(template):
        return jax.random.wrap_key_data(array, impl=jax.random.key_impl(template))
    return array


def _leaves_dict(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree.leaves(tree)
    return {f"leaf_{index:05d}": _to_numpy(leaf) for index, leaf in enumerate(leaves)}


def _template_dict(tree) -> dict[str, np.ndarray]:
    # Restore targets: zero NumPy arrays of the right shape and dtype, so orbax returns NumPy.
    return {key: np.zeros(value.shape, value.dtype) for key, value in _leaves_dict(tree).items()}


def _path_name(path) -> str:
    return "/".join(str(getattr(part, "key", getattr(part, "idx", part))) for part in path)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _split_state(state) -> tuple[dict, dict]:
    """TrainState -> (params as a pure dict of NumPy arrays, the rest as numbered leaves)."""
    params = jax.tree.map(_to_numpy, state.params.to_pure_dict())
    rest = (state.step, state.opt_state, state.model_state, state.carry, state.key, state.horizon)
    return params, _leaves_dict(rest)


class RunCheckpoints:
    """The ``latest`` and ``best`` checkpoints of one run folder.

    Example::

        saver = RunCheckpoints("runs/demo")
        saver.save(step, state, metadata, best=True)
        saver.close()
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = pathlib.Path(run_dir)
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        self._managers = {
            kind: ocp.CheckpointManager(self.run_dir.absolute() / kind, options=options)
            for kind in KINDS
        }

    def save(self, step: int, state, metadata: dict, *, best: bool = False) -> None:
        params, rest = _split_state(state)
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train_state=ocp.args.StandardSave(rest),
            metadata=ocp.args.JsonSave(metadata),
        )
        for kind in ("latest", "best") if best else ("latest",):
            manager = self._managers[kind]
            # The same step can be saved twice (e.g. an evaluation step that also ends the run).
            if step in manager.all_steps():
                manager.delete(step)
            manager.save(step, args=args)
            manager.wait_until_finished()

    def latest_path(self) -> pathlib.Path:
        return self.run_dir / "latest"

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def find_checkpoint(path: str | os.PathLike, *,
                    prefer: str = "best") -> tuple[pathlib.Path, int]:
    """``(checkpoint folder, newest step in it)`` for a run folder (its ``prefer`` folder,
    ``best`` or ``latest``, else the other) or for a ``latest`` / ``best`` folder itself.

    Example::

        find_checkpoint("runs/demo", prefer="latest")   # (Path("runs/demo/latest"), 2000)
    """
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"--checkpoint {str(path)!r}: no such folder")
    order = (prefer,) + tuple(kind for kind in KINDS if kind != prefer)
    candidates = [path / kind for kind in order] + [path]
    for folder in candidates:
        if folder.is_dir():
            steps = sorted(int(child.name) for child in folder.iterdir()
                           if child.is_dir() and child.name.isdigit())
            if steps:
                return folder, steps[-1]
    raise CheckpointError(f"--checkpoint {str(path)!r} holds no checkpoint (expected a run folder "
                          f"with latest/ or best/ written by `seqmodel train --out`)")


def _restore(folder: pathlib.Path, step: int, **items) -> dict:
    manager = ocp.CheckpointManager(folder.absolute())
    try:
        return manager.restore(step, args=ocp.args.Composite(**items))
    except CheckpointError:
        raise
    except Exception as error:  # orbax raises a variety of types for damaged folders
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {folder / str(step)}: {message}") from None
    finally:
        manager.close()


def read_metadata(path: str | os.PathLike, *, prefer: str = "best") -> dict:
    """The JSON metadata of the checkpoint at ``path`` (see :func:`find_checkpoint`)."""
    folder, step = find_checkpoint(path, prefer=prefer)
    return dict(_restore(folder, step, metadata=ocp.args.JsonRestore())["metadata"])


def peek_metadata(path: str | os.PathLike, *, prefer: str = "best") -> dict:
    """Like :func:`read_metadata`, but a plain read of the JSON file that orbax wrote, so that it
    can run before JAX starts (``seqmodel train --resume`` picks its device count from the
    checkpoint's batch size)."""
    folder, step = find_checkpoint(path, prefer=prefer)
    return json.loads((folder / str(step) / "metadata" / "metadata").read_text())


def check_model_config(saved: dict, config, where: str) -> None:
    """Raise :class:`CheckpointError` naming the fields where ``config`` differs from ``saved``."""
    current = config.to_dict()
    different = [f"{key}={saved.get(key)!r} (now {current[key]!r})" for key in current
                 if key in saved and saved[key] != current[key]]
    if different:
        raise CheckpointError(f"{where} was trained with another model: {', '.join(different)}; "
                              f"use the same flags or another --out folder")


def _restore_params(raw: dict, template_params, where: str):
    pure = template_params.to_pure_dict()
    saved_paths = {_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(raw)[0]}
    flat, treedef = jax.tree_util.tree_flatten_with_path(pure)
    values = []
    raw_flat = dict((_path_name(p), v) for p, v in jax.tree_util.tree_flatten_with_path(raw)[0])
    for path, leaf in flat:
        name = _path_name(path)
        if name not in raw_flat:
            raise CheckpointError(f"{where}: parameter {name} is missing from the checkpoint "
                                  f"(it holds {', '.join(sorted(saved_paths)[:6])}, ...)")
        values.append(_from_numpy(np.asarray(raw_flat[name]), leaf, f"{where}: parameter {name}"))
    restored = jax.tree_util.tree_unflatten(treedef, values)
    params = jax.tree.map(lambda leaf: leaf, template_params)  # a copy to fill
    nnx.replace_by_pure_dict(params, restored)
    return params


def restore_train_state(run_dir: str | os.PathLike, template, model_config) -> tuple[Any, dict]:
    """Restore the ``latest`` checkpoint of ``run_dir`` into the structure of ``template``
    (a fresh :class:`~seqmodel.train.TrainState`). Returns ``(state, metadata)``."""
    folder, step = find_checkpoint(run_dir, prefer="latest")
    where = f"checkpoint {folder / str(step)}"
    metadata = dict(_restore(folder, step, metadata=ocp.args.JsonRestore())["metadata"])
    check_model_config(metadata.get("model_config", {}), model_config, where)
    params_target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                                 jax.tree.map(_to_numpy, template.params.to_pure_dict()))
    rest_template = (template.step, template.opt_state, template.model_state, template.carry,
                     template.key, template.horizon)
    rest_target = _template_dict(rest_template)
    restored = _restore(folder, step, params=ocp.args.StandardRestore(params_target),
                        train_state=ocp.args.StandardRestore(rest_target))
    params = _restore_params(restored["params"], template.params, where)
    leaves, treedef = jax.tree.flatten(rest_template)
    saved_leaves = restored["train_state"]
    if len(saved_leaves) != len(leaves):
        raise CheckpointError(f"{where} holds {len(saved_leaves)} training-state arrays, this run "
                              f"expects {len(leaves)}: it comes from another configuration")
    values = [_from_numpy(np.asarray(saved_leaves[f"leaf_{i:05d}"]), leaf, f"{where}: state {i}")
              for i, leaf in enumerate(leaves)]
    step_value, opt_state, model_state, carry, key, horizon = jax.tree.unflatten(treedef, values)
    state = template.replace(step=step_value, params=params, opt_state=opt_state,
                             model_state=model_state, carry=carry, key=key, horizon=horizon)
    return state, metadata


def load_model(path: str | os.PathLike, *, prefer: str = "best", seed: int = 0):
    """Rebuild the model saved at ``path`` (a run folder: ``best`` if present, else ``latest``).

    Returns ``(model, metadata)``; ``metadata["data"]`` rebuilds the tokenizer or normaliser.

    Example::

        model, metadata = load_model("runs/demo")
    """
    from seqmodel.model import ModelConfig, SequenceModel

    folder, step = find_checkpoint(path, prefer=prefer)
    where = f"checkpoint {folder / str(step)}"
    metadata = dict(_restore(folder, step, metadata=ocp.args.JsonRestore())["metadata"])
    if "model_config" not in metadata:
        raise CheckpointError(f"{where} has no model_config in its metadata")
    try:
        config = ModelConfig.from_dict(metadata["model_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: its model_config is not valid here ({error})") from None
    model = SequenceModel(config, rngs=nnx.Rngs(seed))
    _, template_params, _ = nnx.split(model, nnx.Param, ...)
    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                          jax.tree.map(_to_numpy, template_params.to_pure_dict()))
    restored = _restore(folder, step, params=ocp.args.StandardRestore(target))
    params = _restore_params(restored["params"], template_params, where)
    nnx.update(model, params)
    model.eval()
    return model, metadata
