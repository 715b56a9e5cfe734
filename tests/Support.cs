// What every test layer shares: the repository root, the built native binary, running a process
// to completion with its output captured, and throwaway directories.
using System.Diagnostics;
using System.Text;

namespace Casparian.Tests;

internal static class Repo
{
    public static string Root { get; } = FindRoot();

    /// <summary>
    /// The native binary under test: $CASPARIAN_BIN (set by ./build.sh test) or ./casparian at the
    /// root. Missing is a failure, not a skip: black-box tests that quietly skip cannot fail.
    /// </summary>
    public static string Binary
    {
        get
        {
            string path = Environment.GetEnvironmentVariable("CASPARIAN_BIN") is { Length: > 0 } env ? env : Path.Combine(Root, "casparian");
            if (!File.Exists(path)) throw new FileNotFoundException($"native binary not found at {path}; run ./build.sh first (or ./build.sh test)");
            return path;
        }
    }

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "casparian.csproj"))) return dir.FullName;
        throw new DirectoryNotFoundException($"no casparian.csproj above {AppContext.BaseDirectory}");
    }
}

internal readonly record struct ProcessResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

internal static class Proc
{
    /// <summary>Runs a program to completion (killed after <paramref name="timeout"/>) and captures its output.</summary>
    public static ProcessResult Run(string file, IEnumerable<string> args, TimeSpan? timeout = null, string? workingDirectory = null,
        IDictionary<string, string?>? environment = null, string? stdin = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Repo.Root,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (environment is not null)
            foreach (var (k, v) in environment)
                if (v is null) psi.Environment.Remove(k); else psi.Environment[k] = v;

        using var p = Process.Start(psi)!;
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (stdin is not null) p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(timeout ?? TimeSpan.FromSeconds(60)))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish within {timeout}\n{stdout}\n{stderr}");
        }
        p.WaitForExit(); // drains the asynchronous readers
        lock (stdout) lock (stderr) return new ProcessResult(p.ExitCode, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Runs the native binary.</summary>
    public static ProcessResult Casparian(params string[] args) => Run(Repo.Binary, args);
}

/// <summary>A fresh directory under the system temp folder, deleted on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("casparian-test-").FullName;

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
