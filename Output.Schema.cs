// Schema rules of a topic (see Output.cs): structural type equality, the promotions (null ↔ concrete,
// int64 ↔ float64, decimal128 ↔ decimal128, list ↔ list by element), the dictionary heuristic, and the
// arrays JobOutput makes itself (all-null columns, columns cast to the topic's type, lineage columns).
using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Apache.Arrow;
using Apache.Arrow.Types;

namespace Casparian;

/// <summary>How a batch's column of one type goes into a topic's column of another (the rules in Output.cs).</summary>
internal enum Promotion
{
    /// <summary>The same type: written as is.</summary>
    None,
    /// <summary>The batch's column is Arrow null: written as all-null of the topic's type.</summary>
    FillNulls,
    /// <summary>
    /// The topic's type holds the batch's values: they are cast (int64 → float64, exact up to 2^53 in
    /// magnitude; a decimal to a wider scale, exact; a list by its elements).
    /// </summary>
    Cast,
    /// <summary>The topic takes <see cref="ArrowSchemas.Join"/> of both types: the rows written so far are rewritten.</summary>
    WidenTopic,
    /// <summary>No rule joins the two types: the job fails naming the column.</summary>
    Mismatch,
}

internal static class ArrowSchemas
{
    /// <summary>The rule that puts a batch column of type <paramref name="batch"/> into a topic column of type <paramref name="topic"/>.</summary>
    public static Promotion Promote(IArrowType topic, IArrowType batch)
    {
        if (SameType(topic, batch)) return Promotion.None;
        if (batch is NullType) return Promotion.FillNulls;
        if (Join(topic, batch) is not { } joined) return Promotion.Mismatch;
        return SameType(joined, topic) ? Promotion.Cast : Promotion.WidenTopic;
    }

    /// <summary>
    /// The narrowest type that holds every value of both types without loss, or null when none does:
    /// null joins anything; int64 and float64 join as float64 (pandas' rule); decimal128(P1, S1) and
    /// decimal128(P2, S2) as the widest scale with the widest integer part, if that fits 38 digits; two
    /// lists by their elements.
    /// </summary>
    public static IArrowType? Join(IArrowType a, IArrowType b)
    {
        if (SameType(a, b)) return a;
        return (a, b) switch
        {
            (NullType, _) => b,
            (_, NullType) => a,
            (Int64Type, DoubleType) or (DoubleType, Int64Type) => DoubleType.Default,
            (Decimal128Type x, Decimal128Type y) => JoinDecimals(x, y),
            (ListType x, ListType y) when Join(x.ValueDataType, y.ValueDataType) is { } element =>
                new ListType(new Field(x.ValueField.Name, element, nullable: true)),
            _ => null,
        };
    }

    private static Decimal128Type? JoinDecimals(Decimal128Type x, Decimal128Type y)
    {
        const int MaxPrecision = 38;
        int scale = Math.Max(x.Scale, y.Scale);
        int precision = Math.Max(x.Precision - x.Scale, y.Precision - y.Scale) + scale;
        return precision <= MaxPrecision ? new Decimal128Type(precision, scale) : null;
    }

    /// <summary>Arrow's canonical extension name on a utf8 field whose values are JSON text (the Parquet writer annotates the column JSON).</summary>
    public const string JsonExtension = "arrow.json";

    public static bool IsJson(Field field) =>
        field.DataType is StringType && field.HasMetadata && field.Metadata.TryGetValue("ARROW:extension:name", out var name) && name == JsonExtension;

    /// <summary>The same Arrow type, structurally (units, time zones, widths, children), ignoring field nullability and metadata.</summary>
    public static bool SameType(IArrowType a, IArrowType b)
    {
        if (a.TypeId != b.TypeId) return false;
        return (a, b) switch
        {
            (TimestampType x, TimestampType y) => x.Unit == y.Unit && (x.Timezone ?? "") == (y.Timezone ?? ""),
            (TimeBasedType x, TimeBasedType y) => x.Unit == y.Unit,
            (Decimal32Type x, Decimal32Type y) => x.Precision == y.Precision && x.Scale == y.Scale,
            (Decimal64Type x, Decimal64Type y) => x.Precision == y.Precision && x.Scale == y.Scale,
            (Decimal128Type x, Decimal128Type y) => x.Precision == y.Precision && x.Scale == y.Scale,
            (Decimal256Type x, Decimal256Type y) => x.Precision == y.Precision && x.Scale == y.Scale,
            (FixedSizeBinaryType x, FixedSizeBinaryType y) => x.ByteWidth == y.ByteWidth,
            (DictionaryType x, DictionaryType y) => SameType(x.IndexType, y.IndexType) && SameType(x.ValueType, y.ValueType),
            (IntervalType x, IntervalType y) => x.Unit == y.Unit,
            (FixedSizeListType x, FixedSizeListType y) => x.ListSize == y.ListSize && SameFields(x.Fields, y.Fields),
            (UnionType x, UnionType y) => x.Mode == y.Mode && x.TypeIds.AsSpan().SequenceEqual(y.TypeIds) && SameFields(x.Fields, y.Fields),
            (NestedType x, NestedType y) => SameFields(x.Fields, y.Fields),
            _ => true,
        };
    }

    private static bool SameFields(IReadOnlyList<Field> a, IReadOnlyList<Field> b)
    {
        if (a.Count != b.Count) return false;
        for (int i = 0; i < a.Count; i++)
            if (a[i].Name != b[i].Name || !SameType(a[i].DataType, b[i].DataType)) return false;
        return true;
    }

    /// <summary>A type as a person reads it in an error: "timestamp[us, tz=UTC]", "int64".</summary>
    public static string Describe(IArrowType type) => type switch
    {
        TimestampType t => t.Timezone is { Length: > 0 } tz ? $"timestamp[{Unit(t.Unit)}, tz={tz}]" : $"timestamp[{Unit(t.Unit)}]",
        TimeBasedType t => $"{t.Name}[{Unit(t.Unit)}]",
        Decimal128Type d => $"decimal128({d.Precision}, {d.Scale})",
        FixedSizeBinaryType f => $"fixed_size_binary[{f.ByteWidth}]",
        NestedType n => $"{n.Name}<{string.Join(", ", n.Fields.Select(f => f.Name + ": " + Describe(f.DataType)))}>",
        _ => type.Name,
    };

    private static string Unit(Apache.Arrow.Types.TimeUnit unit) => unit switch
    {
        Apache.Arrow.Types.TimeUnit.Second => "s",
        Apache.Arrow.Types.TimeUnit.Millisecond => "ms",
        Apache.Arrow.Types.TimeUnit.Microsecond => "us",
        _ => "ns",
    };

    /// <summary>The same schema with every top-level field nullable: later batches of a topic may carry nulls the first did not.</summary>
    public static Schema Nullable(Schema schema)
    {
        var fields = schema.FieldsList.Select(f => f.IsNullable ? f : new Field(f.Name, f.DataType, true, f.HasMetadata ? f.Metadata : null));
        return new Schema(fields, schema.HasMetadata ? schema.Metadata : null);
    }

    /// <summary>
    /// Columns of <paramref name="batch"/> whose values look nearly all distinct (over 90% distinct among
    /// at least 4,096 sampled non-null values): dictionary encoding only costs time on those, since the
    /// writer fills a 1 MiB dictionary and then falls back to plain encoding, re-encoding what it had.
    /// Smaller samples say too little, so such columns keep the default (dictionary with fallback).
    /// </summary>
    public static List<string> NearUniqueColumns(RecordBatch batch)
    {
        const int MinSample = 4096, MaxSample = 16384;
        var result = new List<string>();
        var longs = new HashSet<long>();
        var hashes = new HashSet<int>();
        for (int c = 0; c < batch.ColumnCount; c++)
        {
            var data = batch.Column(c).Data;
            int n = Math.Min(data.Length, MaxSample);
            var validity = data.Buffers.Length > 0 ? data.Buffers[0].Span : default;
            int sampled = 0;
            longs.Clear();
            hashes.Clear();
            switch (data.DataType)
            {
                case FixedWidthType f when f is not BooleanType and not DictionaryType && f.BitWidth is 8 or 16 or 32 or 64:
                {
                    int width = f.BitWidth / 8;
                    var values = data.Buffers[1].Span;
                    for (int i = 0; i < n; i++)
                    {
                        int at = data.Offset + i;
                        if (!validity.IsEmpty && (validity[at >> 3] & (1 << (at & 7))) == 0) continue;
                        var v = values.Slice(at * width, width);
                        longs.Add(width switch { 8 => BitConverter.ToInt64(v), 4 => BitConverter.ToInt32(v), 2 => BitConverter.ToInt16(v), _ => v[0] });
                        sampled++;
                    }
                    if (sampled >= MinSample && longs.Count > sampled * 0.9) result.Add(batch.Schema.FieldsList[c].Name);
                    break;
                }
                case StringType or BinaryType:
                {
                    var offsets = MemoryMarshal.Cast<byte, int>(data.Buffers[1].Span);
                    var bytes = data.Buffers[2].Span;
                    for (int i = 0; i < n; i++)
                    {
                        int at = data.Offset + i;
                        if (!validity.IsEmpty && (validity[at >> 3] & (1 << (at & 7))) == 0) continue;
                        var h = new HashCode();
                        h.AddBytes(bytes[offsets[at]..offsets[at + 1]]);
                        hashes.Add(h.ToHashCode());
                        sampled++;
                    }
                    if (sampled >= MinSample && hashes.Count > sampled * 0.9) result.Add(batch.Schema.FieldsList[c].Name);
                    break;
                }
            }
        }
        return result;
    }

    /// <summary>Arrow bytes a batch holds (all buffers, children included): the row-group budget's measure.</summary>
    public static long Bytes(RecordBatch batch)
    {
        long total = 0;
        foreach (var array in batch.Arrays) total += Bytes(array.Data);
        return total;
    }

    private static long Bytes(ArrayData data)
    {
        long total = 0;
        foreach (var buffer in data.Buffers) total += buffer.Length;
        if (data.Children is { } children) foreach (var child in children) total += Bytes(child);
        if (data.Dictionary is { } dictionary) total += Bytes(dictionary);
        return total;
    }
}

/// <summary>
/// Arrays a topic writer makes for one write, over buffers rented from the shared array pool and
/// returned on Dispose, after the writer has encoded them (ParquetSharp does not keep exported arrays
/// past the call). Pooled managed memory rather than Arrow's native allocator: that one reports every
/// allocation as GC memory pressure, which cost a gen-2 collection every few batches.
/// </summary>
internal sealed class ScratchArrays : IDisposable
{
    private readonly List<byte[]> _rented = [];

    /// <summary>An int64 column holding <paramref name="value"/> <paramref name="length"/> times.</summary>
    public Int64Array Constant(long value, int length)
    {
        var memory = Rent(checked(length * sizeof(long)));
        MemoryMarshal.Cast<byte, long>(memory.Span).Fill(value);
        return new Int64Array(new ArrowBuffer(memory), ArrowBuffer.Empty, length, 0, 0);
    }

    /// <summary>
    /// <paramref name="length"/> nulls of <paramref name="type"/>: a zero validity bitmap over zeroed
    /// values (fixed width) or zero offsets (binary, string). Null for types we cannot fill this way.
    /// </summary>
    public IArrowArray? Nulls(IArrowType type, int length) => NullData(type, length) is { } data ? ArrowArrayFactory.BuildArray(data) : null;

    private ArrayData? NullData(IArrowType type, int length)
    {
        if (type is NullType) return new ArrayData(type, length, length, 0, []);
        int bitmap = (length + 7) / 8;
        switch (type)
        {
            case ListType list:
                return NullData(list.ValueDataType, 0) is { } none
                    ? new ArrayData(type, length, length, 0, [Zeros(bitmap), Zeros(checked((length + 1) * sizeof(int)))], [none])
                    : null;
            case DictionaryType dictionary:
                return NullData(dictionary.ValueType, 0) is { } empty && dictionary.IndexType is FixedWidthType index
                    ? new ArrayData(type, length, length, 0, [Zeros(bitmap), Zeros(checked(length * (index.BitWidth / 8)))], null, empty)
                    : null;
        }
        ArrowBuffer[]? buffers = type switch
        {
            BooleanType => [Zeros(bitmap), Zeros(bitmap)],
            FixedWidthType f when f.BitWidth % 8 == 0 => [Zeros(bitmap), Zeros(checked(length * (f.BitWidth / 8)))],
            BinaryType or StringType => [Zeros(bitmap), Zeros(checked((length + 1) * sizeof(int))), ArrowBuffer.Empty],
            LargeBinaryType or LargeStringType => [Zeros(bitmap), Zeros(checked((length + 1) * sizeof(long))), ArrowBuffer.Empty],
            _ => null,
        };
        return buffers is null ? null : new ArrayData(type, length, length, 0, buffers);
    }

    /// <summary>
    /// <paramref name="column"/>'s values in <paramref name="type"/>, which <see cref="ArrowSchemas.Join"/>
    /// of the two types gave: the column itself when the types are the same, else a cast (int64 →
    /// float64, decimal to a wider scale, a list's elements, nulls of any type we can fill). Null for
    /// nulls of a type we cannot fill this way.
    /// </summary>
    public IArrowArray? Convert(IArrowArray column, IArrowType type) =>
        ConvertData(column.Data, type) is { } data ? (ReferenceEquals(data, column.Data) ? column : ArrowArrayFactory.BuildArray(data)) : null;

    private ArrayData? ConvertData(ArrayData data, IArrowType type)
    {
        if (ArrowSchemas.SameType(data.DataType, type)) return data;
        switch (data.DataType, type)
        {
            case (NullType, _):
                return NullData(type, data.Length);
            case (Int64Type, DoubleType):
                return Float64(data);
            case (Decimal128Type from, Decimal128Type to) when to.Scale >= from.Scale:
                return Rescale(data, to, to.Scale - from.Scale);
            case (ListType, ListType to):
                // Same offsets and validity; only the elements change type.
                return ConvertData(data.Children[0], to.ValueDataType) is { } values
                    ? new ArrayData(to, data.Length, data.NullCount, data.Offset, data.Buffers, [values])
                    : null;
            default:
                Debug.Fail($"no conversion from {data.DataType.Name} to {type.Name}: Promote said Mismatch");
                return null;
        }
    }

    /// <summary>
    /// An int64 column as float64, nulls kept. Each value becomes the nearest double: exact up to 2^53 in
    /// magnitude, rounded beyond (what pandas does when it mixes ints and floats).
    /// </summary>
    private ArrayData Float64(ArrayData data)
    {
        int length = data.Length;
        var values = Rent(checked(length * sizeof(double)));
        var source = MemoryMarshal.Cast<byte, long>(data.Buffers[1].Span).Slice(data.Offset, length);
        var target = MemoryMarshal.Cast<byte, double>(values.Span);
        for (int i = 0; i < length; i++) target[i] = source[i];
        return new ArrayData(DoubleType.Default, length, data.NullCount, 0, [Validity(data), new ArrowBuffer(values)]);
    }

    /// <summary>
    /// decimal128 values multiplied by 10^<paramref name="shift"/> into <paramref name="type"/>: exact, since
    /// Join gave a type with at least as many integer digits, so every product fits 38 digits.
    /// </summary>
    private ArrayData Rescale(ArrayData data, Decimal128Type type, int shift)
    {
        int length = data.Length;
        var values = Rent(checked(length * 16));
        var source = MemoryMarshal.Cast<byte, Int128>(data.Buffers[1].Span).Slice(data.Offset, length);
        var target = MemoryMarshal.Cast<byte, Int128>(values.Span);
        Int128 factor = 1;
        for (int i = 0; i < shift; i++) factor *= 10;
        for (int i = 0; i < length; i++) target[i] = source[i] * factor;
        return new ArrayData(type, length, data.NullCount, 0, [Validity(data), new ArrowBuffer(values)]);
    }

    private ArrowBuffer Validity(ArrayData data) =>
        data.NullCount == 0 ? ArrowBuffer.Empty : Bits(data.Buffers[0].Span, data.Offset, data.Length);

    /// <summary>A copy of <paramref name="length"/> bits of a bitmap starting at bit <paramref name="offset"/>, realigned to bit 0.</summary>
    private ArrowBuffer Bits(ReadOnlySpan<byte> bitmap, int offset, int length)
    {
        var memory = Rent((length + 7) / 8);
        var target = memory.Span;
        if (offset % 8 == 0)
        {
            bitmap.Slice(offset / 8, target.Length).CopyTo(target);
            return new ArrowBuffer(memory);
        }
        target.Clear();
        for (int i = 0; i < length; i++)
        {
            int at = offset + i;
            if ((bitmap[at >> 3] & (1 << (at & 7))) != 0) target[i >> 3] |= (byte)(1 << (i & 7));
        }
        return new ArrowBuffer(memory);
    }

    private ArrowBuffer Zeros(int length)
    {
        var memory = Rent(length);
        memory.Span.Clear();
        return new ArrowBuffer(memory);
    }

    internal Memory<byte> Rent(int length)
    {
        byte[] array = ArrayPool<byte>.Shared.Rent(length);
        _rented.Add(array);
        return array.AsMemory(0, length);
    }

    public void Dispose()
    {
        foreach (var array in _rented) ArrayPool<byte>.Shared.Return(array);
        _rented.Clear();
    }
}
