"""`seqmodel sample` with beam search, penalties, several stop texts and min-new-tokens."""

import pytest

from seqmodel.cli import main

COMMON = ["--hidden-size", "8", "--embed-size", "4", "--batch-size", "2", "--seq-len", "8",
          "--no-progress", "--devices", "1", "--cell", "gru"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoding")
    corpus = folder / "corpus.txt"
    corpus.write_text("abc abd abe. " * 60)
    assert main(["train", "--data", str(corpus), "--steps", "30", "--out", str(folder / "run"),
                 *COMMON]) == 0
    return str(folder / "run")


def sample(run, capsys, *flags):
    status = main(["sample", "--checkpoint", run, "--prompt", "ab", "--steps", "24", *flags])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.slow
def test_beam_search_returns_the_best_hypotheses(run, capsys):
    status, out, _ = sample(run, capsys, "--beams", "4", "--num-samples", "2",
                            "--length-penalty", "0.5")
    assert status == 0
    texts = out.split("\n" + "-" * 40 + "\n")
    assert len(texts) == 2 and all(text.startswith("ab") for text in texts)


def test_several_stop_texts_end_each_continuation(run, capsys):
    status, out, _ = sample(run, capsys, "--stop", "e.", "--stop", "d a", "--num-samples", "3",
                            "--repetition-penalty", "1.1", "--seed", "3")
    assert status == 0
    stopped = 0
    for text in out.split("\n" + "-" * 40 + "\n"):
        text = text.rstrip("\n")
        ends = [stop for stop in ("e.", "d a") if stop in text[2:]]
        if ends:  # a continuation ends right after its first stop text
            first = min(text.index(stop, 2) + len(stop) for stop in ends)
            assert len(text) == first
            stopped += 1
    assert stopped >= 1  # the trained model does write these texts


@pytest.mark.parametrize("flags, message", [
    (["--beams", "2", "--num-samples", "3"], "--num-samples 3 is more than --beams 2"),
    (["--length-penalty", "2"], "--length-penalty applies to --beams only"),
    (["--beams", "2", "--top-k", "3"], "--top-k is a sampling control"),
    (["--beams", "0"], "--beams"),
    (["--repetition-penalty", "0"], "--repetition-penalty"),
    (["--min-new-tokens", "x"], "--min-new-tokens"),
    (["--stop", "\u2603"], "--stop text"),
])
def test_bad_decoding_flags_exit_2_with_one_line_naming_the_flag(run, capsys, flags, message):
    status, _, err = sample(run, capsys, *flags)
    assert status == 2
    assert message in err and err.strip().count("\n") == 0
