"""unimoe.common.tables: every CSV row comes back as a dict or as the reason it is bad, with its line."""

import pytest

from unimoe.common.tables import BadCsvRow, CsvHeaderError, iter_csv_rows


def _write(path, text: str):
    path.write_bytes(text.encode("utf-8"))
    return path


def test_rows_and_bad_rows_keep_their_lines_and_fields(tmp_path):
    p = _write(tmp_path / "t.csv", 'id,text\na,one\n\nb,two,extra\nc,"x"y\nd,four\n')
    rows = list(iter_csv_rows(p, strict=True))
    assert rows[0] == (2, {"id": "a", "text": "one"})
    line, bad = rows[1]
    assert line == 4 and isinstance(bad, BadCsvRow) and isinstance(bad, str)
    assert "3 fields, the header has 2" in bad and bad.fields == ["b", "two", "extra"]
    # a row the csv module refuses is a bad row without fields, and reading goes on
    assert rows[2][0] == 5 and isinstance(rows[2][1], BadCsvRow) and rows[2][1].fields is None
    assert rows[2][1].startswith("CSV error") and rows[3] == (6, {"id": "d", "text": "four"})


def test_multi_row_header_is_flattened(tmp_path):
    p = _write(tmp_path / "t.csv", ",album\nid,title\n1,x\n")
    assert list(iter_csv_rows(p, header_rows=2)) == [(3, {"id": "1", "album.title": "x"})]


def test_required_columns_and_empty_files(tmp_path):
    p = _write(tmp_path / "t.csv", "id,text\n1,x\n")
    with pytest.raises(CsvHeaderError, match=r"lacks column\(s\) \['caption'\]"):
        list(iter_csv_rows(p, required=("id", "caption")))
    empty = _write(tmp_path / "e.csv", "")
    assert list(iter_csv_rows(empty)) == []
    with pytest.raises(CsvHeaderError, match="is empty"):
        list(iter_csv_rows(empty, allow_empty=False))
