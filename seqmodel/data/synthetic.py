"""Built-in synthetic numeric sources for tests and demos: ``sine``, ``bimodal``, ``binary-patterns``.

Each generator takes an explicit ``seed`` and returns a list of ``(t, d)`` float64 sequences, the
same form the CSV / ``.npy`` loaders give, so every source goes through one pipeline.

- ``sine``: noisy sines, each sequence with its own random frequency, phase and amplitude. The
  clean signal is predictable from its past; persistence (repeat the last value) is not.
- ``bimodal``: ``x[t+1] = 0.5 x[t] + 1.5 s + 0.1 noise`` with ``s = +1`` (probability 0.7) or
  ``-1``: the next step is a two-component mixture around ``0.5 x[t] +- 1.5``. A Gaussian head can
  only put its mass between the modes; a mixture head (MDN) recovers both, weighted 0.7 / 0.3.
- ``binary-patterns``: 8 binary features cycling through a fixed codebook of 4 patterns from a
  random start (Bernoulli head; a piano roll in miniature). After the first step the next element
  is determined by the current one.
"""

from __future__ import annotations

import numpy as np

BIMODAL_DECAY = 0.5
BIMODAL_OFFSET = 1.5
BIMODAL_UP_PROBABILITY = 0.7
BIMODAL_NOISE = 0.1
SINE_NOISE = 0.1


def sine(*, num_sequences: int = 256, length: int = 200, noise: float = SINE_NOISE,
         seed: int = 0) -> list[np.ndarray]:
    """Noisy sines ``a sin(2 pi f t + phase) + noise``, one feature.

    Per sequence: period uniform in [12, 40] steps, phase uniform, amplitude uniform in [0.5, 1.5];
    ``noise`` is the standard deviation of i.i.d. Gaussian noise.

    Example::

        sequences = sine(num_sequences=8, length=100, seed=0)    # 8 arrays (100, 1)
    """
    rng = np.random.default_rng(seed)
    period = rng.uniform(12.0, 40.0, size=(num_sequences, 1))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(num_sequences, 1))
    amplitude = rng.uniform(0.5, 1.5, size=(num_sequences, 1))
    steps = np.arange(length)[None, :]
    clean = amplitude * np.sin(2.0 * np.pi * steps / period + phase)
    values = clean + noise * rng.standard_normal(clean.shape)
    return [row[:, None] for row in values]


def bimodal(*, num_sequences: int = 256, length: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``x[t+1] = 0.5 x[t] + 1.5 s[t] + 0.1 noise``, ``s[t] = +1`` with probability 0.7 else -1.

    Example::

        sequences = bimodal(num_sequences=4, length=32, seed=0)    # 4 arrays (32, 1)
    """
    rng = np.random.default_rng(seed)
    signs = np.where(rng.random((num_sequences, length)) < BIMODAL_UP_PROBABILITY, 1.0, -1.0)
    noise = BIMODAL_NOISE * rng.standard_normal((num_sequences, length))
    values = np.zeros((num_sequences, length))
    values[:, 0] = rng.normal(0.0, 1.0, num_sequences)
    for step in range(1, length):  # a short recurrence over time, vectorised over sequences
        values[:, step] = (BIMODAL_DECAY * values[:, step - 1] + BIMODAL_OFFSET * signs[:, step]
                           + noise[:, step])
    return [row[:, None] for row in values]


def binary_patterns(*, num_sequences: int = 256, length: int = 32, num_features: int = 8,
                    num_patterns: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Binary vectors cycling through a fixed random codebook of ``num_patterns`` distinct patterns,
    each sequence from its own random start. The codebook depends only on ``num_features`` and
    ``num_patterns`` (not on ``seed``), so training and validation sets share it.

    Example::

        sequences = binary_patterns(num_sequences=4, seed=1)    # 4 arrays (32, 8) of 0./1.
    """
    codebook_rng = np.random.default_rng(1234 + num_features * 100 + num_patterns)
    while True:  # distinct patterns, so the current element determines the next one
        codebook = (codebook_rng.random((num_patterns, num_features)) < 0.5).astype(np.float64)
        if len({tuple(row) for row in codebook}) == num_patterns:
            break
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, num_patterns, size=(num_sequences, 1))
    indices = (starts + np.arange(length)[None, :]) % num_patterns
    return list(codebook[indices])


SOURCES = {"sine": sine, "bimodal": bimodal, "binary-patterns": binary_patterns}


def load_synthetic(name: str, *, seed: int = 0, **options) -> list[np.ndarray]:
    """The built-in source ``name`` (``sine``, ``bimodal``, ``binary-patterns``) as a list of
    ``(t, d)`` sequences."""
    if name not in SOURCES:
        raise ValueError(f"unknown synthetic source {name!r}; built-in: {', '.join(SOURCES)}")
    return SOURCES[name](seed=seed, **options)
