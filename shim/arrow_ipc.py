# Arrow IPC stream writer for the Casparian guest shim (SPEC section 3, 4), standard library only.
#
# A table becomes one or more bridge messages. Each message is a complete Arrow IPC stream:
#
#   schema message | record batch message ... | end-of-stream marker (FF FF FF FF 00 00 00 00)
#
# and every IPC message is framed as FF FF FF FF, int32 LE metadata length (padded so the body
# starts 8-byte aligned), the flatbuffer metadata, then the body: each buffer padded to 8 bytes.
# The topic travels in the schema's custom metadata under the key "casparian.topic".
#
# Two passes per table, so a table is never held encoded in memory as a whole: plan() computes
# every batch's exact size arithmetically (counts of None, UTF-8 lengths) and builds its metadata,
# then the bodies are encoded and handed to the socket one batch at a time. The bridge frame
# needs the stream length N before the first byte; the plan gives it without encoding anything.
# Large tables are cut into batches of at most BATCH_ROWS rows and about BATCH_BYTES bytes, and
# into several messages when one would exceed the bridge's message limit.
#
# Value work happens in C wherever a C-level call does it: array('q'/'d'/'i') over lists or
# maps, bytes.join, str.join, dict.get as a None-replacing map, and validity bitmaps packed through
# int(bits, 2).to_bytes (a little-endian integer whose bit i is row i is exactly Arrow's LSB-first
# bitmap); decimals as int.to_bytes(16) of their unscaled value masked to 128 bits.
#
# What each Python and pandas value becomes (decimal128, list<T>, JSON text, time64, duration,
# dictionary, the fallbacks to text and the widening lattice) is docs/types.md; ListColumn applies it.
import struct
import sys
from array import array
from datetime import date, datetime, time, timedelta, timezone
from itertools import accumulate, chain, repeat
from operator import and_, attrgetter, floordiv, is_not, itemgetter, sub

TOPIC_KEY = "casparian.topic"
BATCH_ROWS = 65536
BATCH_BYTES = 32 << 20
DEFAULT_MAX_MESSAGE = 100 << 20

# ---------------------------------------------------------------------------------------------
# The Arrow format's flatbuffer schema, as far as this writer uses it: each constant is a field id
# (a vtable slot: the field's position in its table in Message.fbs / Schema.fbs, counting from 0;
# a union field takes two slots, its `_type` byte first) or an enum value, named
# TABLE_FIELD so a reader can follow the writer without the .fbs files open.

# Message.fbs `table Message { version; header: MessageHeader; bodyLength; custom_metadata }`.
MESSAGE_VERSION, MESSAGE_HEADER_TYPE, MESSAGE_HEADER, MESSAGE_BODY_LENGTH = 0, 1, 2, 3
METADATA_V5 = 4  # Schema.fbs `enum MetadataVersion`
HEADER_SCHEMA, HEADER_DICTIONARY_BATCH, HEADER_RECORD_BATCH = 1, 2, 3  # Message.fbs `union MessageHeader`
# Message.fbs `table RecordBatch { length; nodes: [FieldNode]; buffers: [Buffer]; compression }`.
RECORD_BATCH_LENGTH, RECORD_BATCH_NODES, RECORD_BATCH_BUFFERS = 0, 1, 2
# Message.fbs `table DictionaryBatch { id; data: RecordBatch; isDelta }`.
DICTIONARY_BATCH_ID, DICTIONARY_BATCH_DATA = 0, 1

# Schema.fbs `table Schema { endianness; fields; custom_metadata; features }`.
SCHEMA_ENDIANNESS, SCHEMA_FIELDS, SCHEMA_CUSTOM_METADATA = 0, 1, 2
ENDIANNESS_LITTLE = 0
# Schema.fbs `table Field { name; nullable; type: Type; dictionary; children; custom_metadata }`.
FIELD_NAME, FIELD_NULLABLE, FIELD_TYPE_TYPE, FIELD_TYPE, FIELD_DICTIONARY, FIELD_CHILDREN, FIELD_CUSTOM_METADATA = range(7)
# Schema.fbs `table DictionaryEncoding { id; indexType: Int; isOrdered; dictionaryKind }`.
DICTIONARY_ENCODING_ID, DICTIONARY_ENCODING_INDEX_TYPE, DICTIONARY_ENCODING_IS_ORDERED = 0, 1, 2
KEY_VALUE_KEY, KEY_VALUE_VALUE = 0, 1  # Schema.fbs `table KeyValue { key; value }`
INT_BIT_WIDTH, INT_IS_SIGNED = 0, 1  # Schema.fbs `table Int { bitWidth; is_signed }`
FLOATING_POINT_PRECISION = 0  # Schema.fbs `table FloatingPoint { precision }`
PRECISION_DOUBLE = 2  # Schema.fbs `enum Precision { HALF, SINGLE, DOUBLE }`
TIMESTAMP_UNIT, TIMESTAMP_TIMEZONE = 0, 1  # Schema.fbs `table Timestamp { unit; timezone }`
TIME_UNIT_MICROSECOND = 2  # Schema.fbs `enum TimeUnit { SECOND, MILLISECOND, MICROSECOND, NANOSECOND }`
DATE_UNIT = 0  # Schema.fbs `table Date { unit }`
DATE_UNIT_DAY = 0  # Schema.fbs `enum DateUnit { DAY, MILLISECOND }`
DECIMAL_PRECISION, DECIMAL_SCALE, DECIMAL_BIT_WIDTH = 0, 1, 2  # Schema.fbs `table Decimal { precision; scale; bitWidth }`
TIME_UNIT, TIME_BIT_WIDTH = 0, 1  # Schema.fbs `table Time { unit; bitWidth }`
DURATION_UNIT = 0  # Schema.fbs `table Duration { unit }`

# Schema.fbs `union Type`: the type ids a Field's type_type holds.
TYPE_NULL, TYPE_INT, TYPE_FLOATING_POINT, TYPE_BINARY, TYPE_UTF8, TYPE_BOOL = 1, 2, 3, 4, 5, 6
TYPE_DECIMAL, TYPE_DATE, TYPE_TIME, TYPE_TIMESTAMP, TYPE_LIST, TYPE_DURATION = 7, 8, 9, 10, 12, 18

# Column kinds and their Arrow type ids. JSON is utf8 whose field carries the canonical extension
# name arrow.json (the Parquet writer turns it into the JSON logical type); DICTIONARY is utf8 values
# behind int32 indices (pandas category).
NULL, INT64, FLOAT64, BOOL, UTF8, BINARY, TIMESTAMP, DATE32, DECIMAL, TIME64, DURATION, LIST, JSON, DICTIONARY = range(14)
KIND_NAMES = ("null", "int64", "float64", "bool", "utf8", "binary", "timestamp[us]", "date32", "decimal128",
              "time64[us]", "duration[us]", "list", "json", "dictionary<int32, utf8>")
_TYPE_ID = (TYPE_NULL, TYPE_INT, TYPE_FLOATING_POINT, TYPE_BOOL, TYPE_UTF8, TYPE_BINARY, TYPE_TIMESTAMP, TYPE_DATE,
            TYPE_DECIMAL, TYPE_TIME, TYPE_DURATION, TYPE_LIST, TYPE_UTF8, TYPE_UTF8)
JSON_METADATA = (("ARROW:extension:name", "arrow.json"), ("ARROW:extension:metadata", ""))
DECIMAL_MAX_PRECISION = 38

_LITTLE = sys.byteorder == "little"
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_CONT = b"\xff\xff\xff\xff"
_BITS = bytes.maketrans(b"\x00\x01", b"01")
_NoneType = type(None)
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_US = timedelta(microseconds=1)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_DECIMAL_MAX = 10 ** DECIMAL_MAX_PRECISION - 1
_INT128_MASK = (1 << 128) - 1  # x & mask: the two's complement of x in 128 bits, as an unsigned int
_EPOCH_DATE = date(1970, 1, 1)
_EXACT_FLOAT_INT = 1 << 53
_ROWS_CHUNK = 4096
_tzinfo = attrgetter("tzinfo")

# dict.get(v, v) maps None to a filler and every other (hashable) value to itself, in C.
_NONE_0 = {None: 0}.get
_NONE_0F = {None: 0.0}.get
_NONE_FALSE = {None: False}.get
_NONE_EMPTY = {None: ""}.get
_NONE_EMPTY_B = {None: b""}.get
_NONE_EPOCH = {None: _EPOCH}.get
_NONE_EPOCH_UTC = {None: _EPOCH_UTC}.get
_NONE_DATE = {None: date(1970, 1, 1)}.get
_NONE_TIME = {None: time()}.get
_NONE_TD = {None: timedelta(0)}.get


class TableError(ValueError):
    """A table the shim cannot encode: the message is shown to the parser author as is."""


# ---------------------------------------------------------------------------------------------
# Flatbuffers, written front to back: a table's vtable, then the table, then what its offset
# fields point at (uoffsets must point forward, and they do). Positions are absolute in the
# buffer, which sits 8-byte aligned in the stream, so aligning here aligns in the stream.

class _T:
    """A flatbuffer table: fields is a list of (slot, format, value); format 'o' is an offset."""
    __slots__ = ("fields",)

    def __init__(self, *fields):
        self.fields = fields


class _Vec:
    """A vector of offsets to tables or strings."""
    __slots__ = ("items",)

    def __init__(self, items):
        self.items = items


class _Structs:
    """A vector of 16-byte structs (FieldNode, Buffer): raw little-endian bytes."""
    __slots__ = ("data", "count")

    def __init__(self, data, count):
        self.data = data
        self.count = count


_SIZE = {"q": 8, "i": 4, "o": 4, "h": 2, "B": 1}


def _pad_to(buf, align, rem=0):
    buf += b"\0" * ((rem - len(buf)) % align)


def _write(buf, obj):
    if isinstance(obj, _T):
        fields = sorted(obj.fields, key=lambda f: -_SIZE[f[1]])
        nslots = max((f[0] for f in fields), default=-1) + 1
        _pad_to(buf, 2)
        vt = len(buf)
        vt_size = 4 + 2 * nslots
        t = vt + vt_size
        t += (4 - t) % 8 if any(_SIZE[f[1]] == 8 for f in fields) else -t % 4
        entries = [0] * nslots
        pos = t + 4
        placed = []
        for slot, fmt, value in fields:
            size = _SIZE[fmt]
            pos += -pos % size
            entries[slot] = pos - t
            placed.append((pos, fmt, value))
            pos += size
        buf += b"\0" * (pos - vt)
        struct.pack_into("<HH%dH" % nslots, buf, vt, vt_size, pos - t, *entries)
        struct.pack_into("<i", buf, t, t - vt)
        children = []
        for p, fmt, value in placed:
            if fmt == "o":
                children.append((p, value))
            else:
                struct.pack_into("<" + fmt, buf, p, value)
        for p, child in children:
            struct.pack_into("<I", buf, p, _write(buf, child) - p)
        return t
    if isinstance(obj, (str, bytes)):
        data = obj.encode("utf-8") if isinstance(obj, str) else obj
        _pad_to(buf, 4)
        p = len(buf)
        buf += struct.pack("<I", len(data)) + data + b"\0"
        return p
    if isinstance(obj, _Vec):
        _pad_to(buf, 4)
        p = len(buf)
        buf += struct.pack("<I", len(obj.items)) + b"\0" * (4 * len(obj.items))
        for i, item in enumerate(obj.items):
            slot = p + 4 + 4 * i
            struct.pack_into("<I", buf, slot, _write(buf, item) - slot)
        return p
    if isinstance(obj, _Structs):
        _pad_to(buf, 8, 4)
        p = len(buf)
        buf += struct.pack("<I", obj.count) + obj.data
        return p
    raise TypeError(obj)


def _message(header_type, header, body_length):
    """One encapsulated IPC message prefix: continuation, length, flatbuffer Message padded to 8."""
    buf = bytearray(4)
    root = _T((MESSAGE_VERSION, "h", METADATA_V5), (MESSAGE_HEADER_TYPE, "B", header_type), (MESSAGE_HEADER, "o", header),
              (MESSAGE_BODY_LENGTH, "q", body_length))
    struct.pack_into("<I", buf, 0, _write(buf, root))
    _pad_to(buf, 8)
    return _CONT + struct.pack("<i", len(buf)) + bytes(buf)


def _arrow_type(column):
    kind = column.kind
    tz = column.tz
    if kind == INT64:
        return _T((INT_BIT_WIDTH, "i", 64), (INT_IS_SIGNED, "B", 1))
    if kind == FLOAT64:
        return _T((FLOATING_POINT_PRECISION, "h", PRECISION_DOUBLE))
    if kind == TIMESTAMP:
        unit = (TIMESTAMP_UNIT, "h", TIME_UNIT_MICROSECOND)
        return _T(unit, (TIMESTAMP_TIMEZONE, "o", tz)) if tz else _T(unit)
    if kind == DATE32:
        return _T((DATE_UNIT, "h", DATE_UNIT_DAY))
    if kind == DECIMAL:
        return _T((DECIMAL_PRECISION, "i", column.precision), (DECIMAL_SCALE, "i", column.scale), (DECIMAL_BIT_WIDTH, "i", 128))
    if kind == TIME64:
        return _T((TIME_UNIT, "h", TIME_UNIT_MICROSECOND), (TIME_BIT_WIDTH, "i", 64))
    if kind == DURATION:
        return _T((DURATION_UNIT, "h", TIME_UNIT_MICROSECOND))
    return _T()


def _key_values(pairs):
    return _Vec([_T((KEY_VALUE_KEY, "o", k), (KEY_VALUE_VALUE, "o", v)) for k, v in pairs])


def _field(column):
    kind = column.kind
    children = [_field(column.child)] if kind == LIST else []
    fields = [(FIELD_NAME, "o", column.name), (FIELD_NULLABLE, "B", 1), (FIELD_TYPE_TYPE, "B", _TYPE_ID[kind]),
              (FIELD_TYPE, "o", _arrow_type(column)), (FIELD_CHILDREN, "o", _Vec(children))]
    if kind == JSON:
        fields.append((FIELD_CUSTOM_METADATA, "o", _key_values(JSON_METADATA)))
    elif kind == DICTIONARY:
        index = _T((INT_BIT_WIDTH, "i", 32), (INT_IS_SIGNED, "B", 1))
        fields.append((FIELD_DICTIONARY, "o", _T((DICTIONARY_ENCODING_ID, "q", column.dictionary_id),
                                                 (DICTIONARY_ENCODING_INDEX_TYPE, "o", index),
                                                 (DICTIONARY_ENCODING_IS_ORDERED, "B", int(column.ordered)))))
    return _T(*fields)


def schema_message(columns, topic, extra_metadata=()):
    fields = _Vec([_field(c) for c in columns])
    meta = _key_values(((TOPIC_KEY, topic), *extra_metadata))
    schema = _T((SCHEMA_ENDIANNESS, "h", ENDIANNESS_LITTLE), (SCHEMA_FIELDS, "o", fields), (SCHEMA_CUSTOM_METADATA, "o", meta))
    return _message(HEADER_SCHEMA, schema, 0)


def _batch_message(rows, nodes, lengths, dictionary_id=None):
    """RecordBatch metadata for buffers of the given lengths, laid out 8-aligned in that order;
    wrapped in a DictionaryBatch when dictionary_id is given."""
    buffers = []
    offset = 0
    for n in lengths:
        buffers.append((offset, n))
        offset += n + (-n % 8)
    node_bytes = b"".join(struct.pack("<qq", n, nc) for n, nc in nodes)
    buf_bytes = b"".join(struct.pack("<qq", o, n) for o, n in buffers)
    rb = _T((RECORD_BATCH_LENGTH, "q", rows), (RECORD_BATCH_NODES, "o", _Structs(node_bytes, len(nodes))),
            (RECORD_BATCH_BUFFERS, "o", _Structs(buf_bytes, len(buffers))))
    if dictionary_id is not None:
        return _message(HEADER_DICTIONARY_BATCH, _T((DICTIONARY_BATCH_ID, "q", dictionary_id), (DICTIONARY_BATCH_DATA, "o", rb)), offset), offset
    return _message(HEADER_RECORD_BATCH, rb, offset), offset


def _pack_bits(flags):
    """One byte 0/1 per row -> Arrow bitmap (bit i of the little-endian integer is row i)."""
    n = len(flags)
    if n == 0:
        return b""
    return int(flags.translate(_BITS)[::-1], 2).to_bytes((n + 7) // 8, "little")


def _validity(values):
    return _pack_bits(bytes(map(is_not, values, repeat(None))))


def _utf8(strings):
    """(offsets, data) of a list of str with no None. Text that is not ASCII is encoded twice, whole
    (the data) and string by string with each bytes dropped at once (the offsets): cheaper than
    keeping a bytes per string to join. Lone surrogates take the slower per-string "replace" path."""
    joined = "".join(strings)
    if joined.isascii():
        return array("i", accumulate(map(len, strings), initial=0)), joined.encode("ascii")
    try:
        return array("i", accumulate(map(len, map(str.encode, strings)), initial=0)), joined.encode("utf-8")
    except UnicodeEncodeError:
        encoded = list(map(str.encode, strings, repeat("utf-8"), repeat("replace")))
        return array("i", accumulate(map(len, encoded), initial=0)), b"".join(encoded)


def _utf8_length(strings):
    joined = "".join(strings)
    return len(joined) if joined.isascii() else len(joined.encode("utf-8", "replace"))


def _le(arr):
    if not _LITTLE:
        arr.byteswap()
    return arr


# ---------------------------------------------------------------------------------------------
# Columns from Python values. A column's kind is decided over all its values before the schema
# is written; plan and encode then work on one batch slice at a time.

def _safe_str(v):
    if type(v) is str:
        return v
    if isinstance(v, (dict, list, tuple)):
        text = json_text(v)
        if text is not None:
            return text
    try:
        return str(v)
    except Exception:
        if isinstance(v, int):  # more digits than sys.get_int_max_str_digits()
            with _any_int_digits():
                return str(v)
        try:
            return repr(v)
        except Exception:
            return "<unprintable %s>" % type(v).__name__


# Types whose str() is what _safe_str gives: a column of only these is converted in C. (str() of an
# int raises beyond sys.get_int_max_str_digits() digits; _to_str then converts again without that limit,
# as _safe_str does for one value.)
_PLAIN_STR = frozenset((int, float, bool, str, type(None)))


# Of those, types no two of whose values are equal unless their text is: ints and text mixed (codes
# such as "X-12") can go through a table of each distinct value's text. Not bool and float: 1, 1.0
# and True are one key of a dict but three texts.
_MEMO_STR = frozenset((int, str, type(None)))


def _to_str(values):
    try:
        return _to_str_once(values)
    except ValueError:
        with _any_int_digits():
            return _to_str_once(values)


def _to_str_once(values):
    types = set(map(type, values))
    if types <= _PLAIN_STR:
        # A column whose first batch's worth of rows holds each value twice on average converts each
        # distinct value once (str of an int costs more than a dict lookup); one of mostly distinct
        # values, value by value (then the look costs about a tenth of the conversion).
        head = values[:BATCH_ROWS]
        if types <= _MEMO_STR and 2 * len(set(head)) <= len(head):
            distinct = dict.fromkeys(values)
            text = dict(zip(distinct, map(str, distinct)))
            text[None] = None
            return list(map(text.__getitem__, values))
        if None not in values:
            return list(map(str, values))
        return [None if v is None else str(v) for v in values]
    return [None if v is None else _safe_str(v) for v in values]


def _to_int(values):
    return [None if v is None else int(v) for v in values]


def _to_float(values):
    return [None if v is None else float(v) for v in values]


def _to_bool(values):
    return [None if v is None else bool(v) for v in values]


def _to_bytes(values):
    return [None if v is None else bytes(v) for v in values]


_JSON_ENCODER = None


def json_text(value):
    """`value` as JSON text (json.dumps with default=str): keys that are not str, int, float, bool
    or None become str, NaN and infinities become null, ints keep every digit. None when it nests
    too deep to encode."""
    global _JSON_ENCODER
    if _JSON_ENCODER is None:
        import json
        _JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=str)
    try:
        try:
            return _JSON_ENCODER.encode(value)
        except (ValueError, TypeError):
            plain = _plain_json(value)
            try:
                return _JSON_ENCODER.encode(plain)
            except ValueError:
                with _any_int_digits():
                    return _JSON_ENCODER.encode(plain)
    except RecursionError:
        return None


class _any_int_digits:
    """Lifts Python's limit on the digits of an int turned into text (sys.set_int_max_str_digits,
    3.11 and later; 4300 digits by default) for one conversion. A parser's ints are its own values, and
    text is where ints too big for decimal128 go: without this one str() fails the job and a mixed
    column writes "<unprintable int>". Used only after a conversion failed, so the common path keeps
    the limit; before 3.11 there is no limit and the retry fails as the first try did."""

    def __enter__(self):
        self.old = getattr(sys, "get_int_max_str_digits", lambda: None)()
        if self.old is not None:
            sys.set_int_max_str_digits(0)

    def __exit__(self, *exc):
        if self.old is not None:
            sys.set_int_max_str_digits(self.old)


def _plain_json(v):
    if isinstance(v, dict):
        return {k if isinstance(k, (str, int, float, bool)) or k is None else str(k): _plain_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain_json(x) for x in v]
    if isinstance(v, float) and v - v != 0:  # NaN, inf
        return None
    return v


def _warn(message, *args):
    import logging
    logging.getLogger("casparian").warning(message, *args)


_EXACT = {int: INT64, float: FLOAT64, bool: BOOL, str: UTF8, bytes: BINARY, datetime: TIMESTAMP, date: DATE32,
          time: TIME64, timedelta: DURATION, list: LIST, tuple: LIST, dict: JSON}
_NORM = {INT64: _to_int, FLOAT64: _to_float, BOOL: _to_bool, UTF8: _to_str, BINARY: _to_bytes, TIMESTAMP: None, DATE32: None,
         DECIMAL: None, TIME64: None, DURATION: None, LIST: None, JSON: None}


def _kind_of(t):
    """The kind of a type that is not one of _EXACT: subclasses, numeric ABCs (numpy scalars),
    Decimal and UUID (recognised by name, so neither module is imported for columns without them)."""
    if issubclass(t, bool) or t.__name__ == "bool_":
        return BOOL
    if issubclass(t, str):
        return UTF8
    if issubclass(t, (bytes, bytearray, memoryview)):
        return BINARY
    if issubclass(t, datetime):
        return TIMESTAMP
    if issubclass(t, date):
        return DATE32
    if issubclass(t, time):
        return TIME64
    if issubclass(t, timedelta):
        return DURATION
    if issubclass(t, (list, tuple)):
        return LIST
    if issubclass(t, dict):
        return JSON
    names = {(c.__module__, c.__name__) for c in t.__mro__}
    if ("decimal", "Decimal") in names:
        return DECIMAL
    if ("uuid", "UUID") in names:
        return UTF8  # str(uuid): the canonical 8-4-4-4-12 form
    import numbers
    if issubclass(t, numbers.Integral):
        return INT64
    if issubclass(t, numbers.Real):
        return FLOAT64
    return None


def tz_name(tz, sample):
    """The Arrow timezone string for a tzinfo: an Olson name or +HH:MM."""
    if tz is timezone.utc:
        return "UTC"
    for attr in ("key", "zone"):  # zoneinfo, pytz
        name = getattr(tz, attr, None)
        if isinstance(name, str) and name:
            return name
    offset = tz.utcoffset(sample)
    if offset is None:
        return "UTC"
    if isinstance(tz, timezone) or type(tz).__name__ in ("tzutc", "tzoffset", "FixedOffset", "StaticTzInfo"):
        minutes = int(offset.total_seconds()) // 60
        if minutes == 0:
            return "UTC"
        sign = "+" if minutes >= 0 else "-"
        return "%s%02d:%02d" % (sign, abs(minutes) // 60, abs(minutes) % 60)
    return "UTC"


def _decimal_context():
    """Exact arithmetic for scaling decimals of up to 38 digits, whatever the parser did to the
    thread's context."""
    import decimal
    return decimal.Context(prec=2 * DECIMAL_MAX_PRECISION + 2, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def _exponent(d):
    return d.as_tuple().exponent


class ListColumn:
    """A column of Python values (a list or tuple), encoded slice by slice. The kind is decided over
    all values (docs/types.md has the lattice): one kind, or a lossless widening (int + float ->
    float64 within 2^53, int + Decimal -> decimal128), else text. A list column keeps its elements
    as a child ListColumn (`element` set: a nested list or dict there makes the parent JSON)."""
    __slots__ = ("name", "kind", "values", "nulls", "norm", "tz", "precision", "scale", "child", "offsets",
                 "element", "is_text_fallback", "packed", "bases")

    def __init__(self, name, values, element=False):
        if not isinstance(values, (list, tuple)):
            values = list(values)
        self.name = name
        self.values = values
        self.norm = None
        self.tz = None
        self.nulls = False
        self.element = element
        self.is_text_fallback = False
        self.packed = None
        self.kind = self._infer()

    def _infer(self):
        values = self.values
        types = set(map(type, values))
        if _NoneType in types:
            self.nulls = True
            types.discard(_NoneType)
        if not types:
            return NULL
        if len(types) == 1:
            kind = _EXACT.get(next(iter(types)))
            if kind is not None:
                return self._check(kind)
        kinds = {_EXACT.get(t) or _kind_of(t) for t in types}
        if len(kinds) == 1 and None not in kinds:
            kind = kinds.pop()
            self.norm = _NORM[kind]
            return self._check(kind)
        if kinds == {INT64, FLOAT64}:
            ints = [v for v in values if v is not None and _kind_of(type(v)) == INT64]
            if max(map(abs, ints)) <= _EXACT_FLOAT_INT:
                self.norm = _to_float
                return FLOAT64
        if kinds == {INT64, DECIMAL}:
            import decimal
            d = decimal.Decimal
            self.values = [v if v is None or isinstance(v, d) else d(int(v)) for v in values]
            return self._decimal()
        if kinds <= {LIST, JSON}:
            return self._json()
        return self._fallback()

    def _fallback(self):
        # Converted once here rather than per slice in both layout and buffers.
        self.values = _to_str(self.values)
        self.norm = None
        self.tz = None
        self.is_text_fallback = True
        return UTF8

    def _check(self, kind):
        values = self.values
        if kind == INT64:
            if not self.nulls and self.norm is None:
                # Packing checks the range in the same C pass, and encoding then slices the array.
                try:
                    self.packed = array("q", values)
                    return kind
                except OverflowError:
                    return self._big_int(min(values), max(values))
            # filter(None, …) drops None and 0; 0 is always in range.
            present = filter(None, values) if self.nulls else values
            lo = min(present, default=0)
            present = filter(None, values) if self.nulls else values
            hi = max(present, default=0)
            if lo < _INT64_MIN or hi > _INT64_MAX:
                return self._big_int(lo, hi)
        elif kind == TIMESTAMP:
            present = list(filter(None, values)) if self.nulls else values
            zones = set(map(_tzinfo, present))
            if len(zones) > 1 and None in zones:
                return self._fallback()  # naive and aware values together
            if zones != {None}:
                self.tz = tz_name(zones.pop(), present[0]) if len(zones) == 1 else "UTC"
        elif kind == TIME64:
            present = [v for v in values if v is not None] if self.nulls else values
            if set(map(_tzinfo, present)) != {None}:
                return self._fallback()  # Parquet TIME has no zone of its own
        elif kind == DECIMAL:
            return self._decimal()
        elif kind in (LIST, JSON):
            if self.element:
                return JSON  # nested in a list: the parent becomes JSON text, nothing to encode here
            return self._list() if kind == LIST else self._json()
        return kind

    def _big_int(self, lo, hi):
        if -_DECIMAL_MAX <= lo and hi <= _DECIMAL_MAX:
            self.precision, self.scale = DECIMAL_MAX_PRECISION, 0
            return DECIMAL
        _warn("column %r: integers beyond 38 digits do not fit decimal128(38, 0); written as text", self.name)
        return self._fallback()

    def _decimal(self):
        """decimal128(P, S) over the column: S the widest scale, P enough digits for the largest
        integer part plus S. Text (with a warning) when that exceeds 38 digits or a value is NaN or
        infinite."""
        import decimal
        values = self.values
        present = [v for v in values if v is not None] if self.nulls else values
        if not all(map(decimal.Decimal.is_finite, present)):
            _warn("column %r: NaN or infinite Decimal values do not fit decimal128; written as text", self.name)
            return self._fallback()
        scale = max(0, -min(map(_exponent, present)))
        digits = max(0, max(map(decimal.Decimal.adjusted, present)) + 1)
        precision = max(1, digits + scale)
        if precision > DECIMAL_MAX_PRECISION:
            _warn("column %r: Decimal values need %d digits (scale %d), more than decimal128's 38; written as text",
                  self.name, precision, scale)
            return self._fallback()
        self.precision, self.scale = precision, scale
        # Values become unscaled ints once (exact at 2 * 38 digits): an int column is what _buffers encodes.
        zero = decimal.Decimal(0)
        scaled = map(_decimal_context().scaleb, [zero if v is None else v for v in values] if self.nulls else values, repeat(scale))
        ints = list(map(int, scaled))
        if self.nulls:
            ints = [None if v is None else i for v, i in zip(values, ints)]
        self.values = ints
        return DECIMAL

    def _list(self):
        values = self.values
        filled = [() if v is None else v for v in values] if self.nulls else values
        child = ListColumn("item", list(chain.from_iterable(filled)), element=True)
        if child.kind == JSON or child.is_text_fallback:
            return self._json()  # nested or mixed elements
        self.child = child
        # Offsets per BATCH_ROWS rows, each from 0 as a batch's offsets buffer is: _plan's batches never
        # cross such a boundary, so a batch's buffer is one of these or a window of one.
        try:
            self.offsets = [array("i", accumulate(map(len, filled[i:i + BATCH_ROWS]), initial=0))
                            for i in range(0, len(filled), BATCH_ROWS)]
        except OverflowError:
            raise TableError("column %r: more than 2^31 list elements in %d rows" % (self.name, BATCH_ROWS)) from None
        self.bases = list(accumulate((o[-1] for o in self.offsets), initial=0))
        return LIST

    def _offset(self, row):
        """Where row `row`'s elements start in the child column."""
        chunk, at = divmod(row, BATCH_ROWS)
        return self.bases[chunk] + (self.offsets[chunk][at] if at else 0)

    def _json(self):
        texts = [None if v is None else json_text(v) for v in self.values]
        if not self.nulls and None in texts:
            self.nulls = True
        if self.nulls and texts.count(None) > self.values.count(None):
            _warn("column %r: %d value(s) nest too deep to encode as JSON; written as null", self.name,
                  texts.count(None) - self.values.count(None))
        self.values = texts
        self.norm = None
        return JSON

    def _slice(self, start, stop):
        s = self.values[start:stop]
        return self.norm(s) if self.norm is not None else s

    def layout(self, start, stop):
        """([(length, null_count)] per Arrow field node, buffer lengths) of rows [start, stop) without
        encoding them. A list column's nodes and buffers are followed by its child's."""
        n = stop - start
        kind = self.kind
        if kind == NULL:
            return [(n, n)], ()
        if kind in (UTF8, BINARY, JSON):
            s = self._slice(start, stop)
            nc = s.count(None) if self.nulls else 0
            if kind != BINARY:
                size = _utf8_length(list(map(_NONE_EMPTY, s, s)) if nc else s)
            else:
                size = sum(map(len, filter(None, s))) if nc else sum(map(len, s))
            return [(n, nc)], ((n + 7) // 8 if nc else 0, 4 * (n + 1), size)
        nc = self.values[start:stop].count(None) if self.nulls else 0
        validity = (n + 7) // 8 if nc else 0
        if kind == LIST:
            nodes, lengths = self.child.layout(self._offset(start), self._offset(stop))
            return [(n, nc)] + nodes, (validity, 4 * (n + 1)) + lengths
        width = (n + 7) // 8 if kind == BOOL else (4 * n if kind == DATE32 else (16 * n if kind == DECIMAL else 8 * n))
        return [(n, nc)], (validity, width)

    def buffers(self, start, stop):
        if self.packed is not None:
            return b"", _le(self.packed[start:stop])
        s = self._slice(start, stop)
        kind = self.kind
        if kind == NULL:
            return ()
        nc = self.nulls and None in s
        validity = _validity(s) if nc else b""
        if kind == INT64:
            return validity, _le(array("q", map(_NONE_0, s, s) if nc else s))
        if kind == FLOAT64:
            return validity, _le(array("d", map(_NONE_0F, s, s) if nc else s))
        if kind == BOOL:
            return validity, _pack_bits(bytes(map(_NONE_FALSE, s, s) if nc else s))
        if kind == UTF8 or kind == JSON:
            offsets, data = _utf8(list(map(_NONE_EMPTY, s, s)) if nc else s)
            return validity, _le(offsets), data
        if kind == BINARY:
            present = list(map(_NONE_EMPTY_B, s, s)) if nc else s
            return validity, _le(array("i", accumulate(map(len, present), initial=0))), b"".join(present)
        if kind == TIMESTAMP:
            epoch = _EPOCH_UTC if self.tz else _EPOCH
            src = map(_NONE_EPOCH_UTC if self.tz else _NONE_EPOCH, s, s) if nc else s
            return validity, _le(array("q", map(floordiv, map(sub, src, repeat(epoch)), repeat(_US))))
        if kind == DATE32:
            src = map(_NONE_DATE, s, s) if nc else s
            return validity, _le(array("i", map(sub, map(date.toordinal, src), repeat(_EPOCH_ORDINAL))))
        if kind == DECIMAL:
            # Unscaled ints as 16-byte little-endian two's complement (and-ing the mask gives it unsigned).
            src = map(_NONE_0, s, s) if nc else s
            return validity, b"".join(map(int.to_bytes, map(and_, src, repeat(_INT128_MASK)), repeat(16), repeat("little")))
        if kind == TIME64:
            src = map(_NONE_TIME, s, s) if nc else s
            since_midnight = map(sub, map(datetime.combine, repeat(_EPOCH_DATE), src), repeat(_EPOCH))
            return validity, _le(array("q", map(floordiv, since_midnight, repeat(_US))))
        if kind == DURATION:
            return validity, _le(array("q", map(floordiv, map(_NONE_TD, s, s) if nc else s, repeat(_US))))
        if kind == LIST:
            if stop == start:
                return validity, _le(array("i", [0])), *self.child.buffers(0, 0)
            chunk, at = divmod(start, BATCH_ROWS)
            window = self.offsets[chunk][at:at + stop - start + 1]
            offsets = _le(array("i", map(sub, window, repeat(window[0]))) if at else window)
            return (validity, offsets) + tuple(self.child.buffers(self._offset(start), self._offset(stop)))
        raise AssertionError(kind)




class NumpyColumn:
    """A column held in a numpy array of its Arrow width ('<i8', '<f8', bool); mask True = null."""
    __slots__ = ("name", "kind", "data", "mask", "tz")

    def __init__(self, name, kind, data, mask, tz=None):
        self.name = name
        self.kind = kind
        self.data = data
        self.mask = mask if mask is not None and mask.any() else None
        self.tz = tz

    def layout(self, start, stop):
        n = stop - start
        nc = int(self.mask[start:stop].sum()) if self.mask is not None else 0
        width = (n + 7) // 8 if self.kind == BOOL else (4 * n if self.kind == DICTIONARY else 8 * n)
        return [(n, nc)], ((n + 7) // 8 if nc else 0, width)

    def buffers(self, start, stop):
        import numpy as np
        validity = b""
        if self.mask is not None:
            m = self.mask[start:stop]
            if m.any():
                validity = np.packbits(~m, bitorder="little")
        data = self.data[start:stop]
        if self.kind == BOOL:
            return validity, np.packbits(data, bitorder="little")
        return validity, data


class CategoryColumn(NumpyColumn):
    """A pandas category column: int32 codes (-1 = null) into its categories, sent as an Arrow
    dictionary of their str() values ahead of the record batches."""
    __slots__ = ("dictionary", "dictionary_id", "ordered")

    def __init__(self, name, series):
        import numpy as np
        codes = np.asarray(series.cat.codes, dtype="<i4")
        mask = codes < 0
        super().__init__(name, DICTIONARY, np.ascontiguousarray(np.where(mask, 0, codes)), mask)
        self.dictionary = ListColumn("dictionary", [_safe_str(c) for c in series.cat.categories.tolist()])
        self.dictionary_id = 0
        self.ordered = bool(series.cat.ordered)


def numpy_column(name, values):
    """A column from a pandas Series or a numpy array: numeric, datetime and timedelta columns
    straight from their buffers, category as a dictionary; everything else through ListColumn's
    inference with missing values as None. pandas semantics for pandas objects: NaN, NaT and NA are
    null. A plain numpy float array keeps its NaN as values, like a list of floats."""
    import numpy as np
    pandas = hasattr(values, "isna")
    dtype = values.dtype
    if pandas and type(dtype).__name__ == "CategoricalDtype":
        return CategoryColumn(name, values)
    kind = getattr(dtype, "kind", "O")
    if pandas:
        mask = np.asarray(values.isna(), dtype=bool)
    elif kind in "mM":
        mask = np.isnat(values)
    else:
        mask = None

    def as_numpy(np_dtype, fill):
        if pandas:
            return np.ascontiguousarray(values.to_numpy(dtype=np_dtype, na_value=fill))
        return np.ascontiguousarray(values, dtype=np_dtype)

    if kind in "iu" and not (kind == "u" and len(values) and int(values.max()) > _INT64_MAX):
        return NumpyColumn(name, INT64, as_numpy("<i8", 0), mask)
    if kind == "f":
        return NumpyColumn(name, FLOAT64, as_numpy("<f8", 0.0), mask)
    if kind == "b":
        return NumpyColumn(name, BOOL, as_numpy(bool, False), mask)
    if kind == "M":
        tz = getattr(dtype, "tz", None)
        if pandas and tz is not None:
            arr = values.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
        else:
            arr = values.to_numpy() if pandas else values
        data = np.ascontiguousarray(arr.astype("datetime64[us]").view("<i8"))
        return NumpyColumn(name, TIMESTAMP, data, mask, tz_name(tz, None) if tz is not None else None)
    if kind == "m":
        arr = values.to_numpy() if pandas else values
        data = np.ascontiguousarray(arr.astype("timedelta64[us]").view("<i8"))
        if mask is not None:
            data = np.where(mask, 0, data)
        return NumpyColumn(name, DURATION, data, mask)
    objects = values.to_numpy(dtype=object) if pandas else np.asarray(values, dtype=object)
    if mask is not None and mask.any():
        objects = objects.copy()
        objects[mask] = None
    return ListColumn(name, objects.tolist())


def _is_numpy(v):
    return type(v).__module__.split(".", 1)[0] in ("numpy", "pandas") and hasattr(v, "dtype")


def _name(key):
    return key if isinstance(key, str) else str(key)


def _check_lengths(lengths):
    if len(set(lengths.values())) > 1:
        desc = ", ".join("%r has %d" % (k, v) for k, v in lengths.items())
        raise TableError("columns of unequal length: %s" % desc)


def columns_from_dict(table):
    """A dict of equal-length columns (lists, tuples, numpy arrays, pandas Series, any iterable)."""
    columns = []
    lengths = {}
    for key, values in table.items():
        name = _name(key)
        if _is_numpy(values) and getattr(values, "ndim", 1) == 1:
            column = numpy_column(name, values)
            lengths[name] = len(values)
        else:
            if not isinstance(values, (list, tuple)):
                if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
                    raise TableError("column %r is a %s, not a sequence of values" % (name, type(values).__name__))
                values = list(values)
            lengths[name] = len(values)
            column = values
        columns.append((name, column))
    _check_lengths(lengths)
    rows = next(iter(lengths.values()), 0)
    return [c if not isinstance(c, (list, tuple)) else ListColumn(n, c) for n, c in columns], rows


def columns_from_rows(rows, plain=False):
    """A list of row dicts. Columns in first-seen key order; a key a row lacks is null there.
    `plain`: every row is a dict itself, not a subclass (whose __getitem__ or __missing__ could run)."""
    first = rows[0]
    width = len(first)
    # Rows with the same keys, in any order (rows built by one dict literal): one itemgetter of the
    # first row's keys fetches a slice of rows' values into one flat list in C, and a column is every
    # width-th of it (strided C copies). A row of width keys in which each of the first row's width
    # (distinct) keys is found has exactly those keys. Slices of _ROWS_CHUNK rows keep the temporary
    # lists small and reused: fresh memory (page faults) cost as much as the copying for a large table.
    if plain and width:
        keys = list(first)
        get = itemgetter(*keys)
        columns = [[] for _ in keys]
        for start in range(0, len(rows), _ROWS_CHUNK):
            part = rows[start:start + _ROWS_CHUNK]
            if set(map(len, part)) != {width}:
                break
            try:
                # One key: itemgetter returns the value itself, not a 1-tuple.
                flat = list(map(get, part)) if width == 1 else list(chain.from_iterable(map(get, part)))
            except KeyError:
                break
            for i, column in enumerate(columns):
                column += flat[i::width]
        else:
            return [ListColumn(_name(k), c) for k, c in zip(keys, columns)], len(rows)
    keys = list(dict.fromkeys(k for shape in dict.fromkeys(map(tuple, rows)) for k in shape))
    return [ListColumn(_name(k), list(map(dict.get, rows, repeat(k)))) for k in keys], len(rows)


def columns_from_pandas(df):
    if type(df.index).__name__ != "RangeIndex":
        df = df.reset_index()
    names = [_name(c) for c in df.columns]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise TableError("DataFrame has duplicate column names: %s" % ", ".join(map(repr, dupes)))
    return [numpy_column(n, df.iloc[:, i]) for i, n in enumerate(names)], len(df)


# ---------------------------------------------------------------------------------------------
# Messages.

def _check_names(columns):
    seen = set()
    for c in columns:
        if c.name in seen:
            raise TableError("duplicate column name %r" % c.name)
        seen.add(c.name)


def _plan(columns, nrows, budget):
    """[(start, stop, metadata prefix, body length)]: batches of at most BATCH_ROWS rows and about
    BATCH_BYTES bytes, each fitting in `budget`; a batch over either limit is halved until it fits."""
    planned = []
    stack = [(s, min(s + BATCH_ROWS, nrows)) for s in range(0, nrows, BATCH_ROWS)] or [(0, 0)]
    stack.reverse()
    while stack:
        start, stop = stack.pop()
        nodes = []
        lengths = []
        for c in columns:
            ns, ls = c.layout(start, stop)
            nodes.extend(ns)
            lengths.extend(ls)
        prefix, body = _batch_message(stop - start, nodes, lengths)
        size = len(prefix) + body
        if (size > budget or body > BATCH_BYTES) and stop - start > 1:
            mid = (start + stop) // 2
            stack.append((mid, stop))
            stack.append((start, mid))
            continue
        if size > budget:
            raise TableError("row %d is %d bytes once encoded, more than the %d-byte message limit" % (start, size, budget))
        planned.append((start, stop, prefix, body, lengths))
    return planned


_OWN_CHUNK = 64 << 10


def _batch_chunks(columns, start, stop, prefix, body, lengths):
    """One record batch as bytes-like chunks: buffers of at least _OWN_CHUNK bytes go to the socket
    as they are (no copy); smaller ones, the metadata and the padding are joined between them."""
    chunks = []
    small = [prefix]
    i = 0
    for c in columns:
        for buf in c.buffers(start, stop):
            n = memoryview(buf).nbytes
            if n != lengths[i]:
                raise AssertionError("column %r: encoded %d bytes, planned %d" % (c.name, n, lengths[i]))
            if n >= _OWN_CHUNK:
                chunks.append(b"".join(small))
                chunks.append(buf)
                small = []
            else:
                small.append(buf)
            if n % 8:
                small.append(b"\0" * (8 - n % 8))
            i += 1
    if small:
        chunks.append(b"".join(small))
    return chunks


def column_messages(columns, nrows, topic, max_message=DEFAULT_MAX_MESSAGE):
    """Yields (N, chunks) per bridge message: chunks iterates bytes-like objects totalling N."""
    _check_names(columns)
    dictionaries = [c for c in columns if c.kind == DICTIONARY]
    for i, c in enumerate(dictionaries):
        c.dictionary_id = i
    # Dictionaries are small (a category column's categories): encoded whole, repeated in each message.
    schema = schema_message(columns, topic) + b"".join(map(_dictionary_message, dictionaries))
    fixed = len(schema) + len(_EOS)
    planned = _plan(columns, nrows, max_message - fixed)
    group = []
    size = fixed
    for batch in planned:
        batch_size = len(batch[2]) + batch[3]
        if group and size + batch_size > max_message:
            yield size, _chunks(columns, schema, group)
            group = []
            size = fixed
        group.append(batch)
        size += batch_size
    yield size, _chunks(columns, schema, group)


def _dictionary_message(column):
    values = column.dictionary
    n = len(values.values)
    nodes, lengths = values.layout(0, n)
    prefix, body = _batch_message(n, nodes, lengths, column.dictionary_id)
    return b"".join(_batch_chunks([values], 0, n, prefix, body, lengths))


def _chunks(columns, schema, group):
    yield schema
    for start, stop, prefix, body, lengths in group:
        yield from _batch_chunks(columns, start, stop, prefix, body, lengths)
    yield _EOS


# ---------------------------------------------------------------------------------------------
# pyarrow, when the parser's environment has it: its own IPC writer, one batch in memory at a time.

class _Collect:
    """A write-only file for pyarrow's writer that keeps what was written until drained."""

    def __init__(self):
        self.parts = []
        self.closed = False

    def write(self, data):
        self.parts.append(bytes(data))
        return len(data)

    def writable(self):
        return True

    def flush(self):
        pass

    def close(self):
        self.closed = True

    def drain(self):
        parts, self.parts = self.parts, []
        return parts


def _pa_stream_size(pa, schema, batches):
    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for b in batches:
            writer.write_batch(b)
    return sink.size()


def pyarrow_messages(table, topic, max_message=DEFAULT_MAX_MESSAGE):
    import pyarrow as pa
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    metadata = dict(table.schema.metadata or {})
    metadata[TOPIC_KEY.encode()] = topic.encode()
    table = table.replace_schema_metadata(metadata)
    schema = table.schema
    batches = table.to_batches(max_chunksize=BATCH_ROWS) or [
        pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)
    ]
    pending = [batches]
    while pending:
        group = pending.pop(0)
        size = _pa_stream_size(pa, schema, group)
        if size > max_message:
            if len(group) > 1:
                mid = len(group) // 2
                pending[:0] = [group[:mid], group[mid:]]
                continue
            b = group[0]
            if b.num_rows <= 1:
                raise TableError("a row is %d bytes once encoded, more than the %d-byte message limit" % (size, max_message))
            mid = b.num_rows // 2
            pending[:0] = [[b.slice(0, mid)], [b.slice(mid)]]
            continue
        yield size, _pa_chunks(pa, schema, group)


def _pa_chunks(pa, schema, group):
    sink = _Collect()
    writer = pa.ipc.new_stream(sink, schema)
    for b in group:
        writer.write_batch(b)
        yield from sink.drain()
    writer.close()
    yield from sink.drain()


# ---------------------------------------------------------------------------------------------
# What counts as a table (SPEC section 4).

def _module_root(obj):
    return type(obj).__module__.split(".", 1)[0]


def is_row(obj):
    """A dict that is one row rather than a dict of columns: some value is not a sequence."""
    if not isinstance(obj, dict) or not obj:
        return False
    for v in obj.values():
        if isinstance(v, (str, bytes, dict)) or not (isinstance(v, (list, tuple)) or _is_numpy(v) and getattr(v, "ndim", 0) == 1):
            return True
    return False


def table_messages(obj, topic, max_message=DEFAULT_MAX_MESSAGE):
    """Bridge messages for one table, or None when obj is not a table this module knows.
    Returns an iterator of (N, chunks)."""
    root = _module_root(obj)
    name = type(obj).__name__
    if root == "pyarrow" and name in ("Table", "RecordBatch"):
        return pyarrow_messages(obj, topic, max_message)
    if root == "pandas" and name == "DataFrame":
        try:
            import pyarrow as pa
        except ImportError:
            pa = None
        if pa is not None:
            try:
                return pyarrow_messages(pa.Table.from_pandas(obj), topic, max_message)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                pass  # mixed object columns: our own inference turns them into utf8
        return column_messages(*columns_from_pandas(obj), topic, max_message)
    if isinstance(obj, dict) and not is_row(obj):
        return column_messages(*columns_from_dict(obj), topic, max_message)
    if isinstance(obj, list) and obj:
        # The rows' types, not each row's isinstance: one C pass, and it tells columns_from_rows
        # whether every row is a plain dict.
        types = set(map(type, obj))
        if all(issubclass(t, dict) for t in types):
            return column_messages(*columns_from_rows(obj, plain=types == {dict}), topic, max_message)
    if callable(getattr(obj, "to_arrow", None)):
        return pyarrow_messages(obj.to_arrow(), topic, max_message)
    return None
