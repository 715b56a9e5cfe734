// Python environments (SPEC §5): where interpreters come from, and the content-addressed environments
// parsers run in.
//
// Layout under the venvs directory:
//   {hash}/                  a ready environment; {hash}/bin/python is its interpreter,
//                            {hash}/casparian.lock the lockfile it was built from and, for a uv.lock
//                            installed by pip, {hash}/casparian-pins.txt the requirements pip was given
//   .metadata.json           {"entries":[{"env_hash","created_at","last_used","size_bytes"}]}, replaced
//                            atomically (temp file + rename) under .locks/metadata.lock
//   .locks/{hash}.lock       the environment's lock (below); never deleted, so every process locks the same inode
//   .build-{hash}-{random}/  a build in progress; renamed to {hash}/ only when complete
//   .trash-{hash}-{random}/  an evicted environment being deleted
//
// Locking, across threads and worker processes alike (flock through FileShare; the kernel drops a dead
// process's locks). A lease holds .locks/{hash}.lock shared for as long as its job runs; building and
// evicting hold it exclusive. So an environment in use is never evicted, two builders never race, and
// a reader never sees a half-made or half-deleted environment: {hash}/ appears and disappears by
// rename. Within a process, concurrent acquires of one missing environment also share one build task.
//
// Builds: a uv.lock (recognised by its `version = N` first line) is built by Venv.UvLock.cs and never
// reaches pip as requirements. Any other lockfile is requirements text (pinned `pkg==ver` lines): with
// uv when VenvOptions.Uv is set (`uv venv`, `uv pip install -r`; not exercised on the development
// machine, which has no uv), otherwise `python -m venv` + `pip install --no-index --find-links
// WHEELHOUSE -r casparian.lock` (air-gapped; pip's default index when no wheelhouse is set); one with
// no requirement lines gives a bare environment without pip. A venv is not relocatable, so after
// building in the temp directory the scripts in bin/ and pyvenv.cfg get the final path before the rename.
//
// Eviction: after every build, and on Evict(), least-recently-used environments (by last_used, which
// every acquire updates) are deleted until the total size_bytes is within MaxBytes, skipping every
// environment that is leased anywhere and the one just built.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;

namespace Casparian;

internal static class Python
{
    private static readonly ConcurrentDictionary<string, string> Resolved = new(StringComparer.Ordinal);

    /// <summary>
    /// The real interpreter behind <paramref name="command"/> (a name on PATH or a path). Shims such
    /// as pyenv's cost about a second per start, so guests are always spawned with the interpreter's
    /// own path, asked once from Python itself (<c>sys.executable</c>) and cached for the process.
    /// </summary>
    public static string ResolveReal(string command) => Resolved.GetOrAdd(command, static c => Ask(c));

    private static string Ask(string command)
    {
        var psi = new ProcessStartInfo(command)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add("-S"); // site is not needed for sys.executable, and costs tens of ms with .pth files
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("import sys; print(sys.executable)");
        Process p;
        try
        {
            p = Process.Start(psi) ?? throw new InvalidOperationException("Process.Start returned null");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw VenvThrow.Python_CannotStart(command, e);
        }
        using (p)
        {
            var stderrTask = p.StandardError.ReadToEndAsync();
            string path = p.StandardOutput.ReadToEnd().Trim();
            if (!p.WaitForExit(30_000))
            {
                p.Kill(entireProcessTree: true);
                throw VenvThrow.Python_NoAnswer(command);
            }
            if (p.ExitCode != 0 || path.Length == 0 || !File.Exists(path))
                throw VenvThrow.Python_NoInterpreter(command, p.ExitCode, stderrTask.Result.Trim());
            return path;
        }
    }

    /// <summary>The full path of <paramref name="name"/> in a PATH-style list of directories, or null (for wiring <see cref="VenvOptions.Uv"/>).</summary>
    public static string? FindOnPath(string name, string? pathList)
    {
        foreach (var dir in (pathList ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(dir, name);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }
}

/// <summary>Settings of the environment manager (the shell fills them from the settings).</summary>
internal sealed record VenvOptions
{
    /// <summary>The venvs directory: {Root}/{env_hash}/.</summary>
    public required string Root { get; init; }

    /// <summary>Interpreter environments are made from, and the one env_hash "system" means (resolved with <see cref="Python.ResolveReal"/>).</summary>
    public required string BasePython { get; init; }

    /// <summary>Directory of wheels for offline installs (pip --no-index --find-links); null: the installer's default index.</summary>
    public required string? Wheelhouse { get; init; }

    /// <summary>Path of the uv executable to build with; null: python -m venv and pip.</summary>
    public required string? Uv { get; init; }

    /// <summary>Size budget of all environments together; least-recently-used ones above it are evicted.</summary>
    public required long MaxBytes { get; init; }

    /// <summary>One build (venv creation plus install) is killed after this long.</summary>
    public required TimeSpan BuildTimeout { get; init; }
}

/// <summary>
/// Building or finding an environment failed; the message says which environment and why. The
/// user's doing (a bad hash or lockfile, a build that fails on what the lockfile pins) is
/// <see cref="ExitCode.BadInput"/>; a stuck build or lock, or a tool that will not start, <see cref="ExitCode.Unavailable"/>.
/// </summary>
internal sealed class EnvException(ExitCode code, string message, Exception? inner = null) : CasparianException(code, message, inner);

/// <summary>
/// An environment in use. While any lease on it is alive (in any process) it is not evicted; dispose
/// when the job is done with the interpreter.
/// </summary>
internal sealed class EnvLease(string envHash, string interpreterPath, bool cached, FileStream? sharedLock) : IDisposable
{
    public string EnvHash { get; } = envHash;

    /// <summary>Start guests with this path ({venvs}/{hash}/bin/python, or the real system interpreter).</summary>
    public string InterpreterPath { get; } = interpreterPath;

    /// <summary>True only when the environment was already there when asked for (ENV_READY's <c>cached</c>).</summary>
    public bool Cached { get; } = cached;

    public void Dispose() => sharedLock?.Dispose();
}

/// <summary>
/// Content-addressed Python environments under <see cref="VenvOptions.Root"/>: acquire one per job,
/// built once on first need. Thread-safe; several processes may share one venvs directory.
/// Dispose cancels builds in progress.
/// </summary>
internal sealed partial class EnvManager(VenvOptions options) : IDisposable
{
    public const string LockfileName = "casparian.lock";

    private readonly string _root = Path.GetFullPath(options.Root);

    /// <summary>Told the directory of every environment evicted (warm guests running from it are stopped).</summary>
    public event Action<string>? Evicted;
    private readonly Dictionary<string, Task> _building = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stopping = new();
    private int _builds;

    /// <summary>Builds this manager completed (a diagnostic; the build-once tests count it).</summary>
    public int Builds => Volatile.Read(ref _builds);

    public string Root => _root;

    /// <summary>
    /// Returns a lease on environment <paramref name="envHash"/>, building it first when it is missing.
    /// <paramref name="lockfileContent"/> must hash to <paramref name="envHash"/>; null means "use it only
    /// if it exists". <c>"system"</c> is the worker's own interpreter and needs no lockfile.
    /// Throws <see cref="EnvException"/> (bad hash, missing lockfile, failed build).
    /// </summary>
    public async Task<EnvLease> AcquireAsync(string envHash, string? lockfileContent, CancellationToken cancellationToken)
    {
        if (envHash == Hashes.SystemEnv) return new EnvLease(Hashes.SystemEnv, Python.ResolveReal(options.BasePython), cached: true, sharedLock: null);
        if (!IsHash(envHash)) throw VenvThrow.Env_BadHash(envHash);
        if (lockfileContent is not null && Hashes.Sha256Hex(lockfileContent) != envHash) throw VenvThrow.Env_HashMismatch(envHash, Hashes.Sha256Hex(lockfileContent));
        Directory.CreateDirectory(LocksDir);

        bool built = false;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (TryLock(envHash, exclusive: false) is { } shared)
            {
                if (IsReady(envHash))
                {
                    try
                    {
                        Touch(envHash);
                    }
                    catch
                    {
                        shared.Dispose();
                        throw;
                    }
                    return new EnvLease(envHash, Interpreter(envHash), cached: !built, shared);
                }
                shared.Dispose();
                if (lockfileContent is null) throw VenvThrow.Env_MissingNoLockfile(envHash, _root);
                await BuildOnce(envHash, lockfileContent).WaitAsync(cancellationToken).ConfigureAwait(false);
                built = true;
                continue;
            }
            // Someone holds it exclusively: a build or an eviction in another process.
            await Task.Delay(Random.Shared.Next(50, 150), cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Deletes least-recently-used environments until the total is within <see cref="VenvOptions.MaxBytes"/>,
    /// never one that is leased; also clears leftovers of crashed builds and evictions. Returns the evicted hashes.
    /// </summary>
    public IReadOnlyList<string> Evict() => Evict(keep: null);

    public void Dispose()
    {
        _stopping.Cancel();
        Task[] pending;
        lock (_building) pending = [.. _building.Values];
        try { Task.WaitAll(pending, TimeSpan.FromSeconds(10)); }
        catch (AggregateException) { }
        _stopping.Dispose();
    }

    private string LocksDir => Path.Combine(_root, ".locks");
    private string EnvDir(string hash) => Path.Combine(_root, hash);
    private string Interpreter(string hash) => Path.Combine(_root, hash, "bin", "python");
    private bool IsReady(string hash) => File.Exists(Interpreter(hash));

    private static bool IsHash(string s) => s.Length == 64 && s.All(char.IsAsciiHexDigitLower);

    /// <summary>One build task per hash in this process; everyone asking meanwhile awaits the same task.</summary>
    private Task BuildOnce(string hash, string lockfile)
    {
        lock (_building)
        {
            if (_building.TryGetValue(hash, out var running)) return running;
            var task = Task.Run(async () =>
            {
                try
                {
                    await BuildLocked(hash, lockfile).ConfigureAwait(false);
                }
                finally
                {
                    lock (_building) _building.Remove(hash);
                }
            });
            _building[hash] = task;
            return task;
        }
    }

    private async Task BuildLocked(string hash, string lockfile)
    {
        var token = _stopping.Token;
        bool builtHere = false;
        // Waiting for the exclusive lock, watch for the environment to appear: a builder elsewhere may
        // finish and its jobs' leases then hold the lock shared for as long as they run.
        FileStream? held;
        while ((held = TryLock(hash, exclusive: true)) is null)
        {
            if (IsReady(hash)) return;
            await Task.Delay(Random.Shared.Next(50, 150), token).ConfigureAwait(false);
        }
        using (held)
        {
            if (IsReady(hash)) return;
            // Whatever is here is not a usable environment: a crashed build's temp dir, or a final
            // directory whose interpreter is gone. Nobody can be using them: we hold the lock.
            foreach (var stale in Directory.EnumerateDirectories(_root, $".build-{hash}-*")) DeleteDir(stale);
            if (Directory.Exists(EnvDir(hash))) DeleteDir(Trash(EnvDir(hash), hash));

            string temp = Path.Combine(_root, $".build-{hash}-{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(6))}");
            try
            {
                await Build(hash, temp, lockfile, token).ConfigureAwait(false);
                Relocate(temp, EnvDir(hash));
                long size = DirSize(temp);
                Directory.Move(temp, EnvDir(hash));
                var now = DateTimeOffset.UtcNow;
                UpdateMetadata(m =>
                {
                    m.Entries.RemoveAll(e => e.EnvHash == hash);
                    m.Entries.Add(new VenvEntry { EnvHash = hash, CreatedAt = now, LastUsed = now, SizeBytes = size });
                });
                Interlocked.Increment(ref _builds);
                builtHere = true;
            }
            finally
            {
                if (Directory.Exists(temp)) DeleteDir(temp);
            }
        }
        if (builtHere) Evict(keep: hash);
    }

    private async Task Build(string hash, string dir, string lockfile, CancellationToken token)
    {
        bool hasRequirements = lockfile.Split('\n').Any(l => l.Split('#')[0].Trim().Length > 0);
        string basePython = Python.ResolveReal(options.BasePython);
        string python = Path.Combine(dir, "bin", "python");
        string requirements = Path.Combine(dir, LockfileName);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(token);
        timeout.CancelAfter(options.BuildTimeout);
        if (UvLock.Recognise(lockfile))
        {
            await BuildFromUvLock(hash, dir, lockfile, timeout.Token).ConfigureAwait(false);
            return;
        }

        if (options.Uv is { } uv)
        {
            await Run(hash, "uv venv", uv, ["venv", "--python", basePython, dir], timeout.Token).ConfigureAwait(false);
            await File.WriteAllTextAsync(requirements, lockfile, token).ConfigureAwait(false);
            if (hasRequirements)
            {
                List<string> args = ["pip", "install", "--python", python];
                if (options.Wheelhouse is { } wh) args.AddRange(["--no-index", "--find-links", wh]);
                args.AddRange(["-r", requirements]);
                await Run(hash, "uv pip install", uv, args, timeout.Token).ConfigureAwait(false);
            }
            return;
        }

        List<string> venvArgs = ["-m", "venv"];
        if (!hasRequirements) venvArgs.Add("--without-pip");
        venvArgs.Add(dir);
        await Run(hash, "python -m venv", basePython, venvArgs, timeout.Token).ConfigureAwait(false);
        await File.WriteAllTextAsync(requirements, lockfile, token).ConfigureAwait(false);
        if (!hasRequirements) return;
        List<string> pipArgs = ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-cache-dir"];
        if (options.Wheelhouse is { } wheelhouse) pipArgs.AddRange(["--no-index", "--find-links", wheelhouse]);
        pipArgs.AddRange(["-r", requirements]);
        await Run(hash, "pip install", python, pipArgs, timeout.Token).ConfigureAwait(false);
    }

    /// <summary>
    /// Runs one build step; a non-zero exit becomes an EnvException carrying the tail of its output, or
    /// the one line <paramref name="explain"/> makes of it. <paramref name="environment"/>: variables to
    /// set (null: to remove).
    /// </summary>
    private async Task Run(string hash, string step, string file, IEnumerable<string> args, CancellationToken token,
        Dictionary<string, string?>? environment = null, Func<string, string>? explain = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["PIP_DISABLE_PIP_VERSION_CHECK"] = "1";
        psi.Environment["PYTHONDONTWRITEBYTECODE"] = "1";
        foreach (var (name, value) in environment ?? [])
            if (value is null) psi.Environment.Remove(name); else psi.Environment[name] = value;
        Process p;
        try
        {
            p = Process.Start(psi) ?? throw new InvalidOperationException("Process.Start returned null");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw VenvThrow.Env_CannotStart(hash, step, file, e);
        }
        using (p)
        {
            var output = new OutputTail();
            p.OutputDataReceived += (_, e) => output.Add(e.Data, stderr: false);
            p.ErrorDataReceived += (_, e) => output.Add(e.Data, stderr: true);
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            try
            {
                await p.WaitForExitAsync(token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                p.Kill(entireProcessTree: true);
                await p.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
                if (_stopping.IsCancellationRequested) throw;
                throw VenvThrow.Env_BuildTimeout(hash, step, options.BuildTimeout);
            }
            p.WaitForExit();
            if (p.ExitCode != 0 && explain is not null) throw VenvThrow.Env_StepRefused(hash, step, p.ExitCode, explain(output.Text()));
            if (p.ExitCode != 0) throw VenvThrow.Env_BuildFailed(hash, step, p.ExitCode, output.Text(), options.Wheelhouse);
        }
    }

    /// <summary>Rewrites the build directory's path (and name) to the final one in bin/ scripts and pyvenv.cfg (venvs are not relocatable).</summary>
    private static void Relocate(string from, string to)
    {
        var files = new List<string>();
        string bin = Path.Combine(from, "bin");
        if (Directory.Exists(bin)) files.AddRange(Directory.EnumerateFiles(bin));
        files.Add(Path.Combine(from, "pyvenv.cfg"));
        byte[] needle = Encoding.UTF8.GetBytes(Path.GetFileName(from));
        foreach (var file in files)
        {
            var info = new FileInfo(file);
            if (!info.Exists || info.LinkTarget is not null || info.Length > (1 << 20)) continue;
            byte[] content = File.ReadAllBytes(file);
            if (content.AsSpan().IndexOf(needle) < 0) continue;
            // Scripts are text: UTF-8 round-trips them; binaries never contain the random build path.
            // The activate scripts also use the directory's name as the shell prompt.
            File.WriteAllText(file, Encoding.UTF8.GetString(content)
                .Replace(from, to, StringComparison.Ordinal)
                .Replace(Path.GetFileName(from), Path.GetFileName(to), StringComparison.Ordinal));
        }
    }

    /// <summary>flock on .locks/{name}.lock without waiting: shared (FileShare.Read) or exclusive (FileShare.None); null when held against us.</summary>
    private FileStream? TryLock(string name, bool exclusive)
    {
        string path = Path.Combine(LocksDir, name + ".lock");
        try
        {
            return exclusive
                ? new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None)
                : new FileStream(path, FileMode.OpenOrCreate, FileAccess.Read, FileShare.Read);
        }
        catch (IOException e) when (e is not FileNotFoundException and not DirectoryNotFoundException)
        {
            return null;
        }
    }

    private static long DirSize(string dir) =>
        new DirectoryInfo(dir).EnumerateFiles("*", new EnumerationOptions
        {
            RecurseSubdirectories = true,
            AttributesToSkip = FileAttributes.ReparsePoint,
            IgnoreInaccessible = true,
        }).Sum(f => f.Length);

    /// <summary>Renames a directory out of the way (it disappears atomically) and returns the new path for deletion.</summary>
    private string Trash(string dir, string hash)
    {
        string trash = Path.Combine(_root, $".trash-{hash}-{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(6))}");
        Directory.Move(dir, trash);
        return trash;
    }

    private static void DeleteDir(string dir)
    {
        // Best effort: a leftover is retried by the next Evict.
        try { Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>The last lines of a build step's output: stderr when it said anything, else stdout.</summary>
    private sealed class OutputTail
    {
        private const int Lines = 25;
        private readonly Queue<string> _stdout = new();
        private readonly Queue<string> _stderr = new();

        public void Add(string? line, bool stderr)
        {
            if (line is null) return;
            var q = stderr ? _stderr : _stdout;
            lock (q)
            {
                q.Enqueue(line);
                if (q.Count > Lines) q.Dequeue();
            }
        }

        public string Text()
        {
            var q = _stderr.Count > 0 ? _stderr : _stdout;
            lock (q) return string.Join('\n', q).Trim();
        }
    }
}

internal static class VenvThrow
{
    public static EnvException Env_BadHash(string hash) =>
        new(ExitCode.BadInput, $"environment hash '{hash}' is invalid; expected \"system\" or 64 lowercase hex digits (sha256 of the lockfile)");
    public static EnvException Env_HashMismatch(string hash, string actual) =>
        new(ExitCode.BadInput, $"environment {hash}: the lockfile sent with it hashes to {actual}; env_hash must be the sha256 of the lockfile content");
    public static EnvException Env_MissingNoLockfile(string hash, string root) =>
        new(ExitCode.BadInput, $"environment {hash} is not in {root} and no lockfile came with the job to build it; register the parser with its lockfile or send PREPARE_ENV first");
    public static EnvException Env_BuildFailed(string hash, string step, int exitCode, string output, string? wheelhouse) =>
        new(ExitCode.BadInput, $"building environment {Hashes.Short(hash)} failed: {step} exited {exitCode}: {output}" +
            (wheelhouse is null ? "" : $" (installs are offline from {wheelhouse}: it must hold a wheel for every package the lockfile pins)"));
    public static EnvException Env_StepRefused(string hash, string step, int exitCode, string reason) =>
        new(ExitCode.BadInput, $"building environment {Hashes.Short(hash)} failed: {step} exited {exitCode}: {reason}");
    public static EnvException Env_UvLockNeedsWheelhouse(string hash) =>
        new(ExitCode.Unavailable, $"cannot build environment {Hashes.Short(hash)} from its uv.lock: without uv it installs offline from a wheelhouse, and none is set; " +
            "set wheelhouse (--wheelhouse, CASPARIAN_WHEELHOUSE or casparian.toml) to a directory holding the locked wheels, or put uv on the worker's PATH");
    public static EnvException Env_NotInWheelhouse(string hash, UvPackage package, string wheelhouse) =>
        new(ExitCode.BadInput, $"cannot build environment {Hashes.Short(hash)}: uv.lock pins {package.Display}, but the wheelhouse {wheelhouse} holds none of its " +
            $"{package.Wheels.Count} locked wheel(s) ({string.Join(", ", package.Wheels.Take(3).Select(w => w.FileName))}{(package.Wheels.Count > 3 ? ", …" : "")}); add one");
    public static EnvException Env_BuildTimeout(string hash, string step, TimeSpan timeout) =>
        new(ExitCode.Unavailable, $"building environment {Hashes.Short(hash)} timed out: {step} ran longer than {timeout.TotalSeconds:0} s and was killed");
    public static EnvException Env_CannotStart(string hash, string step, string file, Exception e) =>
        new(ExitCode.Unavailable, $"environment {Hashes.Short(hash)}: cannot start {step} ({file}): {e.Message}", e);
    public static UnavailableException Python_CannotStart(string command, Exception e) =>
        new($"cannot start {command}: {e.Message}; install Python 3.9+ or put it on PATH", e);
    public static UnavailableException Python_NoAnswer(string command) =>
        new($"{command} did not answer within 30 s when asked for its interpreter path");
    public static UnavailableException Python_NoInterpreter(string command, int exitCode, string stderr) =>
        new($"{command} could not report its interpreter (exit {exitCode}): {stderr}");
    public static EnvException Metadata_LockTimeout(string path) =>
        new(ExitCode.Unavailable, $"could not lock {path} within 60 s; another casparian process may be stuck holding it");
}
