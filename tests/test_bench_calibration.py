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
