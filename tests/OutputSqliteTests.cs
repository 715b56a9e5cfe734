// The SQLite sink (Output.Sqlite.cs) in process, on real SQLite files read back with
// Microsoft.Data.Sqlite: the type mapping value by value, supersede by (parser, source), the modes,
// a late commit of an older job, and the uris it refuses. ReprocessingTests runs it end to end.
using Apache.Arrow;
using Apache.Arrow.Types;
using Microsoft.Data.Sqlite;
using Xunit;
using ArrowTimeUnit = Apache.Arrow.Types.TimeUnit;

namespace Casparian.Tests;

public sealed class OutputSqliteTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private string Root => _dir.File("out");
    private string Db => Path.Combine(Root, "lake.db");

    private OutputOptions Options => Defaults.Output(Root) with { Lineage = true };

    private static readonly OutputSource SourceA = new("sales", "1.0", "/data/in/a.csv", new string('a', 64));
    private static readonly OutputSource SourceB = SourceA with { Path = "/data/in/b.csv" };

    private static SinkConfig Sink(string topic, string uri, SinkMode mode = SinkMode.Append) => new() { Topic = topic, Uri = uri, Mode = mode };

    private static RecordBatch Batch(params (string Name, IArrowArray Array)[] columns) =>
        new(new Schema(columns.Select(c => new Field(c.Name, c.Array.Data.DataType, true)), null), columns.Select(c => c.Array), columns[0].Array.Length);

    private static IArrowArray Longs(params long?[] values)
    {
        var b = new Int64Array.Builder();
        foreach (var v in values) if (v is { } x) b.Append(x); else b.AppendNull();
        return b.Build();
    }

    /// <summary>Every row of <paramref name="table"/>, each column by name, as SQLite stores it (long, double, string, byte[], null).</summary>
    private List<Dictionary<string, object?>> ReadTable(string table, string? db = null)
    {
        using var conn = new SqliteConnection($"Data Source={db ?? Db};Mode=ReadOnly;Pooling=False");
        conn.Open();
        using var cmd = conn.CreateCommand();
        cmd.CommandText = $"SELECT * FROM {table} ORDER BY rowid";
        using var r = cmd.ExecuteReader();
        var rows = new List<Dictionary<string, object?>>();
        while (r.Read())
        {
            var row = new Dictionary<string, object?>();
            for (int i = 0; i < r.FieldCount; i++) row[r.GetName(i)] = r.IsDBNull(i) ? null : r.GetValue(i);
            rows.Add(row);
        }
        return rows;
    }

    private string? Scalar(string sql)
    {
        using var conn = new SqliteConnection($"Data Source={Db};Mode=ReadOnly;Pooling=False");
        conn.Open();
        using var cmd = conn.CreateCommand();
        cmd.CommandText = sql;
        return cmd.ExecuteScalar()?.ToString();
    }

    /// <summary>One job of SourceA's parser: writes column a = <paramref name="values"/> to each topic, commits with <paramref name="supersedes"/>.</summary>
    private OutputResult WriteJob(ulong id, OutputSource source, IReadOnlyList<SinkConfig> sinks, IReadOnlyList<string>? supersedes, long[] values, bool newestWins = true, params string[] topics)
    {
        using var job = new JobOutput(Options, id, source, sinks) { NewestWins = newestWins };
        foreach (string topic in topics)
            using (var batch = Batch(("a", Longs([.. values.Select(v => (long?)v)]))))
                job.Write(topic, batch);
        return job.Commit(supersedes);
    }

    [Fact]
    public void OutputSqlite_EveryType_IsStoredAsTheDocumentedSqliteValue()
    {
        SqliteRuntime.EnsureInitialized();
        var ts = new TimestampArray.Builder(new TimestampType(ArrowTimeUnit.Microsecond, "UTC"))
            .Append(new DateTimeOffset(2024, 11, 23, 12, 0, 0, TimeSpan.Zero).AddTicks(1234560)).AppendNull().Build();
        var naive = new TimestampArray.Builder(new TimestampType(ArrowTimeUnit.Microsecond, (string?)null))
            .Append(new DateTimeOffset(1969, 12, 31, 23, 59, 59, TimeSpan.Zero)).AppendNull().Build();
        var dec = new Decimal128Array.Builder(new Decimal128Type(12, 3)).Append(-1234.500m).AppendNull().Build();
        var list = new ListArray.Builder(Int64Type.Default);
        var items = (Int64Array.Builder)list.ValueBuilder;
        list.Append();
        items.Append(1).AppendNull().Append(3);
        list.AppendNull();
        var columns = new (string, IArrowArray)[]
        {
            ("i", Longs(long.MinValue, null)),
            ("f", new DoubleArray.Builder().Append(2.5).Append(double.NaN).Build()),
            ("b", new BooleanArray.Builder().Append(true).Append(false).Build()),
            ("s", new StringArray.Builder().Append("é 😀").AppendNull().Build()),
            ("bin", new BinaryArray.Builder().Append([0, 1, 255]).AppendNull().Build()),
            ("ts_utc", ts),
            ("ts", naive),
            ("d", new Date32Array.Builder().Append(new DateTime(2024, 2, 29)).AppendNull().Build()),
            ("t", new Time64Array.Builder(new Time64Type(ArrowTimeUnit.Microsecond)).Append(TimeSpan.FromHours(13.5).Ticks / 10 + 7).AppendNull().Build()),
            ("dur", new DurationArray.Builder(DurationType.Microsecond).Append(-90_000_000).AppendNull().Build()),
            ("dec", dec),
            ("l", list.Build()),
            ("n", new NullArray(2)),
        };
        using (var job = new JobOutput(Options, 5, SourceA, [Sink("all", "sqlite://lake.db?table=all_types")]))
        {
            using (var batch = Batch(columns)) job.Write("all", batch);
            var artifact = Assert.Single(job.Commit().Artifacts);
            Assert.Equal(("sqlite://" + new Uri(Db).AbsolutePath + "?table=all_types", 2L), (artifact.Uri, artifact.Rows));
        }

        var rows = ReadTable("all_types");
        Assert.Equal(2, rows.Count);
        var first = rows[0];
        Assert.Equal(long.MinValue, first["i"]);
        Assert.Equal(2.5, first["f"]);
        Assert.Equal(1L, first["b"]);
        Assert.Equal("é 😀", first["s"]);
        Assert.Equal(new byte[] { 0, 1, 255 }, first["bin"]);
        Assert.Equal("2024-11-23 12:00:00.123456Z", first["ts_utc"]);
        Assert.Equal("1969-12-31 23:59:59.000000", first["ts"]);
        Assert.Equal("2024-02-29", first["d"]);
        Assert.Equal("13:30:00.000007", first["t"]);
        Assert.Equal(-90_000_000L, first["dur"]);
        Assert.Equal("-1234.500", first["dec"]);
        Assert.Equal("[1,null,3]", first["l"]);
        Assert.Null(first["n"]);
        Assert.Equal((5L, SourceA.Path, SourceA.ContentHash, "sales@1.0"), (first["_job_id"], first["_source"], first["_source_hash"], first["_parser"]));
        // NaN is stored as NULL by SQLite; every other column of the second row was null.
        Assert.All(rows[1].Where(kv => !kv.Key.StartsWith('_') && kv.Key != "b"), kv => Assert.Null(kv.Value));
        Assert.Equal(0L, rows[1]["b"]);
        // SQLite's own functions read the text forms.
        Assert.Equal("1732363200", Scalar("SELECT unixepoch(ts_utc) FROM all_types WHERE rowid = 1"));
        Assert.Equal("2", Scalar("SELECT json_extract(l, '$[2]') - 1 FROM all_types WHERE rowid = 1"));
        Assert.Equal("INTEGER REAL INTEGER TEXT BLOB TIMESTAMP TIMESTAMP DATE TIME INTEGER DECIMAL_TEXT TEXT  INTEGER TEXT TEXT TEXT",
            Scalar("SELECT group_concat(type, ' ') FROM (SELECT type FROM pragma_table_info('all_types') ORDER BY cid)"));
        Assert.Empty(Directory.GetFiles(Root, ".*"));
    }

    [Fact]
    public void OutputSqlite_LaterJobForTheSameSource_ReplacesItsRowsInOneTable_AndATopicItNoLongerWritesLosesThem()
    {
        SqliteRuntime.EnsureInitialized();
        SinkConfig[] sinks = [Sink("orders", "sqlite://lake.db?table=orders"), Sink("totals", "sqlite://lake.db?table=totals")];
        var first = WriteJob(1, SourceA, sinks, null, [10, 11], topics: ["orders", "totals"]);
        WriteJob(2, SourceB, sinks, null, [20], topics: ["orders", "totals"]);
        // Version 1.1 for source a writes orders only: its rows replace a's, b's stay, and totals loses a's.
        WriteJob(3, SourceA with { ParserVersion = "1.1" }, sinks, [.. first.Artifacts.Select(a => a.Uri)], [30, 31, 32], topics: ["orders"]);

        var orders = ReadTable("orders");
        Assert.Equal([(20L, SourceB.Path), (30L, SourceA.Path), (31L, SourceA.Path), (32L, SourceA.Path)],
            orders.Select(r => ((long)r["a"]!, (string)r["_source"]!)).Order());
        Assert.All(orders.Where(r => (string)r["_source"]! == SourceA.Path), r => Assert.Equal("sales@1.1", r["_parser"]));
        Assert.Equal([20L], ReadTable("totals").Select(r => (long)r["a"]!));
        // Another parser's rows for the same source are its own.
        WriteJob(4, SourceA with { ParserName = "sales_v2" }, sinks, null, [40], topics: ["orders"]);
        Assert.Equal(5, ReadTable("orders").Count);
        // A retry of job 3 (same id, same source) replaces its own rows.
        WriteJob(3, SourceA with { ParserVersion = "1.1" }, sinks, null, [33], topics: ["orders"]);
        Assert.Equal([20L, 33L, 40L], ReadTable("orders").Select(r => (long)r["a"]!).Order());
    }

    [Fact]
    public void OutputSqlite_ModesReplaceAndError()
    {
        SqliteRuntime.EnsureInitialized();
        WriteJob(1, SourceA, [Sink("t", "sqlite://lake.db?table=t")], null, [1], topics: ["t"]);
        WriteJob(2, SourceB, [Sink("t", "sqlite://lake.db?table=t", SinkMode.Replace)], null, [2, 3], topics: ["t"]);
        Assert.Equal([2L, 3L], ReadTable("t").Select(r => (long)r["a"]!));

        // error: another job's rows are there, so the job fails before it starts; a retry of job 2 itself is fine.
        var e = Assert.Throws<OutputException>(() => new JobOutput(Options, 9, SourceA, [Sink("t", "sqlite://lake.db?table=t", SinkMode.Error)]));
        Assert.Equal(ExitCode.BadInput, e.Code);
        Assert.Contains($"table t of {Db} already holds data", e.Message);
        WriteJob(2, SourceB, [Sink("t", "sqlite://lake.db?table=t", SinkMode.Error)], null, [4], topics: ["t"]);
        Assert.Equal([4L], ReadTable("t").Select(r => (long)r["a"]!));
    }

    [Theory]
    [InlineData("sqlite")]
    [InlineData("parquet")]
    public void Output_OlderJobCommittingAfterANewerOne_NeverReplacesTheNewerOutput(string kind)
    {
        // Jobs 5 and 6 for one (parser, source) run at once; 6 (queued later) commits first. The late
        // commit of 5 leaves 6's rows, reports no artifact, and does not remove 6's output of a topic
        // that 5 no longer writes. Without NewestWins (`casparian run`, ids are positions) the later commit wins.
        SqliteRuntime.EnsureInitialized();
        SinkConfig[] sinks = kind == "sqlite" ? [Sink("rows", "sqlite://lake.db?table=rows"), Sink("extra", "sqlite://lake.db?table=extra")] : [];
        List<long> Rows(string topic) => kind == "sqlite"
            ? [.. ReadTable(topic).Select(r => (long)r["a"]!)]
            : [.. ParquetTable.Read(Path.Combine(Root, topic, SinkTarget.SourceFileName("sales", SourceA.Path))).Columns["a"].Cast<long>()];
        var newer = WriteJob(6, SourceA, sinks, null, [6, 6], topics: ["rows", "extra"]);
        var older = WriteJob(5, SourceA, sinks, [.. newer.Artifacts.Select(a => a.Uri)], [5], topics: ["rows"]);
        Assert.Empty(older.Artifacts);
        Assert.Equal([6L, 6L], Rows("rows"));
        Assert.Equal([6L, 6L], Rows("extra"));
        Assert.Empty(Directory.GetFiles(Root, ".*", SearchOption.AllDirectories));

        WriteJob(5, SourceA, sinks, null, [5], newestWins: false, topics: ["rows"]);
        Assert.Equal([5L], Rows("rows"));
    }

    [Theory]
    // No table.
    [InlineData("sqlite://lake.db", "needs a table")]
    // A table name that is not an identifier.
    [InlineData("sqlite://lake.db?table=a-b", "needs a table")]
    // SQLite's own tables.
    [InlineData("sqlite://lake.db?table=sqlite_master", "needs a table")]
    // An absolute path: the database lives under the output root.
    [InlineData("sqlite:///etc/lake.db?table=t", "names a database file under the output root")]
    // Climbing out with '..'.
    [InlineData("sqlite://../lake.db?table=t", "contains '..'")]
    // No file at all.
    [InlineData("sqlite://?table=t", "names no database file")]
    public void OutputSqlite_BadUri_IsRefusedBeforeTheJobStarts(string uri, string expected)
    {
        var e = Assert.Throws<OutputException>(() => new JobOutput(Options, 1, SourceA, [Sink("t", uri)]));
        Assert.Equal(ExitCode.BadInput, e.Code);
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    // A lineage column's name in another case: SQLite would see two columns of one name.
    [InlineData("_SOURCE", "which the SQLite sink reserves")]
    // Two columns differing only in case.
    [InlineData("A", "two columns named 'A'")]
    public void OutputSqlite_ColumnNamesEqualIgnoringCase_FailTheJobNamingTheColumn(string second, string expected)
    {
        using var job = new JobOutput(Options, 1, SourceA, [Sink("t", "sqlite://lake.db?table=t")]);
        using var batch = Batch(("a", Longs(1)), (second, Longs(2)));
        var e = Assert.Throws<OutputException>(() => job.Write("t", batch));
        Assert.Equal(ExitCode.BadInput, e.Code);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void OutputSqlite_DatabaseThroughASymlinkOutsideTheRoot_IsRefused()
    {
        string outside = _dir.File("outside");
        Directory.CreateDirectory(outside);
        Directory.CreateDirectory(Root);
        File.CreateSymbolicLink(Db, Path.Combine(outside, "lake.db"));
        var e = Assert.Throws<OutputException>(() => new JobOutput(Options, 1, SourceA, [Sink("t", "sqlite://lake.db?table=t")]));
        Assert.Contains("through a symlink", e.Message);
        Assert.False(File.Exists(Path.Combine(outside, "lake.db")));
    }
}
