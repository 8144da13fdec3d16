"""What every frozen config dataclass shares: a round trip through a plain dict (checkpoints)."""

from __future__ import annotations

import dataclasses


class DictConfig:
    """Mixin for frozen dataclasses: ``to_dict()`` and ``from_dict(values)``.

    ``from_dict`` ignores keys that are not fields, so a checkpoint written by a newer version
    with extra fields still loads.

    Example::

        config = ModelConfig.from_dict(metadata["model"])
    """

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})
