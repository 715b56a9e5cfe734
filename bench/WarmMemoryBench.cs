// Memory of warm guests (issue 12): 8 zygotes, one per parser, each parser importing pandas, started
// through the worker's own path (WarmGuests + Bridge.RunAsync, one job each, as a worker's first job
// per parser starts its zygote). Fork shares pages, so RSS overstates: the record is each zygote's PSS
// (its share of every page) and USS (pages only it maps: Private_Clean + Private_Dirty), summed, from
// /proc/PID/smaps_rollup, beside the RSS sum. The timed operation is one more job on a warm pandas
// zygote. The interpreter is the python setting's, else /usr/bin/python3, whichever imports pandas.
//   dotnet run -c Release --project bench -- --filter '*WarmMemoryBench*'
using System.Diagnostics;
using System.Globalization;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[System.ComponentModel.Description("8 warm zygotes for 8 parsers that import pandas, started by one job each through WarmGuests (the worker's path); " +
                                   "their PSS, USS and RSS summed from /proc/PID/smaps_rollup are recorded below the table. WarmPandasJob: one more job on a warm one.")]
public class WarmMemoryBench
{
    private const string Suite = nameof(WarmMemoryBench);
    private const int Zygotes = 8;

    private string _dir = "";
    private string _python = "";
    private string _shim = "";
    private string _input = "";
    private string[] _parsers = [];
    private WarmGuests _warm = null!;

    [GlobalSetup]
    public void Setup()
    {
        _python = new[] { Defaults.Python, "/usr/bin/python3" }.FirstOrDefault(ImportsPandas)
            ?? throw new InvalidOperationException($"neither {Defaults.Python} nor /usr/bin/python3 imports pandas; WarmMemoryBench needs it");
        _dir = Directory.CreateTempSubdirectory("casparian-bench-warmmem-").FullName;
        _shim = Shim.Ensure(Path.Combine(_dir, "shim"));
        _input = Path.Combine(_dir, "input.csv");
        File.WriteAllText(_input, "a,b\n1,2\n");
        _parsers = Enumerable.Range(0, Zygotes).Select(i =>
        {
            string path = Path.Combine(_dir, $"pandas_parser_{i}.py");
            File.WriteAllText(path, $"import pandas as pd\n\nname = \"pandas_{i}\"\n\n\ndef parse(path):\n    return pd.read_csv(path)\n");
            return path;
        }).ToArray();
        _warm = new WarmGuests(Defaults.Warm with { MaxZygotes = Zygotes }, _ => { });
        foreach (var p in _parsers) Job(p);
        var zygotes = ChildrenOf([Environment.ProcessId], zygoteOnly: true);
        if (zygotes.Count != Zygotes) throw new InvalidOperationException($"{zygotes.Count} zygote(s) alive after {Zygotes} parsers' first jobs, expected {Zygotes}");
        // Each zygote's idle spare child (forked ahead of the next job) is memory the warm guests hold too.
        var spares = ChildrenOf(zygotes, zygoteOnly: false);
        for (var waited = Stopwatch.StartNew(); spares.Count < Zygotes && waited.Elapsed < TimeSpan.FromSeconds(10); spares = ChildrenOf(zygotes, zygoteOnly: false))
            Thread.Sleep(50);
        if (spares.Count != Zygotes) throw new InvalidOperationException($"{spares.Count} spare child(ren) of {Zygotes} zygotes, expected one each");
        long pss = 0, uss = 0, rss = 0;
        foreach (int pid in zygotes.Concat(spares))
        {
            var m = Rollup(pid);
            pss += m["Pss"];
            uss += m["Private_Clean"] + m["Private_Dirty"];
            rss += m["Rss"];
        }
        string note = $"{Zygotes} zygotes with pandas imported ({_python}) and their idle spare children, summed over /proc/PID/smaps_rollup; target under 400 MB in total (issue 12)";
        Extras.Add(Suite, "8 pandas zygotes and spares: PSS total", Mb(pss), note);
        Extras.Add(Suite, "8 pandas zygotes and spares: USS total", Mb(uss), "Private_Clean + Private_Dirty: what stopping them would free");
        Extras.Add(Suite, "8 pandas zygotes and spares: RSS total", Mb(rss), "counts shared pages once per process: overstates");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _warm.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>One job on the first parser's warm zygote: fork, read_csv of two rows, Arrow out.</summary>
    [Benchmark]
    [Target("8 warm pandas zygotes under 400 MB PSS in total (issue 12; recorded below the table)")]
    public int WarmPandasJob() => Job(_parsers[0]);

    private int Job(string parser)
    {
        var request = new GuestRequest
        {
            Warm = _warm,
            Interpreter = _python,
            ShimPath = _shim,
            Parser = GuestParser.Path(parser),
            Options = Defaults.Bridge,
            FilePath = _input,
            ParserName = Path.GetFileNameWithoutExtension(parser),
        };
        var sink = new CountingSink();
        var result = Bridge.RunAsync(request, sink, CancellationToken.None).GetAwaiter().GetResult();
        if (!result.Succeeded || !result.Warm || sink.Tables != 1)
            throw new InvalidOperationException($"{parser}: {result.Outcome} {result.ErrorMessage}; warm {result.Warm}; {sink.Tables} table(s)");
        return sink.Tables;
    }

    /// <summary>The processes whose parent is one of <paramref name="parents"/> (running the zygote script, when <paramref name="zygoteOnly"/>).</summary>
    private static List<int> ChildrenOf(IReadOnlyCollection<int> parents, bool zygoteOnly)
    {
        var pids = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int pid)) continue;
            try
            {
                string stat = File.ReadAllText(Path.Combine(dir, "stat"));
                // pid (comm) state ppid …: comm may hold spaces, so split after its closing parenthesis.
                string[] rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                if (!parents.Contains(int.Parse(rest[1], CultureInfo.InvariantCulture))) continue;
                if (!zygoteOnly || File.ReadAllText(Path.Combine(dir, "cmdline")).Contains(Shim.ZygoteFile, StringComparison.Ordinal)) pids.Add(pid);
            }
            catch (IOException) { }
        }
        return pids;
    }

    /// <summary>smaps_rollup's fields in kB.</summary>
    private static Dictionary<string, long> Rollup(int pid)
    {
        var fields = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var line in File.ReadLines($"/proc/{pid}/smaps_rollup"))
        {
            int colon = line.IndexOf(':');
            if (colon < 0 || !line.EndsWith(" kB", StringComparison.Ordinal)) continue;
            fields[line[..colon]] = long.Parse(line[(colon + 1)..^3].Trim(), CultureInfo.InvariantCulture);
        }
        return fields;
    }

    private static string Mb(long kb) => (kb / 1024.0).ToString("0.0", CultureInfo.InvariantCulture) + " MB";

    private static bool ImportsPandas(string python)
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo(python, ["-c", "import pandas"]) { RedirectStandardError = true, UseShellExecute = false })!;
            p.StandardError.ReadToEnd();
            p.WaitForExit();
            return p.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }

    private sealed class CountingSink : IGuestSink
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
