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

/// <summary>
/// Option records as the shell builds them from every setting's default (Config.Defaults, no flags,
/// environment or file); a test changes what it tests with <c>with { … }</c>.
/// </summary>
internal static class Defaults
{
    private static Config Settings(string home) => Config.Defaults(home);

    private static readonly string Scratch = System.IO.Path.GetTempPath();

    /// <summary>The python setting's default (a name on PATH); <see cref="Guest.Python"/> is its real interpreter.</summary>
    public static string PythonCommand { get; } = Settings(Scratch).Get(Config.Python);

    public static StoreOptions Store(string db, TimeProvider? clock = null) =>
        Commands.StoreOptions(Settings(Scratch), create: true) with { Db = db, Clock = clock ?? TimeProvider.System };

    public static BridgeOptions Bridge { get; } = Commands.BridgeOptions(Settings(Scratch));

    public static OutputOptions Output(string root) => Commands.OutputOptions(Settings(Scratch)) with { Root = root };

    /// <summary>Environments under <paramref name="root"/>, built with python -m venv and pip (never uv, whatever PATH holds).</summary>
    public static VenvOptions Venv(string root) => Commands.VenvOptions(Settings(Scratch)) with { Root = root, Uv = null };

    /// <summary>A job executor's options with its state (output, parsers, logs) under <paramref name="home"/> and the tests' shared shim.</summary>
    public static WarmOptions Warm { get; } = Commands.WarmOptions(Settings(Scratch));

    public static JobExecutorOptions Executor(string home) =>
        Commands.ExecutorOptions(Settings(home)) with { ShimPath = Guest.ShimPath };

    /// <summary>A worker that joins a sentinel holding <see cref="TestKeys.Shared"/>: CURVE with its public key, and its join token.</summary>
    public static WorkerOptions Worker(string connect, string id, RoleLog? log = null) =>
        Commands.WorkerOptions(Settings(Scratch), id, log ?? RoleLog.None) with
        {
            Connect = connect,
            SentinelKey = TestKeys.Shared.PublicKey,
            JoinToken = TestKeys.Shared.JoinToken,
        };

    /// <summary>A sentinel with <see cref="TestKeys.Shared"/>: CURVE on tcp://, join and admin tokens checked.</summary>
    public static SentinelOptions Sentinel(string bind, string db, RoleLog log) =>
        Commands.SentinelOptions(Settings(Scratch), log, TestKeys.Shared) with { Bind = bind, Store = Store(db) };
}

/// <summary>
/// The keys every test sentinel holds, made once per test run in a private temp directory (as a
/// sentinel's first start makes them under HOME/keys), and how a test's raw socket uses them.
/// </summary>
internal static class TestKeys
{
    private static readonly Lazy<SentinelKeys> Keys = new(() =>
        SentinelKeys.LoadOrCreate(System.IO.Path.Combine(Directory.CreateTempSubdirectory("casparian-test-keys-").FullName, "keys")));

    public static SentinelKeys Shared => Keys.Value;

    /// <summary>Makes <paramref name="socket"/> a CURVE client of a sentinel holding <see cref="Shared"/> (before it connects).</summary>
    public static void Client(NetMQ.NetMQSocket socket, string? serverKey = null)
    {
        socket.Options.CurveCertificate = new NetMQ.NetMQCertificate();
        socket.Options.CurveServerKey = NetMQ.NetMQCertificate.FromPublicKey(serverKey ?? Shared.PublicKey).PublicKey;
    }

    /// <summary>Makes <paramref name="socket"/> a CURVE server with <see cref="Shared"/>'s key pair (before it binds).</summary>
    public static void Server(NetMQ.NetMQSocket socket)
    {
        socket.Options.CurveServer = true;
        socket.Options.CurveCertificate = Shared.Certificate;
    }
}

/// <summary>A clock that moves only when told, so backoff is testable without sleeping.</summary>
internal sealed class ManualClock(DateTimeOffset start) : TimeProvider
{
    private DateTimeOffset _now = start;

    public ManualClock() : this(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero)) { }

    public override DateTimeOffset GetUtcNow() => _now;

    public void Advance(TimeSpan by) => _now += by;
}

internal static class Eventually
{
    /// <summary>
    /// Polls <paramref name="condition"/> every <paramref name="every"/> (20 ms) until it holds; after
    /// <paramref name="limit"/> throws a TimeoutException saying what was awaited (and, if given, what was seen).
    /// </summary>
    public static void True(Func<bool> condition, TimeSpan limit, string what, Func<string>? seen = null, TimeSpan? every = null)
    {
        var deadline = DateTime.UtcNow + limit;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"timed out after {limit.TotalSeconds:0.#} s waiting for {what}{(seen is null ? "" : "\n" + seen())}");
            Thread.Sleep(every ?? TimeSpan.FromMilliseconds(20));
        }
    }

    /// <summary>The first non-null value <paramref name="probe"/> returns, polling as <see cref="True"/> does.</summary>
    public static T Value<T>(Func<T?> probe, TimeSpan limit, string what, Func<string>? seen = null) where T : class
    {
        T? value = null;
        True(() => (value = probe()) is not null, limit, what, seen);
        return value!;
    }
}
