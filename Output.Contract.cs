// Enforcing a topic's schema contract (issue 14, SPEC §7.1) on each Arrow batch, before it reaches
// Parquet. Column at a time: each declared column of the batch is cast to its declared Arrow type into
// scratch memory (or passed through when it already has it), and every value that does not make it is
// a Violation (row, column, reason). No per-row objects on the good path; a violation carries a message.
//
// Casts, all lossless (anything else is a violation, reason "type"; a value the type cannot hold, "range"):
//   int64     ← int64; float64 holding a whole number within ±2^63; a string of an integer ("42", "-7")
//   float64   ← float64; int64 within ±2^53 (exact); a numeric string
//   string    ← string (JSON text too); int64 (its digits)
//   bool      ← bool; the strings "true"/"false" (any case)
//   date      ← date32; an ISO date string (2024-01-31)
//   timestamp ← timestamp of any unit (naive is taken as UTC; nanoseconds must be whole microseconds);
//               date32 (midnight UTC); an ISO 8601 string (no offset: UTC). Written as timestamp[us, UTC].
//   decimal   ← decimal128 whose value fits (P, S) exactly; int64; a decimal string ("12.50")
//   binary    ← binary; string (its UTF-8 bytes)
// A null in a non-nullable column is a violation "null"; a declared column the batch lacks, "missing"
// (every row; a nullable column is filled with nulls instead). Columns not declared are dropped (and
// counted by the caller). Evolve enforces nothing per value (the caller skips this class).
//
// Then by mode: freeze → the job fails; discard_row → rows with any violation are cut from the batch;
// discard_value → the value is null already, the row stays, unless the column is non-nullable (then the
// row is cut). The caller writes what is cut, with the reasons, to quarantine (Output.Quarantine.cs).
using System.Buffers;
using System.Buffers.Text;
using System.Globalization;
using System.Runtime.InteropServices;
using Apache.Arrow;
using Apache.Arrow.Types;
using ArrowArray = Apache.Arrow.Array;

namespace Casparian;

/// <summary>Why a value broke the contract; <see cref="ContractEnforcer.Code"/> is the quarantine's <c>_reason</c>.</summary>
internal enum ViolationReason : byte { Type, Null, Missing, Range }

/// <summary>One value that broke the contract: its row in the batch, its declared column (index), why, and a readable message.</summary>
internal readonly record struct Violation(int Row, int Column, ViolationReason Reason, string Message);

/// <summary>
/// A batch after enforcement: the declared columns (in declared order) of the rows kept, the violations,
/// and which input rows were cut (null when none).
/// </summary>
internal sealed record ContractOutcome(IArrowArray[] Columns, int Length, List<Violation> Violations, bool[]? Cut, int CutCount, List<string> Dropped);

internal sealed class ContractEnforcer
{
    private const long MaxExactDouble = 1L << 53;

    private readonly DeclaredColumn[] _columns;

    public ContractEnforcer(IReadOnlyList<DeclaredColumn> columns, ContractMode mode)
    {
        _columns = [.. columns];
        Mode = mode;
        Schema = new Schema(_columns.Select(c => new Field(c.Name, c.Type.Arrow, nullable: true)), null);
    }

    public ContractMode Mode { get; }

    /// <summary>What the topic is written as: the declared columns, in order, each nullable in Parquet (non-nullable ones never hold a null).</summary>
    public Schema Schema { get; }

    public IReadOnlyList<DeclaredColumn> Columns => _columns;

    public static string Code(ViolationReason reason) => reason switch
    {
        ViolationReason.Type => "type",
        ViolationReason.Null => "null",
        ViolationReason.Missing => "missing",
        _ => "range",
    };

    /// <summary>
    /// Casts <paramref name="batch"/> to the declared schema; arrays it makes live in <paramref name="scratch"/>,
    /// so the outcome is valid until the scratch is disposed.
    /// </summary>
    public ContractOutcome Apply(RecordBatch batch, ScratchArrays scratch)
    {
        int n = batch.Length;
        var violations = new List<Violation>();
        var arrays = new IArrowArray[_columns.Length];
        var fields = batch.Schema.FieldsList;
        var dropped = new List<string>();
        foreach (var f in fields)
            if (System.Array.FindIndex(_columns, c => c.Name == f.Name) < 0) dropped.Add(f.Name);
        for (int c = 0; c < _columns.Length; c++)
        {
            var column = _columns[c];
            int at = -1;
            for (int j = 0; j < fields.Count; j++) if (fields[j].Name == column.Name) { at = j; break; }
            if (at < 0)
            {
                arrays[c] = scratch.Nulls(column.Type.Arrow, n)!;
                if (!column.Nullable)
                    for (int i = 0; i < n; i++) violations.Add(new Violation(i, c, ViolationReason.Missing, $"column '{column.Name}' ({column.Spelling}) is missing from the table"));
                continue;
            }
            arrays[c] = Cast((ArrowArray)batch.Column(at), column, c, violations, scratch);
        }
        if (violations.Count == 0 || Mode == ContractMode.Freeze) return new ContractOutcome(arrays, n, violations, null, 0, dropped);

        var cut = new bool[n];
        int cutCount = 0;
        foreach (var v in violations)
        {
            bool cutRow = Mode == ContractMode.DiscardRow || !_columns[v.Column].Nullable;
            if (cutRow && !cut[v.Row]) { cut[v.Row] = true; cutCount++; }
        }
        if (cutCount == 0) return new ContractOutcome(arrays, n, violations, null, 0, dropped);
        for (int c = 0; c < arrays.Length; c++) arrays[c] = Take(arrays[c], cut, n - cutCount, scratch);
        return new ContractOutcome(arrays, n - cutCount, violations, cut, cutCount, dropped);
    }

    private static IArrowArray Cast(ArrowArray input, DeclaredColumn column, int c, List<Violation> violations, ScratchArrays scratch)
    {
        var type = column.Type;
        IArrowArray result = type.Kind switch
        {
            _ when ArrowSchemas.SameType(input.Data.DataType, type.Arrow) => input,
            _ when input.Data.DataType is NullType => scratch.Nulls(type.Arrow, input.Length)!,
            ColumnKind.Int64 => ToInt64(input, column, c, violations, scratch),
            ColumnKind.Float64 => ToFloat64(input, column, c, violations, scratch),
            ColumnKind.String => ToString(input, column, c, violations, scratch),
            ColumnKind.Bool => ToBool(input, column, c, violations, scratch),
            ColumnKind.Date => ToDate(input, column, c, violations, scratch),
            ColumnKind.Timestamp => ToTimestamp(input, column, c, violations, scratch),
            ColumnKind.Decimal => ToDecimal(input, column, c, violations, scratch),
            _ => ToBinary(input, column, c, violations, scratch),
        };
        // Nulls the parser sent (a failed cast's null is a violation of its own already).
        if (!column.Nullable && input.NullCount > 0)
            for (int i = 0; i < input.Length; i++)
                if (input.IsNull(i)) violations.Add(new Violation(i, c, ViolationReason.Null, $"column '{column.Name}' is {column.Spelling}, not nullable, and the value is null"));
        return result;
    }

    private static Violation Bad(ArrowArray input, int i, DeclaredColumn column, int c, ViolationReason reason = ViolationReason.Type) =>
        new(i, c, reason, $"{RawJson.Preview(input, i)} ({ArrowSchemas.Describe(input.Data.DataType)}) is not {(reason == ViolationReason.Range ? "within " : "")}{Article(column.Type.Name)} for column '{column.Name}'");

    private static string Article(string type) => type[0] is 'i' or 'a' or 'e' or 'o' or 'u' ? "an " + type : "a " + type;

    // ---- fixed-width outputs -----------------------------------------------------------------

    /// <summary>A fixed-width column being built in scratch memory: values, and a validity bitmap that starts all valid.</summary>
    private sealed class Fixed<T> where T : unmanaged
    {
        private readonly Memory<byte> _values;
        private readonly Memory<byte> _bits;
        private int _nulls;

        public Fixed(ScratchArrays scratch, int length)
        {
            Length = length;
            _values = scratch.Rent(checked(length * Marshal.SizeOf<T>()));
            _bits = scratch.Rent((length + 7) / 8);
            _bits.Span.Fill(0xFF);
        }

        public int Length { get; }
        public Span<T> Values => MemoryMarshal.Cast<byte, T>(_values.Span);

        public void Null(int i)
        {
            _bits.Span[i >> 3] &= (byte)~(1 << (i & 7));
            Values[i] = default;
            _nulls++;
        }

        public IArrowArray Build(IArrowType type) =>
            ArrowArrayFactory.BuildArray(new ArrayData(type, Length, _nulls, 0, [_nulls == 0 ? ArrowBuffer.Empty : new ArrowBuffer(_bits), new ArrowBuffer(_values)]));
    }

    private static IArrowArray ToInt64(ArrowArray input, DeclaredColumn column, int c, List<Violation> violations, ScratchArrays scratch)
    {
        var output = new Fixed<long>(scratch, input.Length);
        var values = output.Values;
        for (int i = 0; i < input.Length; i++)
        {
            if (input.IsNull(i)) { output.Null(i); continue; }
            bool ok;
            switch (input)
            {
                case DoubleArray d:
                    double x = d.Values[i];
                    ok = x == Math.Floor(x) && x >= -9.2233720368547758E18 && x < 9.2233720368547758E18;
                    if (ok) values[i] = (long)x;
                    break;
                case StringArray s:
                    var bytes = s.GetBytes(i);
                    ok = Utf8Parser.TryParse(bytes, out long v, out int used) && used == bytes.Length;
                    values[i] = v;
                    break;
                default:
                    ok = false;
                    break;
            }
            if (!ok) { output.Null(i); violations.Add(Bad(input, i, column, c)); }
        }
        return output.Build(Int64Type.Default);
    }

    private static IArrowArray ToFloat64(ArrowArray input, DeclaredColumn column, int c, List<Violation> violations, ScratchArrays scratch)
    {
        var output = new Fixed<double>(scratch, input.Length);
        var values = output.Values;
        for (int i = 0; i < input.Length; i++)
        {
            if (input.IsNull(i)) { output.Null(i); continue; }
            var reason = ViolationReason.Type;
            bool ok;
            switch (input)
            {
                case Int64Array l:
                    long v = l.Values[i];
                    ok = v is >= -MaxExactDouble and <= MaxExactDouble;
                    if (ok) values[i] = v;
                    else reason = ViolationReason.Range;
                    break;
                case StringArray s:
                    var bytes = s.GetBytes(i);
                    ok = Utf8Parser.TryParse(bytes, out double d, out int used) && used == bytes.Length;
                    values[i] = d;
                    break;
                default:
                    ok = false;
                    break;
            }
            if (!ok) { output.Null(i); violations.Add(Bad(input, i, column, c, reason)); }
        }
        return output.Build(DoubleType.Default);
    }

    private static IArrowArray ToBool(ArrowArray input, DeclaredColumn column, int c, List<Violation> violations, ScratchArrays scratch)
    {
        // Booleans are bits: built as bytes here, then packed.
        int n = input.Length;
        var bits = scratch.Rent((n + 7) / 8);
        var valid = scratch.Rent((n + 7) / 8);
        bits.Span.Clear();
        valid.Span.Fill(0xFF);
        int nulls = 0;
        for (int i = 0; i < n; i++)
        {
            bool ok = false, value = false;
            if (!input.IsNull(i) && input is StringArray s)
            {
                var text = s.GetString(i);
                if (string.Equals(text, "true", StringComparison.OrdinalIgnoreCase)) { ok = true; value = true; }
                else if (string.Equals(text, "false", StringComparison.OrdinalIgnoreCase)) ok = true;
            }
            if (!ok)
            {
                valid.Span[i >> 3] &= (byte)~(1 << (i & 7));
                nulls++;
                if (!input.IsNull(i)) violations.Add(Bad(input, i, column, c));
            }
            else if (value) bits.Span[i >> 3] |= (byte)(1 << (i & 7));
        }
        return ArrowArrayFactory.BuildArray(new ArrayData(BooleanType.Default, n, nulls, 0, [nulls == 0 ? ArrowBuffer.Empty : new ArrowBuffer(valid), new ArrowBuffer(bits)]));
    }

    private static IArrowArray ToDate(ArrowArray input, DeclaredColumn column, int c, List<Violation> violations, ScratchArrays scratch)
    {
        var output = new Fixed<int>(scratch, input.Length);
        var values = output.Values;
        for (int i = 0; i < input.Length; i++)
        {
            if (input.IsNull(i)) { output.Null(i); continue; }
            if (input is StringArray s && DateOnly.TryParseExact(s.GetString(i), "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out var date))
                values[i] = date.DayNumber - DateOnly.FromDateTime(DateTime.UnixEpoch).DayNumber;
            else { output.Null(i); violations.Add(Bad(input, i, column, c)); }
        }
        return output.Build(Date32Type.Default);
    }

    private static IArrowArray ToTimestamp(ArrowArray input, DeclaredColumn column, int c, List<Violation> violations, ScratchArrays scratch)
    {
        var output = new Fixed<long>(scratch, input.Length);
        var values = output.Values;
        for (int i = 0; i < input.Length; i++)
        {
            if (input.IsNull(i)) { output.Null(i); continue; }
            bool ok = true;
            var reason = ViolationReason.Type;
            switch (input)
            {
                case TimestampArray t:
                    // Naive and zoned timestamps alike hold UTC-based values (a naive one is taken as UTC).
                    long v = t.Values[i];
                    switch (((TimestampType)t.Data.DataType).Unit)
                    {
                        case TimeUnit.Second: ok = v is > long.MinValue / 1_000_000 and < long.MaxValue / 1_000_000; values[i] = v * 1_000_000; break;
                        case TimeUnit.Millisecond: ok = v is > long.MinValue / 1_000 and < long.MaxValue / 1_000; values[i] = v * 1_000; break;
                        case TimeUnit.Microsecond: values[i] = v; break;
                        default: ok = v % 1_000 == 0; values[i] = v / 1_000; break;
                    }
                    if (!ok) reason = ViolationReason.Range;
                    break;
                case Date32Array d:
                    values[i] = d.Values[i] * 86_400_000_000L;
                    break;
                case StringArray s when DateTimeOffset.TryParse(s.GetString(i), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out var when):
                    values[i] = (when.UtcTicks - DateTime.UnixEpoch.Ticks) / 10;
                    break;
                default:
                    ok = false;
                    break;
            }
            if (!ok) { output.Null(i); violations.Add(Bad(input, i, column, c, reason)); }
        }
        return output.Build(column.Type.Arrow);
    }

    private static IArrowArray ToDecimal(ArrowArray input, DeclaredColumn column, int c, List<Violation> violations, ScratchArrays scratch)
    {
        var output = new Fixed<Int128>(scratch, input.Length);
        var values = output.Values;
        int p = column.Type.Precision, s = column.Type.Scale;
        Int128 limit = Pow10(p);
        for (int i = 0; i < input.Length; i++)
        {
            if (input.IsNull(i)) { output.Null(i); continue; }
            var reason = ViolationReason.Type;
            Int128 v = 0;
            bool ok = input switch
            {
                Int64Array l => Rescale(l.Values[i], 0, s, out v),
                Decimal128Array d => Rescale(MemoryMarshal.Cast<byte, Int128>(d.Data.Buffers[1].Span)[d.Data.Offset + i], ((Decimal128Type)d.Data.DataType).Scale, s, out v),
                StringArray t => ParseDecimal(t.GetString(i), s, out v, out reason),
                _ => false,
            };
            if (ok && (v >= limit || v <= -limit)) { ok = false; reason = ViolationReason.Range; }
            else if (!ok && input is Int64Array or Decimal128Array) reason = ViolationReason.Range;
            if (ok) values[i] = v;
            else { output.Null(i); violations.Add(Bad(input, i, column, c, reason)); }
        }
        return output.Build(column.Type.Arrow);
    }

    private static Int128 Pow10(int e)
    {
        Int128 r = 1;
        for (int k = 0; k < e; k++) r *= 10;
        return r;
    }

    /// <summary>An unscaled value at scale <paramref name="from"/> at scale <paramref name="to"/>, when exact and within 38 digits.</summary>
    private static bool Rescale(Int128 value, int from, int to, out Int128 result)
    {
        result = value;
        if (to >= from)
        {
            Int128 f = Pow10(to - from);
            Int128 max = Pow10(38) / f;
            if (value >= max || value <= -max) return false;
            result = value * f;
            return true;
        }
        Int128 d = Pow10(from - to);
        if (value % d != 0) return false;
        result = value / d;
        return true;
    }

    /// <summary>"-12.50" at scale 2 → -1250: digits, one optional point, no exponent; more fractional digits than the scale only if they are zeros.</summary>
    private static bool ParseDecimal(string text, int scale, out Int128 value, out ViolationReason reason)
    {
        value = 0;
        reason = ViolationReason.Type;
        var t = text.AsSpan().Trim();
        bool negative = t.Length > 0 && t[0] == '-';
        if (t.Length > 0 && t[0] is '-' or '+') t = t[1..];
        int point = t.IndexOf('.');
        var whole = point < 0 ? t : t[..point];
        var fraction = point < 0 ? [] : t[(point + 1)..];
        if (whole.Length + fraction.Length == 0 || whole.Length > 38) return false;
        foreach (char ch in whole) if (!char.IsAsciiDigit(ch)) return false;
        foreach (char ch in fraction) if (!char.IsAsciiDigit(ch)) return false;
        reason = ViolationReason.Range;
        for (int k = scale; k < fraction.Length; k++) if (fraction[k] != '0') return false;
        Int128 v = 0;
        foreach (char ch in whole) v = v * 10 + (ch - '0');
        for (int k = 0; k < scale; k++) v = v * 10 + (k < fraction.Length ? fraction[k] - '0' : 0);
        value = negative ? -v : v;
        return true;
    }

    // ---- variable-width outputs --------------------------------------------------------------

    private static IArrowArray ToString(ArrowArray input, DeclaredColumn column, int c, List<Violation> violations, ScratchArrays scratch)
    {
        if (input is StringArray) return input; // JSON-annotated text is still text
        int n = input.Length;
        var data = new ArrayBufferWriter<byte>();
        var offsets = MemoryMarshal.Cast<byte, int>(scratch.Rent(checked((n + 1) * sizeof(int))).Span);
        var validMemory = scratch.Rent((n + 7) / 8);
        var valid = validMemory.Span;
        valid.Fill(0xFF);
        int nulls = 0;
        offsets[0] = 0;
        for (int i = 0; i < n; i++)
        {
            if (!input.IsNull(i) && input is Int64Array l)
            {
                var span = data.GetSpan(20);
                Utf8Formatter.TryFormat(l.Values[i], span, out int written);
                data.Advance(written);
            }
            else
            {
                valid[i >> 3] &= (byte)~(1 << (i & 7));
                nulls++;
                if (!input.IsNull(i)) violations.Add(Bad(input, i, column, c));
            }
            offsets[i + 1] = data.WrittenCount;
        }
        var offsetBytes = MemoryMarshal.AsBytes(offsets);
        var offsetMemory = scratch.Rent(offsetBytes.Length);
        offsetBytes.CopyTo(offsetMemory.Span);
        return ArrowArrayFactory.BuildArray(new ArrayData(StringType.Default, n, nulls, 0,
            [nulls == 0 ? ArrowBuffer.Empty : new ArrowBuffer(validMemory), new ArrowBuffer(offsetMemory), new ArrowBuffer(data.WrittenMemory)]));
    }

    private static IArrowArray ToBinary(ArrowArray input, DeclaredColumn column, int c, List<Violation> violations, ScratchArrays scratch)
    {
        // A string's bytes are its UTF-8: the same buffers, read as binary.
        if (input is StringArray s) return ArrowArrayFactory.BuildArray(new ArrayData(BinaryType.Default, s.Length, s.NullCount, s.Offset, s.Data.Buffers));
        for (int i = 0; i < input.Length; i++)
            if (!input.IsNull(i)) violations.Add(Bad(input, i, column, c));
        return scratch.Nulls(BinaryType.Default, input.Length)!;
    }

    // ---- cutting rows ------------------------------------------------------------------------

    /// <summary>The rows of <paramref name="array"/> not marked in <paramref name="cut"/>, copied into scratch memory.</summary>
    private static IArrowArray Take(IArrowArray array, bool[] cut, int kept, ScratchArrays scratch)
    {
        var a = (ArrowArray)array;
        var data = a.Data;
        int n = data.Length;
        var validMemory = scratch.Rent((kept + 7) / 8);
        var valid = validMemory.Span;
        valid.Clear();
        int nulls = 0;
        for (int i = 0, o = 0; i < n; i++)
        {
            if (cut[i]) continue;
            if (a.IsValid(i)) valid[o >> 3] |= (byte)(1 << (o & 7));
            else nulls++;
            o++;
        }
        var validity = nulls == 0 ? ArrowBuffer.Empty : new ArrowBuffer(validMemory);
        switch (data.DataType)
        {
            case BooleanType:
            {
                var bitsMemory = scratch.Rent((kept + 7) / 8);
                var bits = bitsMemory.Span;
                bits.Clear();
                var source = data.Buffers[1].Span;
                for (int i = 0, o = 0; i < n; i++)
                {
                    if (cut[i]) continue;
                    int at = data.Offset + i;
                    if ((source[at >> 3] & (1 << (at & 7))) != 0) bits[o >> 3] |= (byte)(1 << (o & 7));
                    o++;
                }
                return ArrowArrayFactory.BuildArray(new ArrayData(data.DataType, kept, nulls, 0, [validity, new ArrowBuffer(bitsMemory)]));
            }
            case StringType or BinaryType:
            {
                var offsets = MemoryMarshal.Cast<byte, int>(data.Buffers[1].Span).Slice(data.Offset, n + 1);
                var bytes = data.Buffers[2].Span;
                long total = 0;
                for (int i = 0; i < n; i++) if (!cut[i]) total += offsets[i + 1] - offsets[i];
                var newOffsetsMemory = scratch.Rent(checked((kept + 1) * sizeof(int)));
                var newOffsets = MemoryMarshal.Cast<byte, int>(newOffsetsMemory.Span);
                var newBytesMemory = scratch.Rent(checked((int)total));
                var newBytes = newBytesMemory.Span;
                int at = 0;
                newOffsets[0] = 0;
                for (int i = 0, o = 0; i < n; i++)
                {
                    if (cut[i]) continue;
                    var value = bytes[offsets[i]..offsets[i + 1]];
                    value.CopyTo(newBytes[at..]);
                    at += value.Length;
                    newOffsets[++o] = at;
                }
                return ArrowArrayFactory.BuildArray(new ArrayData(data.DataType, kept, nulls, 0, [validity, new ArrowBuffer(newOffsetsMemory), new ArrowBuffer(newBytesMemory)]));
            }
            default:
            {
                int width = ((FixedWidthType)data.DataType).BitWidth / 8;
                var source = data.Buffers[1].Span[(data.Offset * width)..];
                var valuesMemory = scratch.Rent(checked(kept * width));
                var values = valuesMemory.Span;
                for (int i = 0, o = 0; i < n; i++)
                {
                    if (cut[i]) continue;
                    source.Slice(i * width, width).CopyTo(values[(o * width)..]);
                    o++;
                }
                return ArrowArrayFactory.BuildArray(new ArrayData(data.DataType, kept, nulls, 0, [validity, new ArrowBuffer(valuesMemory)]));
            }
        }
    }
}
