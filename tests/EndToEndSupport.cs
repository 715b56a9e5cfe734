// What the end-to-end tests share: long-running casparian processes (sentinel, workers, start) with
// their output captured, the process tree under them, a read-only view of the store file, and a
// bundled two-module CSV parser with its inputs. Every process a test starts is killed when the
// test's Cluster is disposed, whatever happened, and so are the guests seen under it.
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Data.Sqlite;
using Xunit.Sdk;

namespace Casparian.Tests;

internal static class Posix
{
    public const int SigInt = 2;
    public const int SigKill = 9;
    public const int SigTerm = 15;

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int SysKill(int pid, int signal);

    public static void Kill(int pid, int signal)
    {
        if (SysKill(pid, signal) != 0) throw new InvalidOperationException($"kill({pid}, {signal}) failed: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>The parent of <paramref name="pid"/>, or 0 when it is gone.</summary>
    public static int Parent(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            return int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1], CultureInfo.InvariantCulture);
        }
        catch (IOException)
        {
            return 0;
        }
    }

    /// <summary>Every live descendant of <paramref name="pid"/>, from /proc (parent links).</summary>
    public static List<int> Descendants(int pid)
    {
        var children = new Dictionary<int, List<int>>();
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int p)) continue;
            try
            {
                string stat = File.ReadAllText(Path.Combine(dir, "stat"));
                // pid (comm) state ppid …; comm may hold spaces and parentheses.
                string[] rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                if (rest[0] == "Z") continue;
                int ppid = int.Parse(rest[1], CultureInfo.InvariantCulture);
                if (!children.TryGetValue(ppid, out var list)) children[ppid] = list = [];
                list.Add(p);
            }
            catch (IOException) { }
        }
        var found = new List<int>();
        var todo = new Stack<int>([pid]);
        while (todo.Count > 0)
            foreach (int c in children.GetValueOrDefault(todo.Pop()) ?? [])
            {
                found.Add(c);
                todo.Push(c);
            }
        return found;
    }

    public static string CommandLine(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ').Trim(); }
        catch (IOException) { return ""; }
    }
}

/// <summary>A casparian process running in the background, its stdout and stderr captured.</summary>
internal sealed class Daemon : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();

    public string Name { get; }
    public int Pid { get; }

    /// <summary>Starts the native binary, or <paramref name="program"/> (a test's helper server).</summary>
    public Daemon(string name, IEnumerable<string> args, IDictionary<string, string?> environment, string workingDirectory, string? program = null)
    {
        Name = name;
        var psi = new ProcessStartInfo(program ?? Repo.Binary)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in environment)
            if (v is null) psi.Environment.Remove(k); else psi.Environment[k] = v;
        _process = Process.Start(psi)!;
        Pid = _process.Id;
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_stdout) _stdout.AppendLine(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_stderr) _stderr.AppendLine(e.Data); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        _process.StandardInput.Close();
    }

    public string Stdout { get { lock (_stdout) return _stdout.ToString(); } }
    public string Stderr { get { lock (_stderr) return _stderr.ToString(); } }
    public bool HasExited => _process.HasExited;

    public override string ToString() =>
        $"--- {Name} (pid {Pid}{(_process.HasExited ? $", exit {_process.ExitCode}" : ", running")})\n--- stdout\n{Stdout}--- stderr\n{Stderr}";

    public void Signal(int signal) => Posix.Kill(Pid, signal);

    /// <summary>Waits for the exit and returns the code; a process still running after <paramref name="limit"/> fails the test.</summary>
    public int WaitForExit(TimeSpan limit)
    {
        if (!_process.WaitForExit(limit)) throw new XunitException($"{Name} did not exit within {limit.TotalSeconds} s\n{this}");
        _process.WaitForExit(); // drains the output readers
        return _process.ExitCode;
    }

    /// <summary>The guest interpreters running under this process now.</summary>
    /// <summary>The worker's guests: cold ones (bridge_shim.py) and warm ones (children of a zygote, whose command line they share).</summary>
    public List<int> Guests() => [.. Posix.Descendants(Pid).Where(p => Posix.CommandLine(p).Contains("bridge_shim", StringComparison.Ordinal)
        || (IsZygote(p) && IsZygote(Posix.Parent(p))))];

    /// <summary>The worker's warm fork servers (shim/zygote.py, started by the worker itself).</summary>
    public List<int> Zygotes() => [.. Posix.Descendants(Pid).Where(p => IsZygote(p) && Posix.Parent(p) == Pid)];

    private static bool IsZygote(int pid) => Posix.CommandLine(pid).Contains("zygote.py", StringComparison.Ordinal);

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(10_000);
            }
        }
        catch (InvalidOperationException) { }
        _process.Dispose();
    }
}

/// <summary>One row of the jobs table, read straight from the store file.</summary>
internal sealed record StoredJob(long Id, string State, string? Worker, long Retries, string Input, string? Error);

/// <summary>
/// A throwaway deployment: a directory with the store's home, one home per worker, the shared output
/// root and the inputs; a loopback port for the sentinel; the processes started in it.
/// </summary>
internal sealed class Cluster : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly List<Daemon> _daemons = [];
    private readonly Dictionary<int, string> _tracked = [];

    public string Root => _dir.Path;
    public string Home => _dir.File("home");
    public string Db => Path.Combine(Home, "casparian.db");
    public string Output => _dir.File("output");
    public string Inputs => _dir.File("inputs");
    public int Port { get; private set; } = FreePort();
    public string Address => $"tcp://127.0.0.1:{Port}";

    /// <summary>The real interpreter: the python3 on PATH may be a pyenv shim costing a second per start.</summary>
    public static string Python => Guest.Python;

    public string File(string name) => _dir.File(name);

    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    private Dictionary<string, string?> Environment(string home, IDictionary<string, string?>? extra = null)
    {
        var env = new Dictionary<string, string?> { ["CASPARIAN_HOME"] = home, ["CASPARIAN_PYTHON"] = Python };
        if (extra is not null) foreach (var (k, v) in extra) env[k] = v;
        return env;
    }

    /// <summary>A command to completion, with the cluster's home, in the cluster's directory.</summary>
    public ProcessResult Cli(params string[] args) =>
        Proc.Run(Repo.Binary, args, workingDirectory: Root, environment: Environment(Home));

    public ProcessResult Ok(params string[] args)
    {
        var r = Cli(args);
        if (r.ExitCode != 0) throw new XunitException($"casparian {string.Join(' ', args)}: {r}");
        return r;
    }

    public Daemon Spawn(string name, IEnumerable<string> args, string? home = null, IDictionary<string, string?>? env = null)
    {
        var d = new Daemon(name, args, Environment(home ?? Home, env), Root);
        lock (_daemons) _daemons.Add(d);
        return d;
    }

    /// <summary>
    /// A sentinel on <see cref="Address"/> over the cluster's store. A port another test took between
    /// FreePort and the bind (exit 4) moves the cluster to a new port, before any worker connected.
    /// </summary>
    public Daemon StartSentinel(string heartbeatTimeout = "3s", bool samePort = false)
    {
        for (int attempt = 0; ; attempt++)
        {
            var s = Spawn("sentinel", ["sentinel", "--bind", Address, "--heartbeat-timeout", heartbeatTimeout, "--retry-backoff", "0.1s"]);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            while (DateTime.UtcNow < deadline && !s.Stderr.Contains("listening", StringComparison.Ordinal) && !s.HasExited) Thread.Sleep(20);
            if (!s.HasExited && s.Stderr.Contains("listening", StringComparison.Ordinal)) return s;
            if (s.HasExited && s.WaitForExit(TimeSpan.FromSeconds(5)) == 4 && attempt < 50)
            {
                // A restarted sentinel waits for its old port; a fresh one takes another.
                if (samePort) Thread.Sleep(100); else Port = FreePort();
                continue;
            }
            throw new XunitException($"the sentinel did not start listening on {Address}\n{s}");
        }
    }

    /// <summary>
    /// How a worker joins: the sentinel's keys are in the cluster's home, and a worker has its own home,
    /// so it is told (as `casparian keys` would print) through the environment.
    /// </summary>
    public Dictionary<string, string?> JoinEnvironment()
    {
        string keys = Path.Combine(Home, "keys");
        return new Dictionary<string, string?>
        {
            ["CASPARIAN_SENTINEL_KEY"] = SentinelKeys.ReadPublicKey(keys),
            ["CASPARIAN_TOKEN"] = SentinelKeys.ReadJoinToken(keys),
        };
    }

    /// <summary>A worker process with its own home (id file, shim, bundles, logs) writing to the shared output root.</summary>
    public Daemon StartWorker(string id, string? sleep = null, int slots = 2, bool child = false)
    {
        var env = JoinEnvironment();
        env["E2E_SLEEP"] = sleep;
        env["E2E_CHILD"] = child ? "1" : null;
        return Spawn(id, ["worker", "--connect", Address, "--output", Output, "--worker-id", id, "--slots", slots.ToString(CultureInfo.InvariantCulture),
            "--heartbeat-interval", "0.2s", "--shutdown-grace", "10s"], home: _dir.File("home-" + id), env: env);
    }

    /// <summary>Remembers processes seen under a daemon, so Dispose kills them even once orphaned (if the pid still runs the same command).</summary>
    public void Track(IEnumerable<int> pids)
    {
        lock (_tracked)
            foreach (int pid in pids)
                if (Posix.CommandLine(pid) is { Length: > 0 } command) _tracked.TryAdd(pid, command);
    }

    // ---- the store ------------------------------------------------------------------------------

    public List<StoredJob> Jobs()
    {
        SqliteRuntime.EnsureInitialized();
        using var connection = new SqliteConnection($"Data Source={Db};Mode=ReadOnly;Pooling=False;Default Timeout=10");
        connection.Open();
        using var cmd = connection.CreateCommand();
        cmd.CommandText = "SELECT id, state, worker, retry_count, input_path, error FROM jobs ORDER BY id";
        using var r = cmd.ExecuteReader();
        var jobs = new List<StoredJob>();
        while (r.Read())
            jobs.Add(new StoredJob(r.GetInt64(0), r.GetString(1), r.IsDBNull(2) ? null : r.GetString(2), r.GetInt64(3), r.GetString(4),
                r.IsDBNull(5) ? null : r.GetString(5)));
        return jobs;
    }

    /// <summary>Polls until <paramref name="done"/> holds; on timeout fails with `casparian jobs` and every process's output.</summary>
    public void WaitUntil(string what, TimeSpan limit, Func<bool> done) =>
        Eventually.True(done, limit, what, Diagnostics, every: TimeSpan.FromMilliseconds(100));

    public void WaitForJobs(int count, TimeSpan limit) =>
        WaitUntil($"{count} COMPLETED jobs", limit, () => Jobs() is var j && j.Count == count && j.All(x => x.State != "QUEUED" && x.State != "RUNNING"));

    public string Diagnostics()
    {
        var sb = new StringBuilder();
        try { sb.Append("--- casparian jobs --limit 500\n").Append(Cli("jobs", "--limit", "500").Stdout); }
        catch (Exception e) when (e is TimeoutException or IOException) { sb.Append(e.Message).Append('\n'); }
        lock (_daemons) foreach (var d in _daemons) sb.Append(d).Append('\n');
        return sb.ToString();
    }

    // ---- parser and inputs -------------------------------------------------------------------

    /// <summary>
    /// A parser directory of two modules: parser.py (the entry) imports rows.py. It emits a file's
    /// first row, sleeps $E2E_SLEEP seconds (set per worker), then emits the rest, so a slow worker
    /// provably holds a half-written job; with $E2E_CHILD set it also starts a `sleep` child as long.
    /// </summary>
    public string WriteBundle(string helperComment = "")
    {
        string dir = _dir.File("e2e_csv");
        Directory.CreateDirectory(dir);
        System.IO.File.WriteAllText(Path.Combine(dir, "parser.py"), """
            import os
            import subprocess
            import time

            from rows import read_rows

            name = "e2e_csv"
            version = "1.0"


            def parse(path):
                rows = read_rows(path)
                yield rows[:1]
                if os.environ.get("E2E_CHILD"):
                    subprocess.Popen(["sleep", os.environ["E2E_SLEEP"]])
                time.sleep(float(os.environ.get("E2E_SLEEP") or 0))
                yield rows[1:]

            """);
        System.IO.File.WriteAllText(Path.Combine(dir, "rows.py"), $$"""
            import csv
            {{helperComment}}

            def read_rows(path):
                with open(path, newline="") as f:
                    return [{"file": int(r["file"]), "row": int(r["row"]), "value": r["value"]} for r in csv.DictReader(f)]

            """);
        return dir;
    }

    /// <summary>inputs/in-NNN.csv for n files of <paramref name="rows"/> rows each; the value names file and row.</summary>
    public Dictionary<string, List<(long File, long Row, string Value)>> WriteInputs(int files, int rows = 3, string? dir = null)
    {
        dir ??= Inputs;
        Directory.CreateDirectory(dir);
        var all = new Dictionary<string, List<(long, long, string)>>(StringComparer.Ordinal);
        for (int f = 0; f < files; f++)
        {
            string path = Path.Combine(dir, $"in-{f:D3}.csv");
            var list = new List<(long, long, string)>();
            var sb = new StringBuilder("file,row,value\n");
            for (int r = 0; r < rows; r++)
            {
                string value = $"f{f}r{r}-{(f * 31 + r * 7) % 97}";
                list.Add((f, r, value));
                sb.Append(CultureInfo.InvariantCulture, $"{f},{r},{value}\n");
            }
            System.IO.File.WriteAllText(path, sb.ToString());
            all[path] = list;
        }
        return all;
    }

    public void Dispose()
    {
        lock (_daemons)
        {
            foreach (var d in _daemons)
            {
                // What runs under a daemon goes with its tree; remembered too, for what escaped the tree.
                if (!d.HasExited) Track(Posix.Descendants(d.Pid));
                d.Dispose();
            }
        }
        lock (_tracked)
            foreach (var (pid, command) in _tracked)
                if (Guest.Alive(pid) && Posix.CommandLine(pid) == command)
                    try { Posix.Kill(pid, Posix.SigKill); } catch (InvalidOperationException) { }
        _dir.Dispose();
    }
}
