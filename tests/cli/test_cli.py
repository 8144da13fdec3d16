"""The seqmodel command: train -> sample -> eval end to end, resume, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from seqmodel import cli

CORPUS = "Le café est prêt.\nThe cat sat on the mat.\n" * 40
TINY = ["--hidden-size", "16", "--embed-size", "8", "--batch-size", "4", "--seq-len", "8",
        "--eval-every", "10", "--no-progress"]


def run(capsys, *argv):
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    status = cli.main(["train", "--data", str(corpus), "--out", str(out), "--steps", "20",
                       "--json", *TINY])
    assert status == 0
    return out


@pytest.mark.slow
def test_train_json_line_and_run_folder(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, stderr = run(capsys, "train", "--data", str(corpus), "--out", str(out),
                                 "--steps", "12", "--json", *TINY)
    assert status == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1  # with --json, stdout holds the JSON line only
    summary = json.loads(lines[0])
    for key in ("steps", "tokens", "train_seconds", "tokens_per_second", "val_loss", "checkpoint"):
        assert key in summary
    assert summary["steps"] == 12 and summary["tokens"] == 12 * 4 * 8
    assert summary["step_tokens_per_second"] > 0
    assert summary["val_loss"] > 0 and summary["bpc"] == pytest.approx(summary["val_loss"] / 0.693147, rel=1e-3)
    assert summary["checkpoint"] == str(out) and isinstance(summary["sample"], str)
    assert (out / "metrics.jsonl").is_file() and (out / "checkpoints" / "12").is_dir()
    assert "sample" in stderr  # the human-readable report went to stderr


def test_resume_plans_its_devices_with_the_checkpoint_batch_size(trained):
    parse = cli.build_parser().parse_args
    assert cli.planned_batch_size(parse(["train", "--resume", "--out", str(trained)])) == 4
    assert cli.planned_batch_size(parse(["train", "--out", str(trained / "x")])) == 16
    assert cli.planned_batch_size(parse(["train", "--resume", "--out", str(trained / "x")])) is None


def test_sample_is_reproducible_and_takes_multiline_unicode_prompts(trained, capsys):
    prompt = "Le café\nThe "
    args = ["sample", "--checkpoint", str(trained), "--prompt", prompt, "--steps", "30",
            "--seed", "5"]
    status, first, _ = run(capsys, *args)
    assert status == 0 and first.startswith(prompt)
    _, again, _ = run(capsys, *args)
    assert again == first
    _, other, _ = run(capsys, *args[:-1], "6")
    assert other != first
    status, greedy, _ = run(capsys, "sample", "--checkpoint", str(trained), "--prompt", "The",
                            "--steps", "10", "--greedy", "--num-samples", "2")
    assert status == 0
    halves = greedy.split("-" * 40)
    assert len(halves) == 2 and halves[0].strip() == halves[1].strip()


def test_sample_from_prompt_file_with_stop(trained, tmp_path, capsys):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("The cat", encoding="utf-8")
    status, out, _ = run(capsys, "sample", "--checkpoint", str(trained), "--prompt-file",
                         str(prompt_file), "--steps", "200", "--stop", "\n", "--seed", "1")
    assert status == 0 and out.startswith("The cat")
    assert out.count("\n") == 1  # stopped at the first newline


def test_eval_json(trained, capsys):
    status, out, _ = run(capsys, "eval", "--checkpoint", str(trained), "--json")
    assert status == 0
    result = json.loads(out)
    assert set(result) >= {"val_loss", "bpc"} and result["val_loss"] > 0
    metadata_val = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])["val_loss"]
    assert result["val_loss"] == pytest.approx(metadata_val, abs=1e-4)


def test_resume_continues_and_checks_flags(trained, capsys):
    status, _, err = run(capsys, "train", "--out", str(trained), "--resume", "--hidden-size", "32")
    assert status == 2
    assert err.strip().count("\n") == 0 and "--hidden-size 32 (checkpoint: 16)" in err
    status, out, err = run(capsys, "train", "--out", str(trained), "--resume", "--steps", "25",
                           "--json", "--no-progress")
    assert status == 0, err
    assert json.loads(out)["steps"] == 25
    # Already there: one line, no training, no new checkpoint.
    status, out, err = run(capsys, "train", "--out", str(trained), "--resume", "--steps", "10",
                           "--json", "--no-progress")
    assert status == 0 and json.loads(out) == {"steps": 25, "checkpoint": str(trained),
                                               "nothing_to_train": True}
    assert "already at step 25 and --steps is 10: nothing to train" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "/no/such/file.txt"], "no such file"),
    (["train", "--batch-size", "0"], "--batch-size: '0' must be >= 1"),
    (["train", "--teacher-forcing", "1.5"], "must be <= 1"),
    (["train", "--cell", "transformer"], "invalid choice"),
    (["train", "--input-skip", "--steps", "1"], "input_skip=True is invalid: needs real-valued"),
    (["sample", "--checkpoint", "/no/such/run"], "no such folder"),
])
def test_errors_exit_2_with_one_line(argv, message, capsys):
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert err.strip().count("\n") == 0 and message in err


def test_data_errors_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    status, _, err = run(capsys, "train", "--data", str(empty), "--out", str(tmp_path / "a"))
    assert status == 2 and "is empty" in err
    short = tmp_path / "short.txt"
    short.write_text("abc\n" * 10)
    status, _, err = run(capsys, "train", "--data", str(short), "--out", str(tmp_path / "b"),
                         "--steps", "1", *TINY, "--batch-size", "16")
    assert status == 2 and "fewer than batch_size * seq_len + 1" in err


def test_unknown_prompt_characters_and_existing_out(trained, corpus, capsys):
    status, _, err = run(capsys, "sample", "--checkpoint", str(trained), "--prompt", "Zürich ☃")
    assert status == 2 and "'Z'" in err and "'☃'" in err
    status, _, err = run(capsys, "train", "--data", str(corpus), "--out", str(trained))
    assert status == 2 and "already holds a run" in err


def test_console_entry_point_reports_one_line(tmp_path):
    """The real entry point in a fresh process: a bad checkpoint exits 2 with one stderr line."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from seqmodel.cli import main; sys.exit(main())",
         "eval", "--checkpoint", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "holds no checkpoint" in result.stderr


def test_cli_defaults_are_the_library_defaults(capsys):
    from seqmodel.nn.model import ModelConfig
    from seqmodel.training.optimization import TrainConfig

    defaults, model, train = cli.train_defaults(), ModelConfig(vocab_size=5), TrainConfig()
    for flag, field in cli.TRAIN_FLAGS.items():
        assert defaults[flag] == getattr(train, field), flag
    for flag, field in cli.MODEL_FLAGS.items():
        if flag != "head":  # the CLI lets the data pick the head
            assert defaults[flag] == getattr(model, field), flag
    assert (defaults["cell"], defaults["hidden_size"]) == ("gru", 512)  # the tuned defaults

    # A run without flags gets the dataclasses' defaults (and the CLI's own time bound).
    class Data:
        def model_fields(self):
            return {"vocab_size": 5}

    args = cli.build_parser().parse_args(["train"])
    model_config, train_config = cli.train_configs(args, Data())
    assert model_config == model
    assert train_config == TrainConfig(max_time=cli.DEFAULT_MAX_TIME)

    # Series get the series defaults; a model of many series trains longer (series_steps).
    from seqmodel.configs import SERIES_MAX_STEPS, series_steps
    from seqmodel.data import load_dataset

    assert [series_steps(n) for n in (1, 4, 30, 40, 10_000)] == [
        800, 1600, 4400, 5100, SERIES_MAX_STEPS]
    # A long series counts as many short ones (150 steps each); short ones never go below 800.
    assert [series_steps(1, n) for n in (100, 600, 2400, 10**6)] == [
        800, 1600, 3200, SERIES_MAX_STEPS]
    assert series_steps(30, 3000) == 4400
    panel = load_dataset([np.sin(np.arange(60.0) + k) + 3 for k in range(4)])
    _, series_config = cli.train_configs(cli.build_parser().parse_args(["train"]), panel)
    # (Sequences without times: the last one is kept whole for validation, three train.)
    assert len(panel.train_series) == 3
    assert series_config.steps == 1400 and series_config.max_time is None
    flagged = cli.build_parser().parse_args(["train", "--steps", "7"])
    assert cli.train_configs(flagged, panel)[1].steps == 7
    skip = cli.build_parser().parse_args(["train", "--input-skip"])
    assert cli.train_configs(skip, panel)[0].input_skip
    assert not cli.train_configs(flagged, panel)[0].input_skip  # off by default

    # --help shows the same values.
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for text in (f"residual block (mingru, minlstm, rglru) (default {model.cell})", f"--hidden-size N default "
                 f"{model.hidden_size}", f"peak learning rate (default {train.learning_rate})",
                 f"(default {train.steps_per_call})", f"(default {train.batching})"):
        assert text in help_text, text


@pytest.mark.slow
def test_train_writes_tensorboard_event_files(corpus, tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "run"
    status, _, err = run(capsys, "train", "--data", str(corpus), "--out", str(out), "--steps", "4",
                         "--tensorboard", *TINY)
    assert status == 0, err
    (events,) = (out / "tensorboard").glob("events.out.tfevents.*")
    assert events.stat().st_size > 0
    assert (out / "metrics.jsonl").is_file()


def test_tensorboard_without_tensorboardx_is_a_usage_error(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # what an absent package looks like
    status, out, err = run(capsys, "train", "--data", str(corpus), "--out",
                           str(tmp_path / "run"), "--steps", "4", "--tensorboard", *TINY)
    assert status == 2 and err.strip().count("\n") == 0
    assert "--tensorboard: TensorBoard event files need tensorboardX" in err
    assert "seqmodel: training" not in out + err  # refused before the run starts


# -- which errors are the user's, and the start-up of the command ------------------------------


def test_only_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import seqmodel.data

    def broken(*args, **kwargs):  # a bug inside the library, not an argument check
        raise ValueError("internal: this is a bug")

    cli.train_defaults()  # read load_dataset's defaults before it is replaced
    monkeypatch.setattr(seqmodel.data, "load_dataset", broken)
    with pytest.raises(ValueError, match="internal: this is a bug"):
        cli.main(["train", "--data", "x.txt", "--steps", "1"])
    monkeypatch.setattr(seqmodel.data, "load_dataset",
                        lambda *args, **kwargs: {}["missing key"])
    with pytest.raises(KeyError):
        cli.main(["train", "--data", "x.txt", "--steps", "1"])


def test_debug_shows_the_traceback_of_user_errors_too(capsys):
    for argv in (["--debug", "sample", "--checkpoint", "/no/such/run"],
                 ["sample", "--checkpoint", "/no/such/run", "--debug"]):
        status, _, err = run(capsys, *argv)
        assert status == 2
        assert err.startswith("Traceback (most recent call last)")
        assert err.strip().splitlines()[-1] == \
            "seqmodel sample: --checkpoint '/no/such/run': no such folder"


def test_argument_checks_of_configs_are_user_errors():
    from seqmodel.training.optimization import TrainConfig

    with pytest.raises(ValueError) as config_error:
        TrainConfig(batch_size=0)
    assert cli._is_argument_check(config_error.value)
    with pytest.raises(ValueError) as other:
        int("not a number")  # raised here, outside the command line and the configs
    assert not cli._is_argument_check(other.value)


def test_help_and_argument_errors_do_not_import_the_library():
    """`seqmodel --help` and a missing or unknown command: no JAX, Flax or orbax imported."""
    code = ("import sys\nfrom seqmodel.cli import main\nfor argv in (['--help'], [], ['trian']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'orbax'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "invalid choice: 'trian'" in result.stderr


def test_the_package_exports_every_public_name_lazily():
    import ast
    import importlib
    import pathlib

    import seqmodel

    source = pathlib.Path(seqmodel.__file__).read_text(encoding="utf-8")
    type_checking = next(node for node in ast.walk(ast.parse(source))
                         if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
                         "TYPE_CHECKING")
    seen = {alias.asname or alias.name for node in type_checking.body
            for alias in node.names}
    assert seen == set(seqmodel.__all__)  # what type checkers see is what the package exports
    for name in seqmodel.__all__:
        value = getattr(seqmodel, name)
        module = importlib.import_module(seqmodel._MODULE_OF[name])
        assert value is getattr(module, name), name
    # Importing the modules that define fit and generate leaves the package's names the functions.
    import seqmodel.decoding.generate  # noqa: F401
    import seqmodel.training.fitting.loop  # noqa: F401

    assert callable(seqmodel.fit) and callable(seqmodel.generate)
    assert seqmodel.training.optimization.TrainConfig is seqmodel.TrainConfig  # a submodule, imported on use
    with pytest.raises(AttributeError):
        seqmodel.no_such_name


def test_a_time_budget_spent_before_the_first_step_says_so(corpus, tmp_path, capsys):
    status, stdout, stderr = run(capsys, "train", "--data", str(corpus), "--out",
                                 str(tmp_path / "run"), "--max-time", "0.001", *TINY)
    assert status == 0, stderr
    assert "done: 0 steps" in stdout
    assert "no training step fitted in --max-time 0.001 (the budget also pays for compiling" \
        in stdout and "give a larger --max-time or --steps N" in stdout


def test_the_summary_line_names_the_anchor():
    """`seqmodel train`'s first line says what the location is relative to: one lag, or the
    mean of the season's lags where long data feeds them."""
    from seqmodel.cli.train import _describe
    from seqmodel.data import load_dataset

    steps = np.arange(1200)
    values = 50 + 20 * np.sin(2 * np.pi * steps / 12) + np.random.default_rng(0).normal(size=1200)
    averaged = load_dataset(values[:, None], season=12, anchor="seasons")
    assert "anchor the mean of lags 12,24,36" in _describe(averaged)
    assert "anchor lag 12" in _describe(load_dataset(values[:, None], season=12))
    assert "anchor none" in _describe(load_dataset(values[:120, None], season=12, anchor="none"))
