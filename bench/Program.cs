// Runs the *Bench suites through BenchmarkDotNet, times each [Python] pairing in the same run,
// prints the comparison and optionally writes BENCHMARKS.md.
//
//   dotnet run -c Release --project bench                          every suite
//   dotnet run -c Release --project bench -- --filter '*Store*'    suites/benchmarks matching a glob
//   dotnet run -c Release --project bench -- --check               quick: one pass each, results asserted
//   dotnet run -c Release --project bench -- --report BENCHMARKS.md
using System.Reflection;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Engines;
using BenchmarkDotNet.Filters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace Casparian.Bench;

/// <summary>A suite whose operations take milliseconds to seconds (processes, files): timed per invocation, a few times.</summary>
[AttributeUsage(AttributeTargets.Class)]
public sealed class MacroAttribute : Attribute;

/// <summary>Rows (and bytes) one invocation processes, so the report can show rows/s and MB/s.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class ThroughputAttribute(long rows, long bytes = 0) : Attribute
{
    public long Rows { get; } = rows;

    /// <summary>What <see cref="Rows"/> counts, for the report's rate ("jobs" gives jobs/s).</summary>
    public string Unit { get; init; } = "rows";
    public long Bytes { get; } = bytes;
}

/// <summary>The target an issue set for this benchmark, shown beside the result.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class TargetAttribute(string text) : Attribute
{
    public string Text { get; } = text;

    /// <summary>The target is about the paired Python statement's time (e.g. the shim's encoding), not the C# side's.</summary>
    public bool OfPython { get; init; }
}

public sealed record BenchOptions(string[] Filters, bool Check, string? ReportPath, bool List)
{
    public static BenchOptions Parse(string[] args)
    {
        var filters = new List<string>();
        bool check = false, list = false;
        string? report = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--filter" when i + 1 < args.Length:
                    // BenchmarkDotNet style: several patterns may follow one --filter.
                    while (i + 1 < args.Length && !args[i + 1].StartsWith("--", StringComparison.Ordinal)) filters.Add(args[++i]);
                    break;
                case "--check": check = true; break;
                case "--list": list = true; break;
                case "--report" when i + 1 < args.Length: report = args[++i]; break;
                default:
                    throw new ArgumentException($"unknown bench argument '{args[i]}'; expected --filter GLOB…, --check, --report FILE, --list");
            }
        }
        return new BenchOptions(filters.Count == 0 ? ["*"] : [.. filters], check, report, list);
    }
}

public static class Program
{
    /// <summary>
    /// True in a --check run, whose benchmarks all run in this process, so macro suites can shrink their
    /// inputs; always false in BenchmarkDotNet's child processes, which measure the full sizes.
    /// </summary>
    public static bool Checking { get; private set; }

    public static int Main(string[] args)
    {
        BenchOptions options;
        try
        {
            options = BenchOptions.Parse(args);
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }

        var filter = new GlobFilter(options.Filters);
        var runs = new List<BenchmarkRunInfo>();
        foreach (var suite in Suites())
        {
            var info = BenchmarkConverter.TypeToBenchmarks(suite, ConfigFor(suite, options, filter));
            if (info.BenchmarksCases.Length == 0) continue;
            if (options.List)
            {
                foreach (var c in info.BenchmarksCases) Console.WriteLine(c.DisplayInfo);
                continue;
            }
            runs.Add(info);
        }
        if (options.List) return 0;
        if (runs.Count == 0)
        {
            Console.Error.WriteLine($"error: no benchmark matches {string.Join(" ", options.Filters)} (see --list)");
            return 2;
        }

        Checking = options.Check;
        Extras.Begin();
        Summary[] summaries = BenchmarkRunner.Run([.. runs]);
        var parity = Parity.Measure(summaries, options.Check);
        Parity.Print(parity);
        var extras = Extras.Collect();
        Extras.Print(extras);

        int failures = 0;
        foreach (var report in summaries.SelectMany(s => s.Reports).Where(r => !r.Success))
        {
            Console.Error.WriteLine($"error: benchmark {report.BenchmarkCase.DisplayInfo} failed (see its log above)");
            failures++;
        }
        foreach (var s in summaries)
            foreach (var e in s.ValidationErrors)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                failures++;
            }
        if (options.ReportPath is { } path)
        {
            Report.Write(path, summaries, parity, extras, options, args);
            Console.WriteLine($"wrote {Path.GetFullPath(path)}");
        }
        if (options.Check) Console.WriteLine(failures == 0 ? $"check: {summaries.Sum(s => s.Reports.Length)} benchmark(s) ran and verified" : $"check: {failures} failure(s)");
        return failures == 0 ? 0 : 1;
    }

    public static IEnumerable<Type> Suites() =>
        typeof(Program).Assembly.GetTypes()
            .Where(t => t.IsPublic && !t.IsAbstract && t.GetMethods().Any(m => m.IsDefined(typeof(BenchmarkAttribute))))
            .OrderBy(t => t.Name, StringComparer.Ordinal);

    private static IConfig ConfigFor(Type suite, BenchOptions options, IFilter filter)
    {
        bool macro = suite.IsDefined(typeof(MacroAttribute));
        Job job = (options.Check, macro) switch
        {
            // --check proves each benchmark still runs and its [GlobalSetup] checks pass: one short
            // pass in this process, no separate build.
            (true, false) => Job.Dry.WithStrategy(RunStrategy.Throughput).WithIterationCount(1).WithWarmupCount(1)
                .WithToolchain(InProcessEmitToolchain.Instance),
            (true, true) => Job.Dry.WithToolchain(InProcessEmitToolchain.Instance),
            (false, false) => Job.Default.WithMaxIterationCount(40),
            (false, true) => Job.Default.WithStrategy(RunStrategy.Monitoring).WithLaunchCount(1).WithWarmupCount(1).WithIterationCount(7),
        };
        return ManualConfig.CreateMinimumViable()
            .AddJob((options.Check ? job : RuntimeLikeTheBinary(job)).WithId(macro ? "macro" : "micro"))
            .AddDiagnoser(BenchmarkDotNet.Diagnosers.MemoryDiagnoser.Default)
            .AddColumn(BenchmarkDotNet.Columns.StatisticColumn.Median, BenchmarkDotNet.Columns.StatisticColumn.Q1, BenchmarkDotNet.Columns.StatisticColumn.Q3)
            .AddExporter(BenchmarkDotNet.Exporters.MarkdownExporter.GitHub)
            .AddFilter(filter)
            // The default 2 minutes is too short to build a suite's child project on a busy 2-core machine.
            .WithBuildTimeout(TimeSpan.FromMinutes(10))
            .WithOptions(ConfigOptions.JoinSummary | ConfigOptions.DisableLogFile);
    }

    /// <summary>
    /// The runtime settings the binary is built with (Directory.Build.props), as this process got them,
    /// passed on to the child processes BenchmarkDotNet builds from a project of its own, whose runtime
    /// configuration lacks them. (--check runs in this process, which has them.)
    /// </summary>
    private static Job RuntimeLikeTheBinary(Job job)
    {
        const string spinLimit = "System.Threading.ThreadPool.UnfairSemaphoreSpinLimit";
        if (AppContext.GetData(spinLimit) is not string value)
            throw new InvalidOperationException($"the bench process lacks the runtime setting {spinLimit} that Directory.Build.props gives the binary");
        return job.WithEnvironmentVariable("DOTNET_ThreadPool_UnfairSemaphoreSpinLimit", value);
    }
}

/// <summary>Option records as the shell builds them from every setting's default (Config.Defaults), for a suite to change with `with`.</summary>
internal static class Defaults
{
    private static Config Settings => Config.Defaults(Path.GetTempPath());

    public static StoreOptions Store(string db) => Commands.StoreOptions(Settings, create: true) with { Db = db };

    public static BridgeOptions Bridge { get; } = Commands.BridgeOptions(Settings);

    public static WarmOptions Warm { get; } = Commands.WarmOptions(Settings);

    /// <summary>The real interpreter behind the python setting's default.</summary>
    public static string Python { get; } = Casparian.Python.ResolveReal(Settings.Get(Config.Python));

    public static OutputOptions Output(string root) => Commands.OutputOptions(Settings) with { Root = root };

    /// <summary>A sentinel with <see cref="Keys"/>: CURVE on tcp://, tokens checked (the default a user gets).</summary>
    public static SentinelOptions Sentinel(string bind, string db, RoleLog log) =>
        Commands.SentinelOptions(Settings, log, Keys) with { Bind = bind, Store = Store(db) };

    private static readonly Lazy<SentinelKeys> LazyKeys = new(() =>
        SentinelKeys.LoadOrCreate(Path.Combine(Directory.CreateTempSubdirectory("casparian-bench-keys-").FullName, "keys")));

    /// <summary>The bench run's sentinel keys, made once in a private temp directory.</summary>
    public static SentinelKeys Keys => LazyKeys.Value;
}
