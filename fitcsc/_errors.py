"""Errors raised at the boundary, on concrete values, before anything is traced."""

from __future__ import annotations


class FitcscInputError(ValueError):
    """Bad user input: one line naming file, column (or TOML key), row, expectation and
    value.

    ``row`` is the 1-based line number in the file as a text editor shows it (the
    header is line 1), so that a user can jump straight to it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
        expected: str | None = None,
        value: object = None,
        key: str | None = None,
    ):
        self.file = file
        self.key = key
        self.column = column
        self.row = row
        self.expected = expected
        self.value = value
        parts = []
        if file is not None:
            parts.append(f"{file}")
        if row is not None:
            parts.append(f"line {row}")
        if column is not None:
            parts.append(f"column '{column}'")
        if key is not None:  # a key of a TOML file
            parts.append(f"key '{key}'")
        where = ", ".join(parts)
        text = f"{where}: {message}" if where else message
        if expected is not None:
            text += f"; expected {expected}"
        if value is not None:
            text += f", got {value!r}"
        super().__init__(text)


class DataError(FitcscInputError):
    """A tidy tumour-volume file or NONMEM event file was refused."""


class RegimenError(FitcscInputError):
    """A regimen table (or a regimen built in code) was refused."""


class CatalogueError(FitcscInputError):
    """A user drug catalogue file (CSV or TOML) was refused."""


class DataWarning(UserWarning):
    """Input that is legitimate but worth a look (resolved duplicates, a subject with too
    few points to fit, a drug class assumed for an unknown drug, a non-comma delimiter).

    The message is one line naming file, column and rows where they apply. The command
    line prints each as ``fitcsc: warning: <message>``.
    """
