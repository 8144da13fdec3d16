"""The free-running program of a prepared model: it rebuilds the inputs from its own samples,
step by step.

A model whose inputs carry conditioning features after the element (lags, the log scale, time
features, covariates, static categories; :mod:`seqmodel.data.features`) cannot be fed its bare
samples. :func:`forecast_series` runs it as it was trained:

1. **Context.** The last ``context_length`` steps before the origin (fewer when the history is
   short) become teacher-forced inputs by :func:`seqmodel.data.features.window_inputs`, with the
   location and scale of those steps, exactly like the first steps of a training window; one masked prefill
   (:func:`seqmodel.decoding.prompts.prefill`) consumes them.
2. **Free running.** :func:`seqmodel.decoding.feed.feed_steps` draws each step's element from the head
   (in data units: the model scales its distribution back) and its ``next_input`` hook builds
   the next input with :func:`seqmodel.data.features.assemble`: the element, lags read from a buffer
   of the last ``max_lag`` elements (the history, then the model's own samples), the known
   features of the next step (future times, the future covariates the caller gives). The
   buffer, the location, the scale and the known rows travel in ``FeedState.history``.

The whole of it is one compiled program per shape. A plain real-valued model (no conditioning
features) is the case ``lags=(1,)``, no scaling, no known features (:func:`plain_spec`).

Example::

    paths = forecast_series(model, spec, normalizer, values=[history], known=[known_rows],
                            key=jax.random.key(0), horizon=24, num_samples=200)
    # history (T, d) normalised, known_rows (T + 24, K) -> paths (1, 200, 24, d) original units
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqmodel.data import features
from seqmodel.data.normalization import Normalizer
from seqmodel.decoding import sampling
from seqmodel.decoding.feed import feed_steps
from seqmodel.decoding.prompts import prefill

Array = jax.Array


class LagHistory(NamedTuple):
    """What the free-running loop remembers of each row (``FeedState.history``).

    Attributes:
      buffer: ``(b, max_lag, d)`` the last ``max_lag`` elements (globally normalised, unscaled),
        newest last: lag ``k`` of the next input is ``buffer[:, -k]``.
      scale: ``(b, d)`` the row's scale (ones without scaling).
      loc: ``(b, d)`` the row's location (zeros but with standard scaling).
      known: ``(b, H, K)`` the known features of the steps after each forecast step (row ``i``:
        the features of the step that the input following sample ``i`` predicts).
    """

    buffer: Array
    scale: Array
    loc: Array
    known: Array


class Contexts(NamedTuple):
    """The host-side arrays of a batch of forecasts (see :func:`prepare_contexts`)."""

    prompt: np.ndarray  # (n, p, input_size) right-padded teacher-forced context inputs
    lengths: np.ndarray  # (n,) int32 context lengths
    buffer: np.ndarray  # (n, max_lag, d)
    scale: np.ndarray  # (n, d)
    loc: np.ndarray  # (n, d)
    known: np.ndarray  # (n, H, K)


def prepare_contexts(spec: features.FeatureSpec, values: Sequence[np.ndarray],
                     known: Sequence[np.ndarray] | None, horizon: int) -> Contexts:
    """Context inputs, lag buffers, scales and future known features of each forecast.

    Args:
      values: per forecast, the history ``(T_i, d)`` up to the origin (globally normalised).
      known: per forecast, the known features ``(T_i + H, K)`` of the history and the ``H``
        forecast steps (None when ``spec.known_size`` is 0).
      horizon: ``H``.

    Raises:
      ValueError: a history shorter than the longest lag, or known features that stop before
        the end of the horizon (naming the forecast and what to give).
    """
    rows = len(values)
    d = spec.target_size
    if known is None:
        if spec.known_size:
            raise ValueError("the model reads known features (time features, covariates or "
                             "static categories); give them for the history and the horizon")
        known = [np.zeros((len(v) + horizon, 0), np.float32) for v in values]
    lengths = []
    for index, (history, rows_known) in enumerate(zip(values, known)):
        if len(history) < spec.max_lag:
            raise ValueError(
                f"forecast {index}: the history has {len(history)} steps, but the model reads "
                f"lags up to {spec.max_lag}; give at least {spec.max_lag} steps of history")
        if spec.known_size and len(rows_known) < len(history) + horizon:
            raise ValueError(
                f"forecast {index}: the known features (future covariates, times) cover "
                f"{len(rows_known) - len(history)} step(s) after the history, but the horizon "
                f"is {horizon}; give the future values of every covariate for {horizon} steps")
        lengths.append(min(spec.context_length, len(history) - (spec.max_lag - 1)))
    longest = max(lengths)
    prompt = np.zeros((rows, longest, spec.input_size), np.float32)
    buffer = np.zeros((rows, spec.max_lag, d), np.float32)
    scales = np.zeros((rows, d), np.float32)
    locs = np.zeros((rows, d), np.float32)
    future = np.zeros((rows, horizon, spec.known_size), np.float32)
    for index, (history, rows_known, length) in enumerate(zip(values, known, lengths)):
        history = np.asarray(history, np.float64).reshape(len(history), d)
        origin = len(history)
        start = origin - length
        loc, scale = features.window_scale(history[start:origin], spec)
        # Known rows through the origin: the last context input predicts the origin step.
        prompt[index, :length] = features.window_inputs(
            spec, history, np.asarray(rows_known)[: origin + 1], start=start, length=length,
            scale=scale, loc=loc)
        buffer[index] = features.fill_missing(history[origin - spec.max_lag : origin], loc)
        scales[index], locs[index] = scale, loc
        following = np.asarray(rows_known)[origin + 1 : origin + horizon]
        future[index, : len(following)] = following
    return Contexts(prompt, np.asarray(lengths, np.int32), buffer, scales, locs, future)


def _lagged(spec: features.FeatureSpec, buffer: Array) -> Array:
    """``(b, len(extra_lags), d)``: lag ``k`` is ``buffer[:, -k]``."""
    if not spec.extra_lags:
        return jnp.zeros(buffer.shape[:1] + (0,) + buffer.shape[2:], buffer.dtype)
    return jnp.stack([buffer[:, spec.max_lag - lag] for lag in spec.extra_lags], axis=1)


@functools.partial(nnx.jit, static_argnames=("spec", "horizon", "num_samples", "greedy"))
def _free_run(model, contexts: Contexts, key, temperature, truth, *, spec, horizon: int,
              num_samples: int, greedy: bool):
    state = prefill(model, jnp.asarray(contexts.prompt), jnp.asarray(contexts.lengths),
                    num_samples)
    repeat = functools.partial(jnp.repeat, repeats=num_samples, axis=0)
    history = LagHistory(*(repeat(jnp.asarray(part)) for part in (
        contexts.buffer, contexts.scale, contexts.loc, contexts.known)))
    state = state._replace(history=history)
    truth = None if truth is None else repeat(truth)  # (b * S, H, d)

    def draw(noise, out, history: LagHistory, index):
        if truth is None:
            element = sampling.sample_with_noise(model.head, noise, out,
                                                 temperature=temperature, greedy=greedy)
        else:  # feed the given elements instead of samples (checks of the invariant)
            element = jax.lax.dynamic_index_in_dim(truth, index, axis=1, keepdims=False)
        buffer = jnp.concatenate([history.buffer[:, 1:], element[:, None]], axis=1)
        return element, history._replace(buffer=buffer), None

    def next_input(element, history: LagHistory, index):
        known = jax.lax.dynamic_index_in_dim(history.known, index, axis=1, keepdims=False)
        return features.assemble(spec, element, _lagged(spec, history.buffer), known,
                                 history.scale, history.loc)

    _, (samples, fed, outputs) = feed_steps(
        model, state, key=key, start=0, size=horizon, draw=draw, next_input=next_input,
        greedy=greedy or truth is not None, record_outputs=truth is not None)
    # (b * S, H, ...); with the truth fed, outputs[:, i] is the one-step distribution of step i.
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), (samples, fed, outputs))


def sample_contexts(model, spec: features.FeatureSpec, contexts: Contexts, *, key: Array,
                    horizon: int, num_samples: int, temperature: float = 1.0,
                    truth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Free-running paths from prepared :class:`Contexts`, in globally normalised units.

    Args:
      truth: optional ``(n, H, d)``: feed these elements instead of samples (the inputs must
        then equal the teacher-forced ones of the same window; tests check this).

    Returns:
      ``(paths (n, S, H, d), fed (n, S, H, input_size))``: the samples and the inputs fed at
      each step (``fed[:, :, 0]`` is the last context input). With ``truth``, see
      :func:`teacher_forced_steps` for the head's outputs.
    """
    samples, fed, _ = _run(model, spec, contexts, key=key, horizon=horizon,
                           num_samples=num_samples, temperature=temperature, truth=truth)
    return samples, fed


def teacher_forced_steps(model, spec: features.FeatureSpec, contexts: Contexts,
                         truth: np.ndarray):
    """The head's outputs at each forecast step when the loop is fed ``truth`` ``(n, H, d)``
    (globally normalised): the teacher-forced one-step distributions of the ``H`` steps, in
    the model's units (scaled back by the model), leaves ``(n, H, ...)``."""
    _, _, outputs = _run(model, spec, contexts, key=jax.random.key(0), horizon=truth.shape[1],
                         num_samples=1, temperature=1.0, truth=truth)
    return jax.tree.map(lambda a: np.asarray(a).reshape((len(truth),) + a.shape[1:]), outputs)


def _run(model, spec, contexts: Contexts, *, key, horizon, num_samples, temperature, truth):
    sampling.check_temperature(temperature)
    view = nnx.view(model, deterministic=True)  # dropout off in this view only
    greedy = temperature == 0.0
    truth = None if truth is None else jnp.asarray(truth, jnp.float32)
    samples, fed, outputs = _free_run(view, contexts, key,
                                      jnp.float32(1.0 if greedy else temperature), truth,
                                      spec=spec, horizon=horizon, num_samples=num_samples,
                                      greedy=greedy)
    rows = len(contexts.lengths)
    samples = np.asarray(samples).reshape(rows, num_samples, horizon, -1)
    fed = np.asarray(fed).reshape(rows, num_samples, horizon, -1)
    return samples, fed, outputs


def forecast_series(model, spec: features.FeatureSpec, normalizer: Normalizer,
                    values: Sequence[np.ndarray], known: Sequence[np.ndarray] | None = None, *,
                    key: Array, horizon: int, num_samples: int,
                    temperature: float = 1.0) -> np.ndarray:
    """Sample paths in original units from histories in globally normalised units.

    Args:
      model: a real-valued :class:`seqmodel.SequenceModel` whose inputs are laid out as
        ``spec`` says (sampled in eval mode; the caller's model keeps its mode).
      spec: its :class:`~seqmodel.data.features.FeatureSpec` (:func:`plain_spec` for a model without
        conditioning features).
      normalizer: the targets' global :class:`~seqmodel.data.numeric.Normalizer`.
      values: per forecast, the history ``(T_i, d)`` (``normalizer.normalize`` of the data).
      known: per forecast, known features ``(T_i + H, K)`` (:func:`seqmodel.data.features.
        known_features` of the history's and the future's times and covariates).
      key: PRNG key; the same key gives the same paths.
      horizon, num_samples: ``H`` steps, ``S`` paths per forecast.
      temperature: spread scaling of the head (0: the mode at every step).

    Returns:
      ``(n, S, H, d)`` float64 in original units.

    Example::

        paths = forecast_series(model, spec, normalizer, [history], [known_rows],
                                key=jax.random.key(0), horizon=12, num_samples=100)
    """
    if model.config.discrete:
        raise ValueError("forecasting needs a real-valued model; this one reads tokens")
    if model.config.input_size != spec.input_size:
        raise ValueError(f"the model reads inputs of {model.config.input_size} features, but "
                         f"the feature layout gives {spec.input_size}; use the spec saved "
                         "with the model")
    contexts = prepare_contexts(spec, values, known, horizon)
    paths, _ = sample_contexts(model, spec, contexts, key=key, horizon=horizon,
                               num_samples=num_samples, temperature=temperature)
    return normalizer.denormalize(paths.astype(np.float64))


@nnx.jit(static_argnums=3)
def draw_samples(head, params, keys, temperature):
    """``S`` independent draws ``(S, ...)`` from the head's distributions ``params``."""
    return jax.vmap(lambda key: head.sample(key, params, temperature=temperature))(keys)
