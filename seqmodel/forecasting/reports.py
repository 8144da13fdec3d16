"""The horizon report: free-running forecast errors against horizon on held-out data, next to the
teacher-forced one-step errors at the same steps and the naive forecasts.

A model trained with teacher forcing (fed the truth) is used free running (fed its own samples).
From start points in the validation part of each series the report draws ``S`` sample paths of
``H`` steps through the model's free-running program (:mod:`seqmodel.forecasting.free_running`)
and scores them per horizon step (MAE of the median, CRPS from the samples) next to

- persistence (the last value repeated) and seasonal naive (the last season repeated), and
- the model's own one-step error at the same steps, when the same loop is fed the truth (what
  the training loss sees): free running at horizon 1 is that distribution; beyond it, any growth
  of the free-running error over the teacher-forced one is compounding of the model's own errors.

Errors are in original units. One function, :func:`horizon_report`, serves every real-valued
model (a plain one is the case without lags, scaling or known features);
:func:`exposure_bias_report` is its form for plain models over raw sequences.

Example::

    report = horizon_report(model, dataset.preparation, dataset.series, dataset.splits,
                            key=jax.random.key(0), horizon=12)
    report["mae"][-1], report["seasonal_naive_mae"][-1]
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from seqmodel.configs import REPORT_NUM_SAMPLES, REPORT_NUM_STARTS
from seqmodel.data.batching import DataError
from seqmodel.data.normalization import Normalizer
from seqmodel.data.padding import pad_sequences
from seqmodel.data.preparation import Preparation, Series
from seqmodel.data.series import plain_preparation
from seqmodel.forecasting.free_running import (
    draw_samples,
    prepare_contexts,
    sample_contexts,
    teacher_forced_steps,
)
from seqmodel.forecasting.paths import check_plain_real_valued, teacher_forced_outputs
from seqmodel.forecasting.scores import crps_from_samples, horizon_mean

Array = jax.Array


def _floats(values) -> list[float]:
    return [round(float(v), 6) for v in np.asarray(values)]


def horizon_report(model, preparation: Preparation, series: Sequence[Series],
                   splits: Sequence[int], *, key: Array, horizon: int,
                   num_samples: int = REPORT_NUM_SAMPLES, num_starts: int = REPORT_NUM_STARTS,
                   temperature: float = 1.0, nll: float | None = None,
                   min_context: int = 1) -> dict:
    """Free-running errors against horizon from start points at or after each series' split.

    Args:
      model: a trained real-valued :class:`seqmodel.SequenceModel` laid out as
        ``preparation.spec`` says (run in eval mode on a view; the caller's model keeps its mode).
      preparation: its :class:`~seqmodel.data.preparation.Preparation` (the season of the
        seasonal naive forecast is ``preparation.season``).
      series: :class:`~seqmodel.data.preparation.Series` (globally normalised); ``splits``: each
        one's first validation step (starts lie at or after it, ``horizon`` steps before its end,
        with at least ``min_context`` steps, the longest lag and a season of history).
      key: PRNG key of the paths and the one-step draws.
      num_samples, num_starts: ``S`` paths per start; starts spread evenly over all that fit.
      nll: the validation NLL to report (e.g. :func:`seqmodel.evaluate`'s).

    Returns:
      a JSON-ready dict: ``nll``, ``nll_original_units``, ``horizon``, ``mae`` / ``crps`` (free
      running, lists of ``H``), ``persistence_mae``, ``seasonal_naive_mae``, ``season``,
      ``teacher_forced_mae`` / ``teacher_forced_crps`` (one step at the same steps, fed the
      truth), ``one_step_mae`` / ``one_step_crps`` (their means), ``num_starts``,
      ``num_samples``, ``min_context`` (the shortest context read).

    Raises:
      DataError: no start point fits (validation parts shorter than the horizon).
    """
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon={horizon!r} is invalid: allowed is a positive integer")
    if num_samples < 2:
        raise ValueError(f"num_samples={num_samples} is invalid: allowed is an integer >= 2 (the "
                         "fair CRPS compares pairs of sample paths)")
    spec, normalizer, season = preparation.spec, preparation.normalizer, preparation.season
    first_start = max(spec.max_lag, season, min_context)
    candidates = [(row, origin) for row, (item, split) in enumerate(zip(series, splits))
                  for origin in range(max(split, first_start), len(item) - horizon + 1)
                  if np.isfinite(item.values[origin - 1]).all()]
    if not candidates:
        raise DataError(f"no start point fits: the validation parts are shorter than the "
                        f"horizon {horizon} (or the history before them than the longest lag "
                        f"{spec.max_lag} / season {season}); lower --horizon or raise "
                        "--val-fraction")
    if len(candidates) > num_starts:
        picks = np.linspace(0, len(candidates) - 1, num_starts).round().astype(int)
        candidates = [candidates[i] for i in picks]
    values = [series[row].values[:origin] for row, origin in candidates]
    known = [series[row].known[: origin + horizon] for row, origin in candidates]
    truth_normalised = np.stack([series[row].values[origin : origin + horizon]
                                 for row, origin in candidates])  # (b, H, d)
    present = np.isfinite(truth_normalised).all(-1).astype(np.float64)  # (b, H)
    contexts = prepare_contexts(spec, values, known, horizon)
    path_key, draw_key = jax.random.split(key)
    paths, _ = sample_contexts(model, spec, contexts, key=path_key, horizon=horizon,
                               num_samples=num_samples, temperature=temperature)
    paths = normalizer.denormalize(paths.astype(np.float64))  # (b, S, H, d)
    truth = normalizer.denormalize(truth_normalised.astype(np.float64))
    filled = np.nan_to_num(truth)
    mae = horizon_mean(np.abs(np.median(paths, axis=1) - filled), present)
    crps = horizon_mean(crps_from_samples(paths, filled), present)
    histories = [normalizer.denormalize(np.asarray(v, np.float64)) for v in values]
    last = np.stack([history[-1] for history in histories])  # (b, d)
    persistence = horizon_mean(np.abs(last[:, None] - filled), present)
    steps = np.arange(horizon)
    seasonal = np.stack([history[len(history) - season + steps % season]
                         for history in histories])  # (b, H, d)
    # A missing value in the last season leaves that step of the seasonal naive forecast out.
    seasonal_present = present * np.isfinite(seasonal).all(-1)
    seasonal_naive = horizon_mean(np.abs(np.nan_to_num(seasonal) - filled), seasonal_present)
    outputs = teacher_forced_steps(model, spec, contexts, np.nan_to_num(truth_normalised))
    draws = draw_samples(nnx.view(model, deterministic=True).head, outputs,
                         jax.random.split(draw_key, num_samples), temperature)
    draws = normalizer.denormalize(np.moveaxis(np.asarray(draws, np.float64), 0, 1))
    teacher_mae = horizon_mean(np.abs(np.median(draws, axis=1) - filled), present)
    teacher_crps = horizon_mean(crps_from_samples(draws, filled), present)
    nll = float("nan") if nll is None else float(nll)
    return {
        "nll": nll, "nll_original_units": nll + normalizer.log_scale_sum(),
        "horizon": int(horizon), "mae": _floats(mae), "crps": _floats(crps),
        "persistence_mae": _floats(persistence), "seasonal_naive_mae": _floats(seasonal_naive),
        "season": int(season), "teacher_forced_mae": _floats(teacher_mae),
        "teacher_forced_crps": _floats(teacher_crps), "one_step_mae": float(teacher_mae.mean()),
        "one_step_crps": float(teacher_crps.mean()), "num_starts": len(candidates),
        "num_samples": int(num_samples), "min_context": int(min(contexts.lengths)),
    }


def exposure_bias_report(model, sequences: Sequence[np.ndarray], normalizer: Normalizer, *,
                         key: Array, horizon: int, num_samples: int = REPORT_NUM_SAMPLES,
                         num_starts: int = REPORT_NUM_STARTS, min_context: int | None = None,
                         max_context: int | None = 1024, temperature: float = 1.0,
                         season: int = 1) -> dict:
    """:func:`horizon_report` of a plain real-valued model (no lags, scaling or known features)
    on held-out sequences in original units, with its teacher-forced NLL over them.

    Args:
      sequences: validation sequences ``[(t_i, d), ...]`` in original units (NaN = missing).
      normalizer: the model's :class:`~seqmodel.data.normalization.Normalizer`.
      min_context: fewest context steps before a start (default ``min(horizon, 32)``, lowered
        when the longest sequence is shorter than that plus ``horizon``; at least 1).
      max_context: the paths start from at most this many steps of context (the last ones
        before the start); None: all of it.
      season: the seasonal naive baseline repeats the last ``season`` steps (1: persistence).

    Example::

        report = exposure_bias_report(model, validation, normalizer, key=jax.random.key(0),
                                      horizon=50)
        print(report["mae"][-1], report["persistence_mae"][-1])
    """
    check_plain_real_valued(model)
    if not isinstance(season, (int, np.integer)) or season < 1:
        raise ValueError(f"season={season!r} is invalid: allowed is a positive integer (1: no "
                         "season)")
    if max_context is not None and max_context < 1:
        raise ValueError(f"max_context must be >= 1 or None, got {max_context}")
    longest = max(len(s) for s in sequences)
    if min_context is None:
        min_context = max(1, min(horizon, 32, longest - horizon))
    if min_context < 1:
        raise ValueError(f"min_context must be >= 1, got {min_context}")
    normalised = [normalizer.normalize(np.asarray(s, np.float64)) for s in sequences]
    values, mask = pad_sequences(normalised)
    _, nll = teacher_forced_outputs(nnx.view(model, deterministic=True), values, mask)
    columns = tuple(f"feature {i}" for i in range(normalizer.num_features))
    preparation = plain_preparation(columns, normalizer, head=model.config.head)
    context = longest if max_context is None else max_context
    preparation = dataclasses.replace(
        preparation, season=int(season),
        spec=dataclasses.replace(preparation.spec, context_length=int(context)))
    series = [Series(f"sequence {i}", values, np.zeros((len(values), 0), np.float32))
              for i, values in enumerate(normalised)]
    return horizon_report(model, preparation, series, [0] * len(series), key=key,
                          horizon=horizon, num_samples=num_samples, num_starts=num_starts,
                          temperature=temperature, nll=float(nll), min_context=min_context)
