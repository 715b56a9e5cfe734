// The cost of carrying ParquetSharp's native library inside the binary (NativeParquet.cs), through
// the native binary ($CASPARIAN_BIN or ./casparian), each side a spawned process:
//   Version   `casparian version`: a command that never touches the library (the < 20 ms start-up)
//   WarmRun   `casparian run` of a one-row job in a home where the library is installed: it is
//             checked by SHA-256 and loaded
//   FirstRun  the same job in a fresh home: the library is decompressed, written, fsynced, renamed,
//             then checked and loaded; paired with WarmRun, the difference is the one-time install
// Both runs spawn the same guest (the real python3), whose start-up dominates either.
//   dotnet run -c Release --project bench -- --filter '*NativeParquet*'
using System.ComponentModel;
using System.Diagnostics;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[Description("`casparian version`, and `casparian run` of a one-row CSV job in a fresh CASPARIAN_HOME (FirstRun: ParquetSharp's native " +
             "library is installed from inside the binary, 27 MB) and in a home where it is installed (WarmRun: it is checked by hash and " +
             "loaded). Each side is a spawned process timed by BenchmarkDotNet; FirstRun's ratio is over WarmRun.")]
public class NativeParquetBench
{
    private const string ParserSource = "def parse(path):\n    return {'line': [open(path).read().strip()]}\n";

    private string _dir = "";
    private string _binary = "";
    private string _python = "";
    private string _parser = "";
    private string _input = "";
    private string _warmHome = "";
    private string _freshHome = "";
    private string _shimSource = "";
    private int _iteration;

    [GlobalSetup]
    public void Setup()
    {
        _binary = Environment.GetEnvironmentVariable("CASPARIAN_BIN") is { Length: > 0 } env ? env : Path.Combine(ShimBench.RepoRoot, "casparian");
        if (!File.Exists(_binary)) throw new FileNotFoundException($"native binary not found at {_binary}; run ./build.sh first (or set CASPARIAN_BIN)");
        _python = Defaults.Python;
        _dir = Directory.CreateTempSubdirectory("casparian-bench-native-").FullName;
        _parser = Path.Combine(_dir, "parser.py");
        File.WriteAllText(_parser, ParserSource);
        _input = Path.Combine(_dir, "tiny.csv");
        File.WriteAllText(_input, "hello\n");
        _warmHome = Path.Combine(_dir, "warm-home");
        Run(_warmHome);
        if (Installed(_warmHome) is null)
            throw new InvalidOperationException($"{_binary} installed no ParquetSharpNative.so under {Config.Defaults(_warmHome).LibDir}: is it a JIT build without the embedded library?");
        _shimSource = Path.Combine(_warmHome, "shim");
    }

    [GlobalCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    /// <summary>A home with the shim already there (as in any home after its first command) and no library.</summary>
    [IterationSetup(Target = nameof(FirstRun))]
    public void FreshHome()
    {
        _freshHome = Path.Combine(_dir, $"fresh-home-{++_iteration}");
        foreach (string file in Directory.GetFiles(_shimSource, "*", SearchOption.AllDirectories))
        {
            string copy = Path.Combine(_freshHome, "shim", Path.GetRelativePath(_shimSource, file));
            Directory.CreateDirectory(Path.GetDirectoryName(copy)!);
            File.Copy(file, copy);
        }
    }

    [IterationCleanup(Target = nameof(FirstRun))]
    public void DropFreshHome() => Directory.Delete(_freshHome, recursive: true);

    [Benchmark]
    [Target("< 20 ms (issue 2: native start-up); never extracts or loads the library")]
    public int Version()
    {
        string output = Exec(["version"], Path.Combine(_dir, "never-created-home"));
        if (!output.StartsWith("casparian ", StringComparison.Ordinal) || Directory.Exists(Path.Combine(_dir, "never-created-home")))
            throw new InvalidOperationException($"casparian version printed '{output}' or created its home");
        return output.Length;
    }

    [Benchmark]
    public long WarmRun()
    {
        var before = Installed(_warmHome)!;
        Run(_warmHome);
        var after = Installed(_warmHome)!;
        if (after.LastWriteTimeUtc != before.LastWriteTimeUtc || after.Length != before.Length)
            throw new InvalidOperationException($"a run in a home with the library installed rewrote {after.FullName}");
        return after.Length;
    }

    [Benchmark]
    [Versus(nameof(WarmRun))]
    public long FirstRun()
    {
        Run(_freshHome);
        return Installed(_freshHome)?.Length ?? throw new InvalidOperationException($"the first run installed no library under {Config.Defaults(_freshHome).LibDir}");
    }

    private static FileInfo? Installed(string home)
    {
        string lib = Config.Defaults(home).LibDir;
        return Directory.Exists(lib) ? Directory.GetFiles(lib, "ParquetSharpNative.so", SearchOption.AllDirectories).Select(f => new FileInfo(f)).SingleOrDefault() : null;
    }

    private void Run(string home)
    {
        string output = Exec(["run", _parser, _input, "--output", Path.Combine(home, "out")], home);
        if (!output.Contains("1 of 1 file(s) succeeded", StringComparison.Ordinal)) throw new InvalidOperationException($"casparian run failed:\n{output}");
    }

    private string Exec(string[] args, string home)
    {
        var psi = new ProcessStartInfo(_binary) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["CASPARIAN_HOME"] = home;
        psi.Environment["CASPARIAN_PYTHON"] = _python;
        psi.Environment.Remove("VIRTUAL_ENV");
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"casparian {string.Join(' ', args)} exited {p.ExitCode}:\n{stdout}{stderr.Result}");
        return stdout;
    }
}
