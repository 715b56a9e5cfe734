// Building an environment from a uv.lock (its reading: UvLock.cs; layout and locking: Venv.cs).
//
// With uv on PATH and no wheelhouse: `uv venv`, then `uv sync --frozen --no-dev --no-install-project`
// into the build directory (UV_PROJECT_ENVIRONMENT), from a throwaway project directory holding the
// uv.lock and the pyproject.toml made from it (UvLock.PyProject says why the lock alone is enough).
// Not exercised on the development machine, which has no uv; the flags and variables follow uv's
// documentation (projects/sync, the CLI reference, UV_PROJECT_ENVIRONMENT, UV_PYTHON_DOWNLOADS).
//
// Otherwise, and whenever a wheelhouse is set (a frozen uv sync installs from the URLs the lock
// records and ignores --find-links, so it cannot install offline from a wheelhouse): the pins the
// sync would install, read from the lock, go to pip as `name==version ; marker --hash=sha256:…`
// lines, installed with --no-index --find-links WHEELHOUSE --require-hashes --no-deps --only-binary
// :all:. The uv.lock itself never reaches pip. Before pip runs, every unconditional pin must have one
// of its locked wheels in the wheelhouse; pip's own refusals (a hash that differs from the lock, no
// wheel for this machine) come back as one line.
using System.Text.RegularExpressions;

namespace Casparian;

internal sealed partial class EnvManager
{
    /// <summary>The requirements pip installs, written next to the lockfile in the environment for the record.</summary>
    public const string PinsFileName = "casparian-pins.txt";

    private const string UvProjectSuffix = "-uv-project";

    private async Task BuildFromUvLock(string hash, string dir, string lockfile, CancellationToken timeout)
    {
        UvLock lockData = UvLock.Parse(lockfile);
        IReadOnlyList<UvPin> pins = lockData.Pins();
        string basePython = Python.ResolveReal(options.BasePython);
        string lockCopy = Path.Combine(dir, LockfileName);

        if (options.Uv is { } uv && options.Wheelhouse is null)
        {
            UvLock.CheckForUv(pins);
            // Beside the build directory, not in it: uv sync may recreate the environment it is pointed at.
            // A crash leaves it to Evict, which clears .build-{hash}-* once no builder holds the hash.
            string project = dir + UvProjectSuffix;
            Directory.CreateDirectory(project);
            try
            {
                await File.WriteAllTextAsync(Path.Combine(project, UvLock.FileName), lockfile, timeout).ConfigureAwait(false);
                await File.WriteAllTextAsync(Path.Combine(project, "pyproject.toml"), lockData.PyProject(), timeout).ConfigureAwait(false);
                await Run(hash, "uv venv", uv, ["venv", "--python", basePython, dir], timeout).ConfigureAwait(false);
                // The sync uses that environment's interpreter; one the lock's requires-python rules out is an
                // error, never a reason to download another Python.
                await Run(hash, "uv sync", uv, ["sync", "--frozen", "--no-dev", "--no-install-project", "--project", project], timeout,
                    environment: new() { ["UV_PROJECT_ENVIRONMENT"] = dir, ["UV_PYTHON_DOWNLOADS"] = "never", ["VIRTUAL_ENV"] = null }).ConfigureAwait(false);
            }
            finally
            {
                DeleteDir(project);
            }
            await File.WriteAllTextAsync(lockCopy, lockfile, timeout).ConfigureAwait(false);
            return;
        }

        if (options.Wheelhouse is not { } wheelhouse) throw VenvThrow.Env_UvLockNeedsWheelhouse(hash);
        UvLock.CheckForPip(pins);
        foreach (var (package, marker) in pins)
            if (marker is null && !package.Wheels.Any(w => File.Exists(Path.Combine(wheelhouse, w.FileName))))
                throw VenvThrow.Env_NotInWheelhouse(hash, package, wheelhouse);

        List<string> venvArgs = ["-m", "venv"];
        if (pins.Count == 0) venvArgs.Add("--without-pip");
        venvArgs.Add(dir);
        await Run(hash, "python -m venv", basePython, venvArgs, timeout).ConfigureAwait(false);
        await File.WriteAllTextAsync(lockCopy, lockfile, timeout).ConfigureAwait(false);
        if (pins.Count == 0) return;
        string requirements = Path.Combine(dir, PinsFileName);
        await File.WriteAllTextAsync(requirements, UvLock.Requirements(pins), timeout).ConfigureAwait(false);
        await Run(hash, "pip install", Path.Combine(dir, "bin", "python"),
            ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-cache-dir",
             "--no-index", "--find-links", wheelhouse, "--require-hashes", "--no-deps", "--only-binary", ":all:", "-r", requirements],
            timeout, explain: output => PipRefusal(output, pins, wheelhouse)).ConfigureAwait(false);
    }

    /// <summary>
    /// pip's failure as one line. Its hash refusal reads
    /// <c>THESE PACKAGES DO NOT MATCH THE HASHES …</c> / <c>    NAME==VER from file:///…/FILE.whl (from -r …):</c> /
    /// <c>Expected sha256 X</c> / <c>Got        Y</c>; a wheel it cannot use, <c>No matching distribution found for NAME==VER</c>.
    /// </summary>
    internal static string PipRefusal(string output, IReadOnlyList<UvPin> pins, string wheelhouse)
    {
        if (output.Contains("DO NOT MATCH THE HASHES", StringComparison.Ordinal) && HashMismatch().Match(output) is { Success: true } m)
            return $"pip refused {m.Groups["file"].Value} from the wheelhouse {wheelhouse}: its sha256 is {m.Groups["got"].Value}, " +
                $"but uv.lock pins {m.Groups["req"].Value} to {m.Groups["expected"].Value}; the wheelhouse holds another build than the one locked: " +
                "put the locked wheel there or lock again against the wheelhouse";
        if (NoDistribution().Match(output) is { Success: true } n)
        {
            string name = n.Groups["name"].Value;
            var pin = pins.FirstOrDefault(p => string.Equals(p.Package.Name, name, StringComparison.OrdinalIgnoreCase));
            string wheels = pin.Package is null ? "" : $" (uv.lock lists {string.Join(", ", pin.Package.Wheels.Select(w => w.FileName))})";
            return $"the wheelhouse {wheelhouse} has no wheel of {name}=={n.Groups["version"].Value} that pip can install on this machine{wheels}; add one";
        }
        string[] lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return lines.LastOrDefault(l => l.StartsWith("ERROR:", StringComparison.Ordinal)) ?? lines.LastOrDefault() ?? "no output";
    }

    [GeneratedRegex(@"^\s*(?<req>\S+==\S+) from \S*?(?<file>[^/\s]+\.whl)\b.*?\n\s*Expected sha256 (?<expected>[0-9a-f]+).*?\n\s*Got\s+(?<got>[0-9a-f]+)", RegexOptions.Multiline | RegexOptions.Singleline)]
    private static partial Regex HashMismatch();

    [GeneratedRegex(@"No matching distribution found for (?<name>[A-Za-z0-9._-]+)==(?<version>\S+)")]
    private static partial Regex NoDistribution();
}
