// Python environments (SPEC §5): where interpreters come from.
using System.Collections.Concurrent;
using System.Diagnostics;

namespace Casparian;

internal static class Python
{
    private static readonly ConcurrentDictionary<string, string> Resolved = new(StringComparer.Ordinal);

    /// <summary>
    /// The real interpreter behind <paramref name="command"/> (a name on PATH or a path). Shims such
    /// as pyenv's cost about a second per start, so guests are always spawned with the interpreter's
    /// own path, asked once from Python itself (<c>sys.executable</c>) and cached for the process.
    /// </summary>
    public static string ResolveReal(string command = "python3") => Resolved.GetOrAdd(command, static c => Ask(c));

    private static string Ask(string command)
    {
        var psi = new ProcessStartInfo(command)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("import sys; print(sys.executable)");
        Process p;
        try
        {
            p = Process.Start(psi) ?? throw new InvalidOperationException("Process.Start returned null");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new UnavailableException($"cannot start {command}: {e.Message}; install Python 3.9+ or put it on PATH", e);
        }
        using (p)
        {
            var stderrTask = p.StandardError.ReadToEndAsync();
            string path = p.StandardOutput.ReadToEnd().Trim();
            if (!p.WaitForExit(30_000))
            {
                p.Kill(entireProcessTree: true);
                throw new UnavailableException($"{command} did not answer within 30 s when asked for its interpreter path");
            }
            if (p.ExitCode != 0 || path.Length == 0 || !File.Exists(path))
                throw new UnavailableException($"{command} could not report its interpreter (exit {p.ExitCode}): {stderrTask.Result.Trim()}");
            return path;
        }
    }
}
