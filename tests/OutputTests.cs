using Apache.Arrow;
using Apache.Arrow.Types;
using ParquetSharp;
using Xunit;
using ArrowTimeUnit = Apache.Arrow.Types.TimeUnit;

namespace Casparian.Tests;

public sealed class OutputTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private string Root => _dir.File("out");

    private OutputOptions Options(bool lineage = false) => Defaults.Output(Root) with { Lineage = lineage };

    private JobOutput Job(ulong id = 7, IReadOnlyList<SinkConfig>? sinks = null, OutputOptions? options = null) =>
        new(options ?? Options(), id, source: null, sinks ?? []);

    private static readonly OutputSource SourceA = new("sales", "1.0", "/data/in/a.csv", new string('a', 64));

    // ---- values and types ------------------------------------------------------------------------

    private static readonly TimestampType TsUtc = new(ArrowTimeUnit.Microsecond, "UTC");
    private static readonly TimestampType TsNy = new(ArrowTimeUnit.Microsecond, "America/New_York");
    private static readonly TimestampType TsNaive = new(ArrowTimeUnit.Microsecond, (string?)null);

    private static readonly long?[] Ints = [0, 1, -1, long.MinValue, long.MaxValue, null];
    private static readonly double?[] Doubles = [1.5, double.NaN, double.PositiveInfinity, double.NegativeInfinity, -0.0, null];
    private static readonly bool?[] Bools = [true, false, null, true, false, true];
    private static readonly string?[] Strings = ["plain", "", "é 😀 中文 \u0000 tab\t", null, "ascii", "last"];
    private static readonly byte[]?[] Blobs = [[0, 1, 255], [], null, [42], [0xFF, 0x00], [7, 7, 7]];
    // Microseconds since the epoch: before 1970, the epoch, a recent instant, far future.
    private static readonly long?[] Micros = [-1_000_000L, 0, 1_732_363_200_123_456L, null, 253_402_300_799_999_999L, 1];
    private static readonly int?[] Days = [-719_162, 0, 20_000, null, 2_932_896, 1];

    private static Schema AllTypesSchema() => new(
    [
        new Field("i", Int64Type.Default, true),
        new Field("f", DoubleType.Default, true),
        new Field("b", BooleanType.Default, true),
        new Field("s", StringType.Default, true),
        new Field("bin", BinaryType.Default, true),
        new Field("ts_utc", TsUtc, true),
        new Field("ts_ny", TsNy, true),
        new Field("ts", TsNaive, true),
        new Field("d", Date32Type.Default, true),
        new Field("n", NullType.Default, true),
    ], null);

    private static RecordBatch AllTypesBatch()
    {
        var i = new Int64Array.Builder();
        var f = new DoubleArray.Builder();
        var b = new BooleanArray.Builder();
        var s = new StringArray.Builder();
        var bin = new BinaryArray.Builder();
        var d = new Date32Array.Builder();
        for (int r = 0; r < Ints.Length; r++)
        {
            if (Ints[r] is { } iv) i.Append(iv); else i.AppendNull();
            if (Doubles[r] is { } fv) f.Append(fv); else f.AppendNull();
            if (Bools[r] is { } bv) b.Append(bv); else b.AppendNull();
            if (Strings[r] is { } sv) s.Append(sv); else s.AppendNull();
            if (Blobs[r] is { } xv) bin.Append(xv.AsSpan()); else bin.AppendNull();
        }
        return new RecordBatch(AllTypesSchema(),
        [
            i.Build(), f.Build(), b.Build(), s.Build(), bin.Build(),
            Timestamps(TsUtc, Micros), Timestamps(TsNy, Micros), Timestamps(TsNaive, Micros),
            Dates(Days), new NullArray(Ints.Length),
        ], Ints.Length);
    }

    private static IArrowArray Timestamps(TimestampType type, long?[] micros)
    {
        var values = new long[micros.Length];
        var validity = new byte[(micros.Length + 7) / 8];
        int nulls = 0;
        for (int r = 0; r < micros.Length; r++)
        {
            if (micros[r] is { } v) { values[r] = v; validity[r / 8] |= (byte)(1 << (r % 8)); }
            else nulls++;
        }
        return ArrowArrayFactory.BuildArray(new ArrayData(type, micros.Length, nulls, 0,
            [new ArrowBuffer(validity), new ArrowBuffer(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray())]));
    }

    private static IArrowArray Dates(int?[] days)
    {
        var values = new int[days.Length];
        var validity = new byte[(days.Length + 7) / 8];
        int nulls = 0;
        for (int r = 0; r < days.Length; r++)
        {
            if (days[r] is { } v) { values[r] = v; validity[r / 8] |= (byte)(1 << (r % 8)); }
            else nulls++;
        }
        return ArrowArrayFactory.BuildArray(new ArrayData(Date32Type.Default, days.Length, nulls, 0,
            [new ArrowBuffer(validity), new ArrowBuffer(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray())]));
    }

    private static RecordBatch Ints64(string column, params long?[] values) => Batch((column, Int64Column(values)));

    private static IArrowArray Int64Column(params long?[] values)
    {
        var b = new Int64Array.Builder();
        foreach (var v in values) if (v is { } x) b.Append(x); else b.AppendNull();
        return b.Build();
    }

    private static IArrowArray StringColumn(params string?[] values)
    {
        var b = new StringArray.Builder();
        foreach (var v in values) if (v is null) b.AppendNull(); else b.Append(v);
        return b.Build();
    }

    private static RecordBatch Batch(params (string Name, IArrowArray Array)[] columns) =>
        new(new Schema(columns.Select(c => new Field(c.Name, c.Array.Data.DataType, true)), null), columns.Select(c => c.Array), columns[0].Array.Length);

    [Fact]
    public void Output_RoundTrip_EveryTypeExactValuesAndTypes()
    {
        OutputResult result;
        using (var job = Job())
        using (var batch = AllTypesBatch())
        {
            job.Write("output", batch);
            result = job.Commit();
        }

        var file = Read(Path.Combine(Root, "output", "job-7.parquet"));
        Assert.Equal(
            ["int64", "double", "bool", "utf8", "binary", "timestamp[us, tz=UTC]", "timestamp[us, tz=America/New_York]", "timestamp[us]", "date32", "null"],
            file.Schema.FieldsList.Select(f => ArrowSchemas.Describe(f.DataType)));
        Assert.Equal(Ints.Cast<object?>(), file.Values("i"));
        var doubles = file.Values("f");
        for (int r = 0; r < Doubles.Length; r++)
        {
            if (Doubles[r] is { } want) Assert.Equal(BitConverter.DoubleToInt64Bits(want), BitConverter.DoubleToInt64Bits((double)doubles[r]!));
            else Assert.Null(doubles[r]);
        }
        Assert.Equal(Bools.Cast<object?>(), file.Values("b"));
        Assert.Equal(Strings.Cast<object?>(), file.Values("s"));
        Assert.Equal(Blobs.Select(x => x is null ? null : Convert.ToHexString(x)), file.Values("bin").Select(x => x is null ? null : Convert.ToHexString((byte[])x)));
        Assert.Equal(Micros.Cast<object?>(), file.Values("ts_utc"));
        Assert.Equal(Micros.Cast<object?>(), file.Values("ts_ny"));
        Assert.Equal(Micros.Cast<object?>(), file.Values("ts"));
        Assert.Equal(Days.Cast<object?>(), file.Values("d"));
        Assert.All(file.Values("n"), Assert.Null);

        var artifact = Assert.Single(result.Artifacts);
        Assert.Equal("output", artifact.Topic);
        Assert.Equal(new Uri(Path.Combine(Root, "output", "job-7.parquet")).AbsoluteUri, artifact.Uri);
        Assert.StartsWith("file:///", artifact.Uri);
        Assert.Equal(Ints.Length, artifact.Rows);
        Assert.Equal(new FileInfo(Path.Combine(Root, "output", "job-7.parquet")).Length, artifact.Bytes);
        Assert.Equal(new Dictionary<string, long> { ["rows"] = Ints.Length, ["bytes"] = artifact.Bytes, ["batches"] = 1, ["write_ms"] = result.DurationMs }, result.Metrics());
        // schema: the topic's columns after the job, for the store's schema registry (issue 14).
        Assert.Equal(new Dictionary<string, string> { ["topic"] = "output", ["uri"] = artifact.Uri, ["rows"] = "6", ["bytes"] = artifact.Bytes.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["schema"] = SchemaDrift.ToJson(SchemaDrift.Columns(file.Schema)) },
            Assert.Single(result.ReceiptArtifacts()));
    }

    [Fact]
    public void Output_Compression_IsSnappyByDefault()
    {
        using (var job = Job())
        using (var batch = Ints64("a", 1, 2, 3))
        {
            job.Write("output", batch);
            job.Commit();
        }
        using var reader = new ParquetFileReader(Path.Combine(Root, "output", "job-7.parquet"));
        using var rowGroup = reader.RowGroup(0);
        Assert.Equal(Compression.Snappy, rowGroup.MetaData.GetColumnChunkMetaData(0).Compression);
    }

    [Fact]
    public void Output_Dictionary_OffForNearUniqueColumnsOnly()
    {
        const int n = 8192;
        using (var job = Job())
        using (var batch = Batch(
            ("id", Int64Column(Enumerable.Range(0, n).Select(i => (long?)i).ToArray())),
            ("cat", Int64Column(Enumerable.Range(0, n).Select(i => (long?)(i % 10)).ToArray())),
            ("uuid", StringColumn(Enumerable.Range(0, n).Select(i => Guid.NewGuid().ToString()).ToArray())),
            ("city", StringColumn(Enumerable.Range(0, n).Select(i => "city-" + (i % 7)).ToArray()))))
        {
            job.Write("output", batch);
            job.Commit();
        }
        using var reader = new ParquetFileReader(Path.Combine(Root, "output", "job-7.parquet"));
        using var rowGroup = reader.RowGroup(0);
        bool Dictionary(int column) => rowGroup.MetaData.GetColumnChunkMetaData(column).Encodings.Contains(Encoding.RleDictionary);
        Assert.Equal([false, true, false, true], Enumerable.Range(0, 4).Select(Dictionary));
    }

    [Fact]
    public void Output_SeveralBatches_AppendInOrderToOneFile()
    {
        using (var job = Job())
        {
            for (int b = 0; b < 5; b++)
                using (var batch = Ints64("a", b * 10, b * 10 + 1))
                    job.Write("output", batch);
            var result = job.Commit();
            Assert.Equal(5, result.Batches);
            Assert.Equal(10, result.Rows);
        }
        Assert.Equal([0L, 1, 10, 11, 20, 21, 30, 31, 40, 41], Read(Path.Combine(Root, "output", "job-7.parquet")).Values("a").Cast<long>());
        Assert.Single(Directory.GetFiles(Path.Combine(Root, "output")));
    }

    [Fact]
    public void Output_RowGroups_SplitByRowAndByteBudget()
    {
        // 3 batches of 1000 rows; row groups of at most 1500 rows → the second batch starts a new group.
        var byRows = Options() with { RowGroupRows = 1500 };
        // 8000 bytes per batch against a 3000-byte budget → each batch is sliced into 3 groups.
        var byBytes = Options() with { Root = _dir.File("bytes"), RowGroupBytes = 3000 };
        foreach (var options in new[] { byRows, byBytes })
        {
            using var job = Job(options: options);
            for (int b = 0; b < 3; b++)
                using (var batch = Ints64("a", Enumerable.Range(b * 1000, 1000).Select(v => (long?)v).ToArray()))
                    job.Write("output", batch);
            job.Commit();
        }
        var rows = Read(Path.Combine(Root, "output", "job-7.parquet"));
        Assert.Equal(Enumerable.Range(0, 3000).Select(v => (long)v), rows.Values("a").Cast<long>());
        Assert.Equal(3, rows.RowGroups);
        var bytes = Read(Path.Combine(_dir.File("bytes"), "output", "job-7.parquet"));
        Assert.Equal(Enumerable.Range(0, 3000).Select(v => (long)v), bytes.Values("a").Cast<long>());
        Assert.Equal(9, bytes.RowGroups);
    }

    [Fact]
    public void Output_SeveralTopics_OneFileEach()
    {
        OutputResult result;
        using (var job = Job())
        {
            using (var a = Ints64("x", 1, 2)) job.Write("orders", a);
            using (var b = Batch(("name", StringColumn("n1")))) job.Write("customers", b);
            using (var c = Ints64("x", 3)) job.Write("orders", c);
            result = job.Commit();
        }
        Assert.Equal(["orders", "customers"], result.Artifacts.Select(a => a.Topic));
        Assert.Equal([1L, 2, 3], Read(Path.Combine(Root, "orders", "job-7.parquet")).Values("x").Cast<long>());
        Assert.Equal(["n1"], Read(Path.Combine(Root, "customers", "job-7.parquet")).Values("name").Cast<string>());
        Assert.Equal(4, result.Rows);
        Assert.Equal(result.Artifacts.Sum(a => a.Bytes), result.Bytes);
    }

    [Fact]
    public void Output_NoBatches_CommitsNothing()
    {
        using var job = Job();
        var result = job.Commit();
        Assert.Empty(result.Artifacts);
        Assert.Equal(0, result.Rows);
        Assert.False(Directory.Exists(Root) && Directory.EnumerateFileSystemEntries(Root).Any());
    }

    [Fact]
    public void Output_Lineage_AddsJobSourceHashAndParserColumnsAndFooter()
    {
        using (var job = new JobOutput(Options(lineage: true), 42, SourceA, []))
        {
            using (var a = Ints64("a", 1, 2)) job.Write("output", a);
            // A longer batch after a shorter one: the cached string columns grow.
            using (var b = Ints64("a", 3, 4, 5)) job.Write("output", b);
            using (var c = Ints64("a", 6)) job.Write("output", c);
            job.Commit();
        }
        string path = Path.Combine(Root, "output", SinkTarget.SourceFileName("sales", SourceA.Path));
        var file = Read(path);
        Assert.Equal(["a", "_job_id", "_source", "_source_hash", "_parser"], file.Schema.FieldsList.Select(f => f.Name));
        Assert.Equal(Enumerable.Repeat(42L, 6), file.Values("_job_id").Cast<long>());
        Assert.Equal(Enumerable.Repeat(SourceA.Path, 6), file.Values("_source").Cast<string>());
        Assert.Equal(Enumerable.Repeat(SourceA.ContentHash, 6), file.Values("_source_hash").Cast<string>());
        Assert.Equal(Enumerable.Repeat("sales@1.0", 6), file.Values("_parser").Cast<string>());
        Assert.Equal(["int64", "int64", "utf8", "utf8", "utf8"], Types(file));
        using var reader = new ParquetFileReader(path);
        var footer = reader.FileMetaData.KeyValueMetadata;
        Assert.Equal(("42", SourceA.Path, SourceA.ContentHash, "sales@1.0"),
            (footer["casparian.job_id"], footer["casparian.source"], footer["casparian.source_hash"], footer["casparian.parser"]));
    }

    private static OutputResult WriteSource(OutputOptions options, ulong id, OutputSource source, IReadOnlyList<string>? supersedes, params string[] topics)
    {
        using var job = new JobOutput(options, id, source, []);
        foreach (string topic in topics)
            using (var a = Ints64("a", (long)id)) job.Write(topic, a);
        return job.Commit(supersedes);
    }

    [Fact]
    public void Output_Source_LaterJobForTheSameSourceReplacesItsFile_AndATopicItNoLongerWritesLosesTheOldOne()
    {
        var first = WriteSource(Options(), 1, SourceA, null, "orders", "totals");
        var other = SourceA with { Path = "/data/in/b.csv" };
        WriteSource(Options(), 2, other, null, "orders", "totals");
        // Version 1.1 of the parser for source a writes orders only.
        WriteSource(Options(), 3, SourceA with { ParserVersion = "1.1" }, [.. first.Artifacts.Select(a => a.Uri)], "orders");

        string name = SinkTarget.SourceFileName("sales", SourceA.Path), otherName = SinkTarget.SourceFileName("sales", other.Path);
        Assert.StartsWith("sales-a-", name);
        Assert.Equal(new[] { name, otherName }.Order(StringComparer.Ordinal), Directory.GetFiles(Path.Combine(Root, "orders")).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal([3L], Read(Path.Combine(Root, "orders", name)).Values("a").Cast<long>());
        Assert.Equal([otherName], Directory.GetFiles(Path.Combine(Root, "totals")).Select(Path.GetFileName));
    }

    [Theory]
    // Outside the output root and every allowed root.
    [InlineData("file://{outside}/x.parquet")]
    // Not a Parquet file.
    [InlineData("file://{root}/orders/notes.txt")]
    // A hidden (temp) file.
    [InlineData("file://{root}/orders/.x.parquet")]
    // Climbing out with '..'.
    [InlineData("file://{root}/orders/../../outside/x.parquet")]
    // Not a local file.
    [InlineData("http://example.com/{root}/orders/x.parquet")]
    public void Output_Supersede_TouchesOnlyParquetFilesASinkCouldHaveWritten(string template)
    {
        string outside = _dir.File("outside");
        Directory.CreateDirectory(outside);
        Directory.CreateDirectory(Path.Combine(Root, "orders"));
        var planted = new[] { Path.Combine(outside, "x.parquet"), Path.Combine(Root, "orders", "notes.txt"), Path.Combine(Root, "orders", ".x.parquet") };
        foreach (var p in planted) File.WriteAllText(p, "keep");
        string uri = template.Replace("{outside}", outside, StringComparison.Ordinal).Replace("{root}", Root, StringComparison.Ordinal);
        WriteSource(Options(), 1, SourceA, [uri], "orders");
        Assert.All(planted, p => Assert.True(File.Exists(p), p));
    }

    [Fact]
    public void Output_Lineage_Off_AddsNoColumns()
    {
        using (var job = Job())
        using (var a = Ints64("a", 1))
        {
            job.Write("output", a);
            job.Commit();
        }
        Assert.Equal(["a"], Read(Path.Combine(Root, "output", "job-7.parquet")).Schema.FieldsList.Select(f => f.Name));
    }

    [Fact]
    public void Output_Lineage_ReservedColumnInTable_Fails()
    {
        using var job = Job(options: Options(lineage: true));
        using var a = Ints64("_job_id", 1);
        var e = Assert.Throws<OutputException>(() => job.Write("output", a));
        Assert.Contains("'_job_id'", e.Message);
        Assert.Contains("lineage", e.Message);
    }

    // ---- schema rules --------------------------------------------------------------------------------

    [Fact]
    public void Output_SchemaMismatch_NamesTopicAndEveryDifferingColumn()
    {
        using var job = Job();
        using (var first = Batch(("id", Int64Column(1)), ("name", StringColumn("a")), ("gone", Int64Column(1))))
            job.Write("orders", first);
        using var second = Batch(("id", StringColumn("1")), ("name", StringColumn("b")), ("extra", Int64Column(2)));
        var e = Assert.Throws<OutputException>(() => job.Write("orders", second));
        Assert.Contains("topic 'orders'", e.Message);
        Assert.Contains("column 'id' is int64 in the topic but utf8 in this table", e.Message);
        Assert.Contains("column 'gone' (int64) is missing", e.Message);
        Assert.Contains("column 'extra' (int64) is new", e.Message);
        Assert.DoesNotContain("'name'", e.Message);
        Assert.Equal(ExitCode.BadInput, e.Code);
    }

    [Fact]
    public void Output_SchemaMismatch_TimestampTimeZoneCounts()
    {
        using var job = Job();
        using (var first = Batch(("t", Timestamps(TsUtc, [1]))))
            job.Write("output", first);
        using var second = Batch(("t", Timestamps(TsNaive, [2])));
        var e = Assert.Throws<OutputException>(() => job.Write("output", second));
        Assert.Contains("column 't' is timestamp[us, tz=UTC] in the topic but timestamp[us] in this table", e.Message);
    }

    [Fact]
    public void Output_DuplicateColumn_Fails()
    {
        using var job = Job();
        using var batch = Batch(("a", Int64Column(1)), ("a", Int64Column(2)));
        Assert.Contains("two columns named 'a'", Assert.Throws<OutputException>(() => job.Write("output", batch)).Message);
    }

    [Fact]
    public void Output_ColumnsInAnotherOrder_AreMatchedByName()
    {
        using (var job = Job())
        {
            using (var a = Batch(("x", Int64Column(1)), ("y", StringColumn("one")))) job.Write("output", a);
            using (var b = Batch(("y", StringColumn("two")), ("x", Int64Column(2)))) job.Write("output", b);
            job.Commit();
        }
        var file = Read(Path.Combine(Root, "output", "job-7.parquet"));
        Assert.Equal([1L, 2], file.Values("x").Cast<long>());
        Assert.Equal(["one", "two"], file.Values("y").Cast<string>());
    }

    [Fact]
    public void Output_NullTypedColumn_BecomesNullsOfTheTopicType()
    {
        using (var job = Job(options: Options(lineage: true)))
        {
            using (var a = Batch(("x", Int64Column(1)), ("s", StringColumn("a")), ("t", Timestamps(TsUtc, [5])))) job.Write("output", a);
            using (var b = Batch(("x", new NullArray(2)), ("s", new NullArray(2)), ("t", new NullArray(2)))) job.Write("output", b);
            using (var c = Batch(("x", Int64Column(3)), ("s", StringColumn("c")), ("t", Timestamps(TsUtc, [6])))) job.Write("output", c);
            job.Commit();
        }
        var file = Read(Path.Combine(Root, "output", "job-7.parquet"));
        Assert.Equal(["int64", "utf8", "timestamp[us, tz=UTC]", "int64", "utf8", "utf8", "utf8"], file.Schema.FieldsList.Select(f => ArrowSchemas.Describe(f.DataType)));
        Assert.Equal([1L, null, null, 3L], file.Values("x"));
        Assert.Equal(["a", null, null, "c"], file.Values("s"));
        Assert.Equal([5L, null, null, 6L], file.Values("t"));
        Assert.Equal([7L, 7, 7, 7], file.Values("_job_id").Cast<long>());
    }

    [Fact]
    public void Output_NullTypedFirstThenConcrete_TopicWidensAndKeepsEarlierRows()
    {
        using (var job = Job(options: Options(lineage: true) with { RowGroupRows = 2 }))
        {
            using (var a = Batch(("x", Int64Column(1, 2, 3)), ("maybe", new NullArray(3)), ("later", new NullArray(3)))) job.Write("output", a);
            using (var b = Batch(("x", Int64Column(4)), ("maybe", StringColumn("m")), ("later", new NullArray(1)))) job.Write("output", b);
            using (var c = Batch(("x", Int64Column(5)), ("maybe", new NullArray(1)), ("later", Timestamps(TsNy, [9])))) job.Write("output", c);
            var result = job.Commit();
            Assert.Equal(5, result.Rows);
            Assert.Equal(3, result.Batches);
        }
        var file = Read(Path.Combine(Root, "output", "job-7.parquet"));
        Assert.Equal(["int64", "utf8", "timestamp[us, tz=America/New_York]", "int64", "utf8", "utf8", "utf8"], file.Schema.FieldsList.Select(f => ArrowSchemas.Describe(f.DataType)));
        Assert.Equal([1L, 2L, 3L, 4L, 5L], file.Values("x"));
        Assert.Equal([null, null, null, "m", null], file.Values("maybe"));
        Assert.Equal([null, null, null, null, 9L], file.Values("later"));
        Assert.Equal([7L, 7, 7, 7, 7], file.Values("_job_id").Cast<long>());
        // The widening rewrite left no temp file behind.
        Assert.Equal(["job-7.parquet"], Directory.GetFiles(Path.Combine(Root, "output")).Select(Path.GetFileName));
    }

    [Fact]
    public void Output_AllNullColumnEverywhere_StaysNullType()
    {
        using (var job = Job())
        {
            using (var a = Batch(("x", Int64Column(1)), ("n", new NullArray(1)))) job.Write("output", a);
            using (var b = Batch(("x", Int64Column(2)), ("n", new NullArray(1)))) job.Write("output", b);
            job.Commit();
        }
        var file = Read(Path.Combine(Root, "output", "job-7.parquet"));
        Assert.IsType<NullType>(file.Schema.GetFieldByName("n").DataType);
        Assert.Equal([null, null], file.Values("n"));
    }

    // ---- int64 ↔ float64 ---------------------------------------------------------------------------

    private const long TwoTo53 = 1L << 53;

    private static IArrowArray Float64Column(params double?[] values)
    {
        var b = new DoubleArray.Builder();
        foreach (var v in values) if (v is { } x) b.Append(x); else b.AppendNull();
        return b.Build();
    }

    private static string[] Types(ParquetContent file) => file.Schema.FieldsList.Select(f => ArrowSchemas.Describe(f.DataType)).ToArray();

    [Fact]
    public void Output_Int64ThenFloat64_TopicWidensAndRewritesEarlierRowsAsFloat64()
    {
        // Two-row groups, so the rewrite reads several row groups back.
        using (var job = Job(options: Options(lineage: true) with { RowGroupRows = 2 }))
        {
            using (var a = Batch(("v", Int64Column(1, null, -3, TwoTo53, TwoTo53 + 1, long.MaxValue)), ("s", StringColumn("a", "b", "c", "d", "e", "f")))) job.Write("output", a);
            using (var b = Batch(("v", Float64Column(2.5, null, double.NaN)), ("s", StringColumn("g", "h", "i")))) job.Write("output", b);
            using (var c = Batch(("v", Int64Column(7)), ("s", StringColumn("j")))) job.Write("output", c);
            var result = job.Commit();
            Assert.Equal(10, result.Rows);
        }
        var file = Read(Path.Combine(Root, "output", "job-7.parquet"));
        Assert.Equal(["double", "utf8", "int64", "utf8", "utf8", "utf8"], Types(file));
        // 2^53 + 1 has no double: it rounds to 2^53 (ties to even), as the header comment documents.
        Assert.Equal([1.0, null, -3.0, 9007199254740992.0, 9007199254740992.0, 9223372036854775807.0, 2.5, null, double.NaN, 7.0], file.Values("v"));
        Assert.Equal(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"], file.Values("s"));
        Assert.Equal(Enumerable.Repeat(7L, 10), file.Values("_job_id").Cast<long>());
        Assert.Equal(Enumerable.Repeat("", 10), file.Values("_parser").Cast<string>());
        Assert.Equal(["job-7.parquet"], Directory.GetFiles(Path.Combine(Root, "output")).Select(Path.GetFileName));
    }

    [Fact]
    public void Output_Float64ThenInt64_BatchIsCastKeepingNulls()
    {
        var values = Enumerable.Range(0, 20).Select(i => i % 3 == 0 ? null : (long?)(i * 1000 - 7)).ToArray();
        using (var job = Job())
        {
            using (var a = Batch(("v", Float64Column(0.5)))) job.Write("output", a);
            using (var b = Batch(("v", Int64Column(-1, null, long.MinValue, TwoTo53 + 1)))) job.Write("output", b);
            // Slices whose validity bitmaps start mid-byte and on a byte boundary (a slice shares its
            // parent's buffers, so each gets a parent of its own to dispose with it).
            using (var c = Batch(("v", ArrowArrayFactory.Slice(Int64Column(values), 5, 13)))) job.Write("output", c);
            using (var d = Batch(("v", ArrowArrayFactory.Slice(Int64Column(values), 8, 12)))) job.Write("output", d);
            using (var e = Batch(("v", Int64Column(4, 5)))) job.Write("output", e);
            job.Commit();
        }
        var file = Read(Path.Combine(Root, "output", "job-7.parquet"));
        Assert.Equal(["double"], Types(file));
        var want = new List<object?> { 0.5, -1.0, null, -9223372036854775808.0, 9007199254740992.0 };
        want.AddRange(values.Skip(5).Take(13).Select(v => v is { } x ? (object)(double)x : null));
        want.AddRange(values.Skip(8).Take(12).Select(v => v is { } x ? (object)(double)x : null));
        want.AddRange([4.0, 5.0]);
        Assert.Equal(want, file.Values("v"));
    }

    [Fact]
    public void Output_NumericAndNullPromotions_MixInOneTopic()
    {
        using (var job = Job(options: Options() with { RowGroupRows = 1 }))
        {
            // a: null → int64 → float64 (two rewrites); b: int64 → float64, then int64 again (cast);
            // c: float64 throughout, with a null-typed and an int64 batch.
            using (var x = Batch(("a", new NullArray(2)), ("b", Int64Column(1, 2)), ("c", Float64Column(0.25, null)))) job.Write("output", x);
            using (var y = Batch(("a", Int64Column(3)), ("b", Float64Column(2.5)), ("c", new NullArray(1)))) job.Write("output", y);
            using (var z = Batch(("a", Float64Column(4.5)), ("b", Int64Column(5)), ("c", Int64Column(6)))) job.Write("output", z);
            using (var w = Batch(("a", new NullArray(1)), ("b", new NullArray(1)), ("c", Int64Column([null])))) job.Write("output", w);
            job.Commit();
        }
        var file = Read(Path.Combine(Root, "output", "job-7.parquet"));
        Assert.Equal(["double", "double", "double"], Types(file));
        Assert.Equal([null, null, 3.0, 4.5, null], file.Values("a"));
        Assert.Equal([1.0, 2.0, 2.5, 5.0, null], file.Values("b"));
        Assert.Equal([0.25, null, null, 6.0, null], file.Values("c"));
        Assert.Equal(["job-7.parquet"], Directory.GetFiles(Path.Combine(Root, "output")).Select(Path.GetFileName));
    }

    [Fact]
    public void Output_SeveralColumnsWidenInOneBatch()
    {
        using (var job = Job())
        {
            using (var a = Batch(("x", Int64Column(1, 2)), ("keep", Int64Column(10, 20)), ("y", Int64Column(3, null)), ("n", new NullArray(2)), ("z", Int64Column(5, 6)))) job.Write("output", a);
            using (var b = Batch(("z", Float64Column(0.5)), ("y", Float64Column(-0.5)), ("n", StringColumn("s")), ("keep", Int64Column(30)), ("x", Float64Column(1e300)))) job.Write("output", b);
            job.Commit();
        }
        var file = Read(Path.Combine(Root, "output", "job-7.parquet"));
        Assert.Equal(["double", "int64", "double", "utf8", "double"], Types(file));
        Assert.Equal([1.0, 2.0, 1e300], file.Values("x"));
        Assert.Equal([10L, 20L, 30L], file.Values("keep"));
        Assert.Equal([3.0, null, -0.5], file.Values("y"));
        Assert.Equal([null, null, "s"], file.Values("n"));
        Assert.Equal([5.0, 6.0, 0.5], file.Values("z"));
    }

    [Fact]
    public void Output_SchemaMismatch_MessageExactAndNothingWidenedBesideIt()
    {
        using var job = Job();
        using (var first = Batch(("x", Int64Column(1)), ("s", StringColumn("a")))) job.Write("output", first);
        // x alone could be promoted; s cannot, so the table is refused as a whole.
        using var second = Batch(("x", Float64Column(1.5)), ("s", Int64Column(2)));
        var e = Assert.Throws<OutputException>(() => job.Write("output", second));
        Assert.Equal("job 7: topic 'output' got a table whose schema differs from the topic's earlier tables: column 's' is utf8 in the topic but int64 in this table; yield one schema per topic or route the table to another topic", e.Message);
    }

    [Theory]
    [InlineData("int64", "utf8", nameof(Promotion.Mismatch))]
    [InlineData("utf8", "int64", nameof(Promotion.Mismatch))]
    [InlineData("int64", "int32", nameof(Promotion.Mismatch))]     // only int64 is promoted, not narrower ints
    [InlineData("int64", "uint64", nameof(Promotion.Mismatch))]    // nor unsigned
    [InlineData("double", "float", nameof(Promotion.Mismatch))]    // nor float32
    [InlineData("float", "int64", nameof(Promotion.Mismatch))]     // an int64 into float32 would lose more than pandas does
    [InlineData("double", "bool", nameof(Promotion.Mismatch))]
    [InlineData("int64", "double", nameof(Promotion.WidenTopic))]
    [InlineData("double", "int64", nameof(Promotion.Cast))]
    [InlineData("null", "int64", nameof(Promotion.WidenTopic))]
    [InlineData("int64", "null", nameof(Promotion.FillNulls))]
    [InlineData("null", "null", nameof(Promotion.None))]
    [InlineData("double", "double", nameof(Promotion.None))]
    public void Output_Promote_OnlyNullAndInt64Float64(string topic, string batch, string promotion)
    {
        var expected = Enum.Parse<Promotion>(promotion);
        Assert.Equal(expected, ArrowSchemas.Promote(TypeNamed(topic), TypeNamed(batch)));
        if (expected is not Promotion.Mismatch) return;
        using var job = Job();
        using (var first = Batch(("c", Column(topic)))) job.Write("output", first);
        using var second = Batch(("c", Column(batch)));
        var e = Assert.Throws<OutputException>(() => job.Write("output", second));
        Assert.Contains($"column 'c' is {topic} in the topic but {batch} in this table", e.Message);
    }

    private static IArrowType TypeNamed(string name) => name switch
    {
        "int64" => Int64Type.Default,
        "int32" => Int32Type.Default,
        "uint64" => UInt64Type.Default,
        "double" => DoubleType.Default,
        "float" => FloatType.Default,
        "bool" => BooleanType.Default,
        "utf8" => StringType.Default,
        _ => NullType.Default,
    };

    private static IArrowArray Column(string type) => type switch
    {
        "int64" => Int64Column(1),
        "int32" => new Int32Array.Builder().Append(1).Build(),
        "uint64" => new UInt64Array.Builder().Append(1).Build(),
        "double" => Float64Column(1),
        "float" => new FloatArray.Builder().Append(1).Build(),
        "bool" => new BooleanArray.Builder().Append(true).Build(),
        "utf8" => StringColumn("1"),
        _ => new NullArray(1),
    };

    // ---- atomicity, retries ------------------------------------------------------------------------

    [Fact]
    public void Output_TempFile_HiddenUntilCommitAndGoneAfter()
    {
        string dir = Path.Combine(Root, "output");
        using (var job = Job())
        {
            using (var a = Ints64("a", 1)) job.Write("output", a);
            var during = Directory.GetFiles(dir).Select(Path.GetFileName).ToArray();
            var temp = Assert.Single(during);
            Assert.StartsWith(".job-7.parquet.tmp-7-", temp);
            Assert.DoesNotContain(during, f => f!.EndsWith(".parquet", StringComparison.Ordinal));
            job.Commit();
            Assert.Equal(["job-7.parquet"], Directory.GetFiles(dir).Select(Path.GetFileName));
        }
        Assert.Equal(["job-7.parquet"], Directory.GetFiles(dir).Select(Path.GetFileName));
    }

    [Fact]
    public void Output_DisposeWithoutCommit_LeavesNothing()
    {
        using (var job = Job())
        {
            using (var a = Ints64("a", 1)) job.Write("output", a);
            using (var b = Ints64("a", 1)) job.Write("other", b);
        }
        Assert.Empty(Directory.GetFiles(Path.Combine(Root, "output")));
        Assert.Empty(Directory.GetFiles(Path.Combine(Root, "other")));
    }

    [Fact]
    public void Output_FailedWrite_RefusesCommitAndDisposeLeavesNothing()
    {
        using (var job = Job())
        {
            using (var a = Ints64("a", 1)) job.Write("output", a);
            using var bad = Batch(("a", StringColumn("x")));
            Assert.Throws<OutputException>(() => job.Write("output", bad));
            Assert.Throws<InvalidOperationException>(() => job.Commit());
        }
        Assert.Empty(Directory.GetFiles(Path.Combine(Root, "output")));
    }

    [Fact]
    public void Output_Retry_OverwritesOwnFileAndRemovesStaleTemp()
    {
        string dir = Path.Combine(Root, "output");
        using (var first = Job())
        using (var a = Ints64("a", 1, 2, 3))
        {
            first.Write("output", a);
            first.Commit();
        }
        // What a kill -9 in the middle of an attempt leaves, and another job's temp file (not ours to delete).
        File.WriteAllText(Path.Combine(dir, ".job-7.parquet.tmp-7-deadbeef0000"), "partial");
        File.WriteAllText(Path.Combine(dir, ".job-77.parquet.tmp-77-deadbeef0000"), "partial");
        using (var retry = Job())
        using (var b = Ints64("a", 9))
        {
            retry.Write("output", b);
            retry.Commit();
        }
        Assert.Equal([".job-77.parquet.tmp-77-deadbeef0000", "job-7.parquet"], Directory.GetFiles(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal([9L], Read(Path.Combine(dir, "job-7.parquet")).Values("a").Cast<long>());
    }

    // ---- durability of the rename ----------------------------------------------------------------------

    [Fact]
    public void Output_DirectorySync_SyncsADirectoryAndReportsErrno()
    {
        Directory.CreateDirectory(Root);
        Assert.Equal(0, DirectorySync.Flush(Root));
        // ENOENT from libc itself: the P/Invoke really runs (a stub returning 0 would fail here).
        Assert.Equal(2, DirectorySync.Flush(Path.Combine(Root, "missing")));
    }

    [Fact]
    public void Output_Commit_IntoNewNestedDirectoriesAndReplace_SyncsWithoutError()
    {
        // Root, a, b and c do not exist yet: the commit syncs c, b, a, Root and Root's parent.
        Commit(1, Sink("output", "parquet://a/b/c"), 10);
        Commit(2, Sink("output", "parquet://a/b/c", SinkMode.Replace), 20);
        Assert.Equal(["job-2.parquet"], Directory.GetFiles(Path.Combine(Root, "a", "b", "c")).Select(Path.GetFileName));
        Assert.Equal([20L], Read(Path.Combine(Root, "a", "b", "c", "job-2.parquet")).Values("a").Cast<long>());
    }

    // ---- modes -------------------------------------------------------------------------------------

    private static SinkConfig Sink(string topic, string uri, SinkMode mode = SinkMode.Append) => new() { Topic = topic, Uri = uri, Mode = mode };

    private void Commit(ulong id, SinkConfig sink, long value)
    {
        using var job = Job(id, [sink]);
        using var a = Ints64("a", value);
        job.Write(sink.Topic, a);
        job.Commit();
    }

    [Fact]
    public void Output_ModeAppend_Directory_KeepsOtherJobsFiles()
    {
        var sink = Sink("output", "parquet://sales");
        Commit(1, sink, 10);
        Commit(2, sink, 20);
        Commit(1, sink, 11);
        string dir = Path.Combine(Root, "sales");
        Assert.Equal(["job-1.parquet", "job-2.parquet"], Directory.GetFiles(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal([11L], Read(Path.Combine(dir, "job-1.parquet")).Values("a").Cast<long>());
    }

    [Fact]
    public void Output_ModeReplace_Directory_LeavesOnlyThisJobsFile()
    {
        Commit(1, Sink("output", "parquet://sales"), 10);
        Commit(2, Sink("output", "parquet://sales"), 20);
        File.WriteAllText(Path.Combine(Root, "sales", "notes.txt"), "not parquet: kept");
        Commit(3, Sink("output", "parquet://sales", SinkMode.Replace), 30);
        Assert.Equal(["job-3.parquet", "notes.txt"], Directory.GetFiles(Path.Combine(Root, "sales")).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Output_ModeError_Directory_FailsOnOtherDataButNotOnOwnRetry()
    {
        var sink = Sink("output", "parquet://sales", SinkMode.Error);
        Commit(1, sink, 10);
        Commit(1, sink, 11);
        var e = Assert.Throws<OutputException>(() => Job(2, [sink]));
        Assert.Contains("mode error", e.Message);
        Assert.Contains("job-1.parquet", e.Message);
        Assert.Equal(ExitCode.BadInput, e.Code);
    }

    [Fact]
    public void Output_ModeError_CheckedAgainAtCommit()
    {
        var sink = Sink("output", "parquet://sales", SinkMode.Error);
        using var job = Job(2, [sink]);
        using (var a = Ints64("a", 1)) job.Write("output", a);
        Commit(1, Sink("output", "parquet://sales"), 10);
        Assert.Throws<OutputException>(() => job.Commit());
        job.Dispose();
        Assert.Equal(["job-1.parquet"], Directory.GetFiles(Path.Combine(Root, "sales")).Select(Path.GetFileName));
    }

    [Fact]
    public void Output_SingleFile_ReplaceOverwritesAndAppendIsRefused()
    {
        Commit(1, Sink("output", "parquet://sales.parquet", SinkMode.Replace), 10);
        Commit(2, Sink("output", "parquet://sales.parquet", SinkMode.Replace), 20);
        Assert.Equal(["sales.parquet"], Directory.GetFiles(Root).Select(Path.GetFileName));
        Assert.Equal([20L], Read(Path.Combine(Root, "sales.parquet")).Values("a").Cast<long>());
        var e = Assert.Throws<OutputException>(() => Job(3, [Sink("output", "parquet://sales.parquet")]));
        Assert.Contains("mode append", e.Message);
    }

    [Fact]
    public void Output_SingleFile_ModeErrorRefusesAnotherJobsFileButNotItsOwn()
    {
        var sink = Sink("output", "reports/sales.parquet", SinkMode.Error);
        Commit(1, sink, 10);
        Commit(1, sink, 11);
        Assert.Equal([11L], Read(Path.Combine(Root, "reports", "sales.parquet")).Values("a").Cast<long>());
        Assert.Throws<OutputException>(() => Job(2, [sink]));
    }

    [Fact]
    public void Output_TopicWithoutSink_GoesToDefaultLayout()
    {
        using (var job = Job(sinks: [Sink("orders", "parquet://o")]))
        {
            using (var a = Ints64("a", 1)) job.Write("orders", a);
            using (var b = Ints64("a", 2)) job.Write("audit", b);
            job.Commit();
        }
        Assert.True(File.Exists(Path.Combine(Root, "o", "job-7.parquet")));
        Assert.True(File.Exists(Path.Combine(Root, "audit", "job-7.parquet")));
    }

    [Fact]
    public void Output_DuplicateSinkTopic_Fails()
    {
        Assert.Contains("two sinks for topic 'a'", Assert.Throws<OutputException>(() => Job(sinks: [Sink("a", "x"), Sink("a", "y")])).Message);
    }

    [Theory]
    [InlineData("Output")]      // upper case
    [InlineData("../etc")]      // a path
    [InlineData("1st")]         // starts with a digit
    [InlineData("")]            // empty
    public void Output_BadTopicName_Fails(string topic)
    {
        using var job = Job();
        using var a = Ints64("a", 1);
        Assert.Contains("topic name", Assert.Throws<OutputException>(() => job.Write(topic, a)).Message);
    }

    // ---- file stems (dev mode) -----------------------------------------------------------------------

    [Fact]
    public void Output_FileStem_NamesDefaultLayoutAndDirectoryDatasetsButNotSingleFiles()
    {
        OutputResult result;
        using (var job = new JobOutput(Options(), 7, null, [Sink("orders", "parquet://ds"), Sink("totals", "parquet://one.parquet", SinkMode.Replace)], fileStem: "sales_2024-01"))
        {
            using (var a = Ints64("a", 1)) job.Write("output", a);
            using (var b = Ints64("a", 2)) job.Write("orders", b);
            using (var c = Ints64("a", 3)) job.Write("totals", c);
            // Temp files carry the stem too, hidden until commit.
            Assert.Equal([".sales_2024-01.parquet.tmp-7-"], Directory.GetFiles(Path.Combine(Root, "output")).Select(f => Path.GetFileName(f)![..^SinkTarget.TempSuffixLength]));
            result = job.Commit();
        }
        Assert.Equal([1L], Read(Path.Combine(Root, "output", "sales_2024-01.parquet")).Values("a").Cast<long>());
        Assert.Equal([2L], Read(Path.Combine(Root, "ds", "sales_2024-01.parquet")).Values("a").Cast<long>());
        Assert.Equal([3L], Read(Path.Combine(Root, "one.parquet")).Values("a").Cast<long>());
        Assert.Equal(
            [new Uri(Path.Combine(Root, "output", "sales_2024-01.parquet")).AbsoluteUri, new Uri(Path.Combine(Root, "ds", "sales_2024-01.parquet")).AbsoluteUri, new Uri(Path.Combine(Root, "one.parquet")).AbsoluteUri],
            result.Artifacts.Select(a => a.Uri));
        Assert.Equal(["sales_2024-01.parquet"], Directory.GetFiles(Path.Combine(Root, "output")).Select(Path.GetFileName));
    }

    [Fact]
    public void Output_FileStem_RerunOverwritesAndOtherStemsStay()
    {
        void Run(ulong id, string stem, long value)
        {
            using var job = new JobOutput(Options(), id, null, [], stem);
            using var a = Ints64("a", value);
            job.Write("output", a);
            job.Commit();
        }
        Run(1, "x", 10);
        Run(1, "y", 20);
        // A rerun (a new run may number its jobs differently) lands on the same name.
        Run(2, "x", 11);
        string dir = Path.Combine(Root, "output");
        Assert.Equal(["x.parquet", "y.parquet"], Directory.GetFiles(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal([11L], Read(Path.Combine(dir, "x.parquet")).Values("a").Cast<long>());
        Assert.Equal([20L], Read(Path.Combine(dir, "y.parquet")).Values("a").Cast<long>());
    }

    [Fact]
    public void Output_FileStem_ModesSeeOnlyTheirOwnFile()
    {
        void Run(string stem, SinkMode mode)
        {
            using var job = new JobOutput(Options(), 7, null, [Sink("output", "parquet://ds", mode)], stem);
            using var a = Ints64("a", 1);
            job.Write("output", a);
            job.Commit();
        }
        Run("a", SinkMode.Error);
        Run("a", SinkMode.Error);
        Assert.Contains("a.parquet", Assert.Throws<OutputException>(() => Run("b", SinkMode.Error)).Message);
        Run("b", SinkMode.Append);
        Run("c", SinkMode.Replace);
        Assert.Equal(["c.parquet"], Directory.GetFiles(Path.Combine(Root, "ds")).Select(Path.GetFileName));
    }

    [Fact]
    public void Output_FileStem_StaleTempOfThisStemRemovedButNotOfALongerStemSharingItsPrefix()
    {
        string dir = Path.Combine(Root, "output");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, ".x.parquet.tmp-7-deadbeef0000"), "partial");
        // The temp file a job with stem "x.parquet.tmp-7-y" may be writing right now.
        File.WriteAllText(Path.Combine(dir, ".x.parquet.tmp-7-y.parquet.tmp-7-deadbeef0000"), "partial");
        using (var job = new JobOutput(Options(), 7, null, [], "x"))
        using (var a = Ints64("a", 1))
        {
            job.Write("output", a);
            job.Commit();
        }
        Assert.Equal([".x.parquet.tmp-7-y.parquet.tmp-7-deadbeef0000", "x.parquet"], Directory.GetFiles(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Theory]
    [InlineData("plain", "plain")]
    [InlineData("x.tar", "x.tar")]                  // inner dots stay
    [InlineData("a/b", "a_b")]                      // no directory separators
    [InlineData("a\\b", "a_b")]
    [InlineData("../etc", "_._etc")]                // no climbing, no leading dot
    [InlineData(".hidden", "_hidden")]              // dataset readers skip hidden files
    [InlineData(".", "_")]
    [InlineData("", "_")]                           // never empty
    [InlineData("a b\tc\u0000d", "a_b_c_d")]        // whitespace and control characters
    [InlineData("données", "donn_es")]              // non-ASCII, one '_' per UTF-16 unit
    [InlineData("😀", "__")]
    [InlineData("Q3-report_v2", "Q3-report_v2")]
    public void Output_FileStem_SanitisedToTheNameItIsWrittenUnder(string stem, string expected)
    {
        Assert.Equal(expected, SinkTarget.SanitizeStem(stem));
        using (var job = new JobOutput(Options(), 7, null, [], stem))
        using (var a = Ints64("a", 1))
        {
            job.Write("output", a);
            job.Commit();
        }
        Assert.Equal([expected + ".parquet"], Directory.GetFiles(Path.Combine(Root, "output")).Select(Path.GetFileName));
    }

    [Fact]
    public void Output_FileStem_LongStemCutSoTempNameFitsAFileName()
    {
        string stem = new('s', 300);
        Assert.Equal(new string('s', SinkTarget.MaxStemLength), SinkTarget.SanitizeStem(stem));
        using (var job = new JobOutput(Options(), ulong.MaxValue, null, [], stem))
        using (var a = Ints64("a", 1))
        {
            job.Write("output", a);
            // The longest temp name there can be: ".{200}.parquet.tmp-18446744073709551615-{12}", 247 ≤ 255.
            string temp = Path.GetFileName(Assert.Single(Directory.GetFiles(Path.Combine(Root, "output"))));
            Assert.Equal(SinkTarget.MaxStemLength + 47, temp.Length);
            Assert.StartsWith($".{SinkTarget.SanitizeStem(stem)}.parquet.tmp-{ulong.MaxValue}-", temp);
            job.Commit();
        }
        Assert.True(File.Exists(Path.Combine(Root, "output", SinkTarget.SanitizeStem(stem) + ".parquet")));
    }

    [Fact]
    public void Output_FileStem_CollisionVisibleBeforehandLaterWins()
    {
        // a/x.csv and b/x.csv, or "a b" and "a_b": the caller sees equal sanitised stems before it starts.
        Assert.Equal(SinkTarget.SanitizeStem("a b"), SinkTarget.SanitizeStem("a_b"));
        foreach (var (stem, value) in new[] { ("a b", 1L), ("a_b", 2L) })
        {
            using var job = new JobOutput(Options(), 7, null, [], stem);
            using var a = Ints64("a", value);
            job.Write("output", a);
            job.Commit();
        }
        Assert.Equal([2L], Read(Path.Combine(Root, "output", "a_b.parquet")).Values("a").Cast<long>());
    }

    // ---- sink uri resolution -------------------------------------------------------------------------

    private SinkTarget Resolve(string uri, SinkMode mode = SinkMode.Append, params string[] allowed) =>
        SinkTarget.Resolve(Options() with { AllowedRoots = allowed }, 7, "t", uri, mode);

    [Fact]
    public void Sink_Resolve_NamesUnderTheRoot()
    {
        Assert.Equal((Path.Combine(Root, "sales"), "job-7.parquet"), (Resolve("parquet://sales").Directory, Resolve("parquet://sales").FileName));
        Assert.Equal(Path.Combine(Root, "a", "b"), Resolve("a/b/").Directory);
        Assert.Equal(Path.Combine(Root, "a", "b"), Resolve("parquet://a/./b").Directory);
        var file = Resolve("parquet://x/sales.parquet", SinkMode.Replace);
        Assert.True(file.SingleFile);
        Assert.Equal((Path.Combine(Root, "x"), "sales.parquet"), (file.Directory, file.FileName));
    }

    [Fact]
    public void Sink_Resolve_AbsoluteInsideAllowedRootOrTheRoot()
    {
        string allowed = _dir.File("lake");
        Assert.Equal(Path.Combine(allowed, "sales"), Resolve($"file://{allowed}/sales", SinkMode.Append, allowed).Directory);
        Assert.Equal(Path.Combine(allowed, "my dir"), Resolve($"file://{allowed}/my%20dir", SinkMode.Append, allowed + "/").Directory);
        Assert.Equal(Path.Combine(allowed, "x"), Resolve($"file://localhost{allowed}/x", SinkMode.Append, allowed).Directory);
        Assert.Equal(Path.Combine(allowed, "y"), Resolve($"{allowed}/y", SinkMode.Append, allowed).Directory);
        Assert.Equal(Path.Combine(Root, "z"), Resolve($"file://{Root}/z").Directory);
    }

    [Theory]
    [InlineData("file:///etc/casparian")]              // absolute, no allowed root covers it
    [InlineData("/etc/casparian")]                     // same without the scheme
    [InlineData("file://{root}-sibling/x")]            // shares the root's prefix but is outside it
    [InlineData("file://{lake}/../etc")]               // climbs out of an allowed root
    [InlineData("parquet://../outside")]               // climbs out of the root
    [InlineData("a/../../outside")]                    // same, as a relative path
    [InlineData("file://{lake}/%2e%2e/etc")]           // '..' percent-encoded
    [InlineData("parquet:///etc/x")]                   // parquet:// is always under the root
    [InlineData("file://otherhost/data")]              // a remote host
    [InlineData("gs://bucket/key")]                    // unsupported scheme
    [InlineData("parquet://")]                         // empty name
    public void Sink_Resolve_RefusesEscapes(string uri)
    {
        string lake = _dir.File("lake");
        uri = uri.Replace("{root}", Root, StringComparison.Ordinal).Replace("{lake}", lake, StringComparison.Ordinal);
        var e = Assert.Throws<OutputException>(() => Resolve(uri, SinkMode.Append, lake));
        Assert.Contains("job 7", e.Message);
        Assert.Contains("topic 't'", e.Message);
    }

    [Fact]
    public void Sink_Resolve_OutsideRoots_MessageNamesPathAndRoots()
    {
        var e = Assert.Throws<OutputException>(() => Resolve("file:///etc/x", SinkMode.Append, "/data/lake"));
        Assert.Contains("/etc/x", e.Message);
        Assert.Contains("/data/lake", e.Message);
        Assert.Contains(Root, e.Message);
    }

    [Fact]
    public void Output_SinkThroughASymlinkLeavingTheRoot_IsRefused_OneInsideIsFine()
    {
        string outside = _dir.File("outside");
        Directory.CreateDirectory(outside);
        Directory.CreateDirectory(Root);
        Directory.CreateSymbolicLink(Path.Combine(Root, "escape"), outside);
        Directory.CreateDirectory(Path.Combine(Root, "real"));
        Directory.CreateSymbolicLink(Path.Combine(Root, "alias"), Path.Combine(Root, "real"));
        var e = Assert.Throws<OutputException>(() => Job(sinks: [Sink("output", "parquet://escape/sales")]));
        Assert.Contains($"really {outside}/sales", e.Message);
        Assert.Throws<OutputException>(() => Job(sinks: [Sink("output", "parquet://escape")]));
        using (var job = Job(sinks: [Sink("output", "parquet://alias/sales")]))
        using (var a = Ints64("a", 1))
        {
            job.Write("output", a);
            job.Commit();
        }
        Assert.Single(Directory.GetFiles(Path.Combine(Root, "real", "sales"), "*.parquet"));
        Assert.Empty(Directory.GetFileSystemEntries(outside));
    }

    [Fact]
    public void Output_SinkOutsideRoots_FailsBeforeAnythingIsWritten()
    {
        Assert.Throws<OutputException>(() => Job(sinks: [Sink("output", "file:///tmp/elsewhere")]));
        Assert.False(Directory.Exists(Root));
    }

    // ---- reading back ----------------------------------------------------------------------------------

    private sealed record ParquetContent(Schema Schema, List<RecordBatch> Batches, int RowGroups)
    {
        public List<object?> Values(string column)
        {
            var values = new List<object?>();
            foreach (var batch in Batches)
            {
                var array = batch.Column(column);
                for (int r = 0; r < array.Length; r++) values.Add(array.IsNull(r) ? null : Value(array, r));
            }
            return values;
        }

        private static object Value(IArrowArray array, int r) => array switch
        {
            Int64Array a => a.GetValue(r)!.Value,
            DoubleArray a => a.GetValue(r)!.Value,
            BooleanArray a => a.GetValue(r)!.Value,
            StringArray a => a.GetString(r),
            BinaryArray a => a.GetBytes(r).ToArray(),
            TimestampArray a => a.GetValue(r)!.Value,
            Date32Array a => a.GetValue(r)!.Value,
            _ => throw new NotSupportedException(array.GetType().Name),
        };
    }

    private static ParquetContent Read(string path)
    {
        using var reader = new ParquetSharp.Arrow.FileReader(path);
        using var stream = reader.GetRecordBatchReader();
        var batches = new List<RecordBatch>();
        while (stream.ReadNextRecordBatchAsync().AsTask().GetAwaiter().GetResult() is { } batch) batches.Add(batch);
        return new ParquetContent(reader.Schema, batches, reader.NumRowGroups);
    }
}
