"""Forecasting with real-valued models, and the exposure-bias report.

A model trained with teacher forcing (fed the truth) is used free running (fed its own samples).
The report measures the gap between the two on held-out sequences: from many start points it
draws ``S`` free-running sample paths of ``H`` steps and scores them per horizon step (MAE of the
median, CRPS estimated from the samples) next to

- the persistence baseline (the last context value repeated), the seasonal naive baseline (the
  last season of the context repeated), and
- the model's own one-step error under teacher forcing at the same time steps (what the training
  loss sees): free running at horizon 1 is the same distribution; beyond it, any growth of the
  free-running error over the teacher-forced one is compounding of the model's own errors.

Errors are in original units (the :class:`~seqmodel.data.numeric.Normalizer` is undone first).

Pure metric functions (numpy): :func:`crps_from_samples`, :func:`sample_quantiles`,
:func:`horizon_mean`. Model functions: :func:`sample_paths`, :func:`forecast`,
:func:`teacher_forced_outputs`, :func:`exposure_bias_report`. Plots (matplotlib's object API):
:func:`plot_fan`, :func:`plot_report`. ``seqmodel sample`` / ``seqmodel eval`` of a real-valued
checkpoint (:mod:`seqmodel.cli`) call these.

Example::

    paths = forecast(model, normalizer, history, key=jax.random.key(0), horizon=24,
                     num_samples=200)                          # (p, d) -> (200, 24, d)
    report = exposure_bias_report(model, validation, normalizer, key=jax.random.key(0),
                                  horizon=50)
    plot_report(report, "report.png")
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqmodel.configs import REPORT_NUM_SAMPLES, REPORT_NUM_STARTS
from seqmodel.data.batching import DataError
from seqmodel.data.numeric import Normalizer, pad_sequences

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Metrics (numpy, no model)
# ---------------------------------------------------------------------------------------------


def crps_from_samples(samples: np.ndarray, truth: np.ndarray, *, axis: int = 1,
                      estimator: str = "fair") -> np.ndarray:
    """Continuous ranked probability score of a forecast given by samples, per element.

    ``CRPS = E|X - y| - 0.5 E|X - X'|`` with ``X, X'`` independent draws of the forecast. From
    ``S`` samples ``x_1..x_S`` the first term is the mean of ``|x_i - y|``; the second has two
    estimators:

    - ``"fair"`` (default): the mean of ``|x_i - x_j|`` over the ``S (S - 1)`` pairs ``i != j``,
      unbiased, so scores of forecasts with different ``S`` compare (Ferro 2014;
      ``scoringrules.crps_ensemble(..., estimator="fair")``). Needs ``S >= 2``.
    - ``"energy"``: the mean over all ``S^2`` pairs, ``i == j`` included, i.e. the CRPS of the
      empirical distribution (``properscoring.crps_ensemble``); it exceeds the fair value by
      ``E|X - X'| / (2 S)``.

    The pairwise sum comes from the sorted samples in ``O(S log S)`` time and ``O(S)`` memory per
    element: ``sum_ij |x_i - x_j| = 2 sum_i (2i - S + 1) x_(i)`` (0-based ranks). Lower is
    better.

    Args:
      samples: draws with the sample axis at ``axis``, e.g. paths ``(b, S, H, d)``.
      truth: the same shape without the sample axis, e.g. ``(b, H, d)``.
      axis: the sample axis of ``samples``.
      estimator: ``"fair"`` or ``"energy"``.

    Returns:
      CRPS with the shape of ``truth``, float64.

    Example::

        crps = crps_from_samples(paths, truth)      # (b, S, H, d), (b, H, d) -> (b, H, d)
        per_horizon = crps.mean(axis=(0, 2))        # (H,)
    """
    if estimator not in ("fair", "energy"):
        raise ValueError(f"estimator={estimator!r} is invalid; allowed: 'fair', 'energy'")
    samples = np.moveaxis(np.asarray(samples, np.float64), axis, 0)
    truth = np.asarray(truth, np.float64)
    if samples.shape[1:] != truth.shape:
        raise ValueError(
            f"samples without the sample axis have shape {samples.shape[1:]}, but truth has shape "
            f"{truth.shape}; they must match"
        )
    count = samples.shape[0]
    if estimator == "fair" and count < 2:
        raise ValueError(
            f"samples has {count} sample(s) on axis {axis}; estimator='fair' needs at least 2 "
            "(it averages over pairs of distinct samples): draw more, or pass "
            "estimator='energy' (one sample: the absolute error)"
        )
    absolute_error = np.abs(samples - truth[None]).mean(0)
    ordered = np.sort(samples, axis=0)
    rank_weight = (2.0 * np.arange(count) - count + 1.0).reshape((count,) + (1,) * truth.ndim)
    pair_sum = 2.0 * (rank_weight * ordered).sum(0)
    pairs = count * (count - 1) if estimator == "fair" else count * count
    return absolute_error - 0.5 * pair_sum / pairs


def sample_quantiles(samples: np.ndarray, quantiles: Sequence[float], *, axis: int = 1) -> np.ndarray:
    """Empirical quantiles over the sample axis: ``(b, S, H, d)`` -> ``(Q, b, H, d)``."""
    quantiles = np.asarray(quantiles, np.float64)
    if quantiles.ndim != 1 or np.any((quantiles < 0) | (quantiles > 1)):
        raise ValueError(f"quantiles must be a list of numbers in [0, 1], got {quantiles.tolist()}")
    return np.quantile(np.asarray(samples), quantiles, axis=axis)


def horizon_mean(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Average ``(b, H, d)`` errors over rows and features -> ``(H,)``, counting only steps where
    ``mask (b, H)`` is 1."""
    values = np.asarray(values, np.float64).mean(-1)  # (b, H)
    if mask is None:
        return values.mean(0)
    mask = np.asarray(mask, np.float64)
    return (values * mask).sum(0) / np.maximum(mask.sum(0), 1.0)


# ---------------------------------------------------------------------------------------------
# Sample paths
# ---------------------------------------------------------------------------------------------


def _check_real_valued(model) -> None:
    if model.config.conditioned:
        raise ValueError(
            "this model's inputs carry conditioning features after each element (lags, scale, "
            "time features, covariates): forecast it with seqmodel.forecasting.forecaster.forecast_series "
            "(or the backtest of seqmodel.forecasting.backtest), which builds them step by step")
    if model.config.discrete:
        raise ValueError(
            "forecasting needs a real-valued model (ModelConfig(input_size=d, head='gaussian' | "
            "'mdn' | 'bernoulli')); this one is a token model (vocab_size="
            f"{model.config.vocab_size})"
        )


def sample_paths(model, context: Array, *, key: Array, horizon: int, num_samples: int,
                 context_lengths: Array | None = None, temperature: float = 1.0) -> Array:
    """Free-running sample paths in the model's (normalised) units.

    Args:
      model: a real-valued :class:`seqmodel.SequenceModel` (sampled in eval mode; the caller's
        model keeps its mode).
      context: ``(b, p, d)`` right-padded contexts (prompts).
      key: PRNG key; the same key gives the same paths.
      horizon: ``H`` steps to draw after each context.
      num_samples: ``S`` paths per context.
      context_lengths: ``(b,)`` true lengths (default: all ``p``).
      temperature: spread scaling of the head (1 samples the model as trained).

    Returns:
      ``(b, S, H, d)``: path ``s`` of context ``i`` continues from ``context[i, :length_i]``.

    Example::

        paths = sample_paths(model, context, key=jax.random.key(0), horizon=50, num_samples=100)
    """
    from seqmodel.decoding.generate import generate  # generate sits above this layer's imports

    _check_real_valued(model)
    context = jnp.asarray(context, jnp.float32)
    generation = generate(
        model, key=key, steps=horizon, prompt=context, prompt_lengths=context_lengths,
        num_samples=num_samples, temperature=temperature,
    )
    samples = generation.samples  # (b * S, H, d): the S paths of context row r are adjacent
    return samples.reshape(context.shape[0], num_samples, horizon, samples.shape[-1])


def forecast(model, normalizer: Normalizer, context, *, key: Array, horizon: int,
             num_samples: int, context_lengths=None, temperature: float = 1.0) -> np.ndarray:
    """Sample paths in original units from contexts in original units.

    Args:
      context: ``(b, p, d)`` (right-padded, with ``context_lengths``) or one context ``(p, d)``.

    Returns:
      ``(b, S, H, d)`` numpy float32, or ``(S, H, d)`` for one ``(p, d)`` context.

    Example::

        paths = forecast(model, normalizer, history, key=jax.random.key(0), horizon=24,
                         num_samples=200)
        low, median, high = sample_quantiles(paths, (0.1, 0.5, 0.9), axis=0)
    """
    context = np.asarray(context, np.float32)
    single = context.ndim == 2
    if single:
        context = context[None]
    if context.ndim != 3 or context.shape[-1] != normalizer.num_features:
        raise ValueError(
            f"context must have shape (p, {normalizer.num_features}) or "
            f"(b, p, {normalizer.num_features}), got {context.shape}"
        )
    if np.isnan(context).any():
        raise ValueError("context holds missing values (NaN); forecasts need a complete context")
    paths = sample_paths(
        model, normalizer.normalize(context), key=key, horizon=horizon, num_samples=num_samples,
        context_lengths=None if context_lengths is None else jnp.asarray(context_lengths),
        temperature=temperature,
    )
    paths = np.asarray(normalizer.denormalize(np.asarray(paths)), np.float32)
    return paths[0] if single else paths


# ---------------------------------------------------------------------------------------------
# Teacher-forced pass
# ---------------------------------------------------------------------------------------------


def teacher_forced_outputs(model, values: Array, mask: Array):
    """One teacher-forced pass over padded sequences.

    Args:
      values: ``(n, T, d)`` normalised, padded; mask ``(n, T)``.

    Returns:
      ``(outputs, nll)``: head parameters with leading ``(n, T - 1)`` (``outputs[:, i]`` predicts
      ``values[:, i + 1]``), and the mean NLL per real target step (nats, normalised units).
    """
    return _teacher_forced(model, jnp.asarray(values, jnp.float32), jnp.asarray(mask, jnp.float32))


@nnx.jit
def _teacher_forced(model, values, mask):
    outputs, _ = model(values[:, :-1])
    log_prob = model.head.log_prob(outputs, values[:, 1:])
    target_mask = mask[:, 1:]
    nll = -(log_prob * target_mask).sum() / jnp.maximum(target_mask.sum(), 1.0)
    return outputs, nll


# ---------------------------------------------------------------------------------------------
# The exposure-bias report
# ---------------------------------------------------------------------------------------------


def choose_starts(lengths: Sequence[int], mask: np.ndarray, *, horizon: int, min_context: int,
                  num_starts: int) -> list[tuple[int, int]]:
    """Start points ``(sequence, s)``: the context is steps ``[0, s)``, the forecast covers
    ``[s, s + horizon)``. Every candidate has ``s >= min_context``, the whole window inside the
    sequence and a present last context value; ``num_starts`` of them are taken evenly spaced."""
    candidates = [
        (row, start)
        for row, length in enumerate(lengths)
        for start in range(min_context, int(length) - horizon + 1)
        if mask[row, start - 1]
    ]
    if not candidates:
        raise DataError(
            f"no start point fits: the longest validation sequence has {max(lengths)} steps, "
            f"fewer than min_context + horizon = {min_context} + {horizon}; lower --horizon or "
            "use longer sequences (a larger --val-fraction for one long series)"
        )
    if len(candidates) <= num_starts:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, num_starts).round().astype(int)
    return [candidates[i] for i in picks]


def exposure_bias_report(model, sequences: Sequence[np.ndarray], normalizer: Normalizer, *,
                         key: Array, horizon: int, num_samples: int = REPORT_NUM_SAMPLES,
                         num_starts: int = REPORT_NUM_STARTS,
                         min_context: int | None = None, max_context: int | None = 1024,
                         temperature: float = 1.0, season: int = 1) -> dict:
    """Teacher-forced NLL and free-running forecast errors against horizon, on held-out data.

    Args:
      model: a trained real-valued :class:`seqmodel.SequenceModel` (run in eval mode, without
        switching the caller's model out of its mode).
      sequences: validation sequences ``[(t_i, d), ...]`` in original units (NaN = missing).
      normalizer: the model's :class:`Normalizer`.
      key: PRNG key for the sample paths and the one-step draws.
      horizon: ``H``, steps forecast from each start.
      num_samples: ``S`` paths per start.
      num_starts: how many start points (spread evenly over all that fit).
      min_context: fewest context steps before a start (default ``min(horizon, 32)``, lowered
        when the longest sequence is shorter than that plus ``horizon``; at least 1).
      max_context: the free-running paths start from at most this many steps of context (the
        last ones before the start), which bounds memory on one long series; None: all of it.
      temperature: spread scaling of the head for the paths and the one-step draws.
      season: the seasonal naive baseline repeats the last ``season`` steps before a start (1:
        persistence); starts with less history than a season leave it out.

    Returns:
      a JSON-ready dict: ``nll`` (teacher-forced, nats per step, normalised units as the training
      loss), ``nll_original_units``, ``horizon``, ``mae`` / ``crps`` (free running, lists of
      ``H``), ``persistence_mae`` and ``seasonal_naive_mae`` (lists), ``season``,
      ``teacher_forced_mae`` / ``teacher_forced_crps`` (lists:
      one-step error at the same steps, fed the truth), ``one_step_mae`` / ``one_step_crps`` (their
      means), ``num_starts``, ``num_samples``, ``min_context``.

    Example::

        report = exposure_bias_report(model, validation, normalizer, key=jax.random.key(0),
                                      horizon=50)
        print(report["mae"][-1], report["persistence_mae"][-1])
    """
    _check_real_valued(model)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if num_samples < 2:
        raise ValueError(f"num_samples={num_samples} is invalid: allowed is an integer >= 2 (the "
                         "fair CRPS compares pairs of sample paths)")
    model = nnx.view(model, deterministic=True)  # dropout off in this view only
    if min_context is None:
        # Up to 32 steps of context, fewer when the sequences are too short for that + horizon.
        longest = max(len(s) for s in sequences)
        min_context = max(1, min(horizon, 32, longest - horizon))
    if min_context < 1:
        raise ValueError(f"min_context must be >= 1, got {min_context}")
    if not isinstance(season, int) or season < 1:
        raise ValueError(f"season={season!r} is invalid: allowed is a positive integer (1: no "
                         "season)")
    if max_context is not None and max_context < 1:
        raise ValueError(f"max_context must be >= 1 or None, got {max_context}")
    normalised = [normalizer.normalize(np.asarray(s, np.float64)) for s in sequences]
    values, mask = pad_sequences(normalised)
    lengths = [len(s) for s in sequences]
    outputs, nll = teacher_forced_outputs(model, values, mask)

    starts = choose_starts(lengths, mask, horizon=horizon, min_context=min_context,
                           num_starts=num_starts)
    rows = np.array([row for row, _ in starts])
    offsets = np.array([start for _, start in starts])
    firsts = offsets - (offsets if max_context is None else np.minimum(offsets, max_context))
    context_lengths = offsets - firsts
    # Right-padded; row i holds steps [firsts[i], offsets[i]) of its sequence.
    context = np.zeros((len(starts), int(context_lengths.max()), values.shape[-1]), np.float32)
    for i, (row, first, offset) in enumerate(zip(rows, firsts, offsets)):
        context[i, : offset - first] = values[row, first:offset]
    window = offsets[:, None] + np.arange(horizon)[None, :]  # (b, H) steps being forecast
    truth_normalised = values[rows[:, None], window]  # (b, H, d)
    window_mask = mask[rows[:, None], window]  # (b, H)

    path_key, one_step_key = jax.random.split(key)
    paths = sample_paths(model, context, key=path_key, horizon=horizon, num_samples=num_samples,
                         context_lengths=context_lengths, temperature=temperature)
    paths = normalizer.denormalize(np.asarray(paths, np.float64))  # (b, S, H, d)
    truth = normalizer.denormalize(truth_normalised.astype(np.float64))
    median = np.median(paths, axis=1)
    mae = horizon_mean(np.abs(median - truth), window_mask)
    crps = horizon_mean(crps_from_samples(paths, truth), window_mask)
    last = normalizer.denormalize(values[rows, offsets - 1].astype(np.float64))  # (b, d)
    persistence_mae = horizon_mean(np.abs(last[:, None, :] - truth), window_mask)
    back = offsets[:, None] - season + np.arange(horizon)[None, :] % season  # (b, H)
    seasonal = normalizer.denormalize(values[rows[:, None], np.maximum(back, 0)].astype(
        np.float64))
    seasonal_mask = window_mask * (offsets[:, None] >= season)
    seasonal_mae = horizon_mean(np.abs(seasonal - truth), seasonal_mask)

    # Teacher forced: outputs[:, i] is the one-step distribution of step i + 1, fed the truth.
    one_step = jax.tree.map(lambda a: np.asarray(a)[rows[:, None], window - 1], outputs)  # (b, H)
    draws = _draw(model.head, one_step, jax.random.split(one_step_key, num_samples), temperature)
    draws = normalizer.denormalize(np.moveaxis(np.asarray(draws, np.float64), 0, 1))  # (b,S,H,d)
    teacher_mae = horizon_mean(np.abs(np.median(draws, axis=1) - truth), window_mask)
    teacher_crps = horizon_mean(crps_from_samples(draws, truth), window_mask)

    nll = float(nll)
    return {
        "nll": nll,
        "nll_original_units": nll + normalizer.log_scale_sum(),
        "horizon": int(horizon),
        "mae": _floats(mae),
        "crps": _floats(crps),
        "persistence_mae": _floats(persistence_mae),
        "seasonal_naive_mae": _floats(seasonal_mae),
        "season": int(season),
        "teacher_forced_mae": _floats(teacher_mae),
        "teacher_forced_crps": _floats(teacher_crps),
        "one_step_mae": float(teacher_mae.mean()),
        "one_step_crps": float(teacher_crps.mean()),
        "num_starts": len(starts),
        "num_samples": int(num_samples),
        "min_context": int(min_context),
    }


@nnx.jit(static_argnums=3)
def _draw(head, params, keys, temperature):
    """``S`` independent draws ``(S, ...)`` from the head's distributions ``params``."""
    return jax.vmap(lambda key: head.sample(key, params, temperature=temperature))(keys)


def _floats(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in np.asarray(values)]


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, optional dependency)
# ---------------------------------------------------------------------------------------------


def _figure(**options):
    """A :class:`matplotlib.figure.Figure` (object API: no pyplot state, no backend switch)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "plots need matplotlib: pip install 'seqmodel[plot]' (or pip install matplotlib)"
        ) from None
    return Figure(**options)


def plot_fan(context: np.ndarray, paths: np.ndarray, path: str | os.PathLike, *,
             truth: np.ndarray | None = None, band: tuple[float, float] = (0.1, 0.9),
             feature_names: Sequence[str] | None = None, max_features: int = 4) -> str:
    """Fan chart: the context, the median of the sample paths and the ``band`` quantile range.

    Args:
      context: ``(p, d)`` in original units; paths ``(S, H, d)``; truth ``(H, d)`` if known.
      path: the PNG (or any matplotlib format) to write.

    Example::

        plot_fan(history, paths, "fan.png")          # (p, d), (S, H, d)
    """
    context, paths = np.asarray(context), np.asarray(paths)
    features = min(paths.shape[-1], max_features)
    figure = _figure(figsize=(8, 2.6 * features))
    axes = figure.subplots(features, 1, squeeze=False)
    past = np.arange(-len(context) + 1, 1)
    future = np.arange(1, paths.shape[1] + 1)
    low, median, high = np.quantile(paths, (band[0], 0.5, band[1]), axis=0)
    for feature in range(features):
        axis = axes[feature, 0]
        axis.plot(past, context[:, feature], color="black", linewidth=1.2, label="context")
        axis.fill_between(future, low[:, feature], high[:, feature], color="tab:blue", alpha=0.25,
                          label=f"{band[0]:.0%}-{band[1]:.0%} band")
        axis.plot(future, median[:, feature], color="tab:blue", linewidth=1.5, label="median")
        if truth is not None:
            axis.plot(future, np.asarray(truth)[:, feature], color="tab:orange", linewidth=1.0,
                      linestyle="--", label="truth")
        axis.axvline(0.5, color="grey", linewidth=0.8)
        name = feature_names[feature] if feature_names else f"feature {feature}"
        axis.set_ylabel(name)
        if feature == 0:
            axis.legend(loc="upper left", fontsize="small")
    axes[-1, 0].set_xlabel("step (0 = last context step)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return os.fspath(path)


def plot_report(report: dict, path: str | os.PathLike, *, title: str | None = None) -> str:
    """Error against horizon: free running (MAE of the median and CRPS), teacher forced
    (one-step MAE at the same steps) and persistence, from :func:`exposure_bias_report`."""
    steps = np.arange(1, report["horizon"] + 1)
    figure = _figure(figsize=(7, 4))
    axis = figure.subplots()
    axis.plot(steps, report["mae"], color="tab:blue", label="free running: MAE of median")
    axis.plot(steps, report["crps"], color="tab:blue", linestyle="--",
              label="free running: CRPS")
    axis.plot(steps, report["teacher_forced_mae"], color="tab:green",
              label="teacher forced (one step): MAE")
    axis.plot(steps, report["persistence_mae"], color="tab:red", label="persistence: MAE")
    if report.get("season", 1) > 1 and "seasonal_naive_mae" in report:
        axis.plot(steps, report["seasonal_naive_mae"], color="tab:red", linestyle=":",
                  label=f"seasonal naive ({report['season']}): MAE")
    axis.set_xlabel("horizon (steps ahead)")
    axis.set_ylabel("error (original units)")
    axis.set_ylim(bottom=0)
    nll = report.get("nll")
    heading = title or "exposure-bias report"
    if nll is not None and math.isfinite(nll):
        heading += f" (teacher-forced NLL {nll:.3f})"
    axis.set_title(heading)
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return os.fspath(path)
