"""Training real-valued models: MDN vs Gaussian on bimodal data, Bernoulli on binary patterns,
masks on padded steps, and free-running forecasts of noisy sines against persistence.

Tiny models and a few hundred steps, seeds fixed: these check that learning happens, not how well
(benchmarks/bench_forecast.py measures quality on larger runs).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm
from seqmodel.data import Batch, synthetic
from seqmodel.data.padding import pad_sequences
from seqmodel.data.series import NumericDataset
from seqmodel.forecasting import free_running, reports
from seqmodel.forecasting import paths as forecast
from seqmodel.training.fitting import fit
from seqmodel.training.optimization import TrainConfig, make_loss_fn


def train(dataset, *, head, steps, hidden_size=16, seq_len=32, num_mixtures=2, seed=0):
    config = sm.ModelConfig(input_size=dataset.input_size, head=head, cell="gru",
                            hidden_size=hidden_size, num_mixtures=num_mixtures)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(seed))
    fit(model, dataset, TrainConfig(batch_size=32, seq_len=seq_len, steps=steps,
                                    learning_rate=1e-2, warmup_steps=20, weight_decay=0.0,
                                    eval_every=None, log_every=50, seed=seed), progress=False)
    model.eval()
    return model


def one_step_draws(model, normalizer, sequences, *, num_samples, key):
    """Draws ``(S, n, t - 1, d)`` in original units from each teacher-forced one-step
    distribution, and the mean NLL per step."""
    values, mask = pad_sequences([normalizer.normalize(s) for s in sequences])
    outputs, nll = forecast.teacher_forced_outputs(model, values, mask)
    draws = free_running.draw_samples(model.head, outputs, jax.random.split(key, num_samples), 1.0)
    return normalizer.denormalize(np.asarray(draws, np.float64)), float(nll)


@pytest.mark.slow
def test_mdn_covers_both_modes_where_a_gaussian_cannot():
    """x[t+1] = 0.5 x[t] +- 1.5 (+ noise 0.1), up with probability 0.7: the MDN's samples sit on
    the two modes in a 70/30 split; the Gaussian's spread over the gap between them."""
    dataset = NumericDataset(synthetic.bimodal(num_sequences=128, length=33, seed=0),
                             name="bimodal", val_fraction=0.0)
    held_out = synthetic.bimodal(num_sequences=64, length=33, seed=1)
    previous = np.stack(held_out)[None, :, :-1]  # (1, n, t - 1, 1)
    results = {}
    for head in ("gaussian", "mdn"):
        model = train(dataset, head=head, steps=150)
        draws, nll = one_step_draws(model, dataset.normalizer, held_out, num_samples=20,
                                    key=jax.random.key(0))
        residual = (draws - synthetic.BIMODAL_DECAY * previous)[..., 4:, 0]  # past a warm-up
        near_mode = np.abs(np.abs(residual) - synthetic.BIMODAL_OFFSET) < 0.4
        results[head] = (near_mode.mean(), (residual[near_mode] > 0).mean(), nll)
    near, up, mdn_nll = results["mdn"]
    assert near > 0.9, results
    assert abs(up - synthetic.BIMODAL_UP_PROBABILITY) < 0.06, results
    assert results["gaussian"][0] < 0.5, results
    assert mdn_nll < results["gaussian"][2] - 1.0, results


@pytest.mark.slow
def test_bernoulli_learns_binary_patterns():
    dataset = NumericDataset(synthetic.binary_patterns(num_sequences=64, length=17, seed=0),
                             name="binary-patterns", val_fraction=0.0)
    assert dataset.binary
    model = train(dataset, head="bernoulli", steps=150)
    held_out = np.stack(synthetic.binary_patterns(num_sequences=16, length=17, seed=1))
    values, mask = pad_sequences(list(held_out))
    outputs, nll = forecast.teacher_forced_outputs(model, values, mask)
    predicted = np.asarray(model.head.mode(outputs))
    assert (predicted == held_out[:, 1:]).mean() > 0.99
    assert float(nll) < 0.3  # nats per 8-bit step; a coin per bit would be 5.5
    # Free running from two steps of context continues the cycle.
    paths = forecast.sample_paths(model, held_out[:, :2], key=jax.random.key(0), horizon=8,
                                  num_samples=1, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(paths)[:, 0], held_out[:, 2:10])


@pytest.mark.slow
def test_padded_steps_contribute_nothing_to_loss_or_gradients():
    config = sm.ModelConfig(input_size=2, head="mdn", num_mixtures=3, cell="gru", hidden_size=8)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    long, short = rng.normal(size=(10, 2)), rng.normal(size=(6, 2))
    values, mask = pad_sequences([long, short])
    loss_fn = make_loss_fn(TrainConfig(batch_size=2, seq_len=9, steps=1))

    @nnx.jit
    def loss_and_grads(model, values, mask):
        batch = Batch(values[:, :-1], values[:, 1:], mask[:, 1:], jnp.ones((len(values),), bool))
        grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
        (loss, (_, weight)), grads = grad_fn(model, model.init_carry(len(values)), batch,
                                             jax.random.key(0), 1.0)
        return loss, weight, grads

    loss, weight, grads = loss_and_grads(model, values, mask)
    assert float(weight) == 9 + 5
    garbage = values.copy()
    garbage[1, 6:] = 1e4  # padded steps, as inputs and as targets
    loss_garbage, _, grads_garbage = loss_and_grads(model, garbage, mask)
    assert float(loss_garbage) == pytest.approx(float(loss), rel=1e-6)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads)) > 0
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_garbage)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # And the loss is that of the two sequences at their own lengths, weighted by target count.
    separate = []
    for sequence in (long, short):
        one_values, one_mask = pad_sequences([sequence], length=10)
        one_loss, one_weight, _ = loss_and_grads(model, one_values, one_mask)
        separate.append(float(one_loss) * float(one_weight))
    assert float(loss) == pytest.approx(sum(separate) / 14, rel=1e-5)


@pytest.mark.slow
def test_noisy_sine_forecasts_beat_persistence_at_every_horizon():
    dataset = NumericDataset(synthetic.sine(num_sequences=256, length=160, seed=0), name="sine",
                             val_fraction=0.125)
    model = train(dataset, head="gaussian", steps=300, hidden_size=32, seq_len=100)
    report = reports.exposure_bias_report(model, dataset.val_sequences, dataset.normalizer,
                                           key=jax.random.key(0), horizon=50, num_samples=30,
                                           num_starts=32, min_context=60)
    mae, persistence = np.array(report["mae"]), np.array(report["persistence_mae"])
    assert np.all(mae < persistence), (mae.round(3), persistence.round(3))
    # Teacher forced, the one-step error stays near the noise level (0.1 sd: MAE about 0.08).
    assert report["one_step_mae"] < 0.15
    crps = np.array(report["crps"])
    assert np.all((crps > 0) & (crps < persistence))


# -- the command line ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_train_sample_eval_on_a_csv(tmp_path, monkeypatch, capsys):
    """`seqmodel train --data series.csv --time-column date --head mdn` (a forecaster of two
    targets with time features), then `sample` (paths in original units, same seed same paths,
    quantiles, fan chart) and `eval --json` (the report's keys)."""
    import json

    from seqmodel.cli import main

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    days = np.datetime64("2024-01-01") + np.arange(40)
    rows = ["sequence_id,date,temp,load"]
    for sequence in range(6):
        for step in range(40):
            rows.append(f"s{sequence},{days[step]},"
                        f"{np.sin(step / 5 + sequence):.4f},{100 + rng.normal():.4f}")
    (tmp_path / "series.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "context.csv").write_text("date,temp,load\n" + "\n".join(
        f"{days[i]},{np.sin(i / 5):.4f},100" for i in range(12)) + "\n")
    common = ["--hidden-size", "8", "--seq-len", "16", "--batch-size", "4", "--no-progress"]
    assert main(["train", "--data", "series.csv", "--head", "mdn", "--num-mixtures", "2",
                 "--steps", "150", "--lr", "0.02", "--out", "run", "--time-column", "date",
                 *common]) == 0
    sample = ["sample", "--checkpoint", "run", "--prompt-file", "context.csv", "--steps", "5",
              "--num-samples", "8"]
    assert main([*sample, "--out", "a.npy", "--plot", "fan.png"]) == 0
    assert main([*sample, "--out", "b.npy"]) == 0
    paths = np.load("a.npy")
    assert paths.shape == (8, 5, 2)
    np.testing.assert_array_equal(paths, np.load("b.npy"))
    # Original units (the load column sits near 100), not the scaled ones (near 1): 150 steps of a
    # tiny model leave the level a few units off, so the band only tells the two scales apart.
    assert 50 < np.median(paths[..., 1]) < 150
    assert (tmp_path / "fan.png").read_bytes()[:4] == b"\x89PNG"
    assert main([*sample, "--seed", "1", "--quantiles", "0.1,0.5,0.9", "--out", "q.npy"]) == 0
    quantiles = np.load("q.npy")
    assert quantiles.shape == (3, 5, 2) and np.all(quantiles[0] <= quantiles[2])
    # Calibrated like fit's intervals, on the training data's validation part: with every
    # margin raised by 1 window scale, the 80% pair moves out by the same amount each side at
    # every step, the median stays (the same seed draws the same paths).
    from seqmodel.forecasting import conformal

    def wider(*arguments, **options):
        calibration = real_calibrate(*arguments, **options)
        return dataclasses.replace(calibration, margins=calibration.margins + 1.0)

    real_calibrate = conformal.calibrate
    monkeypatch.setattr(conformal, "calibrate", wider)
    assert main([*sample, "--seed", "1", "--quantiles", "0.1,0.5,0.9", "--out", "q.npy"]) == 0
    assert "quantiles calibrated by split conformal on" in capsys.readouterr().err
    calibrated = np.load("q.npy")
    assert main([*sample, "--seed", "1", "--quantiles", "0.1,0.5,0.9", "--out", "raw.npy",
                 "--no-calibration"]) == 0
    raw = np.load("raw.npy")
    np.testing.assert_array_equal(calibrated[1], raw[1])
    widening = calibrated[2] - raw[2]  # (H, d)
    assert np.all(widening > 0)
    np.testing.assert_allclose(raw[0] - calibrated[0], widening, rtol=1e-4)
    # By the window scale: the mean |y| of the context's last steps (load is 100 throughout).
    np.testing.assert_allclose(widening[:, 1], 100.0, rtol=1e-4)
    np.testing.assert_allclose(widening[:, 0], widening[0, 0], rtol=1e-4)
    # Without the training file the quantiles are the model's own, and stderr says why.
    (tmp_path / "series.csv").rename(tmp_path / "moved.csv")
    assert main([*sample, "--seed", "1", "--quantiles", "0.1,0.5,0.9", "--out", "away.npy"]) == 0
    assert "quantiles not calibrated" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load("away.npy"), raw)
    (tmp_path / "moved.csv").rename(tmp_path / "series.csv")
    # Without --prompt-file the six training series are continued from their ends.
    assert main(["sample", "--checkpoint", "run", "--steps", "5", "--num-samples", "8",
                 "--out", "end.npy"]) == 0
    assert np.load("end.npy").shape == (6, 8, 5, 2)
    assert "training data 'series.csv'" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", "run", "--horizon", "4", "--num-samples", "10",
                 "--json", "--plot", "report.png"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("mae", "crps", "persistence_mae"):
        assert len(report[name]) == report["horizon"] == 4
    assert np.isfinite(report["nll"]) and np.isfinite(report["one_step_mae"])
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    # Clear one-line errors, exit status 2.
    assert main(["sample", "--checkpoint", "run", "--prompt", "abc"]) == 2
    assert main(["train", "--data", "series.csv", "--head", "bernoulli", "--steps", "1",
                 "--out", "other", "--time-column", "date", *common]) == 2
    (tmp_path / "holes.csv").write_text("a,b\n1,2\n3,\n5,6\n")
    assert main(["train", "--data", "holes.csv", "--steps", "1", "--out", "holes"]) == 2
    errors = capsys.readouterr().err
    assert "--prompt-file" in errors and "--head bernoulli needs binary" in errors
    assert "line 3, column 'b' is missing" in errors and "--missing mask" in errors


@pytest.mark.slow
def test_cli_forecaster_round_trip_with_covariates_and_backtest(tmp_path, monkeypatch, capsys):
    """`train --time-column --lags --covariates --static-columns`, `sample --future-file`, and
    `eval --backtest --json --plot` (one object per method, every score per horizon step), and
    one-line errors with exit status 2 for bad covariates, futures, lags and times."""
    import json

    from seqmodel.cli import main

    monkeypatch.chdir(tmp_path)
    days = np.datetime64("2024-01-01") + np.arange(70)
    rows = ["date,store,sales,price"]
    for store, level in (("a", 10.0), ("b", 500.0)):
        for t in range(70):
            price = 1 + 0.1 * np.sin(t)
            rows.append(f"{days[t]},{store},{level * (2 + np.sin(t / 2) - price):.4f},{price:.4f}")
    (tmp_path / "sales.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "context.csv").write_text("\n".join(rows[:41]) + "\n")  # store a, 40 days
    future = ["date,store,price"] + [f"{days[40 + t]},a,1.0" for t in range(6)]
    (tmp_path / "future.csv").write_text("\n".join(future) + "\n")
    (tmp_path / "short.csv").write_text("\n".join(future[:3]) + "\n")
    train = ["train", "--data", "sales.csv", "--time-column", "date", "--id-column", "store",
             "--covariates", "price", "--static-columns", "store", "--lags", "1,7",
             "--hidden-size", "8", "--seq-len", "16", "--batch-size", "4", "--steps", "20",
             "--no-progress"]
    assert main([*train, "--holdout", "14", "--out", "run"]) == 0  # the backtest's 2 x 7 days
    sample = ["sample", "--checkpoint", "run", "--prompt-file", "context.csv", "--steps", "6",
              "--num-samples", "5"]
    assert main([*sample, "--future-file", "future.csv", "--out", "paths.npy"]) == 0
    assert np.load("paths.npy").shape == (5, 6, 1)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", "run", "--backtest", "2", "--horizon", "7",
                 "--num-samples", "20", "--baselines", "persistence,seasonal_naive", "--json",
                 "--plot", "backtest.png"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Daily data whose only cycle is sin(t / 2), 4 pi (about 13) days: the data shows no weekly
    # season, so the season is the one it shows (calendar.shows_season).
    assert (summary["windows"], summary["horizon"], summary["season"]) == (2, 7, 13)
    assert set(summary["methods"]) == {"seqmodel", "persistence", "seasonal_naive"}
    for scores in summary["methods"].values():
        assert set(scores) == {"mae", "rmse", "mase", "smape", "nd", "wql", "crps",
                               "coverage_80", "coverage_95"}
        assert all(len(score["per_step"]) == 7 for score in scores.values())
    assert (tmp_path / "backtest.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    # Bad input: one line, exit status 2.
    assert main([*sample, "--out", "x.npy"]) == 2  # no future covariates
    assert main([*sample, "--future-file", "short.csv", "--out", "x.npy"]) == 2
    assert main([*train, "--covariates", "promo", "--out", "bad1"]) == 2
    assert main([*train, "--lags", "1,300", "--out", "bad2"]) == 2
    lines = (tmp_path / "sales.csv").read_text().splitlines()
    del lines[10]
    (tmp_path / "gap.csv").write_text("\n".join(lines) + "\n")
    assert main([*train, "--data", "gap.csv", "--out", "bad3"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 5
    assert "--future-file" in errors[0] and "fewer than --steps 6" in errors[1]
    assert "'promo' is not a column" in errors[2] and "lags up to 300" in errors[3]
    assert "line 11" in errors[4] and "2 days" in errors[4]


@pytest.mark.slow
def test_cli_holdout_keeps_backtests_honest_and_an_ensemble_pools(tmp_path, monkeypatch, capsys):
    """`eval --backtest` refuses windows the run saw (exit 2, the --holdout that fixes it),
    scores them with --allow-overlap (and says so), and a run with --holdout and --ensemble 2
    backtests its unseen windows with both members and calibrated intervals."""
    import json

    from seqmodel.cli import main
    from seqmodel.forecasting.forecaster import Forecaster

    monkeypatch.chdir(tmp_path)
    days = np.arange("2024-01-01", "2024-05-01", dtype="datetime64[D]")
    level = 20 + 3 * np.sin(2 * np.pi * np.arange(len(days)) / 7)
    rows = "".join(f"{d},{v:.3f}\n" for d, v in zip(days, level))
    (tmp_path / "d.csv").write_text("day,visits\n" + rows)
    train = ["train", "--data", "d.csv", "--time-column", "day", "--steps", "20",
             "--hidden-size", "8", "--batch-size", "8", "--eval-every", "20", "--no-progress",
             "--devices", "1"]
    backtest = ["eval", "--backtest", "2", "--horizon", "7", "--baselines", "persistence",
                "--num-samples", "20"]
    assert main([*train, "--out", "seen"]) == 0
    capsys.readouterr()
    assert main([*backtest, "--checkpoint", "seen"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--holdout 14" in error and "2024-04-17" in error
    assert main([*backtest, "--checkpoint", "seen", "--allow-overlap", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["overlap"] is True and summary["allow_overlap"] is True
    assert main([*train, "--holdout", "14", "--ensemble", "2", "--out", "held"]) == 0
    assert (tmp_path / "held" / "members" / "1" / "checkpoints").is_dir()
    capsys.readouterr()
    assert main([*backtest, "--checkpoint", "held", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["overlap"] is False and summary["allow_overlap"] is False
    assert set(summary["calibration"]) >= {"coverage_80_before", "coverage_80_after",
                                           "coverage_95_before", "coverage_95_after"}
    forecaster = Forecaster.load("held")
    assert len(forecaster.models) == 2 and forecaster.seen[0]["steps"] == len(days) - 14
