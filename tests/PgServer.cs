// A throwaway PostgreSQL server (issue 16), for the tests and, linked into bench/, the benchmarks:
// Debian's binaries under /usr/lib/postgresql/*/bin, initdb into a temp directory, a free loopback
// port, trust auth for loopback only. Run as the `postgres` user when the process runs as root
// (PostgreSQL refuses root). The tests run it with fsync and synchronous_commit off (they measure
// nothing durable across a machine crash); the benchmarks run it durable, with PostgreSQL's own
// defaults, so their figures are what a default server gives.
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Casparian.Tests;

internal sealed class PgServer : IDisposable
{
    private static readonly Lazy<PgServer> SharedServer = new(() =>
    {
        var server = new PgServer();
        AppDomain.CurrentDomain.ProcessExit += (_, _) => server.Dispose();
        return server;
    });

    /// <summary>The server the store tests share (started on first use, stopped when the test process exits).</summary>
    public static PgServer Shared => SharedServer.Value;

    private readonly string _dir;
    private readonly string _bin;
    private readonly bool _asPostgres;
    private readonly bool _durable;
    private int _databases;

    public int Port { get; }

    /// <param name="durable">
    /// True: PostgreSQL's defaults (fsync, synchronous_commit and full_page_writes on), as the
    /// benchmarks measure; false: all three off, for tests that only need a server quickly.
    /// </param>
    public PgServer(bool durable = false)
    {
        _durable = durable;
        _bin = FindBin();
        _asPostgres = Environment.UserName == "root";
        _dir = Path.Combine(Path.GetTempPath(), $"casparian-pg-{Environment.ProcessId}-{Guid.NewGuid():N}"[..40]);
        Directory.CreateDirectory(_dir);
        if (_asPostgres) Run("chown", "postgres:postgres", _dir);
        Port = FreePort();
        As(Path.Combine(_bin, "initdb"), "-D", Data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C");
        Start();
    }

    private string Data => Path.Combine(_dir, "data");

    /// <summary>A URL for a new, empty database on this server.</summary>
    public string NewDatabase()
    {
        string name = $"t{Environment.ProcessId}_{Interlocked.Increment(ref _databases)}_{Guid.NewGuid():N}"[..30];
        As(Path.Combine(_bin, "createdb"), "-h", "127.0.0.1", "-p", Port.ToString(), "-U", "postgres", name);
        return Url(name);
    }

    public string Url(string database) => $"postgresql://postgres@127.0.0.1:{Port}/{database}";

    public void Start() =>
        As(Path.Combine(_bin, "pg_ctl"), "-D", Data, "-l", Path.Combine(_dir, "log"), "-w", "-t", "30", "start", "-o",
            $"-p {Port} -k {_dir} -c listen_addresses=127.0.0.1 -c max_connections=200" +
            (_durable ? "" : " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"));

    public void Stop(string mode = "fast") =>
        As(Path.Combine(_bin, "pg_ctl"), "-D", Data, "-m", mode, "-w", "-t", "30", "stop");

    public void Dispose()
    {
        try { Stop("immediate"); } catch (InvalidOperationException) { }
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private void As(string program, params string[] args)
    {
        if (_asPostgres) Run("runuser", ["-u", "postgres", "--", program, .. args]);
        else Run(program, args);
    }

    private static void Run(string program, params string[] args)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = "/" };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        // pg_ctl start leaves the server holding stdout open: read to the end only after exit.
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(60_000)) { p.Kill(); throw new InvalidOperationException($"{program} did not finish in 60 s"); }
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"{program} {string.Join(' ', args)} exited {p.ExitCode}: {(stderr.Wait(1000) ? stderr.Result : "")}{(stdout.Wait(1000) ? stdout.Result : "")}");
    }

    private static string FindBin()
    {
        var found = Directory.Exists("/usr/lib/postgresql")
            ? Directory.GetDirectories("/usr/lib/postgresql").Select(d => Path.Combine(d, "bin")).Where(b => File.Exists(Path.Combine(b, "initdb")))
                .OrderByDescending(b => int.TryParse(Path.GetFileName(Path.GetDirectoryName(b)), out int v) ? v : 0).FirstOrDefault()
            : null;
        return found ?? throw new InvalidOperationException(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install postgresql, or set CASPARIAN_TEST_PG=skip to skip the PostgreSQL tests");
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }
}
