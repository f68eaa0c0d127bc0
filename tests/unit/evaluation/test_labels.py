"""The labels CSV: ISO-8601 or epoch-ms times, extra columns kept, and a clear error for each bad input."""

from __future__ import annotations

import pytest

from fleetscore.evaluation.labels import LabelError, read_labels

T = 1_767_780_000_000  # 2026-01-07T10:00:00Z


def _write(tmp_path, text: str, name: str = "labels.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_iso_with_offsets_naive_utc_and_epoch_ms_are_read(tmp_path):
    path = _write(tmp_path, "device,sensor,start,end,kind\n"
                            "d-1,temp,2026-01-07T10:00:00Z,2026-01-07T11:30:00+01:00,spike\n"
                            f"d-1, temp ,{T},{T + 1_800_000},drift\n"
                            "7,rpm,2026-01-07T10:00:00,2026-01-07 11:00:00.250Z,\n")
    labels = read_labels(path)
    assert labels["device"].tolist() == ["d-1", "d-1", "7"] and labels["sensor"].tolist() == ["temp", "temp", "rpm"]
    assert labels["start"].tolist() == [T, T, T]
    assert labels["end"].tolist() == [T + 1_800_000, T + 1_800_000, T + 3_600_250]
    assert str(labels["start"].dtype) == "int64" and labels["kind"].tolist()[:2] == ["spike", "drift"]


def test_a_header_only_file_is_no_events(tmp_path):
    assert read_labels(_write(tmp_path, "device,sensor,start,end\n")).empty


@pytest.mark.parametrize(("text", "message"), [
    ("device,sensor,begin,end\nd,s,2026-01-07T10:00Z,2026-01-07T11:00Z\n", r"missing column\(s\) start"),
    ("", r"not a readable CSV"),
    ("device,sensor,start,end\nd,s,yesterday,2026-01-07T11:00Z\n",
     r"start: not ISO-8601 or epoch ms: 'yesterday' \(row\(s\) 2\)"),
    ("device,sensor,start,end\nd,s,2026-01-07T10:00Z,2026-13-07T11:00Z\n", r"end: not ISO-8601"),
    ("device,sensor,start,end\nd,s,1767780000,1767781800\n", r"looks like epoch seconds"),
    ("device,sensor,start,end\nd,s,1767780000000.5,1767781800000\n", r"not ISO-8601 or epoch ms"),
    ("device,sensor,start,end\nd,s,2026-01-07T11:00Z,2026-01-07T10:00Z\n", r"end before start on row\(s\) 2"),
    ("device,sensor,start,end\nd,s,2026-01-07T10:00Z,2026-01-07T11:00Z\n,s,2026-01-07T10:00Z,2026-01-07T11:00Z\n",
     r"empty device on row\(s\) 3"),
])
def test_bad_files_say_what_is_wrong(tmp_path, text, message):
    with pytest.raises(LabelError, match=message):
        read_labels(_write(tmp_path, text))


def test_a_missing_file(tmp_path):
    with pytest.raises(LabelError, match="no such file"):
        read_labels(tmp_path / "nope.csv")
