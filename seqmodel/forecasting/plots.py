"""Plots of forecasts (matplotlib's object API, an optional dependency: the ``plot`` extra):
fan charts of sample paths, the horizon report, backtest windows."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from seqmodel.forecasting.backtest import MODEL_METHOD, BacktestResult


def new_figure(**options):
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
    figure = new_figure(figsize=(8, 2.6 * features))
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
    figure = new_figure(figsize=(7, 4))
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


def plot_backtest(result: BacktestResult, path: str | os.PathLike, *, max_series: int = 3,
                  context: int | None = None, compare: str | None = "seasonal_naive",
                  title: str | None = None) -> str:
    """The truth of the last windows of up to ``max_series`` series (first target feature),
    with the model's median and its 80% and 95% intervals per window, and the median of
    ``compare`` (a baseline, dashed).

    Example::

        plot_backtest(result, "backtest.png")
    """
    shown = min(len(result.series), max_series)
    figure = new_figure(figsize=(9, 2.8 * shown))
    axes = figure.subplots(shown, 1, squeeze=False)
    levels = list(result.quantile_levels)
    model = result.forecasts.get(MODEL_METHOD)
    context = result.horizon * 2 if context is None else context
    for index in range(shown):
        axis = axes[index, 0]
        values = result.series[index][:, 0]
        first = max(int(result.origins[index, 0]) - context, 0)
        axis.plot(np.arange(first, len(values)), values[first:], color="black", linewidth=1.0,
                  label="truth")
        for window, origin in enumerate(result.origins[index]):
            steps = origin + np.arange(result.horizon)
            axis.axvline(origin - 0.5, color="grey", linewidth=0.5)
            if model is not None:
                quantiles = model.quantiles[:, index, window, 0]
                for low, high, alpha in ((0.025, 0.975, 0.15), (0.1, 0.9, 0.3)):
                    axis.fill_between(steps, quantiles[levels.index(low)],
                                      quantiles[levels.index(high)], color="tab:blue",
                                      alpha=alpha, linewidth=0,
                                      label=f"{MODEL_METHOD} {high - low:.0%}" if window == 0
                                      else None)
                axis.plot(steps, model.point[index, window, 0], color="tab:blue",
                          linewidth=1.2, label=f"{MODEL_METHOD} median" if window == 0 else None)
            if compare in result.forecasts:
                axis.plot(steps, result.forecasts[compare].point[index, window, 0],
                          color="tab:red", linewidth=0.9, linestyle="--",
                          label=compare.replace("_", " ") if window == 0 else None)
        axis.set_ylabel(str(result.names[index]))
        if index == 0:
            axis.legend(loc="upper left", fontsize="small")
            if title:
                axis.set_title(title)
    axes[-1, 0].set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return os.fspath(path)
