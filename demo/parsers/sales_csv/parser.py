"""Sales exports from a point-of-sale system, as CSV files with the mess real exports have.

Each file has a byte-order mark, a title line before the header, amounts such as "$1,234.50",
dates in three formats, "N/A" and blank cells for missing values, and the odd broken row. Good
rows go to the `sales` table with real types; rows that cannot be read go to `sales_rejects`
with the reason, so nothing is lost silently.
"""
import csv
import datetime as dt
import re

from casparian import Output

name = "sales_csv"
version = "1.0.0"

_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%b %d %Y")
_MISSING = {"", "n/a", "na", "null", "-"}


def _text(value):
    value = (value or "").strip()
    return None if value.lower() in _MISSING else value


def _amount(value):
    value = _text(value)
    if value is None:
        return None
    negative = value.startswith("(") and value.endswith(")")
    digits = re.sub(r"[^0-9.\-]", "", value)
    if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", digits):
        raise ValueError(f"unrecognised amount {value!r}")
    return -float(digits) if negative else float(digits)


def _date(value):
    value = _text(value)
    if value is None:
        return None
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(value, fmt).date()
        except ValueError:
            pass
    raise ValueError(f"unrecognised date {value!r}")


def _paid(value):
    value = (_text(value) or "").lower()
    if value in ("yes", "y", "true", "1", "paid"):
        return True
    if value in ("no", "n", "false", "0", "unpaid"):
        return False
    if value == "":
        return None
    raise ValueError(f"unrecognised paid flag {value!r}")


def _row(row):
    return (
        int(row["order_id"]),
        _date(row["date"]),
        _text(row["store"]),
        _text(row["customer"]),
        _amount(row["amount"]),
        _paid(row["paid"]),
    )


def parse(path):
    columns = ("order_id", "order_date", "store", "customer", "amount", "paid")
    sales = {c: [] for c in columns}
    rejects = {"line": [], "reason": [], "raw": []}
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    # The export starts with a title such as "Sales export - store 12" before the header.
    start = next(i for i, line in enumerate(lines) if line.lower().startswith("order_id"))
    reader = csv.DictReader(lines[start:])
    for row in reader:
        number = start + reader.line_num  # the file's own line number, blank lines included
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        try:
            values = _row(row)
        except (ValueError, TypeError) as e:
            rejects["line"].append(number)
            rejects["reason"].append(f"{type(e).__name__}: {e}")
            rejects["raw"].append(lines[number - 1])
            continue
        for column, value in zip(columns, values):
            sales[column].append(value)
    print(f"{len(sales['order_id'])} sales, {len(rejects['line'])} rejected")
    yield Output("sales", sales)
    yield Output("sales_rejects", rejects)
