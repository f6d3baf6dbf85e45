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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class CsvHeaderError(ValueError):
    """The header row(s) of a CSV file cannot be parsed, are missing, or lack a required column."""


class BadCsvRow(str):
    """Why a data row is bad (the message is the string itself), with the row's ``fields`` when the csv
    module could split it (a wrong field count) so that the caller can name the row (e.g. by its first
    field); ``None`` when it could not."""

    fields: list[str] | None

    def __new__(cls, message: str, fields: list[str] | None = None) -> BadCsvRow:
        self = super().__new__(cls, message)
        self.fields = fields
        return self


def iter_csv_rows(
    path: str | Path, header_rows: int = 1, *, required: Sequence[str] = (), allow_empty: bool = True,
    **reader_kwargs: Any,
) -> Iterator[tuple[int, dict[str, str] | BadCsvRow]]:
    """(line number, row dict or why the row is bad) for each non-blank data row of a CSV with a header.

    A multi-row header (``header_rows > 1``, e.g. FMA's ``tracks.csv``) is flattened column by
    column, joining the non-empty parts with "." (``album`` + ``title`` -> ``album.title``). A row
    the csv module cannot parse, or whose field count differs from the header's, comes back as a
    :class:`BadCsvRow`. An empty file yields nothing, or is a :class:`CsvHeaderError` when
    ``allow_empty`` is false; so is a header that lacks a ``required`` column.
    """
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, **reader_kwargs)
        rows = []
        try:
            for _ in range(header_rows):
                rows.append(next(reader))
        except StopIteration:
            if allow_empty:
                return
            raise CsvHeaderError(f"{path} is empty") from None
        except csv.Error as e:
            raise CsvHeaderError(f"{path}: cannot parse the CSV header: {e}") from e
        width = max(len(r) for r in rows)
        header = []
        for c in range(width):
            parts = [r[c].lstrip("\ufeff").strip() for r in rows if c < len(r)]
            header.append(".".join(p for p in parts if p))
        absent = [c for c in required if c not in header]
        if absent:
            raise CsvHeaderError(f"{path} lacks column(s) {absent}")
        while True:
            line_before = reader.line_num
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield line_before + 1, BadCsvRow(f"CSV error: {e}")
                if reader.line_num == line_before:  # pragma: no cover - no progress: stop rather than loop
                    return
                continue
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                yield reader.line_num, BadCsvRow(f"{len(row)} fields, the header has {len(header)} (unquoted comma?)", row)
                continue
            yield reader.line_num, dict(zip(header, row, strict=True))
