// End to end through the native binary (issue 6 targets, issue 7 end-to-end parity): a trivial CSV
// parser (csv.reader → dict of lists of strings) over one big file and over many small ones, three
// ways, each a spawned process (or three) timed by BenchmarkDotNet:
//   Alone*  the real python3 running the same parse() over the same file(s) in one process, no output
//   Run*    `casparian run parser.py INPUT --output DIR` (dev mode: a guest per file, Parquet out)
//   Start*  `casparian parser register` + `job add` + `start --drain` in a fresh CASPARIAN_HOME
// and the fixed costs: the native binary's start-up, and per job interpreter start-up, the shim's
// imports, an empty guest job.
// StartSmall also reads each job's created/claimed/finished times from the store afterwards and
// records the latency percentiles through Extras. The binary is $CASPARIAN_BIN or ./casparian.
//   dotnet run -c Release --project bench -- --filter '*EndToEnd*'
using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[Description("A trivial parser (csv.reader → dict of lists) over one CSV of 1M rows × 4 columns (Big) and over 100 CSVs of 100 rows " +
             "(Small): alone in one python3 process without output, through `casparian run`, and through `parser register` + `job add` + " +
             "`start --drain` in a fresh home. casparian runs one guest process per file, 2 slots (one per core). Every side is a spawned " +
             "process timed by BenchmarkDotNet; the ratios are casparian / alone. PythonStart, ShimImports and EmptyGuestJob are the " +
             "fixed costs of one job. Allocations are the benchmark process's only, not the children's.")]
public partial class EndToEndBench
{
    private const string Suite = nameof(EndToEndBench);
    private WarmGuests _warm = null!;
    private const int BigRows = 1_000_000;
    private const int SmallFiles = 100;
    private const int SmallRows = 100;
    // --check runs in process with these, so it proves the paths in seconds.
    private const int CheckBigRows = 20_000;
    private const int CheckSmallFiles = 10;

    private const string ParserSource = """
        import csv

        name = "bench_csv"
        version = "1.0.0"


        def parse(path):
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader)
                columns = [list(c) for c in zip(*reader)]
            return dict(zip(header, columns))
        """;

    // The parser alone: the same parse() over a file or a folder's files, sorted, rows counted and dropped.
    private const string AloneSource = """
        import importlib.util, os, sys
        spec = importlib.util.spec_from_file_location("bench_parser", sys.argv[1])
        parser = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(parser)
        target = sys.argv[2]
        files = [os.path.join(target, n) for n in sorted(os.listdir(target))] if os.path.isdir(target) else [target]
        rows = 0
        for path in files:
            rows += len(next(iter(parser.parse(path).values())))
        print(rows)
        """;

    private const string EmptyParserSource = "def parse(path):\n    return None\n";

    private string _dir = "";
    private string _binary = "";
    private string _python = "";
    private string _parser = "";
    private string _alone = "";
    private string _big = "";
    private string _small = "";
    private string _toolHome = "";
    private string _shim = "";
    private string _emptyParser = "";
    private int _bigRows;
    private int _smallFiles;
    private int _iteration;
    private string _home = "";
    private string _output = "";

    // StartSmall's jobs over all its invocations: milliseconds from created (job add) and from
    // claimed (dispatch) to finished (COMPLETED committed), and each invocation's store span.
    private readonly List<double> _queueToDone = [];
    private readonly List<double> _claimToDone = [];
    private readonly List<double> _storeRates = [];

    [GlobalSetup]
    public void Setup()
    {
        _binary = Environment.GetEnvironmentVariable("CASPARIAN_BIN") is { Length: > 0 } env ? env : Path.Combine(ShimBench.RepoRoot, "casparian");
        if (!File.Exists(_binary)) throw new FileNotFoundException($"native binary not found at {_binary}; run ./build.sh first (or set CASPARIAN_BIN)");
        _python = Defaults.Python;
        _bigRows = Program.Checking ? CheckBigRows : BigRows;
        _smallFiles = Program.Checking ? CheckSmallFiles : SmallFiles;
        _dir = Directory.CreateTempSubdirectory("casparian-bench-e2e-").FullName;
        _parser = Write("parser.py", ParserSource);
        _alone = Write("alone.py", AloneSource);
        _emptyParser = Write("empty_parser.py", EmptyParserSource);
        _big = Path.Combine(_dir, "big.csv");
        WriteCsv(_big, 0, _bigRows);
        _small = Path.Combine(_dir, "small");
        Directory.CreateDirectory(_small);
        for (int i = 0; i < _smallFiles; i++) WriteCsv(Path.Combine(_small, $"part-{i:D4}.csv"), i * SmallRows, SmallRows);
        // `casparian run` and the start-up benchmarks share one home: the shim is extracted once.
        _toolHome = Path.Combine(_dir, "tool-home");
        _shim = Shim.Ensure(Path.Combine(_toolHome, "shim"));
        File.WriteAllText(Path.Combine(_dir, "empty.csv"), "");
        _warm = new WarmGuests(Defaults.Warm, _ => { });
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        if (_queueToDone.Count > 0) RecordLatencies();
        _warm.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>
    /// A fresh home (store, output) and output folder per invocation, since `job add` skips content
    /// already COMPLETED; the shim is copied in, so Start* measure a home's steady state, not its first use.
    /// </summary>
    [IterationSetup]
    public void Fresh()
    {
        _iteration++;
        _home = Path.Combine(_dir, $"home-{_iteration}");
        _output = Path.Combine(_dir, $"out-{_iteration}");
        string shimDir = Path.GetDirectoryName(_shim)!;
        string copy = Path.Combine(_home, "shim", Path.GetFileName(shimDir));
        Directory.CreateDirectory(copy);
        foreach (string f in Directory.GetFiles(shimDir)) File.Copy(f, Path.Combine(copy, Path.GetFileName(f)));
    }

    [IterationCleanup]
    public void Verify()
    {
        string db = Path.Combine(_home, "casparian.db");
        if (File.Exists(db))
        {
            using var store = JobStores.Open(Defaults.Store(db));
            var jobs = store.List(null, int.MaxValue);
            if (jobs.Count == 0 || jobs.Any(j => j.State != JobState.Completed))
                throw new InvalidOperationException($"{jobs.Count(j => j.State != JobState.Completed)} of {jobs.Count} job(s) in {db} are not COMPLETED");
            if (jobs.Count == _smallFiles && jobs.All(j => j.InputPath.StartsWith(_small, StringComparison.Ordinal)))
            {
                foreach (var j in jobs)
                {
                    _queueToDone.Add((j.FinishedAt!.Value - j.CreatedAt).TotalMilliseconds);
                    _claimToDone.Add((j.FinishedAt.Value - j.ClaimedAt!.Value).TotalMilliseconds);
                }
                var span = jobs.Max(j => j.FinishedAt!.Value) - jobs.Min(j => j.CreatedAt);
                _storeRates.Add(jobs.Count / span.TotalSeconds);
            }
        }
        if (Directory.Exists(_home)) Directory.Delete(_home, recursive: true);
        if (Directory.Exists(_output)) Directory.Delete(_output, recursive: true);
    }

    /// <summary>The native binary's own start-up: `casparian version`, spawned and waited for.</summary>
    [Benchmark]
    [Target("< 20 ms (issue 2: native start-up)")]
    public int NativeVersion()
    {
        string output = Exec(_binary, ["version"], null);
        if (!output.StartsWith("casparian ", StringComparison.Ordinal)) throw new InvalidOperationException($"casparian version printed '{output}'");
        return output.Length;
    }

    /// <summary>The interpreter every job starts, doing nothing.</summary>
    [Benchmark]
    public int PythonStart() => Exec(_python, ["-c", "pass"], null).Length;

    /// <summary>The interpreter importing the shim (and its arrow_ipc) without running it: what every guest imports before the parser.</summary>
    [Benchmark]
    public int ShimImports() => Exec(_python, ["-c", $"import sys; sys.path.insert(0, {ShimBench.PyString(Path.GetDirectoryName(_shim)!)}); import bridge_shim"], null).Length;

    /// <summary>One whole guest job for a parser that returns nothing: spawn, shim, parser import, socket, end of stream, exit.</summary>
    [Benchmark]
    public long EmptyGuestJob() => EmptyGuest();

    /// <summary>The same job on a warm zygote: fork, socket, end of stream, exit (the zygote started in the first call).</summary>
    [Benchmark]
    [Versus(nameof(EmptyGuestJob))]
    [Target("under 5 ms from request to end (issue 12)")]
    public long EmptyGuestJobWarm() => EmptyGuest(_warm);

    [Benchmark]
    [Throughput(BigRows)]
    public long AloneBig() => Alone(_big, _bigRows);

    [Benchmark]
    [Throughput(BigRows)]
    [Versus(nameof(AloneBig))]
    [Target("within 1.3x of AloneBig, the parser alone without output (issue 5)")]
    public long RunBig() => DevRun(_big, 1, _bigRows);

    [Benchmark]
    [Throughput(BigRows)]
    [Versus(nameof(AloneBig))]
    public long StartBig() => Start(_big, 1, _bigRows);

    [Benchmark]
    [Throughput((long)SmallFiles * SmallRows)]
    public long AloneSmall() => Alone(_small, _smallFiles * SmallRows);

    [Benchmark]
    [Throughput(SmallFiles, Unit = "jobs")]
    [Versus(nameof(AloneSmall))]
    [Target("within 5x of AloneSmall with warm guests (issue 12)")]
    public long RunSmall() => DevRun(_small, _smallFiles, _smallFiles * SmallRows);

    /// <summary>RunSmall with warm guests off: one interpreter per file, the way before issue 12.</summary>
    [Benchmark]
    [Throughput(SmallFiles, Unit = "jobs")]
    [Versus(nameof(AloneSmall))]
    public long RunSmallCold() => DevRun(_small, _smallFiles, _smallFiles * SmallRows, "--warm-guests", "0");

    [Benchmark]
    [Throughput(SmallFiles, Unit = "jobs")]
    [Versus(nameof(AloneSmall))]
    [Target("issue 6: jobs/s and p50/p99 queue → COMPLETED for one 100-row CSV per job through `start` (latencies in the table below); interpreter start-up expected to dominate")]
    public long StartSmall() => Start(_small, _smallFiles, _smallFiles * SmallRows);

    private long Alone(string input, long rows)
    {
        string output = Exec(_python, [_alone, _parser, input], null).Trim();
        if (output != rows.ToString(CultureInfo.InvariantCulture)) throw new InvalidOperationException($"the parser alone counted {output} rows, expected {rows}");
        return rows;
    }

    private long DevRun(string input, int files, long rows, params string[] extra)
    {
        string output = Exec(_binary, ["run", _parser, input, "--output", _output, .. extra], _toolHome);
        long written = RunRows().Matches(output).Sum(m => long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture));
        if (!output.Contains($"{files} of {files} file(s) succeeded", StringComparison.Ordinal) || written != rows)
            throw new InvalidOperationException($"casparian run wrote {written} rows, expected {rows} over {files} file(s):\n{output}");
        return written;
    }

    private long Start(string input, int files, long rows)
    {
        Exec(_binary, ["parser", "register", _parser], _home);
        Exec(_binary, ["job", "add", "--parser", "bench_csv", input], _home);
        string output = Exec(_binary, ["start", "--drain"], _home);
        var m = StartRows().Match(output);
        if (!m.Success || m.Groups[1].Value != files.ToString(CultureInfo.InvariantCulture)
            || long.Parse(m.Groups[2].Value, NumberStyles.AllowThousands, CultureInfo.InvariantCulture) != rows)
            throw new InvalidOperationException($"casparian start did not write {rows} rows in {files} file(s):\n{output}");
        return rows;
    }

    private long EmptyGuest(WarmGuests? warm = null)
    {
        var request = new GuestRequest
        {
            Warm = warm,
            Interpreter = _python,
            ShimPath = _shim,
            Parser = GuestParser.Path(_emptyParser),
            Options = Defaults.Bridge,
            FilePath = Path.Combine(_dir, "empty.csv"),
            ParserName = "empty",
        };
        var sink = new NullSink();
        var result = Bridge.RunAsync(request, sink, CancellationToken.None).GetAwaiter().GetResult();
        if (warm is not null && !result.Warm) throw new InvalidOperationException("the warm empty job ran on a cold guest");
        if (!result.Succeeded || sink.Tables != 0) throw new InvalidOperationException($"empty guest job: {result.Outcome} {result.ErrorMessage}; {sink.Tables} table(s)");
        return sink.Tables;
    }

    /// <summary>The latency percentiles of StartSmall's jobs, beside the start-up costs measured now in this process.</summary>
    private void RecordLatencies()
    {
        _queueToDone.Sort();
        _claimToDone.Sort();
        _storeRates.Sort();
        string runs = $"{_storeRates.Count} invocation(s) × {_smallFiles} jobs";
        Extras.Add(Suite, "StartSmall queue → COMPLETED p50", Extras.Ms(Extras.Percentile(_queueToDone, 0.5)),
            $"store created_at (job add) → finished_at; all jobs are queued at once, so this includes waiting behind earlier jobs; {runs}");
        Extras.Add(Suite, "StartSmall queue → COMPLETED p99", Extras.Ms(Extras.Percentile(_queueToDone, 0.99)), "as above");
        Extras.Add(Suite, "StartSmall dispatch → COMPLETED p50", Extras.Ms(Extras.Percentile(_claimToDone, 0.5)),
            $"store claimed_at → finished_at: one job's own latency (guest start, parse, Parquet, commit), 2 slots; {runs}");
        Extras.Add(Suite, "StartSmall dispatch → COMPLETED p99", Extras.Ms(Extras.Percentile(_claimToDone, 0.99)), "as above");
        Extras.Add(Suite, "StartSmall jobs/s inside the store",
            Extras.Percentile(_storeRates, 0.5).ToString("0.0", CultureInfo.InvariantCulture),
            "jobs / (last finished_at − first created_at), median over invocations: without register and the processes' own start and exit");

        // Measured here, right after the runs, so the share compares numbers from the same conditions.
        var python = new List<double>();
        var guest = new List<double>();
        for (int i = 0; i < 7; i++)
        {
            python.Add(Timed(() => PythonStart()));
            guest.Add(Timed(() => EmptyGuest()));
        }
        python.Sort();
        guest.Sort();
        double p50 = Extras.Percentile(_claimToDone, 0.5);
        double py = Extras.Percentile(python, 0.5), g = Extras.Percentile(guest, 0.5);
        Extras.Add(Suite, "python -c pass / empty guest job", $"{Extras.Ms(py)} / {Extras.Ms(g)}", "medians of 7, measured after StartSmall's runs in the same process");
        Extras.Add(Suite, "start-up share of dispatch → COMPLETED p50",
            $"{(py / p50).ToString("0%", CultureInfo.InvariantCulture)} / {(g / p50).ToString("0%", CultureInfo.InvariantCulture)}",
            "interpreter start-up / whole empty guest job, over the p50 above");
    }

    private static double Timed(Action action)
    {
        long start = Stopwatch.GetTimestamp();
        action();
        return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }

    private string Write(string name, string text)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, text + "\n");
        return path;
    }

    /// <summary>id, name, amount, flag: ints, repeating text, decimals, booleans, as text the way a CSV export has them.</summary>
    private static void WriteCsv(string path, int first, int rows)
    {
        using var w = new StreamWriter(path, false, new UTF8Encoding(false), 1 << 16);
        w.Write("id,name,amount,flag\n");
        for (int i = first; i < first + rows; i++)
            w.Write(string.Create(CultureInfo.InvariantCulture, $"{i},item-{i % 1000},{i * 0.25},{(i % 2 == 0 ? "true" : "false")}\n"));
    }

    /// <summary>Runs a program to completion with CASPARIAN_HOME set (when given); its stdout, or an exception with its output when it fails.</summary>
    private static string Exec(string file, string[] args, string? home)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (home is not null) psi.Environment["CASPARIAN_HOME"] = home;
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"{Path.GetFileName(file)} {string.Join(' ', args)} exited {p.ExitCode}:\n{stdout}{stderr.Result}");
        return stdout;
    }

    // `casparian run`'s summary table: "part-0001.csv  output  100  …"; `start`'s: "  output: 100 file(s), 10,000 rows".
    [GeneratedRegex(@"^\S+\s+output\s+(\d+)\s", RegexOptions.Multiline)]
    private static partial Regex RunRows();

    [GeneratedRegex(@"^\s+output: (\d+) file\(s\), ([\d,]+) rows$", RegexOptions.Multiline)]
    private static partial Regex StartRows();

    private sealed class NullSink : IGuestSink
    {
        public int Tables;

        public void Table(string topic, Apache.Arrow.RecordBatch batch)
        {
            Tables++;
            batch.Dispose();
        }

        public void Log(GuestLogLevel level, string text) { }
    }
}
