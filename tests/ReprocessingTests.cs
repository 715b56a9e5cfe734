// Issue 13 end to end, through the native binary: a topic's dataset is a function of its sources.
// Editing a source and re-adding it, upgrading the parser and backfilling, and a version that stops
// writing a topic each leave every source's rows exactly once in every topic (read back from the
// Parquet files, or the SQLite tables with Microsoft.Data.Sqlite), while a reader polling the dataset never sees a source twice, nor, once it has
// committed, zero times. A worker killed with SIGKILL at each step of a commit leaves a dataset and a
// store that agree once the job has run again.
using System.Globalization;
using System.Text;
using Xunit;

namespace Casparian.Tests;

public sealed class ReprocessingTests : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(120);
    private readonly Cluster _c = new();

    public void Dispose() => _c.Dispose();

    private const string Parser = "e2e_rep";

    /// <summary>
    /// Version 1.0 writes each row to topic "rows" and a one-row count to "summary"; version 1.1.0 writes
    /// "rows" only, its values upper-cased. A version is a directory of its own, registered as a bundle.
    /// </summary>
    private string WriteParser(string version)
    {
        string dir = _c.File($"{Parser}-{version}");
        Directory.CreateDirectory(dir);
        bool summary = version == "1.0";
        File.WriteAllText(Path.Combine(dir, "parser.py"), $$"""
            import csv
            import os
            import time

            name = "{{Parser}}"
            version = "{{version}}"


            def parse(path):
                with open(path, newline="") as f:
                    rows = [{"file": int(r["file"]), "row": int(r["row"]), "value": r["value"]{{(summary ? "" : ".upper()")}}} for r in csv.DictReader(f)]
                time.sleep(float(os.environ.get("E2E_SLEEP") or 0))
                yield Output("rows", rows)
            {{(summary ? "    yield Output(\"summary\", [{\"file\": rows[0][\"file\"], \"count\": len(rows)}])" : "")}}

            """);
        return dir;
    }

    private string Rows => Path.Combine(_c.Output, "rows");
    private string Summary => Path.Combine(_c.Output, "summary");

    /// <summary>(file, row) → (value, _job_id, _parser, _source) for every row of every visible *.parquet in <paramref name="dir"/>; duplicates fail.</summary>
    private static Dictionary<(long File, long Row), (string Value, long Job, string Parser, string Source)> ReadDataset(string dir)
    {
        var rows = new Dictionary<(long, long), (string, long, string, string)>();
        if (!Directory.Exists(dir)) return rows;
        foreach (string path in Directory.GetFiles(dir, "*.parquet"))
        {
            var t = ParquetTable.Read(path);
            for (int i = 0; i < t.Rows; i++)
            {
                var key = ((long)t.Columns["file"][i]!, t.Columns.TryGetValue("row", out var r) ? (long)r[i]! : -1);
                var value = (t.Columns.TryGetValue("value", out var v) ? (string)v[i]! : "", (long)t.Columns["_job_id"][i]!, (string)t.Columns["_parser"][i]!, (string)t.Columns["_source"][i]!);
                Assert.True(rows.TryAdd(key, value), $"{dir}: row {key} appears twice");
            }
        }
        return rows;
    }

    /// <summary>The same for table <paramref name="table"/> of the SQLite database <paramref name="db"/>, read in one statement (one snapshot).</summary>
    private static Dictionary<(long File, long Row), (string Value, long Job, string Parser, string Source)> ReadTable(string db, string table)
    {
        var rows = new Dictionary<(long, long), (string, long, string, string)>();
        if (!File.Exists(db)) return rows;
        SqliteRuntime.EnsureInitialized();
        using var conn = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={db};Mode=ReadOnly;Pooling=False;Default Timeout=30");
        conn.Open();
        using var cmd = conn.CreateCommand();
        cmd.CommandText = $"SELECT * FROM {table}";
        Microsoft.Data.Sqlite.SqliteDataReader r;
        try
        {
            r = cmd.ExecuteReader();
        }
        catch (Microsoft.Data.Sqlite.SqliteException e) when (e.Message.Contains("no such table", StringComparison.Ordinal))
        {
            return rows;
        }
        using (r)
        {
            var at = Enumerable.Range(0, r.FieldCount).ToDictionary(r.GetName);
            while (r.Read())
            {
                var key = (r.GetInt64(at["file"]), at.TryGetValue("row", out int row) ? r.GetInt64(row) : -1);
                var value = (at.TryGetValue("value", out int v) ? r.GetString(v) : "", r.GetInt64(at["_job_id"]), r.GetString(at["_parser"]), r.GetString(at["_source"]));
                Assert.True(rows.TryAdd(key, value), $"{db} table {table}: row {key} appears twice");
            }
        }
        return rows;
    }

    private const string Sqlite = "sqlite";
    private string LakeDb => Path.Combine(_c.Output, "lake.db");

    /// <summary>Routes both topics to tables of OUTPUT/lake.db through the config file (sink kind "sqlite"); "parquet" keeps the default directories.</summary>
    private void UseSinks(string kind)
    {
        if (kind == Sqlite)
            File.WriteAllText(_c.File("casparian.toml"),
                "[topics.rows]\nsink = \"sqlite://lake.db?table=rows\"\n\n[topics.summary]\nsink = \"sqlite://lake.db?table=summary\"\n");
    }

    /// <summary>Topic <paramref name="topic"/> as the sink kind stores it.</summary>
    private Dictionary<(long File, long Row), (string Value, long Job, string Parser, string Source)> Read(string kind, string topic) =>
        kind == Sqlite ? ReadTable(LakeDb, topic) : ReadDataset(Path.Combine(_c.Output, topic));

    /// <summary>No staging or temp file is left anywhere under the output root.</summary>
    private void AssertNoTempFiles() =>
        Assert.Empty(Directory.GetFiles(_c.Output, ".*", SearchOption.AllDirectories));

    /// <summary>The artifact uri of topic <paramref name="topic"/> for <paramref name="source"/>.</summary>
    private string ArtifactUri(string kind, string topic, string source) =>
        kind == Sqlite ? "sqlite://" + new Uri(LakeDb).AbsolutePath + "?table=" + topic
        : new Uri(Path.Combine(_c.Output, topic, SinkTarget.SourceFileName(Parser, source))).AbsoluteUri;

    /// <summary>Writes inputs/in-NNN.csv with <paramref name="rows"/> rows for file <paramref name="f"/>; returns its path.</summary>
    private string WriteInput(int f, int rows, string tag = "")
    {
        Directory.CreateDirectory(_c.Inputs);
        string path = Path.Combine(_c.Inputs, $"in-{f:D3}.csv");
        var sb = new StringBuilder("file,row,value\n");
        for (int r = 0; r < rows; r++) sb.Append(CultureInfo.InvariantCulture, $"{f},{r},f{f}r{r}{tag}\n");
        File.WriteAllText(path, sb.ToString());
        return path;
    }

    private void WaitDrained() => _c.WaitUntil("every job COMPLETED", Patience, () => _c.Jobs() is var j && j.All(x => x.State == "COMPLETED"));

    /// <summary>
    /// Reads the "rows" topic in a loop until stopped: any source twice fails the read; a source seen
    /// once and then missing is recorded. Files renamed or removed under the reader are normal: that
    /// snapshot is retried.
    /// </summary>
    private sealed class PollingReader : IDisposable
    {
        private readonly Thread _thread;
        private volatile bool _stop;
        private readonly HashSet<string> _committed = [];
        public List<string> Problems { get; } = [];
        public int Snapshots { get; private set; }

        public PollingReader(Func<Dictionary<(long File, long Row), (string Value, long Job, string Parser, string Source)>> read)
        {
            _thread = new Thread(() =>
            {
                while (!_stop)
                {
                    try
                    {
                        var rows = read();
                        var sources = rows.Values.Select(v => v.Source).ToHashSet();
                        lock (Problems)
                        {
                            foreach (var gone in _committed.Where(s => !sources.Contains(s))) Problems.Add($"source {gone} missing from a snapshot after it had committed");
                            _committed.UnionWith(sources);
                            Snapshots++;
                        }
                    }
                    catch (Exception e) when (e is IOException or ParquetSharp.ParquetException)
                    {
                    }
                    catch (Microsoft.Data.Sqlite.SqliteException e) when (e.SqliteErrorCode is 5 or 6)
                    {
                        // SQLITE_BUSY / SQLITE_LOCKED: a reader may briefly wait on a checkpoint; that snapshot is retried.
                    }
                    catch (Exception e)
                    {
                        lock (Problems) Problems.Add(e.Message);
                    }
                    Thread.Sleep(5);
                }
            }) { IsBackground = true };
            _thread.Start();
        }

        public void Dispose()
        {
            _stop = true;
            _thread.Join();
        }
    }

    [Theory]
    [InlineData("parquet")]
    [InlineData(Sqlite)]
    public void Reprocessing_EditReAdd_UpgradeBackfill_AndADroppedTopic_LeaveEachSourceExactlyOnce(string kind)
    {
        UseSinks(kind);
        _c.Ok("parser", "register", WriteParser("1.0"));
        var inputs = Enumerable.Range(0, 3).Select(f => WriteInput(f, 3)).ToList();
        Assert.StartsWith("queued 3 job(s)", _c.Ok("job", "add", "--parser", Parser, _c.Inputs).Stdout);
        _c.StartSentinel();
        _c.StartWorker("w1", sleep: "0.2");
        using var reader = new PollingReader(() => Read(kind, "rows"));
        WaitDrained();
        var rows = Read(kind, "rows");
        Assert.Equal(9, rows.Count);
        Assert.Equal(3, Read(kind, "summary").Count);

        // Edit one source (3 rows → 5) and re-add the folder: only it is queued; the others are named.
        WriteInput(1, 5, tag: "-edited");
        var add = _c.Ok("job", "add", "--parser", Parser, _c.Inputs).Stdout;
        Assert.StartsWith("queued 1 job(s) for parser e2e_rep 1.0 (job 4); 1 new or changed file(s); skipped 2 unchanged file(s)", add);
        Assert.Contains($"unchanged: {inputs[0]}", add);
        Assert.Contains($"unchanged: {inputs[2]}", add);
        WaitDrained();
        rows = Read(kind, "rows");
        Assert.Equal(11, rows.Count);
        Assert.Equal(Enumerable.Range(0, 5).Select(r => $"f1r{r}-edited"), Enumerable.Range(0, 5).Select(r => rows[(1, r)].Value));
        Assert.All(Enumerable.Range(0, 5), r => Assert.Equal(4, rows[(1, r)].Job));
        var summary = Read(kind, "summary");
        Assert.Equal(3, summary.Count);

        // Version 1.1.0 writes "rows" only: register tells about backfill, backfill queues every source.
        var register = _c.Ok("parser", "register", WriteParser("1.1.0")).Stdout;
        Assert.Contains("3 source(s) have current output from another version of e2e_rep; 'casparian parser backfill e2e_rep'", register);
        var dry = _c.Ok("parser", "backfill", Parser, "--dry-run").Stdout;
        Assert.StartsWith("would queue 3 source(s) whose current output of e2e_rep came from another version for e2e_rep 1.1.0", dry);
        Assert.Equal(4, _c.Jobs().Count);
        Assert.StartsWith("queued 3 source(s) whose current output of e2e_rep came from another version for e2e_rep 1.1.0 (jobs 5-7)",
            _c.Ok("parser", "backfill", Parser).Stdout);
        Assert.StartsWith("queued 0 source(s)", _c.Ok("parser", "backfill", Parser).Stdout);
        WaitDrained();
        rows = Read(kind, "rows");
        Assert.Equal(11, rows.Count);
        Assert.All(rows, kv => Assert.Equal(("e2e_rep@1.1.0", $"F{kv.Key.File}R{kv.Key.Row}" + (kv.Key.File == 1 ? "-EDITED" : "")), (kv.Value.Parser, kv.Value.Value)));
        Assert.All(rows, kv => Assert.Equal(inputs[(int)kv.Key.File], kv.Value.Source));
        // The topic 1.1.0 no longer writes lost every source's old rows (Parquet: its old file).
        Assert.Empty(Read(kind, "summary"));
        if (kind != Sqlite) Assert.Empty(Directory.GetFiles(Summary, "*.parquet"));
        Assert.StartsWith("queued 0 source(s)", _c.Ok("parser", "backfill", Parser).Stdout);
        AssertNoTempFiles();

        reader.Dispose();
        Assert.True(reader.Snapshots > 10, $"the reader took {reader.Snapshots} snapshots");
        Assert.Empty(reader.Problems);
    }

    [Fact]
    public void Reprocessing_SinksFromTheParsersTopicsAndTheConfigFile_RouteEachTopic()
    {
        string dir = WriteParser("1.0");
        string entry = Path.Combine(dir, "parser.py");
        File.WriteAllText(entry, File.ReadAllText(entry).Replace("def parse(path):",
            "TOPICS = {\n    \"rows\": {\"sink\": \"parquet://lake/rows\"},\n    \"summary\": {\"sink\": \"parquet://lake/summary\", \"mode\": \"append\"},\n}\n\n\ndef parse(path):", StringComparison.Ordinal));
        _c.Ok("parser", "register", dir);
        File.WriteAllText(_c.File("casparian.toml"), "[topics.summary]\nsink = \"parquet://lake/summary_v2\"\n");
        var show = _c.Ok("parser", "show", Parser).Stdout;
        Assert.Matches(@"rows +parquet://lake/rows +append +parser", show);
        Assert.Matches(@"summary +parquet://lake/summary_v2 +append +config .*casparian.toml:1", show);

        string input = WriteInput(0, 2);
        _c.Ok("job", "add", "--parser", Parser, input);
        _c.StartSentinel();
        _c.StartWorker("w1");
        WaitDrained();
        string name = SinkTarget.SourceFileName(Parser, input);
        Assert.Equal(2, ReadDataset(Path.Combine(_c.Output, "lake", "rows")).Count);
        Assert.Single(ReadDataset(Path.Combine(_c.Output, "lake", "summary_v2")));
        Assert.True(File.Exists(Path.Combine(_c.Output, "lake", "rows", name)));
        Assert.False(Directory.Exists(Rows));
        Assert.False(Directory.Exists(Path.Combine(_c.Output, "lake", "summary")));
    }

    [Theory]
    [InlineData("parquet", "commit-before-rename")]
    [InlineData("parquet", "commit-after-first-rename")]
    [InlineData("parquet", "commit-before-supersede")]
    [InlineData("parquet", "commit-after-supersede")]
    [InlineData(Sqlite, "commit-before-rename")]
    [InlineData(Sqlite, "commit-after-first-rename")]
    [InlineData(Sqlite, "commit-before-supersede")]
    [InlineData(Sqlite, "commit-after-supersede")]
    public void Reprocessing_WorkerKilledAtEachCommitStep_DatasetAndStoreAgreeAfterTheRetry(string kind, string point)
    {
        UseSinks(kind);
        _c.Ok("parser", "register", WriteParser("1.0"));
        var inputs = Enumerable.Range(0, 2).Select(f => WriteInput(f, 4)).ToList();
        _c.Ok("job", "add", "--parser", Parser, _c.Inputs);
        _c.StartSentinel();
        var first = _c.StartWorker("w1");
        WaitDrained();
        first.Signal(Posix.SigTerm);
        first.WaitForExit(TimeSpan.FromSeconds(30));

        // 1.1.0 drops "summary": its commit renames "rows" over the old file, then removes the old summary.
        _c.Ok("parser", "register", WriteParser("1.1.0"));
        _c.Ok("parser", "backfill", Parser);
        var doomed = _c.Spawn("doomed", ["worker", "--connect", _c.Address, "--output", _c.Output, "--worker-id", "doomed", "--slots", "1",
            "--heartbeat-interval", "0.2s"], home: _c.File("home-doomed"), env: new Dictionary<string, string?>(_c.JoinEnvironment()) { [FaultPoint.Variable] = point });
        Assert.Equal(137, doomed.WaitForExit(Patience));
        Assert.Contains($"fault point {point}", doomed.Stderr);

        // At the instant of the kill: each source's rows exactly once, from one version or the other.
        var during = Read(kind, "rows");
        Assert.Equal(8, during.Count);
        Assert.All(inputs, s => Assert.Single(during.Values.Where(v => v.Source == s).Select(v => v.Parser).Distinct()));

        _c.StartWorker("w2");
        WaitDrained();
        var rows = Read(kind, "rows");
        Assert.Equal(8, rows.Count);
        Assert.All(rows.Values, v => Assert.Equal("e2e_rep@1.1.0", v.Parser));
        Assert.Empty(Read(kind, "summary"));
        AssertNoTempFiles();
        // The store names, per source, the job whose rows the dataset holds.
        using var store = JobStores.Open(Defaults.Store(_c.Db) with { Create = false });
        foreach (string source in inputs)
        {
            var current = store.GetOutput(Parser, source)!;
            Assert.Equal("1.1.0", current.ParserVersion);
            Assert.All(rows.Values.Where(v => v.Source == source), v => Assert.Equal(current.JobId, v.Job));
            Assert.Equal([ArtifactUri(kind, "rows", source)], current.Uris());
        }
    }
}
