// What the shim and bridge tests share: a sink that records everything in arrival order, a runner
// that puts a parser through the real shim with the real python3, and Arrow values as CLR objects.
using Apache.Arrow;
using Apache.Arrow.Types;

namespace Casparian.Tests;

internal sealed class RecordingSink : IGuestSink, IDisposable
{
    private readonly Lock _lock = new();

    /// <summary>Tables and log lines interleaved as they arrived: ("table", topic) or ("log:LEVEL", text).</summary>
    public List<(string Kind, string Text)> Events { get; } = [];
    public List<(string Topic, RecordBatch Batch)> Batches { get; } = [];
    public List<(GuestLogLevel Level, string Text)> Logs { get; } = [];
    /// <summary>Thrown from Table() when set (after the batch is taken, so it is still disposed).</summary>
    public Func<string, RecordBatch, Exception?>? Refuse { get; init; }
    /// <summary>Called on every table, e.g. to release a waiting test.</summary>
    public Action<string, RecordBatch>? OnTable { get; init; }
    /// <summary>Called on every log line, e.g. to release a waiting test.</summary>
    public Action<GuestLogLevel, string>? OnLog { get; init; }

    public void Table(string topic, RecordBatch batch)
    {
        lock (_lock)
        {
            Batches.Add((topic, batch));
            Events.Add(("table", topic));
        }
        OnTable?.Invoke(topic, batch);
        if (Refuse?.Invoke(topic, batch) is { } e) throw e;
    }

    public void Log(GuestLogLevel level, string text)
    {
        lock (_lock)
        {
            Logs.Add((level, text));
            Events.Add(("log:" + level, text));
        }
        OnLog?.Invoke(level, text);
    }

    public IEnumerable<string> Lines(GuestLogLevel level) => Logs.Where(l => l.Level == level).Select(l => l.Text);

    /// <summary>Every batch of <paramref name="topic"/>, concatenated column by column into CLR values.</summary>
    public Dictionary<string, List<object?>> Columns(string topic = "output")
    {
        var columns = new Dictionary<string, List<object?>>(StringComparer.Ordinal);
        foreach (var (t, batch) in Batches)
        {
            if (t != topic) continue;
            for (int c = 0; c < batch.ColumnCount; c++)
            {
                string name = batch.Schema.FieldsList[c].Name;
                if (!columns.TryGetValue(name, out var list)) columns[name] = list = [];
                var array = batch.Column(c);
                for (int i = 0; i < array.Length; i++) list.Add(Arrow.Value(array, i));
            }
        }
        return columns;
    }

    public Schema SchemaOf(string topic = "output") => Batches.First(b => b.Topic == topic).Batch.Schema;

    public long Rows(string topic) => Batches.Where(b => b.Topic == topic).Sum(b => (long)b.Batch.Length);

    public void Dispose()
    {
        foreach (var (_, b) in Batches) b.Dispose();
    }
}

internal static class Arrow
{
    public static object? Value(IArrowArray array, int i)
    {
        if (array.IsNull(i)) return null;
        return array switch
        {
            Int64Array a => a.GetValue(i),
            DoubleArray a => a.GetValue(i),
            BooleanArray a => a.GetValue(i),
            StringArray a => a.GetString(i),
            BinaryArray a => a.GetBytes(i).ToArray(),
            TimestampArray a => a.GetValue(i),
            Date32Array a => a.GetValue(i),
            Decimal128Array a => a.GetString(i),
            Time64Array a => a.GetValue(i),
            DurationArray a => a.GetValue(i),
            ListArray a => Enumerable.Range(0, a.GetValueLength(i)).Select(j => Value(a.Values, a.ValueOffsets[i] + j)).ToList(),
            DictionaryArray a => Value(a.Dictionary, (int)((IArrowArray)a.Indices switch { Int32Array x => x.GetValue(i)!.Value, Int8Array x => x.GetValue(i)!.Value, Int16Array x => x.GetValue(i)!.Value, _ => throw new NotSupportedException(a.Indices.GetType().Name) })),
            NullArray => null,
            _ => throw new NotSupportedException(array.GetType().Name),
        };
    }
}

internal static class Guest
{
    /// <summary>One shim directory for the whole test run; Ensure is idempotent and verifies content.</summary>
    public static string ShimPath { get; } = Shim.Ensure(Path.Combine(Path.GetTempPath(), "casparian-test-shim"));

    public static string Python { get; } = Casparian.Python.ResolveReal(Defaults.PythonCommand);

    /// <summary>Debian's python3 with pandas and numpy.</summary>
    public const string DebianPython = "/usr/bin/python3";

    /// <summary><paramref name="s"/> (a path) as a Python string literal, for parser sources built in a test.</summary>
    public static string PyLiteral(string s) => "'" + s.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("'", "\\'", StringComparison.Ordinal) + "'";

    public static async Task<(GuestResult Result, RecordingSink Sink)> RunAsync(
        TempDir dir, string source, string? input = null, BridgeOptions? options = null, string? interpreter = null,
        RecordingSink? sink = null, TimeSpan? timeout = null, CancellationToken abort = default, string? shim = null,
        GuestParser? parser = null, string? parserName = null, WarmGuests? warm = null)
    {
        string parserFile = dir.File("p.py");
        // Rewritten only when it changes: a warm zygote is keyed by the parser file's last change.
        if (!File.Exists(parserFile) || File.ReadAllText(parserFile) != source) File.WriteAllText(parserFile, source);
        if (input is null)
        {
            input = dir.File("input.txt");
            if (!File.Exists(input)) File.WriteAllText(input, "a,b\n1,2\n");
        }
        sink ??= new RecordingSink();
        var request = new GuestRequest
        {
            Interpreter = interpreter ?? Python,
            ShimPath = shim ?? ShimPath,
            Parser = parser ?? GuestParser.Path(parserFile),
            ParserName = parserName,
            FilePath = input,
            JobId = 42,
            FileVersionId = 7,
            Timeout = timeout,
            Options = options ?? Defaults.Bridge,
            Warm = warm,
        };
        var result = await Bridge.RunAsync(request, sink, abort);
        return (result, sink);
    }

    public static string Describe(GuestResult r, RecordingSink s) =>
        $"{r.Outcome} exit={r.ExitCode} msg={r.ErrorMessage}\n{r.Traceback}\nlogs:\n{string.Join("\n", s.Logs.Select(l => $"[{l.Level}] {l.Text}"))}";

    /// <summary>True while /proc shows the process and it is not a zombie.</summary>
    public static bool Alive(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Waits until none of the processes is alive, up to <paramref name="limit"/>; returns those still alive.</summary>
    public static int[] WaitGone(IEnumerable<int> pids, TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        int[] alive;
        while ((alive = pids.Where(Alive).ToArray()).Length > 0 && DateTime.UtcNow < deadline) Thread.Sleep(20);
        return alive;
    }

    public static int[] ReadPids(string file) =>
        File.ReadAllText(file).Split((char[])[' ', '\n'], StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
}

/// <summary>A Parquet file read back through ParquetSharp's Arrow reader, as CLR values per column.</summary>
internal sealed record ParquetTable(Schema Schema, Dictionary<string, List<object?>> Columns, long Rows)
{
    public static ParquetTable Read(string path)
    {
        using var reader = new ParquetSharp.Arrow.FileReader(path);
        using var stream = reader.GetRecordBatchReader();
        var columns = new Dictionary<string, List<object?>>(StringComparer.Ordinal);
        foreach (var f in reader.Schema.FieldsList) columns[f.Name] = [];
        long rows = 0;
        while (stream.ReadNextRecordBatchAsync().AsTask().GetAwaiter().GetResult() is { } batch)
        {
            using (batch)
            {
                rows += batch.Length;
                for (int c = 0; c < batch.ColumnCount; c++)
                {
                    var list = columns[batch.Schema.FieldsList[c].Name];
                    var array = batch.Column(c);
                    for (int i = 0; i < array.Length; i++) list.Add(Arrow.Value(array, i));
                }
            }
        }
        return new ParquetTable(reader.Schema, columns, rows);
    }
}
