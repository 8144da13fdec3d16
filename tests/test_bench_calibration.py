"""The calibration-variants benchmark's arithmetic (benchmarks/bench_calibration.py): its
weighted conformal quantile is the split-conformal rank (the library's) where every weight is 1,
and moves toward the recent scores where they weigh more."""

import math

import numpy as np

from benchmarks.bench_calibration import conformal_margin
from seqmodel.forecasting import conformal


def test_unit_weights_give_the_split_conformal_rank():
    rng = np.random.default_rng(0)
    for count in (9, 40, 401):
        scores = rng.normal(size=count)
        for level in (0.8, 0.95):
            rank = min(math.ceil((count + 1) * level), count)  # the rank-th smallest
            expected = np.sort(scores)[rank - 1]
            assert conformal_margin(scores, np.ones(count), level) == expected
            # The library's margins: paths all 0 make each window's score |truth|.
            truth = np.abs(scores)[:, None, None]
            library = conformal.conformal_margins(np.zeros((count, 5, 1, 1)), truth,
                                                  np.ones((count, 1)), levels=(level,))
            assert library.margins[0, 0] == np.sort(np.abs(scores))[rank - 1]


def test_recent_scores_weigh_more_under_decay():
    scores = np.concatenate([np.zeros(100), np.ones(100)])  # the recent half is worse
    ages = np.concatenate([np.arange(200, 100, -1), np.arange(100, 0, -1)]).astype(float)
    flat = conformal_margin(scores, np.ones(200), 0.4)
    decayed = conformal_margin(scores, 0.5 ** (ages / 20), 0.4)
    assert flat == 0.0 and decayed == 1.0


def test_floor_short_narrows_only_where_every_window_is_in_the_validation_tail():
    """Intervals twice too wide (truth always inside): split narrows them, floor keeps them,
    floor-short narrows only when no calibration window starts before its series' split."""
    import types

    from benchmarks.bench_calibration import evaluate

    horizon, count = 2, 50
    rng = np.random.default_rng(1)

    def windows(n):  # quantiles (4, n, H, 1) at 2.5/10/90/97.5%, truth well inside, scale 1
        quantiles = np.broadcast_to(np.array([-2.0, -1.0, 1.0, 2.0])[:, None, None, None],
                                    (4, n, horizon, 1)).copy()
        return quantiles, rng.uniform(-0.3, 0.3, (n, horizon, 1)), np.ones((n, 1))

    task = types.SimpleNamespace(horizon=horizon)
    held = [(0, 200)]
    widths = {}
    for first_origin in (100, 60):  # all after the split at 80, or some before it
        chosen = [(0, first_origin + i) for i in range(count)]
        sampled = {"calibration": (chosen, windows(count)), "test": (held, windows(1)),
                   "online": ([], None), "splits": [80]}
        widths[first_origin] = {variant: evaluate(sampled, task, variant, math.inf)["0.8"]
                                for variant in ("split", "floor", "floor-short")}
    for first_origin, inside in ((100, True), (60, False)):
        result = widths[first_origin]
        assert result["split"]["width"] < result["floor"]["width"]  # narrowed
        expected = result["split"] if inside else result["floor"]
        assert result["floor-short"] == expected
