"""Checkpoints: exact resume (also after Ctrl-C and SIGTERM), the steps kept, model loading,
incompatible and damaged checkpoints, run folders of the earlier layout."""

import dataclasses
import logging
import os
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from seqmodel import ModelConfig, SequenceModel
from seqmodel.data import ByteTokenizer, TextDataset
from seqmodel.errors import CheckpointError
from seqmodel.training.checkpoint import (
    CHECKPOINTS,
    DELETED,
    UNREADABLE,
    find_checkpoint,
    inspect_run,
    load_model,
    peek_metadata,
    read_metadata,
    restore_train_state,
)
from seqmodel.training.checkpoint.folders import COMMIT_MARK
from seqmodel.training.fitting import fit
from seqmodel.training.optimization import TrainConfig, init_train_state, make_optimizer
from seqmodel.training.writers import read_jsonl

VOCAB = 6


def dataset():
    rng = np.random.default_rng(0)
    tokens = ((np.arange(2000) * 7 // 3) % VOCAB).astype(np.uint8)
    flips = rng.random(len(tokens)) < 0.1
    tokens[flips] = rng.integers(0, VOCAB, flips.sum())
    data = TextDataset(tokens, ByteTokenizer(), val_fraction=0.1, name="pattern")
    data.model_fields = lambda: {"vocab_size": VOCAB}
    return data


def model(hidden_size=12):
    # Dropout between two layers: the resumed run must also continue the dropout RNG stream.
    config = ModelConfig(vocab_size=VOCAB, hidden_size=hidden_size, embed_size=4, num_layers=2,
                         dropout=0.2)
    return SequenceModel(config, rngs=nnx.Rngs(3))


CONFIG = TrainConfig(steps=14, batch_size=3, seq_len=6, eval_every=5, eval_batch_size=4,
                     eval_seq_len=12, learning_rate=5e-3, warmup_steps=3, log_every=1,
                     steps_per_call=4)


def leaves(tree):
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                       else x) for x in jax.tree.leaves(tree)]


def assert_same_state(got, want):
    for a, b in zip(leaves(got), leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    trained = model()
    result = fit(trained, dataset(), CONFIG, out_dir=folder, progress=False)
    return trained, result, folder


# 4 steps per call: calls end at steps 4, 5, 9, 10, 14 (a call never passes an evaluation
# step), so the signal sent at step 7 stops the run at 9. One step per call stops at 7, and its
# resumed run must still equal the uninterrupted run of 4-step calls bit for bit: the K-step
# program loops over the one-step program's math. SIGTERM stops a run as Ctrl-C does.
@pytest.mark.parametrize("steps_per_call, stopped_at, signal_number", [
    (4, 9, signal.SIGINT), (1, 7, signal.SIGTERM)])
@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(uninterrupted, tmp_path, steps_per_call,
                                                          stopped_at, signal_number):
    _, straight, _ = uninterrupted
    config = dataclasses.replace(CONFIG, steps_per_call=steps_per_call)

    def send_signal(step, metrics):
        if step == 7:  # between evaluations: the carry and data position matter
            os.kill(os.getpid(), signal_number)

    first = fit(model(), dataset(), config, out_dir=tmp_path, progress=False, callback=send_signal)
    assert first.interrupted and first.steps == stopped_at
    assert first.stop_signal == signal_number
    assert find_checkpoint(tmp_path, prefer="latest") == (tmp_path / CHECKPOINTS, stopped_at)
    assert read_metadata(tmp_path, prefer="latest")["data_position"]["index"] > 0
    # The handlers are gone with the run: SIGTERM would end this process again.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    resumed_model = model(hidden_size=12)
    resumed = fit(resumed_model, dataset(), config, out_dir=tmp_path, resume=True, progress=False)
    assert resumed.steps == 14 and not resumed.interrupted and resumed.stop_signal is None
    assert_same_state(resumed.state, straight.state)
    assert resumed.val_loss == straight.val_loss
    assert resumed.tokens == straight.tokens
    # One record per step and per evaluation, although the first run logged past its last save
    # only if it ran past it (the records were trimmed to the resumed step).
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 15))
    assert [r["step"] for r in records if "val_loss" in r] == [5, 10, 14]


def test_the_newest_two_steps_and_the_best_are_kept(uninterrupted):
    _, result, folder = uninterrupted
    run = inspect_run(folder)
    steps = [saved.step for saved in run.steps]
    best = run.best()
    assert steps[:2] == [14, 10] and set(steps) <= {14, 10, best.step}
    evaluated = {r["step"]: r["val_loss"] for r in read_jsonl(folder / "metrics.jsonl")
                 if "val_loss" in r}
    assert best.read_metadata()["step_val_loss"] == pytest.approx(min(evaluated.values()))
    assert evaluated[best.step] == pytest.approx(result.best_val_loss)
    assert not run.partial and run.holds_run and run.holds_checkpoint
    # Dropped steps left in one rename, and the run emptied that folder when it closed.
    assert not any((folder / CHECKPOINTS / DELETED).glob("*"))


def test_a_fresh_run_into_a_folder_that_holds_one_is_refused(uninterrupted):
    """Its steps would sit beside the old run's, and the best of both could be the old one's."""
    _, _, folder = uninterrupted
    before = sorted(str(path) for path in folder.rglob("*"))
    with pytest.raises(ValueError, match=r"out_dir=.* already holds a run; pass resume=True to "
                                         "continue it, or choose another out_dir"):
        fit(model(), dataset(), CONFIG, out_dir=folder, progress=False)
    assert sorted(str(path) for path in folder.rglob("*")) == before  # nothing written


def test_load_model_restores_parameters_and_metadata(uninterrupted):
    trained, result, folder = uninterrupted
    loaded, metadata = load_model(folder, prefer="latest")
    for got, want in zip(leaves(nnx.state(loaded, nnx.Param)), leaves(nnx.state(trained, nnx.Param))):
        np.testing.assert_array_equal(got, want)
    assert metadata["step"] == 14 and metadata["data"]["tokenizer"] == {"kind": "byte"}
    assert metadata["model_config"]["hidden_size"] == 12
    assert loaded.dropout.deterministic  # loaded for inference: eval mode
    # Arrays come back on this process's default device, whatever device wrote them.
    assert all(leaf.devices() == {jax.devices()[0]}
               for leaf in jax.tree.leaves(nnx.state(loaded, nnx.Param)))
    best, best_metadata = load_model(folder)  # run folder: best checkpoint
    assert best_metadata["best_val_loss"] == pytest.approx(result.best_val_loss)
    assert best_metadata["step_val_loss"] == pytest.approx(result.best_val_loss)


def test_metadata_read_without_jax_equals_orbax_restore(uninterrupted):
    # seqmodel train --resume reads the batch size this way before JAX starts.
    _, _, folder = uninterrupted
    for prefer in ("latest", "best"):
        assert peek_metadata(folder, prefer=prefer) == read_metadata(folder, prefer=prefer)


def test_incompatible_checkpoint_is_a_clear_error(uninterrupted):
    _, _, folder = uninterrupted
    other = model(hidden_size=8)
    _, template = init_train_state(other, make_optimizer(CONFIG), CONFIG)
    with pytest.raises(CheckpointError, match=r"another model: hidden_size=12 \(now 8\)"):
        restore_train_state(folder, template, other.config)
    # The training state is named: another batch size gives the lanes' carry another shape.
    same = model()
    config = dataclasses.replace(CONFIG, batch_size=5)
    _, template = init_train_state(same, make_optimizer(config), config)
    with pytest.raises(CheckpointError, match=r"training state carry/\S+ is float32\[3, 12\] in "
                                              r"the checkpoint but this model expects "
                                              r"float32\[5, 12\]"):
        restore_train_state(folder, template, same.config)


def test_checkpoint_error_is_the_one_users_import():
    import seqmodel
    from seqmodel.training import checkpoint

    assert checkpoint.CheckpointError is CheckpointError is seqmodel.CheckpointError
    assert issubclass(CheckpointError, seqmodel.UserError)


def test_missing_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        find_checkpoint(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_model(tmp_path)
    assert not inspect_run(tmp_path / "absent").holds_run


def largest_array_file(step_folder):
    """The largest file of array data in a step's training state (orbax's OCDBT ``d/`` files):
    what a write cut short leaves truncated."""
    files = [path for path in (step_folder / "train_state").rglob("*")
             if path.is_file() and path.parent.name == "d"]
    return max(files, key=lambda path: path.stat().st_size)


def truncate(path, keep=0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def truncate_arrays(step_folder):
    for path in step_folder.rglob("*"):
        if path.is_file() and path.parent.name == "d":  # orbax's OCDBT data files
            truncate(path)


def truncate_everything(step_folder):
    for path in step_folder.rglob("*"):
        if path.is_file():
            truncate(path)


def empty_folder(step_folder):
    shutil.rmtree(step_folder)
    step_folder.mkdir()


# What a bad copy or a full disk leaves of the newest step; the reason the warning gives.
DAMAGES = {
    "truncated _CHECKPOINT_METADATA": (
        lambda step: truncate(step / "_CHECKPOINT_METADATA", 0.3),
        "its _CHECKPOINT_METADATA cannot be read"),
    "truncated array files": (truncate_arrays, "its params cannot be read (OUT_OF_RANGE"),
    "largest array file truncated": (
        lambda step: truncate(largest_array_file(step)), "its train_state cannot be read"),
    "missing commit_success.txt": (
        lambda step: (step / "commit_success.txt").unlink(), "its commit_success.txt is missing"),
    "empty step folder": (empty_folder, "its folder is empty"),
    "every file truncated": (truncate_everything, "its _CHECKPOINT_METADATA cannot be read"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_newest_step_gives_way_to_the_one_before(uninterrupted, tmp_path, damage, caplog,
                                                           capfd):
    _, straight, folder = uninterrupted
    run_dir = tmp_path / "run"
    shutil.copytree(folder, run_dir)
    spoil, reason = DAMAGES[damage]
    if "commit_success" in damage and not (run_dir / CHECKPOINTS / "14" / COMMIT_MARK).exists():
        pytest.skip(f"this orbax ({ocp.__version__}) writes no {COMMIT_MARK} (orbax 0.12 does)")
    spoil(run_dir / CHECKPOINTS / "14")
    assert [saved.step for saved, _ in inspect_run(run_dir).damaged] == (
        [] if "array" in damage else [14])  # arrays show only when read
    capfd.readouterr()

    with caplog.at_level(logging.WARNING):
        resumed = fit(model(), dataset(), CONFIG, out_dir=run_dir, resume=True, progress=False)
    # One warning, and nothing else on the terminal: orbax never read the damaged step's
    # records, nor left reads in flight on a closed event loop.
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith(f"resuming from step 10: the newer step 14 ({reason}")
    assert UNREADABLE in warning
    # (A logging handler that an earlier CLI test installed may echo the warning itself.)
    echoed = [line for line in capfd.readouterr().err.splitlines() if warning not in line]
    assert echoed == []
    assert resumed.steps == 14
    assert_same_state(resumed.state, straight.state)  # the lost steps were trained again
    records = read_jsonl(run_dir / "metrics.jsonl")
    (event,) = [r for r in records if "event" in r]
    assert event["event"] == "resumed_from_older_step" and event["step"] == 10
    assert event["unreadable_steps"] == [14]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 15))
    assert [r["step"] for r in records if "val_loss" in r] == [5, 10, 14]
    assert (run_dir / UNREADABLE / "14").is_dir()  # set aside, not deleted
    assert [s.step for s in inspect_run(run_dir).steps][:2] == [14, 10]
    assert not inspect_run(run_dir).damaged


def test_a_run_whose_only_step_is_damaged_starts_again_with_one_warning(tmp_path, caplog):
    config = dataclasses.replace(CONFIG, steps=5)
    fit(model(), dataset(), config, out_dir=tmp_path, progress=False)
    (tmp_path / CHECKPOINTS / "5" / "_CHECKPOINT_METADATA").write_text("{")  # any orbax
    run = inspect_run(tmp_path)
    assert run.holds_run and not run.holds_checkpoint
    with caplog.at_level(logging.WARNING):
        resumed = fit(model(), dataset(), config, out_dir=tmp_path, resume=True, progress=False)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "step 5 cannot be read (its _CHECKPOINT_METADATA cannot be read" in warning
    assert warning.endswith("starting it from step 0")
    assert resumed.steps == 5 and (tmp_path / UNREADABLE / "5").is_dir()
    assert [s.step for s in inspect_run(tmp_path).steps] == [5]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_loading_a_damaged_step_falls_back_to_another(tmp_path, caplog):
    config = dataclasses.replace(CONFIG, steps=10)
    fit(model(), dataset(), config, out_dir=tmp_path, progress=False)
    (tmp_path / CHECKPOINTS / "10" / "params" / "_METADATA").write_text("{")
    with caplog.at_level(logging.WARNING, logger="seqmodel"):
        _, metadata = load_model(tmp_path, prefer="latest")
    assert metadata["step"] == 5
    assert any(r.getMessage().startswith(f"loaded step 5 of {tmp_path}: step 10 (")
               for r in caplog.records)


def test_no_readable_step_is_a_clear_error(tmp_path):
    config = dataclasses.replace(CONFIG, steps=5)
    fit(model(), dataset(), config, out_dir=tmp_path, progress=False)
    (tmp_path / CHECKPOINTS / "5" / "metadata" / "metadata").write_text("{truncated")
    _, template = init_train_state(model(), make_optimizer(CONFIG), CONFIG)
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*step 5: its "
                                              r"metadata/metadata cannot be read"):
        restore_train_state(tmp_path, template, model().config)


def write_legacy_run(folder, trained_state, metadata):
    """A run folder as the earlier version wrote it: RUN/latest/<step> and RUN/best/<step>,
    the training state as numbered leaves."""
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(trained_state.params))
    rest = (trained_state.step, trained_state.opt_state, trained_state.model_state,
            trained_state.carry, trained_state.key, trained_state.horizon)
    numbered = {f"leaf_{index:05d}": np.asarray(
        jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        else leaf) for index, leaf in enumerate(jax.tree.leaves(rest))}
    step = int(trained_state.step)
    for kind in ("latest", "best"):
        with ocp.CheckpointManager((folder / kind).absolute()) as manager:
            manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                train_state=ocp.args.StandardSave(numbered),
                metadata=ocp.args.JsonSave(metadata)))


def test_run_folders_of_the_earlier_layout_load_and_resume(uninterrupted, tmp_path):
    _, straight, _ = uninterrupted
    halfway = tmp_path / "halfway"

    def stop(step, metrics):
        return step == 7

    first = fit(model(), dataset(), CONFIG, out_dir=halfway, progress=False, callback=stop)
    assert first.interrupted and first.steps == 9 and first.stop_signal is None
    legacy = tmp_path / "legacy"
    write_legacy_run(legacy, first.state, peek_metadata(halfway, prefer="latest"))

    run = inspect_run(legacy)
    assert [(s.step, s.folder.name, s.legacy) for s in run.steps] == [
        (9, "latest", True), (9, "best", True)]
    loaded, metadata = load_model(legacy)
    for got, want in zip(leaves(nnx.state(loaded, nnx.Param)), leaves(first.state.params)):
        np.testing.assert_array_equal(got, want)
    assert metadata["step"] == 9
    resumed = fit(model(), dataset(), CONFIG, out_dir=legacy, resume=True, progress=False)
    assert_same_state(resumed.state, straight.state)
    assert (legacy / CHECKPOINTS / "14").is_dir()  # a resumed run writes the current layout
    assert inspect_run(legacy).steps[0].step == 14
