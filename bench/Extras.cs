// Measurements that are not BenchmarkDotNet statistics (latency percentiles read from the job store,
// start-up shares): a suite records them, the host prints them after the run and Report writes them
// under the suite's table. Macro suites run in BenchmarkDotNet's child processes, so a record is a
// JSON line appended to the file the host names in CASPARIAN_BENCH_EXTRAS, which the children inherit.
using System.Globalization;
using System.Text.Json;

namespace Casparian.Bench;

public static class Extras
{
    public sealed record Measurement(string Suite, string Name, string Value, string Note);

    private const string FileVariable = "CASPARIAN_BENCH_EXTRAS";

    /// <summary>Called by the host before any benchmark runs: names a fresh file for this run's records.</summary>
    public static void Begin()
    {
        string path = Path.Combine(Path.GetTempPath(), $"casparian-bench-extras-{Environment.ProcessId}.jsonl");
        File.Delete(path);
        Environment.SetEnvironmentVariable(FileVariable, path);
    }

    public static void Add(string suite, string name, string value, string note = "")
    {
        // A benchmark process started by hand (no host) has nowhere to put them; the console still shows them.
        Console.WriteLine($"// {suite} {name}: {value} {note}");
        if (Environment.GetEnvironmentVariable(FileVariable) is not { Length: > 0 } path) return;
        File.AppendAllText(path, JsonSerializer.Serialize(new Measurement(suite, name, value, note), ParityJson.Default.Measurement) + "\n");
    }

    /// <summary>Called by the host after the run: every record, in the order they were made; the file is removed.</summary>
    public static List<Measurement> Collect()
    {
        if (Environment.GetEnvironmentVariable(FileVariable) is not { Length: > 0 } path || !File.Exists(path)) return [];
        var list = File.ReadLines(path).Where(l => l.Length > 0)
            .Select(l => JsonSerializer.Deserialize(l, ParityJson.Default.Measurement)!).ToList();
        File.Delete(path);
        return list;
    }

    public static void Print(List<Measurement> extras)
    {
        if (extras.Count == 0) return;
        Console.WriteLine();
        Console.WriteLine("Other measurements (not BenchmarkDotNet statistics)");
        foreach (var m in extras)
            Console.WriteLine($"{m.Suite,-16} {m.Name,-44} {m.Value,14}  {m.Note}");
    }

    /// <summary>The q-quantile (0..1) of <paramref name="sorted"/>, nearest rank.</summary>
    public static double Percentile(IReadOnlyList<double> sorted, double q) =>
        sorted.Count == 0 ? double.NaN : sorted[Math.Clamp((int)Math.Ceiling(q * sorted.Count) - 1, 0, sorted.Count - 1)];

    public static string Ms(double ms) => ms.ToString(ms < 10 ? "0.0" : "0", CultureInfo.InvariantCulture) + " ms";
}
