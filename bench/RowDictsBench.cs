// The per-row cost of a realistic parser (issue 12): csv.reader → a list of row dicts with six columns
// of different kinds (int, nullable float, unicode text with newlines, bool, ints mixed with codes such
// as "X-12" (the shim's text fallback), naive datetime), over one CSV of 500k rows, two ways, each a
// spawned process timed by BenchmarkDotNet:
//   AloneRowDicts  the real python3 running the same parse() over the file, rows counted and dropped
//   RunRowDicts    `casparian run parser.py FILE --output DIR`: a guest, the shim's row-dict → Arrow
//                  path, Parquet out
// The ratio is RunRowDicts / AloneRowDicts. The binary is $CASPARIAN_BIN or ./casparian.
//   dotnet run -c Release --project bench -- --filter '*RowDictsBench*'
using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[Description("A parser returning a list of row dicts (int, nullable float, unicode/multiline text, bool, ints mixed with codes like \"X-12\", " +
             "datetime) over one CSV of 500k rows: alone in one python3 process without output, and through `casparian run` (one guest, " +
             "Parquet out). Both are spawned processes; the ratio is casparian / alone. Allocations are the benchmark process's only.")]
public class RowDictsBench
{
    private const int Rows = 500_000;
    private const int CheckRows = 5_000;

    private const string ParserSource = """
        import csv
        from datetime import datetime

        name = "bench_rows"
        version = "1.0.0"


        def parse(path):
            rows = []
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                next(reader)
                for id_, amount, note, flag, code, ts in reader:
                    rows.append({
                        "id": int(id_),
                        "amount": float(amount) if amount else None,
                        "note": note,
                        "flag": flag == "true",
                        "code": int(code) if code.isdigit() else code,
                        "ts": datetime.fromisoformat(ts),
                    })
            return rows
        """;

    private const string AloneSource = """
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("bench_parser", sys.argv[1])
        parser = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(parser)
        print(len(parser.parse(sys.argv[2])))
        """;

    private string _dir = "";
    private string _binary = "";
    private string _python = "";
    private string _parser = "";
    private string _alone = "";
    private string _csv = "";
    private string _home = "";
    private int _rows;
    private int _iteration;

    [GlobalSetup]
    public void Setup()
    {
        _binary = Environment.GetEnvironmentVariable("CASPARIAN_BIN") is { Length: > 0 } env ? env : Path.Combine(ShimBench.RepoRoot, "casparian");
        if (!File.Exists(_binary)) throw new FileNotFoundException($"native binary not found at {_binary}; run ./build.sh first (or set CASPARIAN_BIN)");
        _python = Defaults.Python;
        _rows = Program.Checking ? CheckRows : Rows;
        _dir = Directory.CreateTempSubdirectory("casparian-bench-rowdicts-").FullName;
        _parser = Path.Combine(_dir, "parser.py");
        File.WriteAllText(_parser, ParserSource + "\n");
        _alone = Path.Combine(_dir, "alone.py");
        File.WriteAllText(_alone, AloneSource + "\n");
        _csv = Path.Combine(_dir, "rows.csv");
        WriteCsv(_csv, _rows);
        // One home for every run: the shim is extracted once, as for a user's second run.
        _home = Path.Combine(_dir, "home");
    }

    [GlobalCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    [Benchmark]
    [Throughput(Rows)]
    public long AloneRowDicts()
    {
        string output = Exec(_python, [_alone, _parser, _csv]).Trim();
        if (output != _rows.ToString(CultureInfo.InvariantCulture)) throw new InvalidOperationException($"the parser alone counted {output} rows, expected {_rows}");
        return _rows;
    }

    [Benchmark]
    [Throughput(Rows)]
    [Versus(nameof(AloneRowDicts))]
    [Target("within 1.3x of the parser alone (issue 12)")]
    public long RunRowDicts()
    {
        string output = Path.Combine(_dir, $"out-{++_iteration}");
        string printed = Exec(_binary, ["run", _parser, _csv, "--output", output]);
        if (!printed.Contains("1 of 1 file(s) succeeded", StringComparison.Ordinal) || !printed.Contains($" {_rows} ", StringComparison.Ordinal))
            throw new InvalidOperationException($"casparian run did not write {_rows} rows:\n{printed}");
        Directory.Delete(output, recursive: true);
        return _rows;
    }

    /// <summary>id, amount (every 10th empty), note (every 3rd unicode over two lines), flag, code (every 4th "X-n"), ts (ISO, one per second).</summary>
    private static void WriteCsv(string path, int rows)
    {
        using var w = new StreamWriter(path, false, new UTF8Encoding(false), 1 << 16);
        w.Write("id,amount,note,flag,code,ts\n");
        var start = new DateTime(2024, 1, 1, 0, 0, 0, DateTimeKind.Unspecified);
        for (int i = 0; i < rows; i++)
        {
            string amount = i % 10 == 0 ? "" : (i * 0.25).ToString("0.00", CultureInfo.InvariantCulture);
            string note = i % 3 == 0 ? $"\"línea {i % 1000}\nsegunda ✓\"" : $"item {i % 1000}";
            string code = i % 4 != 0 ? (i % 5000).ToString(CultureInfo.InvariantCulture) : $"X-{i % 100}";
            w.Write(string.Create(CultureInfo.InvariantCulture,
                $"{i},{amount},{note},{(i % 2 == 1 ? "true" : "false")},{code},{start.AddSeconds(i):yyyy-MM-ddTHH:mm:ss}\n"));
        }
    }

    /// <summary>Runs a program to completion with CASPARIAN_HOME set; its stdout, or an exception with its output when it fails.</summary>
    private string Exec(string file, string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["CASPARIAN_HOME"] = _home;
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"{Path.GetFileName(file)} {string.Join(' ', args)} exited {p.ExitCode}:\n{stdout}{stderr.Result}");
        return stdout;
    }
}
