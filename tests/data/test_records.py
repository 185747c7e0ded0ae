"""Reading local sources: every unusable record is reported with its file and line, or skipped and counted."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest

from hhalign.data.reading import read_records
from hhalign.errors import DataError

GOOD = '{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: go away"}\n'


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (b'{"chosen": "x", "rejected": \n', "malformed JSON"),
        (b'{"chosen": "x"}\n', "missing key 'rejected'"),
        (b'{"chosen": "x", "rejected": 3}\n', "field 'rejected' must be a string"),
        (b'{"prompt": "p", "chosen": "x"}\n', "a strings record in a hh-rlhf source"),
        (b'["chosen", "rejected"]\n', "expected a JSON object"),
        (b'{"chosen": "caf\xe9", "rejected": "x"}\n', "not valid UTF-8"),
    ],
)
def test_bad_record_error_names_file_and_line(tmp_path: Path, bad_line: bytes, message: str):
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(GOOD.encode() + GOOD.encode() + bad_line + GOOD.encode())
    with pytest.raises(DataError) as caught:
        read_records(str(path))
    text = str(caught.value)
    assert f"{path}:3" in text and message in text and "on_bad_record: skip" in text


def test_skip_mode_drops_and_counts_bad_records(tmp_path: Path):
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(GOOD.encode() + b"not json\n" + b'{"chosen": 1, "rejected": "x"}\n' + GOOD.encode())
    bad: Counter[str] = Counter()
    records = read_records(str(path), on_bad_record="skip", counts=bad).records
    assert len(records) == 2 and bad["bad_record"] == 2
    assert records[1].origin == f"{path}:4"


def test_blank_lines_are_ignored_and_gzip_and_folders_are_read(tmp_path: Path):
    (tmp_path / "a.jsonl").write_text(GOOD + "\n" + GOOD)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(GOOD)
    (tmp_path / "notes.txt").write_text("not data")
    records = read_records(str(tmp_path)).records
    assert [r.origin.rsplit("/", 1)[1] for r in records] == ["a.jsonl:1", "a.jsonl:3", "b.jsonl.gz:1"]


def test_empty_file_and_missing_path(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no usable records in .*empty.jsonl"):
        read_records(str(empty))
    with pytest.raises(DataError, match="data path .*nope.jsonl' does not exist; set data.path"):
        read_records(str(tmp_path / "nope.jsonl"))


def test_explicit_prompt_records_keep_their_prompt(tmp_path: Path):
    path = tmp_path / "explicit.jsonl"
    path.write_text('{"prompt": "Q?", "chosen": " yes", "rejected": " no"}\n')
    (record,) = read_records(str(path)).records
    assert (record.prompt, record.chosen, record.rejected) == ("Q?", " yes", " no")
