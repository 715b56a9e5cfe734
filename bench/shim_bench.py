# Shim encoding speed, timed in Python with timeit (medians of 5 runs): the shim's Arrow IPC
# encoding of 1M rows x (int64, float64, utf8, bool), from a dict of lists and from a list of row
# dicts, paired with pickle.dumps and json.dumps of the same rows; and (issue 20) one column of 1M
# Decimals, of 1M lists of 3 ints and of 1M lists of 2 strings, each paired with pickle.dumps of the
# same column. Run with the real python3:
#   python3 bench/shim_bench.py [ROWS] [--tsv]
# ShimBench.cs runs it (--tsv) and writes every case into the report.
import os
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shim"))
import arrow_ipc  # noqa: E402


def make_columns(n):
    return {
        "id": list(range(n)),
        "price": [i * 0.25 for i in range(n)],
        "name": ["item-%d" % i for i in range(n)],
        "flag": [i % 3 == 0 for i in range(n)],
    }


def make_typed(n):
    """Issue 20's columns: decimal128(10, 2), list<int64>, list<utf8>."""
    from decimal import Decimal
    return {
        "decimal": {"d": [Decimal("%d.%02d" % (i, i % 100)) for i in range(n)]},
        "ints": {"l": [[i, i + 1, i + 2] for i in range(n)]},
        "strs": {"l": [["tag%d" % (i % 50), "x%d" % i] for i in range(n)]},
    }


def make_rows(columns):
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*columns.values())]


def encode(table):
    """What the shim does for one table, minus the socket: every message, every chunk."""
    total = 0
    for size, chunks in arrow_ipc.table_messages(table, "output"):
        for chunk in chunks:
            total += memoryview(chunk).nbytes
        assert total == size
    return total


SETUP = ("from shim_bench import make_columns, make_rows, make_typed, encode; import pickle, json; "
         "cols = make_columns(N); rows = make_rows(cols); typed = make_typed(N)")

CASES = [
    ("shim encode, dict of lists", "encode(cols)"),
    ("shim encode, list of row dicts", "encode(rows)"),
    ("pickle.dumps(rows)", "pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)"),
    ("json.dumps(rows)", "json.dumps(rows)"),
    ("pickle.dumps(dict of lists)", "pickle.dumps(cols, protocol=pickle.HIGHEST_PROTOCOL)"),
    ("json.dumps(dict of lists)", "json.dumps(cols)"),
    ("shim encode, decimal column", "encode(typed['decimal'])"),
    ("pickle.dumps(decimal column)", "pickle.dumps(typed['decimal'], protocol=pickle.HIGHEST_PROTOCOL)"),
    ("shim encode, list<int64> column", "encode(typed['ints'])"),
    ("pickle.dumps(list<int64> column)", "pickle.dumps(typed['ints'], protocol=pickle.HIGHEST_PROTOCOL)"),
    ("shim encode, list<utf8> column", "encode(typed['strs'])"),
    ("pickle.dumps(list<utf8> column)", "pickle.dumps(typed['strs'], protocol=pickle.HIGHEST_PROTOCOL)"),
]


def main():
    args = [a for a in sys.argv[1:] if a != "--tsv"]
    tsv = "--tsv" in sys.argv  # "case<TAB>seconds" lines, for ShimBench.cs
    n = int(args[0]) if args else 1_000_000
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    setup = SETUP.replace("N", str(n))
    if not tsv:
        print("python %s, %d rows x (int64, float64, utf8, bool); median of 5 (timeit)" % (sys.version.split()[0], n))
        print("%-34s %10s %14s" % ("case", "seconds", "rows/s"))
    for name, stmt in CASES:
        t = timeit.Timer(stmt, setup=setup)
        runs = sorted(t.repeat(repeat=5, number=1))
        median = runs[len(runs) // 2]
        if tsv:
            print("%s\t%.6f" % (name, median))
        else:
            print("%-34s %10.3f %14s" % (name, median, "{:,.0f}".format(n / median)))


if __name__ == "__main__":
    main()
