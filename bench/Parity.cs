// Python parity: a benchmark method marked [Python("stmt")] is paired with that statement, timed by
// the real python3 with timeit (spawned once per suite and interpreter), and the two medians are
// printed side by side. A suite's static PythonGlobals runs once per interpreter (sockets, threads,
// connections that must outlive timeit's repeats); its PythonSetup runs before every timing, as timeit does.
// C# is timed by BenchmarkDotNet, Python by timeit's autorange + repeat: both report time per operation.
// A benchmark marked [Versus(nameof(Other))] is instead paired with another benchmark of its suite
// (end to end: casparian against the parser run alone), both spawned processes timed by BenchmarkDotNet.
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.Json;
using BenchmarkDotNet.Reports;

namespace Casparian.Bench;

/// <summary>The Python statement equivalent to this benchmark; the suite's static <c>PythonSetup</c> runs first.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class PythonAttribute(string statement) : Attribute
{
    public string Statement { get; } = statement;

    /// <summary>Interpreter to use: "python3" (resolved to the real binary) or an absolute path.</summary>
    public string Interpreter { get; init; } = "python3";

    /// <summary>Calls per timing; 0 lets timeit's autorange pick (about 0.2 s worth).</summary>
    public int Number { get; init; }

    /// <summary>Timings taken; the median is reported.</summary>
    public int Repeat { get; init; } = 7;
}

/// <summary>Pairs this benchmark with <paramref name="baseline"/>, a benchmark of the same suite timed the same way; the ratio is this / baseline.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class VersusAttribute(string baseline) : Attribute
{
    public string Baseline { get; } = baseline;
}

public static class Parity
{
    /// <param name="Baseline">The paired benchmark of the same suite ([Versus]); null when the pairing is a timeit statement.</param>
    public sealed record Row(string Suite, string Benchmark, double CSharpNs, double PythonNs, long? AllocatedBytes, string? Baseline = null)
    {
        public double Speedup => PythonNs / CSharpNs;
    }

    /// <summary>Times the Python pairing of every successful benchmark that has one.</summary>
    public static List<Row> Measure(Summary[] summaries, bool check)
    {
        var rows = new List<Row>();
        foreach (var group in summaries.SelectMany(s => s.Reports).Where(r => r.Success && r.ResultStatistics is not null)
                     .GroupBy(r => r.BenchmarkCase.Descriptor.Type))
        {
            var pairs = group
                .Select(r => (Report: r, Attr: r.BenchmarkCase.Descriptor.WorkloadMethod.GetCustomAttribute<PythonAttribute>()))
                .Where(p => p.Attr is not null)
                .ToList();
            foreach (var r in group)
            {
                var method = r.BenchmarkCase.Descriptor.WorkloadMethod;
                if (method.GetCustomAttribute<VersusAttribute>() is not { } versus) continue;
                var baseline = group.FirstOrDefault(b => b.BenchmarkCase.Descriptor.WorkloadMethod.Name == versus.Baseline
                    && b.BenchmarkCase.Parameters.DisplayInfo == r.BenchmarkCase.Parameters.DisplayInfo);
                if (baseline is null) continue;
                rows.Add(new Row(group.Key.Name, method.Name, r.ResultStatistics!.Median, baseline.ResultStatistics!.Median,
                    r.GcStats.GetBytesAllocatedPerOperation(r.BenchmarkCase), versus.Baseline));
            }
            if (pairs.Count == 0) continue;
            string setup = group.Key.GetProperty("PythonSetup", BindingFlags.Public | BindingFlags.Static)?.GetValue(null) as string ?? "";
            string globals = group.Key.GetProperty("PythonGlobals", BindingFlags.Public | BindingFlags.Static)?.GetValue(null) as string ?? "";
            foreach (var interp in pairs.GroupBy(p => p.Attr!.Interpreter))
            {
                var cases = interp.Select(p => new PythonCase(p.Attr!.Statement, p.Attr.Number, check ? Math.Min(3, p.Attr.Repeat) : p.Attr.Repeat)).ToArray();
                double[] pythonNs = TimePython(interp.Key, globals, setup, cases);
                int i = 0;
                foreach (var (report, _) in interp)
                    rows.Add(new Row(group.Key.Name, report.BenchmarkCase.Descriptor.WorkloadMethod.Name,
                        report.ResultStatistics!.Median, pythonNs[i++], report.GcStats.GetBytesAllocatedPerOperation(report.BenchmarkCase)));
            }
        }
        return rows;
    }

    public static void Print(List<Row> rows)
    {
        var timeit = rows.Where(r => r.Baseline is null).ToList();
        if (timeit.Count > 0)
        {
            Console.WriteLine();
            Console.WriteLine("Python parity (medians per operation; C# by BenchmarkDotNet, Python by timeit)");
            Console.WriteLine($"{"suite",-16} {"benchmark",-24} {"C#",12} {"Python",12} {"C#/Python",10} {"speedup",9} {"alloc",8}");
            foreach (var r in timeit)
                Console.WriteLine($"{r.Suite,-16} {r.Benchmark,-24} {Ns(r.CSharpNs),12} {Ns(r.PythonNs),12} {Ratio(r),10} {Speedup(r),9} {r.AllocatedBytes?.ToString(CultureInfo.InvariantCulture) ?? "?",8}");
        }
        var versus = rows.Where(r => r.Baseline is not null).ToList();
        if (versus.Count == 0) return;
        Console.WriteLine();
        Console.WriteLine("Paired benchmarks: against the parser alone, PostgreSQL against SQLite (medians; both sides timed by BenchmarkDotNet)");
        Console.WriteLine($"{"suite",-16} {"benchmark",-24} {"median",12} {"baseline",-24} {"baseline",12} {"ratio",10}");
        foreach (var r in versus)
            Console.WriteLine($"{r.Suite,-16} {r.Benchmark,-24} {Ns(r.CSharpNs),12} {r.Baseline,-24} {Ns(r.PythonNs),12} {Ratio(r),10}");
    }

    /// <summary>"3.0x faster" or "2.5x slower": how the benchmark compares with its pairing.</summary>
    public static string Versus(Row r) => r.CSharpNs <= 0 ? "n/a"
        : r.Speedup >= 1 ? $"{r.Speedup.ToString("0.0", CultureInfo.InvariantCulture)}x faster"
        : $"{(1 / r.Speedup).ToString("0.0", CultureInfo.InvariantCulture)}x slower";

    /// <summary>C#/Python, or "n/a" when C# measured no time at all (a --check pass can round to 0).</summary>
    public static string Ratio(Row r) => r.CSharpNs > 0 ? (r.CSharpNs / r.PythonNs).ToString(r.CSharpNs / r.PythonNs < 0.01 ? "0.0000" : "0.000", CultureInfo.InvariantCulture) : "n/a";

    public static string Speedup(Row r) => r.CSharpNs > 0 ? r.Speedup.ToString("0.0", CultureInfo.InvariantCulture) + "x" : "n/a";

    public sealed record PythonCase(string Stmt, int Number, int Repeat);

    public static string Ns(double ns) => ns switch
    {
        < 1_000 => $"{ns:0.00} ns",
        < 1_000_000 => $"{ns / 1_000:0.00} us",
        < 1_000_000_000 => $"{ns / 1_000_000:0.00} ms",
        _ => $"{ns / 1_000_000_000:0.00} s",
    };

    /// <summary>Median nanoseconds per call of each statement, measured by one spawned interpreter.</summary>
    /// <param name="globals">Run once before any timing; its names are the globals of every setup and statement.</param>
    public static double[] TimePython(string interpreter, string globals, string setup, PythonCase[] cases)
    {
        string exe = interpreter == "python3" ? Defaults.Python : interpreter;
        const string Driver = """
            import json, sys, timeit
            job = json.load(sys.stdin)
            g = {}
            exec(job["globals"], g)
            out = []
            for case in job["cases"]:
                t = timeit.Timer(case["Stmt"], setup=job["setup"], globals=g)
                n = case["Number"] or t.autorange()[0]
                runs = sorted(t.repeat(repeat=case["Repeat"], number=n))
                out.append(runs[len(runs) // 2] / n * 1e9)
            print(json.dumps(out))
            """;
        var psi = new ProcessStartInfo(exe) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(Driver);
        using var p = Process.Start(psi)!;
        p.StandardInput.Write(JsonSerializer.Serialize(new PythonJob(globals, setup, cases), ParityJson.Default.PythonJob));
        p.StandardInput.Close();
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"python timing failed (exit {p.ExitCode}): {err.Result}");
        return JsonSerializer.Deserialize(output, ParityJson.Default.DoubleArray)!;
    }

    /// <summary>A Python bytes literal of <paramref name="data"/>, for building setup code from C# data.</summary>
    public static string BytesLiteral(ReadOnlySpan<byte> data)
    {
        var sb = new StringBuilder("b'");
        foreach (byte b in data)
        {
            if (b is >= 0x20 and < 0x7F && b != '\'' && b != '\\') sb.Append((char)b);
            else sb.Append(CultureInfo.InvariantCulture, $"\\x{b:x2}");
        }
        return sb.Append('\'').ToString();
    }
}

public sealed record PythonJob(
    [property: System.Text.Json.Serialization.JsonPropertyName("globals")] string Globals,
    [property: System.Text.Json.Serialization.JsonPropertyName("setup")] string Setup,
    [property: System.Text.Json.Serialization.JsonPropertyName("cases")] Parity.PythonCase[] Cases);

[System.Text.Json.Serialization.JsonSerializable(typeof(PythonJob))]
[System.Text.Json.Serialization.JsonSerializable(typeof(double[]))]
[System.Text.Json.Serialization.JsonSerializable(typeof(Extras.Measurement))]
internal sealed partial class ParityJson : System.Text.Json.Serialization.JsonSerializerContext;
