// Python parity: a benchmark method marked [Python("stmt")] is paired with that statement, timed by
// the real python3 with timeit (spawned once per suite), and the two medians are printed side by side.
// C# is timed by BenchmarkDotNet, Python by timeit's autorange + repeat: both report time per operation.
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
}

public static class Parity
{
    public sealed record Row(string Suite, string Benchmark, double CSharpNs, double PythonNs, long? AllocatedBytes)
    {
        public double Speedup => PythonNs / CSharpNs;
    }

    public static int Report(Summary[] summaries)
    {
        var rows = new List<Row>();
        foreach (var summary in summaries)
        {
            foreach (var group in summary.Reports.Where(r => r.Success).GroupBy(r => r.BenchmarkCase.Descriptor.Type))
            {
                var pairs = group
                    .Select(r => (Report: r, Attr: r.BenchmarkCase.Descriptor.WorkloadMethod.GetCustomAttribute<PythonAttribute>()))
                    .Where(p => p.Attr is not null)
                    .ToList();
                if (pairs.Count == 0) continue;
                string setup = group.Key.GetProperty("PythonSetup", BindingFlags.Public | BindingFlags.Static)?.GetValue(null) as string ?? "";
                foreach (var interp in pairs.GroupBy(p => p.Attr!.Interpreter))
                {
                    var stmts = interp.Select(p => p.Attr!.Statement).ToArray();
                    double[] pythonNs = TimePython(interp.Key, setup, stmts);
                    int i = 0;
                    foreach (var (report, _) in interp)
                        rows.Add(new Row(group.Key.Name, report.BenchmarkCase.Descriptor.WorkloadMethod.Name,
                            report.ResultStatistics!.Median, pythonNs[i++], report.GcStats.GetBytesAllocatedPerOperation(report.BenchmarkCase)));
                }
            }
        }
        if (rows.Count == 0) return 0;

        Console.WriteLine();
        Console.WriteLine("Python parity (medians per operation; C# by BenchmarkDotNet, Python by timeit)");
        Console.WriteLine($"{"suite",-16} {"benchmark",-24} {"C#",12} {"Python",12} {"C#/Python",10} {"speedup",9} {"alloc",8}");
        foreach (var r in rows)
            Console.WriteLine($"{r.Suite,-16} {r.Benchmark,-24} {Ns(r.CSharpNs),12} {Ns(r.PythonNs),12} {r.CSharpNs / r.PythonNs,10:0.0000} {r.Speedup,8:0.0}x {r.AllocatedBytes?.ToString(CultureInfo.InvariantCulture) ?? "?",8}");
        return 0;
    }

    public static string Ns(double ns) => ns switch
    {
        < 1_000 => $"{ns:0.00} ns",
        < 1_000_000 => $"{ns / 1_000:0.00} us",
        < 1_000_000_000 => $"{ns / 1_000_000:0.00} ms",
        _ => $"{ns / 1_000_000_000:0.00} s",
    };

    /// <summary>Median nanoseconds per call of each statement, measured by one spawned interpreter.</summary>
    public static double[] TimePython(string interpreter, string setup, string[] statements)
    {
        string exe = interpreter == "python3" ? Python.ResolveReal() : interpreter;
        const string Driver = """
            import json, sys, timeit
            job = json.load(sys.stdin)
            out = []
            for stmt in job["stmts"]:
                t = timeit.Timer(stmt, setup=job["setup"])
                n, _ = t.autorange()
                runs = sorted(t.repeat(repeat=7, number=n))
                out.append(runs[len(runs) // 2] / n * 1e9)
            print(json.dumps(out))
            """;
        var psi = new ProcessStartInfo(exe) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(Driver);
        using var p = Process.Start(psi)!;
        p.StandardInput.Write(JsonSerializer.Serialize(new Dictionary<string, object> { ["setup"] = setup, ["stmts"] = statements }, ParityJson.Default.DictionaryStringObject));
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

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, object>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(string[]))]
[System.Text.Json.Serialization.JsonSerializable(typeof(double[]))]
internal sealed partial class ParityJson : System.Text.Json.Serialization.JsonSerializerContext;
