"""`seqmodel sample --regex / --json-schema / --json`."""

import json
import re

import pytest

from seqmodel.cli import main

pytest.importorskip("outlines_core", reason="constraints need the constraints extra")

COMMON = ["--hidden-size", "8", "--embed-size", "4", "--batch-size", "2", "--seq-len", "8",
          "--no-progress", "--devices", "1", "--cell", "gru"]
ROW = r"[a-c]{2,3},[0-9]{1,2}\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("constraints")
    corpus = folder / "rows.txt"  # text (a .csv would be read as numbers)
    corpus.write_text("ab,12\nbca,7\ncc,40\n{\"n\": 1}\n" * 40)
    assert main(["train", "--data", str(corpus), "--steps", "20", "--out", str(folder / "run"),
                 *COMMON]) == 0
    return folder


def sample(run, capsys, *flags):
    status = main(["sample", "--checkpoint", str(run / "run"), "--steps", "12", *flags])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.slow
def test_regex_samples_match_and_json_prints_one_line(run, capsys):
    status, out, _ = sample(run, capsys, "--regex", ROW, "--num-samples", "6", "--json",
                            "--temperature", "1.5")
    assert status == 0 and out.count("\n") == 1
    result = json.loads(out)
    assert set(result) == {"samples", "lengths", "stop_reasons"}
    assert len(result["samples"]) == 6
    for text, length, reason in zip(result["samples"], result["lengths"],
                                    result["stop_reasons"]):
        assert len(text) == length
        assert reason in ("complete", "length")
        if reason == "complete":
            assert re.fullmatch(ROW, text)
    assert "complete" in result["stop_reasons"]


@pytest.mark.slow
def test_json_schema_file_and_prompt(run, capsys):
    schema = run / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}},
                                  "required": ["n"]}))
    status, out, _ = sample(run, capsys, "--json-schema", str(schema), "--prompt", "{",
                            "--json", "--steps", "20")
    assert status == 0
    result = json.loads(out)
    if result["stop_reasons"][0] == "complete":
        assert json.loads("{" + result["samples"][0])["n"] is not None
    # Without --json: the prompt and its continuation, as for every sample.
    status, out, _ = sample(run, capsys, "--regex", "ab,[0-9]", "--prompt", "a")
    assert status == 0 and re.fullmatch(r"ab,[0-9]\n", out)


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (["--regex", "a("], "not a regular expression"),
    (["--regex", "xyz"], "lacks"),
    (["--regex", "ab", "--prompt", "c"], "prompt row 0 leaves the constraint's language"),
    (["--json-schema", "missing.json"], "--json-schema 'missing.json': no such file"),
    (["--regex", "ab", "--beams", "2"], "--beams with --regex or --json-schema needs --prompt"),
])
def test_bad_constraints_exit_2_with_one_line(run, capsys, flags, message):
    status, _, err = sample(run, capsys, *flags)
    assert status == 2
    assert message in err and err.strip().count("\n") == 0
