// Bridge layer (SPEC §3): Arrow IPC over the Unix socket into a sink that only counts and disposes,
// for a numeric table (4 x int64/float64) and a mixed 5-column table (int64, float64, utf8, bool,
// timestamp). The guest is a stand-in for the shim that sends a stream the shim encoded once in
// setup, REPEAT times: what is timed is process start, socket transfer and Arrow decoding (the
// bridge's own cost), not Python's encoding (ShimBench). Each invocation is one whole job, so the
// rates include one Python start-up (EmptyGuest measures that fixed cost alone).
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
public class BridgeBench
{
    private const int RowsPerMessage = 1_000_000;
    private const int NumericMessages = 32;
    private const int MixedMessages = 16;
    // Encoded sizes of one 1M-row message (checked in setup): 32 and 39 bytes a row.
    private const long NumericMessageBytes = 32_005_032;
    private const long MixedMessageBytes = 39_020_144;

    private string _dir = "";
    private string _guest = "";

    [GlobalSetup]
    public void Setup()
    {
        _dir = Directory.CreateTempSubdirectory("casparian-bridgebench-").FullName;
        string shimDir = Path.Combine(ShimBench.RepoRoot, "shim");
        ShimBench.RunPython("-c", $"""
            import sys
            sys.path.insert(0, {ShimBench.PyString(shimDir)})
            import arrow_ipc
            from datetime import datetime, timedelta
            n = {RowsPerMessage}
            base = datetime(2024, 1, 1)
            tables = {"{"}
                "numeric": {"{"}"a": list(range(n)), "b": [i * 0.5 for i in range(n)], "c": list(range(n, 0, -1)), "d": [i / 3 for i in range(n)]{"}"},
                "mixed": {"{"}"id": list(range(n)), "price": [i * 0.25 for i in range(n)], "name": ["name-%d" % i for i in range(n)],
                          "flag": [i % 2 == 0 for i in range(n)], "at": [base + timedelta(seconds=i) for i in range(n)]{"}"},
            {"}"}
            for name, cols in tables.items():
                with open({ShimBench.PyString(_dir)} + "/" + name + ".arrows", "wb") as f:
                    for size, chunks in arrow_ipc.table_messages(cols, "output"):
                        for c in chunks:
                            f.write(c)
            """);
        _guest = Path.Combine(_dir, "guest.py");
        File.WriteAllText(_guest, """
            import os, socket, struct
            with open(os.environ["BENCH_STREAM"], "rb") as f:
                data = f.read()
            frame = struct.pack(">I", len(data)) + data
            s = socket.socket(socket.AF_UNIX)
            s.connect(os.environ["BRIDGE_SOCKET"])
            for _ in range(int(os.environ["BENCH_REPEAT"])):
                s.sendall(frame)
            s.sendall(struct.pack(">I", 0))
            """);
        foreach (var (name, expected) in new[] { ("numeric", NumericMessageBytes), ("mixed", MixedMessageBytes) })
        {
            long size = new FileInfo(Path.Combine(_dir, name + ".arrows")).Length;
            if (size != expected) throw new InvalidOperationException($"{name}: the shim encoded {size} bytes, the bench's throughput assumes {expected}");
        }
    }

    [GlobalCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    /// <summary>The fixed cost of one job: process start, connect, end of stream, exit, cleanup.</summary>
    [Benchmark]
    public long EmptyGuest() => Run("numeric", 0);

    [Benchmark]
    [Throughput((long)RowsPerMessage * NumericMessages, NumericMessageBytes * NumericMessages)]
    [Target("≥ 1 GB/s into Parquet (issue 4); the bridge alone should not be the limit")]
    public long Numeric() => Run("numeric", NumericMessages);

    [Benchmark]
    [Throughput((long)RowsPerMessage * MixedMessages, MixedMessageBytes * MixedMessages)]
    [Target("≥ 2M rows/s into Parquet (issue 4); the bridge alone should not be the limit")]
    public long Mixed() => Run("mixed", MixedMessages);

    private long Run(string table, int repeat)
    {
        var sink = new CountingSink();
        var request = new GuestRequest
        {
            Interpreter = Defaults.Python,
            ShimPath = _guest,
            Parser = GuestParser.Path(_guest),
            FilePath = _guest,
            Options = Defaults.Bridge,
            Environment = new Dictionary<string, string?>
            {
                ["BENCH_STREAM"] = Path.Combine(_dir, table + ".arrows"),
                ["BENCH_REPEAT"] = repeat.ToString(System.Globalization.CultureInfo.InvariantCulture),
            },
        };
        var result = Bridge.RunAsync(request, sink, CancellationToken.None).GetAwaiter().GetResult();
        if (!result.Succeeded || sink.Rows != (long)RowsPerMessage * repeat)
            throw new InvalidOperationException($"bridge run failed: {result.Outcome} {result.ErrorMessage}; {sink.Rows} rows");
        return sink.Rows;
    }

    private sealed class CountingSink : IGuestSink
    {
        public long Rows;

        public void Table(string topic, Apache.Arrow.RecordBatch batch)
        {
            Rows += batch.Length;
            batch.Dispose();
        }

        public void Log(GuestLogLevel level, string text) { }
    }
}
