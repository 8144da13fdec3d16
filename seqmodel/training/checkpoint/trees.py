"""The training state as arrays with names: NumPy copies for orbax, and back into the structure
of a template.

``train_state`` is a nested dict named by the fields of :class:`~seqmodel.training.optimization.TrainState`
(:data:`TRAIN_STATE_FIELDS`) and the paths inside them (``opt_state/0/mu/...``, ``carry/0``), so
that a checkpoint of another configuration is refused with the name of the field.

Example::

    named = named_arrays({"carry": state.carry})      # {"carry": {"0": array(...)}}
    flat_names(named)                                  # {"carry/0": array(...)}
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqmodel.errors import CheckpointError

# The fields of a TrainState that `train_state` holds (params are their own item).
TRAIN_STATE_FIELDS = ("step", "opt_state", "model_state", "carry", "key", "horizon")


def is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def to_numpy(leaf) -> np.ndarray:
    if is_key(leaf):
        leaf = jax.random.key_data(leaf)
    # A copy: the save is written in the background while the next train steps reuse (donate)
    # the device buffers that a zero-copy view would share.
    return np.array(jax.device_get(leaf), copy=True)


def from_numpy(value: np.ndarray, template, where: str):
    if not hasattr(template, "shape"):
        return template  # a Python constant inside an optax state: static, nothing to restore
    expected = jax.random.key_data(template) if is_key(template) else template
    check_shape(value.shape, value.dtype, expected.shape, expected.dtype, where)
    array = jnp.asarray(value)
    if is_key(template):
        return jax.random.wrap_key_data(array, impl=jax.random.key_impl(template))
    return array


def check_shape(shape, dtype, expected_shape, expected_dtype, where: str) -> None:
    shape, expected_shape = tuple(shape), tuple(expected_shape)
    dtype, expected_dtype = np.dtype(dtype), np.dtype(expected_dtype)
    if shape != expected_shape or dtype != expected_dtype:
        raise CheckpointError(
            f"{where} is {dtype}{list(shape)} in the checkpoint but this model expects "
            f"{expected_dtype}{list(expected_shape)}: the checkpoint comes from another "
            f"configuration")


def part_name(part) -> str:
    return str(getattr(part, "key", getattr(part, "idx", getattr(part, "name", part))))


def path_name(path) -> str:
    return "/".join(part_name(part) for part in path)


def flat_names(tree) -> dict[str, Any]:
    """``{"a/b/0": leaf}`` for every leaf of ``tree`` (a pytree, or orbax's nested dicts)."""
    return {path_name(path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def nested(flat: dict[str, Any]) -> dict:
    """The nested dict of ``{"a/b/0": leaf}``: what orbax stores under named keys."""
    nested: dict = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return nested


def train_state_tree(state) -> dict:
    return {field: getattr(state, field) for field in TRAIN_STATE_FIELDS}


def named_arrays(tree) -> dict:
    """``tree`` as a nested dict of NumPy arrays named by its paths."""
    return nested({name: to_numpy(leaf) for name, leaf in flat_names(tree).items()})


def zeros_like(named: dict) -> dict:
    # Restore targets: zero NumPy arrays of the right shape and dtype, so orbax returns NumPy.
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), named)
