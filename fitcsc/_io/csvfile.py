"""Low-level CSV reading shared by every reader (tidy, regimen, NONMEM, drug catalogue).

`read_csv_rows` turns a delimited text file into a header and line-numbered rows,
refusing with one-line errors everything that is not a well-formed table; the `CsvRows`
it returns parses fields with errors that name file, line and column.

Accepted with a `DataWarning` (legitimate, but not the documented format): UTF-16 text
with a byte-order mark (Excel's "Unicode text"), and a header separated by tabs or
semicolons instead of commas (then a decimal comma, ``12,5``, reads as 12.5). UTF-8 with
or without a byte-order mark, CRLF or CR line ends and blank lines are accepted silently.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import pathlib
import re
import warnings

from .._errors import DataWarning, FitcscInputError

_DECIMAL_COMMA = re.compile(r"^[+-]?[0-9]+,[0-9]+([eE][+-]?[0-9]+)?$")
_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon"}


@dataclasses.dataclass(frozen=True)
class CsvRows:
    """A validated CSV: ``header`` names and ``rows`` of ``(line, fields)``.

    ``error`` is the `FitcscInputError` subclass raised by `fail`, `number`, `integer`
    and `columns`, so each reader refuses with its own error type.
    """

    path: str
    header: tuple[str, ...]
    rows: list[tuple[int, list[str]]]  # (1-based line of the record's start, fields)
    error: type[FitcscInputError]
    delimiter: str = ","
    header_line: int = 1

    def columns(self, required, *, fold_case=False, expected=None) -> dict[str, int]:
        """Index of every column; raise naming the first missing ``required`` one.

        With ``fold_case`` names match in any case: the index holds each header name in
        upper case and each required name as given; two columns that differ only in case
        and match a required one are refused as ambiguous.
        """
        key = (lambda s: s.upper()) if fold_case else (lambda s: s)
        index: dict[str, int] = {}
        for j, name in enumerate(self.header):
            first = index.setdefault(key(name), j)
            if first != j and key(name) in {key(r) for r in required}:
                raise self.error(
                    "two columns differ only in case",
                    file=self.path,
                    row=self.header_line,
                    column=name,
                    expected="one column per name (names match in any case)",
                    value=f"columns {first + 1} and {j + 1}",
                )
        for name in required:
            if key(name) not in index:
                raise self.error(
                    f"missing required column{_column_hint(name, self.header)}",
                    file=self.path,
                    row=self.header_line,
                    column=name,
                    expected=expected or "a header with columns " + ", ".join(required),
                    value=self.delimiter.join(self.header),
                )
            index[name] = index[key(name)]
        return index

    def fail(self, message, line, column=None, expected=None, value=None):
        return self.error(
            message, file=self.path, row=line, column=column, expected=expected, value=value
        )

    def number(self, line, column, text, expected, *, default=None):
        """Parse a finite float; ``default`` (if given) replaces an empty field."""
        t = text.strip()
        if t == "" and default is not None:
            return default
        if self.delimiter != "," and _DECIMAL_COMMA.match(t):
            t = t.replace(",", ".")  # a decimal comma in a semicolon or tab separated file
        try:
            x = float(t)
        except ValueError:
            msg = "missing value" if t == "" else "not a number"
            if _DECIMAL_COMMA.match(t):
                msg = "not a number (a decimal comma in a comma-separated file: write 12.5)"
            raise self.fail(msg, line, column, expected, text) from None
        if not math.isfinite(x):
            raise self.fail("not a finite number", line, column, expected, text)
        return x

    def integer(self, line, column, text, expected, *, default=None):
        x = self.number(line, column, text, expected, default=default)
        if x != int(x):
            raise self.fail("not an integer", line, column, expected, text)
        return int(x)


# Column names users write for the required ones: named in the refusal as a hint.
_LOOKALIKES = {
    "volume_mm3": ("vol", "tv", "size"),
    "day": ("time", "day", "week", "hour", "date"),
    "subject": ("id", "mouse", "animal", "subj", "patient"),
    "arm": ("group", "treatment", "arm"),
    "study": ("study", "experiment", "model"),
}


def _column_hint(name, header) -> str:
    """A parenthesised hint for a missing required column ``name``, or ""."""
    if len(header) == 1 and any(c in header[0] for c in ";\t|"):
        return " (the header looks like it is not comma-separated)"
    stems = _LOOKALIKES.get(name.lower(), ())
    near = [h for h in header if h.lower() != name.lower()
            and any(h.lower().startswith(s) or h.lower().endswith(s) for s in stems)]
    if not near:
        return ""
    return (f" (is {near[0]!r} it? rename it {name!r} after checking its unit"
            + (": volumes in mm3, times in days)" if name in ("volume_mm3", "day") else ")"))


def _decode(raw: bytes, file: str, error):
    """The text of ``raw``: UTF-8 (optional BOM), or UTF-16 with a BOM (warned)."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise error("not UTF-16 text after a UTF-16 byte-order mark", file=file,
                        expected="a UTF-8 CSV text file (re-save it as 'CSV UTF-8')",
                        value=raw[e.start:e.end + 3]) from None
        warnings.warn(f"{file}: read as UTF-16 text (it starts with a UTF-16 byte-order "
                      "mark); UTF-8 is the documented encoding", DataWarning, stacklevel=3)
        return text
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise error(
            "not a text file (it contains NUL bytes)",
            file=file,
            row=raw.count(b"\n", 0, nul) + 1,
            expected="a UTF-8 CSV text file",
            value=raw[:8],
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(
            "not UTF-8 text",
            file=file,
            row=raw.count(b"\n", 0, e.start) + 1,
            expected="a UTF-8 CSV text file (re-save it as 'CSV UTF-8')",
            value=raw[e.start : e.end + 3],
        ) from None


def _delimiter(text: str) -> str:
    """``","``, or tab / semicolon when the first non-blank line has no comma but one
    of them."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if "," in first:
        return ","
    for d in ("\t", ";"):
        if d in first:
            return d
    return ","


def read_csv_rows(path, error: type[FitcscInputError], *, comment_prefix=None) -> CsvRows:
    """Read a comma-separated UTF-8 file into a header and line-numbered rows.

    Refuses (with ``error``): a missing file, a directory, unreadable or non-text bytes
    (NUL, not UTF-8), an empty file, a header without rows, duplicate column names,
    malformed quoting, and rows whose field count differs from the header's. Warns
    (`DataWarning`) and reads: UTF-16 with a byte-order mark; a tab- or semicolon-
    separated header (that delimiter is then used for every line).
    """
    p = pathlib.Path(path)
    file = str(path)
    if not p.exists():
        raise error("file not found", file=file, expected="an existing CSV file")
    if p.is_dir():
        raise error("is a directory", file=file, expected="a CSV file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise error(f"cannot read file ({e.strerror})", file=file) from None
    text = _decode(raw, file, error)
    delimiter = _delimiter(text)
    if delimiter != ",":
        warnings.warn(f"{file}: read as {_DELIMITER_NAMES[delimiter]}-separated (its header "
                      f"has no comma); a decimal comma reads as a decimal point",
                      DataWarning, stacklevel=2)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    header_line = 1
    rows: list[tuple[int, list[str]]] = []
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise error(
                f"malformed CSV ({e})",
                file=file,
                row=start,
                expected="comma-separated fields with balanced double quotes",
            ) from None
        line, start = start, reader.line_num + 1
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        if header is None:
            header, header_line = [f.strip() for f in fields], line
            continue
        if comment_prefix and fields[0].lstrip().startswith(comment_prefix):
            continue
        if len(fields) != len(header):
            raise error(
                f"row has {len(fields)} fields but the header has {len(header)}",
                file=file,
                row=line,
                expected=f"{len(header)} {_DELIMITER_NAMES[delimiter]}-separated fields",
                value=delimiter.join(fields)[:80],
            )
        rows.append((line, fields))
    if header is None:
        raise error("file is empty", file=file, row=1, expected="a header line and data rows")
    seen: dict[str, int] = {}
    for j, name in enumerate(header):
        if name in seen:
            raise error(
                "duplicate column name",
                file=file,
                row=header_line,
                column=name,
                expected="distinct column names",
                value=f"columns {seen[name] + 1} and {j + 1}",
            )
        seen[name] = j
    if not rows:
        raise error(
            "no data rows after the header",
            file=file,
            row=header_line + 1,
            expected="at least one data row",
        )
    return CsvRows(file, tuple(header), rows, error, delimiter, header_line)


def relocate_error(err: FitcscInputError, file, line, error=None, columns=None):
    """The same refusal as ``err`` with ``file`` and ``line`` filled in."""
    where = [] if err.file is None else [err.file]
    where += [] if err.row is None else [f"line {err.row}"]
    where += [] if err.column is None else [f"column '{err.column}'"]
    text = str(err)
    prefix = ", ".join(where)
    if prefix and text.startswith(prefix + ": "):
        text = text[len(prefix) + 2 :]
    tail = ("" if err.expected is None else f"; expected {err.expected}") + (
        "" if err.value is None else f", got {err.value!r}"
    )
    if tail and text.endswith(tail):
        text = text[: -len(tail)]
    column = (columns or {}).get(err.column, err.column)
    return (error or type(err))(
        text, file=str(file), row=line, column=column, expected=err.expected, value=err.value
    )
