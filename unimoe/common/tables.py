"""CSV tables read row by row, so that one bad line never spoils the rest of the file.

Corpus metadata (ingestion) and benchmark item lists (evaluation) are CSV files with a header that
are written by hand or by other tools: a row may hold an unquoted comma, a stray quote or bytes that
are not UTF-8. The file is read with ``errors="surrogateescape"`` (see :mod:`unimoe.common.text`)
and each data row comes back as a dict or as the reason it cannot be used, with its line number, so
the caller can account for every row (lhotse's recipes and VERSA's list readers stop at the first
bad line instead).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator


class CsvHeaderError(ValueError):
    """The header row(s) of a CSV file cannot be parsed."""


def iter_csv_rows(
    path: str | Path, header_rows: int = 1, **reader_kwargs: Any
) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line number, row dict or why the row is bad) for each non-blank data row of a CSV with a header.

    A multi-row header (``header_rows > 1``, e.g. FMA's ``tracks.csv``) is flattened column by
    column, joining the non-empty parts with "." (``album`` + ``title`` -> ``album.title``). A row
    the csv module cannot parse, or whose field count differs from the header's, comes back as a
    message. An empty file yields nothing.
    """
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, **reader_kwargs)
        rows = []
        try:
            for _ in range(header_rows):
                rows.append(next(reader))
        except StopIteration:
            return
        except csv.Error as e:
            raise CsvHeaderError(f"{path}: cannot parse the CSV header: {e}") from e
        width = max(len(r) for r in rows)
        header = []
        for c in range(width):
            parts = [r[c].lstrip("\ufeff").strip() for r in rows if c < len(r)]
            header.append(".".join(p for p in parts if p))
        while True:
            line_before = reader.line_num
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield line_before + 1, f"CSV error: {e}"
                if reader.line_num == line_before:  # pragma: no cover - no progress: stop rather than loop
                    return
                continue
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                yield reader.line_num, f"{len(row)} fields, the header has {len(header)} (unquoted comma?)"
                continue
            yield reader.line_num, dict(zip(header, row, strict=True))
