"""seqmodel.data.features: frequency inference, time features, lags, mean scaling and the input layout,
checked by hand on small arrays (NumPy only, no model)."""

import jax.numpy as jnp
import numpy as np
import pytest

from seqmodel.data import features
from seqmodel.data import calendar
from seqmodel.data.calendar import Frequency
from seqmodel.data.features import FeatureSpec


def stamps(*texts):
    return np.array(texts, dtype="datetime64[us]")


@pytest.mark.parametrize("times, expected", [
    (np.datetime64("2024-01-01") + np.arange(5) * np.timedelta64(1, "D"), Frequency("day")),
    (np.datetime64("2024-01-01T00:00") + np.arange(5) * np.timedelta64(30, "m"),
     Frequency("minute", 30)),
    (np.datetime64("2024-01-06") + np.arange(5) * np.timedelta64(7, "D"), Frequency("week")),
    (stamps("2024-01-01", "2024-02-01", "2024-03-01"), Frequency("month")),
    (stamps("2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30"), Frequency("month")),
    (stamps("2023-03-31", "2023-06-30", "2023-09-30"), Frequency("quarter")),
    (stamps("2020-01-01", "2021-01-01", "2022-01-01"), Frequency("year")),
    (np.array([3.0, 5.0, 7.0]), Frequency("step")),
])
def test_infer_frequency(times, expected):
    assert calendar.infer_frequency([times]) == expected


def test_irregular_or_unsorted_times_name_the_line():
    times = stamps("2024-01-01", "2024-01-02", "2024-01-04", "2024-01-05")
    with pytest.raises(ValueError, match=r"line 14: .*2024-01-02.* -> .*2024-01-04"):
        calendar.infer_frequency([times], lines=[np.array([11, 12, 14, 15])],
                                 column="date")
    with pytest.raises(ValueError, match="line 3: .* does not come after"):
        calendar.infer_frequency([stamps("2024-01-02", "2024-01-01")], lines=[np.array([2, 3])])
    with pytest.raises(ValueError, match="every sequence needs the same step"):
        calendar.infer_frequency([stamps("2024-01-01", "2024-01-02"),
                                  stamps("2024-01-01", "2024-02-01")])


def test_season_and_default_lags():
    assert Frequency("minute", 30).season == 48
    assert Frequency("minute", 30).default_lags() == (1, 2, 3, 48, 336)
    assert Frequency("hour").default_lags() == (1, 2, 3, 24, 168)
    assert Frequency("day").default_lags() == (1, 2, 3, 7, 14)
    assert (Frequency("week").season, Frequency("month").season, Frequency("quarter").season,
            Frequency("year").season) == (52, 12, 4, 1)
    assert Frequency.parse(Frequency("minute", 30).name) == Frequency("minute", 30)


def test_default_lags_add_deepars_seasonal_lags_where_the_data_is_plenty():
    from seqmodel.data.preparation import RICH_LAGS_OBSERVATIONS, default_lags, rich_lags

    assert rich_lags(12) == (4, 5, 6, 7, 11, 12, 13, 23, 24, 25, 35, 36, 37)
    assert rich_lags(4) == (3, 4, 5, 7, 8, 9, 11, 12, 13)  # 4-7 stop under the season's neighbour
    month = Frequency("month")
    assert RICH_LAGS_OBSERVATIONS == 1000
    assert default_lags(month, 12, [999]) == (1, 2, 3, 12)            # one short series
    assert default_lags(month, 12, [250] * 4) == (1, 2, 3) + rich_lags(12)   # a panel of 1,000
    # Lags must still fit a third of the shortest training series (here 20 steps).
    assert default_lags(month, 12, [60] * 20) == (1, 2, 3, 4, 5, 6, 7, 11, 12, 13)
    assert default_lags(None, 2, [5000]) == (1, 2, 3)                 # a season of 2 takes none
    assert default_lags(Frequency("minute", 30), 48, [3696]) == (
        1, 2, 3, 4, 5, 6, 7, 47, 48, 49, 95, 96, 97, 143, 144, 145, 336)


def test_advance_keeps_the_calendar():
    np.testing.assert_array_equal(
        calendar.advance(np.datetime64("2024-01-31"), Frequency("month"), 3),
        stamps("2024-02-29", "2024-03-31", "2024-04-30"))
    np.testing.assert_array_equal(
        calendar.advance(np.datetime64("2024-01-15"), Frequency("quarter"), 2),
        stamps("2024-04-15", "2024-07-15"))
    np.testing.assert_array_equal(
        calendar.advance(np.datetime64("2024-01-01T23:30"), Frequency("minute", 30), 2),
        stamps("2024-01-02T00:00", "2024-01-02T00:30"))


def test_time_features_are_sin_cos_of_the_cycle_position():
    monday_noon = stamps("2024-01-01T12:00")  # 2024-01-01 was a Monday
    values = calendar.time_features(monday_noon, ("time_of_day", "day_of_week", "month_of_year"))
    day_of_week = 0.5 / 7
    np.testing.assert_allclose(values[0], [0.0, -1.0, np.sin(2 * np.pi * day_of_week),
                                           np.cos(2 * np.pi * day_of_week), 0.0, 1.0],
                               atol=1e-12)
    march = calendar.time_features(stamps("2023-03-01"), ("month_of_year",))
    np.testing.assert_allclose(march[0], [np.sin(np.pi / 3), np.cos(np.pi / 3)])
    assert calendar.frequency_cycles(Frequency("minute", 30)) == (
        "time_of_day", "day_of_week", "day_of_year")
    assert calendar.frequency_cycles(Frequency("month")) == ("month_of_year",)
    assert calendar.frequency_cycles(Frequency("year")) == ()


def test_parse_lags_adds_the_element_and_refuses_nonsense():
    assert features.parse_lags("12, 2") == (1, 2, 12)
    with pytest.raises(ValueError, match="comma-separated"):
        features.parse_lags("1,x")
    with pytest.raises(ValueError, match="positive"):
        features.parse_lags("0,1")


def spec(**changes):
    values = dict(target_columns=("y",), lags=(1, 2, 4), scaling="mean", context_length=3,
                  default_scale=(1.0,), covariate_columns=("price",), covariate_mean=(10.0,),
                  covariate_scale=(2.0,), static_columns=("store",),
                  static_categories=(("a", "b", "c"),))
    values.update(changes)
    return FeatureSpec(**values)


def test_spec_sizes_and_round_trip():
    layout = spec()
    # element, log scale, lags 2 and 4, covariate, three one-hot categories
    assert layout.input_size == 1 + 1 + 2 + 1 + 3 == 8
    assert layout.model_fields() == {"input_size": 8, "target_size": 1, "input_scaling": True,
                                     "input_location": False}
    standard = spec(scaling="std")  # the location m joins the log scale
    assert standard.input_size == 9 and standard.model_fields()["input_location"] is True
    assert FeatureSpec.from_dict(layout.to_dict()) == layout
    assert features.FeatureSpec(target_columns=("y",)).conditioned is True  # the log scale
    plain = FeatureSpec(target_columns=("y",), scaling="none")
    assert not plain.conditioned and plain.model_fields() == {"input_size": 1}
    with pytest.raises(ValueError, match="lags"):
        spec(lags=(2, 4))


def test_mean_scale_skips_missing_and_falls_back_on_zero_contexts():
    layout = spec(default_scale=(7.0,))
    np.testing.assert_allclose(features.mean_scale(np.array([[-2.0], [np.nan], [4.0]]), layout),
                               [3.0])
    np.testing.assert_allclose(features.mean_scale(np.zeros((3, 1)), layout), [7.0])
    np.testing.assert_allclose(features.mean_scale(np.ones((3, 1)) * 5, spec(scaling="none")),
                               [1.0])


def test_window_scale_of_standard_scaling():
    layout = spec(scaling="std", default_scale=(4.0,))
    loc, scale = features.window_scale(np.array([[1.0], [np.nan], [3.0], [5.0]]), layout)
    np.testing.assert_allclose(loc, [3.0])
    np.testing.assert_allclose(scale, [np.sqrt(8 / 3)])  # population std of 1, 3, 5
    # No spread: the training data's scale; a tiny spread is floored at 1% of it.
    np.testing.assert_allclose(features.window_scale(np.full((3, 1), 7.0), layout), [[7.0], [4.0]])
    _, tiny = features.window_scale(np.array([[1.0], [1.0 + 1e-6]]), layout)
    np.testing.assert_allclose(tiny, [features.MINIMUM_STD_FRACTION * 4.0])
    # No values at all: location 0 (the training mean), the default scale.
    np.testing.assert_allclose(features.window_scale(np.full((2, 1), np.nan), layout),
                               [[0.0], [4.0]])
    # Mean scaling has no location.
    loc, scale = features.window_scale(np.array([[-2.0], [4.0]]), spec())
    np.testing.assert_allclose(loc, [0.0]) and np.testing.assert_allclose(scale, [3.0])


def test_window_inputs_by_hand_with_standard_scaling():
    layout = spec(scaling="std")
    values = np.arange(1.0, 9.0)[:, None]
    values[5] = np.nan  # missing: fed as the location (0 once scaled)
    known = features.known_features(layout, None, np.arange(9.0)[:, None] * 2 + 10, ("b",))
    inputs = features.window_inputs(layout, values, known, start=3, length=3,
                                    scale=np.array([2.0]), loc=np.array([4.0]))
    # [(y_t - 4) / 2, log 2, 4, (y_(t-1) - 4) / 2, (y_(t-3) - 4) / 2, covariate of t + 1, b]
    expected = np.array([
        [0 / 2, np.log(2), 4, -1 / 2, -3 / 2, 4, 0, 1, 0],
        [1 / 2, np.log(2), 4, 0 / 2, -2 / 2, 5, 0, 1, 0],
        [0 / 2, np.log(2), 4, 1 / 2, -1 / 2, 6, 0, 1, 0],
    ])
    np.testing.assert_allclose(inputs, expected, rtol=1e-6)


def test_window_inputs_by_hand():
    layout = spec()
    values = np.arange(1.0, 9.0)[:, None]  # y_t = t + 1
    values[5] = np.nan  # missing: fed as 0
    covariates = np.arange(9.0)[:, None] * 2 + 10  # z-scored: t
    known = features.known_features(layout, None, covariates, ("b",))
    np.testing.assert_allclose(known[:, 0], np.arange(9.0))
    np.testing.assert_array_equal(known[:, 1:], np.tile([0.0, 1.0, 0.0], (9, 1)))
    inputs = features.window_inputs(layout, values, known, start=3, length=3, scale=np.array([2.0]))
    # row j is step t = 3 + j: [y_t / 2, log 2, y_(t-1) / 2, y_(t-3) / 2, covariate of t + 1, b]
    expected = np.array([
        [4 / 2, np.log(2), 3 / 2, 1 / 2, 4, 0, 1, 0],
        [5 / 2, np.log(2), 4 / 2, 2 / 2, 5, 0, 1, 0],
        [0 / 2, np.log(2), 5 / 2, 3 / 2, 6, 0, 1, 0],
    ])
    np.testing.assert_allclose(inputs, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="every lag"):
        features.window_inputs(layout, values, known, start=2, length=2, scale=np.array([1.0]))
    assert features.static_one_hot(layout, ("unseen",)).sum() == 0


@pytest.mark.parametrize("scaling", ["mean", "std"])
def test_assemble_is_the_same_for_numpy_and_jax(scaling):
    layout = spec(scaling=scaling)
    rng = np.random.default_rng(0)
    element, lagged = rng.normal(size=(4, 1)), rng.normal(size=(4, 2, 1))
    known, scale = rng.normal(size=(4, 4)), rng.uniform(0.5, 2, size=(4, 1))
    loc = rng.normal(size=(4, 1))
    host = features.assemble(layout, element, lagged, known, scale, loc)
    device = features.assemble(layout, *(jnp.asarray(a, jnp.float32) for a in
                                         (element, lagged, known, scale, loc)))
    assert isinstance(host, np.ndarray)
    np.testing.assert_allclose(np.asarray(device), host, rtol=1e-6, atol=1e-6)


def test_detect_season_finds_the_period_of_the_autocorrelation():
    rng = np.random.default_rng(0)
    steps = np.arange(300)
    monthly = np.sin(2 * np.pi * steps / 12) + 0.3 * rng.standard_normal(300)
    weekly_with_trend = 0.02 * steps + np.sin(2 * np.pi * steps / 52) + 0.1 * rng.standard_normal(300)
    assert calendar.detect_season([monthly]) == 12
    assert calendar.detect_season([weekly_with_trend]) in (51, 52, 53)
    assert calendar.detect_season([rng.standard_normal(300)]) == 1  # noise: no season
    assert calendar.detect_season([np.cumsum(rng.standard_normal(300))]) == 1  # a random walk
    assert calendar.detect_season([np.ones(5)]) == 1  # too short to tell


def test_a_calendar_season_the_data_does_not_show_gives_way_to_the_one_it_shows(tmp_path):
    from seqmodel.data import load_dataset

    rng = np.random.default_rng(0)
    steps = np.arange(1200)
    # Monthly data with a 10-year cycle and no yearly one (as sunspots): the autocorrelation at
    # 12 months is high (the cycle is slow) but no peak, so 12 is no season; the cycle is.
    cycle = 50 + 20 * np.sin(2 * np.pi * steps / 120) + rng.standard_normal(1200)
    yearly = 50 + 20 * np.sin(2 * np.pi * steps / 12) + rng.standard_normal(1200)
    assert not calendar.shows_season([cycle], 12)
    assert calendar.shows_season([yearly], 12)
    assert calendar.shows_season([np.ones(5)], 12)  # too short to tell: the calendar stands
    months = np.datetime64("1900-01", "M") + steps

    def dated(values, name):
        path = tmp_path / f"{name}.csv"
        path.write_text("month,y\n" + "\n".join(f"{m}-01,{v:.4f}" for m, v in
                                                 zip(months, values)) + "\n")
        return load_dataset(str(path), time_column="month")

    slow = dated(cycle, "cycle")
    assert slow.season in range(115, 126)
    # The calendar's lags stay (the tuning suite's quarterly unemployment lost without lag 4).
    assert {1, 2, 3, 12, slow.season} <= set(slow.spec.lags)
    assert slow.spec.context_length == 2 * slow.season
    long_yearly = dated(yearly, "yearly")
    assert long_yearly.season == 12
    # 1,200 months hold three years back (rich lags): anchor="seasons" averages them; the
    # default anchor is the season's lag alone.
    assert long_yearly.spec.anchor == 12 and long_yearly.spec.anchor_lags == ()
    assert "anchor_indices" not in long_yearly.model_fields()
    path = str(tmp_path / "yearly.csv")
    averaged = load_dataset(path, time_column="month", anchor="seasons")
    assert averaged.spec.anchor == 12 and averaged.spec.anchor_lags == (12, 24, 36)
    assert averaged.model_fields()["anchor_indices"] == averaged.spec.anchor_indices
    assert load_dataset(path, time_column="month", anchor="season").spec.anchor_lags == ()
    # Fewer than two multiples fed: the season's lag alone.
    assert load_dataset(path, time_column="month", lags=(1, 12),
                        anchor="seasons").spec.anchor_lags == ()


def test_a_seasonal_anchor_averages_the_seasons_the_lags_hold():
    from seqmodel import ModelConfig
    from seqmodel.data.preparation import seasonal_anchor_lags

    lags = (1, 2, 3, 4, 5, 6, 7, 47, 48, 49, 95, 96, 97, 143, 144, 145, 336)
    assert seasonal_anchor_lags(48, 48, lags) == (48, 96, 144)
    assert seasonal_anchor_lags(12, 12, (1, 2, 3, 12)) == ()  # one season: the lag alone
    assert seasonal_anchor_lags(12, 12, (1, 12, 36)) == (12, 36)
    assert seasonal_anchor_lags(1, 12, (1, 12, 24)) == ()  # the last value is no season
    assert seasonal_anchor_lags(1, 1, lags) == ()
    # element, log s, then the lags from 2: lag 48 is column 9, 96 column 12, 144 column 15.
    layout = FeatureSpec(target_columns=("y",), lags=lags, context_length=4, anchor=48,
                         anchor_lags=(48, 96, 144))
    assert layout.anchor_index == 9 and layout.anchor_indices == (9, 12, 15)
    fields = layout.model_fields()
    assert fields["anchor_index"] == 9 and fields["anchor_indices"] == (9, 12, 15)
    config = ModelConfig(**fields, head="student_t")
    assert ModelConfig.from_dict(config.to_dict()) == config  # JSON lists come back as tuples
    # The columns hold the values 48, 96 and 144 steps before each target.
    values = np.arange(1.0, 401.0)[:, None]
    known = features.known_features(layout, None, np.zeros((400, 0)), ())
    inputs = features.window_inputs(layout, values, known, start=350, length=3,
                                    scale=np.array([2.0]), loc=None)
    targets = values[351:354, 0]
    np.testing.assert_allclose(inputs[:, [9, 12, 15]].mean(axis=1) * 2,
                               (targets - 48 + targets - 96 + targets - 144) / 3)
    assert FeatureSpec.from_dict(layout.to_dict()) == layout
    old = {key: value for key, value in layout.to_dict().items() if key != "anchor_lags"}
    assert FeatureSpec.from_dict(old).anchor_lags == ()  # run folders from before the mean
    for bad in ((96, 48), (48,), (48, 50), (48, 48)):
        with pytest.raises(ValueError, match=r"anchor_lags=.* is invalid: give \(\) or 2 or "
                                             r"more distinct lags, the anchor \(48\) first"):
            FeatureSpec(target_columns=("y",), lags=lags, anchor=48, anchor_lags=bad)


def test_the_anchor_index_points_at_the_anchor_lag_in_every_layout():
    # spec(): lags 1, 2, 4, mean scaling: [y_t | log s | y_(t-1) | y_(t-3) | ...]
    assert spec().anchor_index is None and "anchor_index" not in spec().model_fields()
    assert spec(anchor=1).anchor_index == 0
    assert spec(anchor=2).anchor_index == 2 and spec(anchor=4).anchor_index == 3
    assert spec(anchor=4, scaling="std").anchor_index == 4  # after the location m
    assert spec(anchor=4, scaling="none").anchor_index == 2
    both = FeatureSpec(target_columns=("a", "b"), lags=(1, 3), anchor=3)
    assert both.anchor_index == 4 and both.model_fields()["anchor_index"] == 4
    # The column holds the lag a window feeds: y_(t+1-4), one season before the target.
    layout = spec(anchor=4, scaling="std")
    values = np.arange(1.0, 9.0)[:, None]
    known = features.known_features(layout, None, np.zeros((9, 1)), ("b",))
    inputs = features.window_inputs(layout, values, known, start=3, length=3,
                                    scale=np.array([2.0]), loc=np.array([4.0]))
    np.testing.assert_allclose(inputs[:, layout.anchor_index] * 2 + 4, values[0:3, 0])
    assert FeatureSpec.from_dict(layout.to_dict()) == layout
    old = {key: value for key, value in spec().to_dict().items() if key != "anchor"}
    assert FeatureSpec.from_dict(old).anchor == 0  # run folders from before the anchor
    with pytest.raises(ValueError, match=r"anchor=3 is invalid: give 0 \(none\) or one of the "
                                         "lags 1, 2, 4"):
        spec(anchor=3)


def test_resolve_anchor_rule_and_errors():
    from seqmodel.data.preparation import resolve_anchor
    from seqmodel.data.batching import DataError

    lags = (1, 2, 3, 12)
    assert resolve_anchor("season", head="student_t", season=12, lags=lags) == 12
    assert resolve_anchor("season", head="student_t", season=1, lags=lags) == 0
    assert resolve_anchor("season", head="student_t", season=52, lags=lags) == 0  # not fed
    assert resolve_anchor("last", head="gaussian", season=12, lags=lags) == 1
    assert resolve_anchor("none", head="gaussian", season=12, lags=lags) == 0
    assert resolve_anchor(3, head="mdn", season=12, lags=lags) == 3
    assert resolve_anchor(None, head="bernoulli", season=12, lags=lags) == 0
    # The default: the season's lag where there is one, else the last value.
    assert resolve_anchor(None, head="student_t", season=12, lags=lags) == 12
    assert resolve_anchor("auto", head="student_t", season=1, lags=lags) == 1
    assert resolve_anchor("auto", head="gaussian", season=52, lags=lags) == 1
    assert resolve_anchor("seasons", head="student_t", season=12, lags=lags) == 12
    with pytest.raises(DataError, match="--anchor 5 is invalid: allowed are auto, season, seasons, "
                                        "last, none or one of the lags fed"):
        resolve_anchor(5, head="gaussian", season=12, lags=lags)
    with pytest.raises(DataError, match="--anchor 'weekly' is invalid"):
        resolve_anchor("weekly", head="gaussian", season=12, lags=lags)
    with pytest.raises(DataError, match="--head negbin"):
        resolve_anchor("season", head="negbin", season=12, lags=lags)
