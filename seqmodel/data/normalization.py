"""Per-feature normalisation fitted on the training part and saved with the model."""

from __future__ import annotations

import dataclasses

import numpy as np

# Spread below this (relative to the feature's magnitude) counts as constant: dividing by it would
# blow rounding noise up to unit variance, or divide by zero.
_CONSTANT_RELATIVE_SPREAD = 1e-8


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Per-feature affine map ``normalize(x) = (x - mean) / scale`` and its inverse.

    Fit it on the training part only, save it with the model (``to_dict`` is JSON-ready), and
    map samples back with ``denormalize``. ``mean`` and ``scale`` are ``(d,)``.

    Example::

        normalizer = Normalizer.fit(train_sequences)     # list of (t_i, d) or an array (..., d)
        z = normalizer.normalize(x)                       # (..., d)
        x_again = normalizer.denormalize(z)
    """

    mean: tuple
    scale: tuple

    @classmethod
    def fit(cls, values, *, mask: np.ndarray | None = None) -> "Normalizer":
        """Mean and standard deviation per feature over every step, ignoring NaN (missing) and
        steps where ``mask`` is 0. ``values``: an array ``(..., d)`` or a list of ``(t_i, d)``.
        A constant feature gets scale 1, so it normalises to 0 instead of NaN."""
        if isinstance(values, (list, tuple)):
            flat = np.concatenate([np.asarray(v, np.float64).reshape(-1, np.shape(v)[-1])
                                   for v in values])
        else:
            array = np.asarray(values, np.float64)
            if mask is not None:
                array = np.where(np.asarray(mask, bool)[..., None], array, np.nan)
            flat = array.reshape(-1, array.shape[-1])
        counts = np.sum(~np.isnan(flat), axis=0)
        if np.any(counts == 0):
            empty = [int(i) for i in np.nonzero(counts == 0)[0]]
            raise ValueError(f"cannot fit a Normalizer: feature(s) {empty} have no values")
        mean = np.nanmean(flat, axis=0)
        spread = np.nanstd(flat, axis=0)
        constant = spread <= _CONSTANT_RELATIVE_SPREAD * np.maximum(1.0, np.abs(mean))
        scale = np.where(constant, 1.0, spread)
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in scale))

    @classmethod
    def identity(cls, num_features: int) -> "Normalizer":
        """mean 0, scale 1: for binary data (Bernoulli head), which must stay 0/1."""
        return cls((0.0,) * num_features, (1.0,) * num_features)

    @property
    def num_features(self) -> int:
        return len(self.mean)

    def _arrays(self, like):
        # The values' own float dtype (no host copy of a device array just to read it).
        dtype = getattr(like, "dtype", np.float64)
        dtype = dtype if np.issubdtype(dtype, np.floating) else np.float32
        return np.asarray(self.mean, dtype), np.asarray(self.scale, dtype)

    def normalize(self, values):
        """``(..., d)`` original units -> normalised (NaN stays NaN)."""
        self._check(values)
        mean, scale = self._arrays(values)
        return (values - mean) / scale

    def denormalize(self, values):
        """``(..., d)`` normalised -> original units. Works on numpy and JAX arrays."""
        self._check(values)
        mean, scale = self._arrays(values)
        return values * scale + mean

    def log_scale_sum(self) -> float:
        """``sum(log scale)``: add it to a per-step NLL in normalised units to get the NLL in
        original units (the density changes by the Jacobian of the affine map)."""
        return float(np.sum(np.log(self.scale)))

    def _check(self, values) -> None:
        if np.shape(values)[-1] != self.num_features:
            raise ValueError(
                f"values have {np.shape(values)[-1]} features (shape {np.shape(values)}), but "
                f"the Normalizer was fitted on {self.num_features}"
            )

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, values: dict) -> "Normalizer":
        return cls(tuple(float(m) for m in values["mean"]), tuple(float(s) for s in values["scale"]))
