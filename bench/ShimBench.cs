// Shim layer (SPEC §3, §4): the guest's Arrow IPC encoding of 1M rows x (int64, float64, utf8, bool),
// from a dict of lists and from a list of row dicts, timed by Python's timeit through [Python]; the C#
// side of each pair is the worker's decode of the very bytes the shim produced for that table
// (ArrowStreamReader over a plain stream, as the bridge reads it). bench/shim_bench.py times the same
// encodings against pickle.dumps and json.dumps of the same rows (Python against Python, timeit), and
// issue 20's typed columns (decimal, list<int64>, list<utf8>) against pickle.dumps of the same column.
using Apache.Arrow;
using Apache.Arrow.Ipc;
using System.Globalization;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[MemoryDiagnoser]
public class ShimBench
{
    public const int Rows = 1_000_000;

    private byte[] _stream = [];

    public static string BenchDir => Path.Combine(RepoRoot, "bench");

    public static string RepoRoot { get; } = FindRoot();

    public static string PythonSetup =>
        $"import sys\nsys.path.insert(0, {PyString(BenchDir)})\n" +
        $"from shim_bench import make_columns, make_rows, encode\nimport pickle, json\ncols = make_columns({Rows})\nrows = make_rows(cols)\n";

    [GlobalSetup]
    public void Setup()
    {
        string file = Path.Combine(Path.GetTempPath(), $"casparian-shimbench-{Environment.ProcessId}.arrows");
        string script = PythonSetup + $"""
            import arrow_ipc
            with open({PyString(file)}, "wb") as f:
                for size, chunks in arrow_ipc.table_messages(cols, "output"):
                    for c in chunks:
                        f.write(c)
            """;
        RunPython("-c", script);
        _stream = File.ReadAllBytes(file);
        File.Delete(file);
        if (Decode(_stream) != Rows) throw new InvalidOperationException($"the shim's stream does not decode to {Rows} rows");
    }

    [Benchmark]
    [Throughput(Rows)]
    [Python("encode(cols)", Number = 1, Repeat = 5)]
    [Target("Python side: ≥ 2M rows/s encoding a dict of lists (issue 5)", OfPython = true)]
    public long DecodeDictOfLists() => Decode(_stream);

    [Benchmark]
    [Throughput(Rows)]
    [Python("encode(rows)", Number = 1, Repeat = 5)]
    [Target("Python side: ≥ 1M rows/s encoding a list of row dicts (issue 5)", OfPython = true)]
    public long DecodeRowDicts() => Decode(_stream);

    /// <summary>
    /// Issue 7's pairing of the shim's Arrow encoding with plain Python serialization of the same rows:
    /// bench/shim_bench.py times every case with timeit (Python against Python, so the [Python]
    /// pairing above, which sets the shim against C#'s decode, does not cover it).
    /// </summary>
    [GlobalCleanup(Target = nameof(DecodeDictOfLists))]
    public void PythonSerialization()
    {
        int rows = Program.Checking ? 20_000 : Rows;
        var times = RunPython(Path.Combine(BenchDir, "shim_bench.py"), rows.ToString(CultureInfo.InvariantCulture), "--tsv")
            .Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split('\t')).ToDictionary(f => f[0], f => double.Parse(f[1], CultureInfo.InvariantCulture));
        if (times.Count != 12) throw new InvalidOperationException($"shim_bench.py timed {times.Count} case(s), expected 12");

        string note = $"timeit, median of 5, {rows:N0} rows × (int64, float64, utf8, bool)";
        foreach (var (shape, shim) in new[] { ("dict of lists", "shim encode, dict of lists"), ("rows", "shim encode, list of row dicts") })
        {
            double s = times[shim];
            Extras.Add(nameof(ShimBench), shim, Rate(rows, s), note);
            foreach (string other in new[] { "pickle.dumps", "json.dumps" })
            {
                double o = times[$"{other}({shape})"];
                Extras.Add(nameof(ShimBench), $"{other}({shape})", Rate(rows, o), o >= s
                    ? $"the shim's Arrow encoding is {(o / s).ToString("0.0", CultureInfo.InvariantCulture)}x faster"
                    : $"the shim's Arrow encoding is {(s / o).ToString("0.0", CultureInfo.InvariantCulture)}x slower");
            }
        }

        // Issue 20: one typed column against pickle.dumps of the same column. Target: no slower than pickle.
        foreach (string column in new[] { "decimal", "list<int64>", "list<utf8>" })
        {
            double s = times[$"shim encode, {column} column"], o = times[$"pickle.dumps({column} column)"];
            string shape = column switch { "decimal" => "Decimal('N.NN')", "list<int64>" => "[i, i+1, i+2]", _ => "['tagN', 'xN']" };
            Extras.Add(nameof(ShimBench), $"shim encode, {column} column", Rate(rows, s), $"timeit, median of 5, {rows:N0} rows of {shape}; target (issue 20): no slower than pickle.dumps");
            Extras.Add(nameof(ShimBench), $"pickle.dumps({column} column)", Rate(rows, o), o >= s
                ? $"the shim's Arrow encoding is {(o / s).ToString("0.0", CultureInfo.InvariantCulture)}x faster: target met"
                : $"the shim's Arrow encoding is {(s / o).ToString("0.0", CultureInfo.InvariantCulture)}x slower: target missed");
        }
    }

    private static string Rate(int rows, double seconds) =>
        $"{(seconds * 1e3).ToString("0", CultureInfo.InvariantCulture)} ms, {(rows / seconds / 1e6).ToString("0.00", CultureInfo.InvariantCulture)}M rows/s";

    internal static long Decode(byte[] stream)
    {
        using var reader = new ArrowStreamReader(new PlainStream(stream));
        long rows = 0;
        while (reader.ReadNextRecordBatch() is { } batch)
            using (batch) rows += batch.Length;
        return rows;
    }

    /// <summary>Runs the real python3 with <paramref name="args"/> (a script path, or "-c" and code); its stdout, or an exception with its stderr when it fails.</summary>
    internal static string RunPython(params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(Defaults.Python)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (string a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"python {string.Join(' ', args.Take(1))} failed (exit {p.ExitCode}): {err.Result}");
        return output;
    }

    internal static string PyString(string s) => "'" + s.Replace("\\", "\\\\").Replace("'", "\\'") + "'";

    internal static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "casparian.csproj"))) return dir.FullName;
        throw new DirectoryNotFoundException($"no casparian.csproj above {AppContext.BaseDirectory}");
    }

    /// <summary>A non-MemoryStream view, so the reader takes its stream path (the bridge's) rather than its zero-copy memory path.</summary>
    private sealed class PlainStream(byte[] data) : Stream
    {
        private int _position;

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            int n = Math.Min(buffer.Length, data.Length - _position);
            data.AsSpan(_position, n).CopyTo(buffer);
            _position += n;
            return n;
        }

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
