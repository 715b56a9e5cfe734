// Black-box tests of the job and parser commands and the sentinel role, through the native binary,
// with CASPARIAN_HOME (and so the default store) in a temp directory.
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Data.Sqlite;
using Xunit;

namespace Casparian.Tests;

public sealed class JobCommandTests : IDisposable
{
    private readonly TempDir _home = new();
    private readonly TempDir _work = new();

    public void Dispose()
    {
        _home.Dispose();
        _work.Dispose();
    }

    private string Db => Path.Combine(_home.Path, "casparian.db");

    private ProcessResult Cli(params string[] args) =>
        Proc.Run(Repo.Binary, args, workingDirectory: _work.Path, environment: new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _home.Path });

    private ProcessResult Ok(params string[] args)
    {
        var r = Cli(args);
        Assert.True(r.ExitCode == 0, $"casparian {string.Join(' ', args)}: {r}");
        return r;
    }

    /// <summary>Asserts exit code 3 with exactly one "error: …" line on stderr containing <paramref name="text"/>.</summary>
    private void BadInput(string text, params string[] args)
    {
        var r = Cli(args);
        Assert.True(r.ExitCode == 3, $"casparian {string.Join(' ', args)}: {r}");
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error: ", line);
        Assert.Contains(text, line);
    }

    private string WriteParser(string name, string version, string body = "    return [{'n': 1}]\n")
    {
        string file = _work.File($"{name}.py");
        File.WriteAllText(file, $"name = \"{name}\"\nversion = \"{version}\"\n\ndef parse(path):\n{body}");
        return file;
    }

    /// <summary>inputs/a.csv, inputs/b.csv, inputs/sub/c.csv and a hidden inputs/.partial (skipped).</summary>
    private string WriteInputs()
    {
        string dir = _work.File("inputs");
        Directory.CreateDirectory(Path.Combine(dir, "sub"));
        File.WriteAllText(Path.Combine(dir, "b.csv"), "x\n2\n");
        File.WriteAllText(Path.Combine(dir, "a.csv"), "x\n1\n");
        File.WriteAllText(Path.Combine(dir, "sub", "c.csv"), "x\n3\n");
        File.WriteAllText(Path.Combine(dir, ".partial"), "half");
        return dir;
    }

    private IJobStore Store() => JobStores.Open(Defaults.Store(Db) with { Create = false });

    [Fact]
    public void JobCommands_AddListShowCancelRetry_ThroughTheBinary()
    {
        Assert.StartsWith("registered parser csvp 1.2 (id 1): 1 file(s)", Ok("parser", "register", WriteParser("csvp", "1.2")).Stdout);
        string inputs = WriteInputs();

        var add = Ok("job", "add", "--parser", "csvp", inputs, "--priority", "3");
        Assert.Equal("queued 3 job(s) for parser csvp 1.2 (jobs 1-3); 3 new or changed file(s)", add.Stdout.Trim());

        var jobs = Ok("jobs");
        string[] lines = jobs.Stdout.TrimEnd().Split('\n');
        Assert.StartsWith("ID", lines[0]);
        Assert.Equal(5, lines.Length);
        Assert.Contains(Path.Combine(inputs, "a.csv"), lines[1]);
        Assert.Contains(Path.Combine(inputs, "b.csv"), lines[2]);
        Assert.Contains(Path.Combine(inputs, "sub", "c.csv"), lines[3]);
        Assert.Contains("QUEUED", lines[1]);
        Assert.Equal("3 queued, 0 running, 0 completed, 0 failed, 0 cancelled (3 total)", lines[4]);

        var show = Ok("job", "show", "2");
        Assert.Contains("job 2", show.Stdout);
        Assert.Contains("state:      QUEUED", show.Stdout);
        Assert.Contains("parser:     csvp 1.2", show.Stdout);
        Assert.Contains($"input:      {Path.Combine(inputs, "b.csv")}", show.Stdout);
        Assert.Contains($"sha256:     {Hashes.Sha256Hex("x\n2\n")}", show.Stdout);
        Assert.Contains("priority:   3", show.Stdout);

        Assert.Equal("job 2 cancelled (was QUEUED)", Ok("job", "cancel", "2").Stdout.Trim());
        var cancelled = Ok("jobs", "--state", "cancelled").Stdout;
        Assert.Contains("CANCELLED", cancelled);
        Assert.DoesNotContain("a.csv", cancelled);
        BadInput("job 2 is CANCELLED; cannot cancel it", "job", "cancel", "2");

        Assert.Equal("job 2 queued again (was CANCELLED; retry count reset)", Ok("job", "retry", "2").Stdout.Trim());
        BadInput("job 2 is QUEUED; cannot retry it", "job", "retry", "2");
        BadInput("no job 42", "job", "show", "42");
        using var store = Store();
        Assert.Equal(3, store.Counts()[JobState.Queued]);
    }

    [Fact]
    public void JobCommands_Add_SkipsUnchangedSourcesAndNamesThem_QueuesChangedOnes_ForceQueuesAnyway()
    {
        Ok("parser", "register", WriteParser("csvp", "1.0"));
        string inputs = WriteInputs();
        string a = Path.Combine(inputs, "a.csv");
        Ok("job", "add", "--parser", "csvp@1.0", a);
        using (var store = Store())
        {
            var job = Assert.Single(store.Claim("w", ["*"], 1));
            Assert.True(store.Complete(job.Id, "w", new Dictionary<string, long>(), []));
        }
        // Same content under another name is another source: its own output, so its own job.
        File.Copy(a, Path.Combine(inputs, "copy-of-a.csv"));

        var again = Ok("job", "add", "--parser", "csvp", inputs);
        Assert.Equal("queued 3 job(s) for parser csvp 1.0 (jobs 2-4); 3 new or changed file(s); " +
                     $"skipped 1 unchanged file(s) this version already processed or has queued (--force queues them anyway):\n  unchanged: {a}", again.Stdout.Trim());
        // Queued but not yet run counts as done: adding the folder twice queues nothing twice.
        Assert.StartsWith("queued 0 job(s) for parser csvp 1.0; skipped 4 unchanged file(s)", Ok("job", "add", "--parser", "csvp", inputs).Stdout);

        File.AppendAllText(a, "4\n");
        Assert.Equal("queued 1 job(s) for parser csvp 1.0 (job 5); 1 new or changed file(s)", Ok("job", "add", "--parser", "csvp", a).Stdout.Trim());
        Assert.Equal("queued 1 job(s) for parser csvp 1.0 (job 6)", Ok("job", "add", "--parser", "csvp", "--force", Path.Combine(inputs, "b.csv")).Stdout.Trim());
        using (var store = Store())
            Assert.Equal([Hashes.Sha256Hex("x\n1\n"), Hashes.Sha256Hex("x\n1\n4\n")], store.SourceVersions(a).Select(v => v.ContentHash));

        // A new version has processed nothing yet.
        Ok("parser", "register", WriteParser("csvp", "2.0"));
        Assert.StartsWith("queued 4 job(s) for parser csvp 2.0", Ok("job", "add", "--parser", "csvp", inputs).Stdout);
    }

    [Fact]
    public void JobCommands_BulkCancelRetryAndJsonList_TouchOnlyMatchingJobsAndSayWhich()
    {
        Ok("parser", "register", WriteParser("csvp", "1.0"));
        Ok("parser", "register", WriteParser("other", "1.0"));
        string inputs = WriteInputs();
        Ok("job", "add", "--parser", "csvp", inputs);
        Ok("job", "add", "--parser", "other", inputs);

        Assert.Equal("cancelled 3 QUEUED job(s) of parser csvp: 1-3", Ok("job", "cancel", "--state", "queued", "--parser", "csvp").Stdout.Trim());
        Assert.Equal("no QUEUED jobs of parser csvp; nothing cancelled", Ok("job", "cancel", "--state", "queued", "--parser", "csvp").Stdout.Trim());
        Assert.Equal("queued again 3 CANCELLED job(s): 1-3", Ok("job", "retry", "--state", "cancelled").Stdout.Trim());
        var wrong = Cli("job", "retry", "--state", "queued");
        Assert.True(wrong.ExitCode == 2, wrong.ToString());
        Assert.Contains("failed or cancelled", wrong.Stderr);

        var lines = Ok("jobs", "--parser", "other", "--json").Stdout.TrimEnd().Split('\n');
        Assert.Equal(3, lines.Length);
        var parsed = lines.Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal([4L, 5, 6], parsed.Select(j => j.GetProperty("id").GetInt64()));
        Assert.All(parsed, j => Assert.Equal(("QUEUED", "other", "1.0"), (j.GetProperty("state").GetString(), j.GetProperty("parser").GetString(), j.GetProperty("version").GetString())));
        Assert.Equal(Path.Combine(inputs, "a.csv"), parsed[0].GetProperty("input").GetString());
        Assert.Equal(Hashes.Sha256Hex("x\n1\n"), parsed[0].GetProperty("content_hash").GetString());

        var recent = Ok("jobs", "--parser", "csvp@1.0", "--since", "1h").Stdout.TrimEnd().Split('\n');
        Assert.Equal(5, recent.Length); // header, 3 jobs, counts
        Assert.All(recent[1..4], l => Assert.Contains("csvp 1.0", l));
        Assert.Equal("", Ok("jobs", "--since", "2d", "--state", "failed", "--json").Stdout);
        var since = Cli("jobs", "--since", "soon");
        Assert.True(since.ExitCode == 2, since.ToString());
    }

    [Fact]
    public void JobCommands_BadInput_OneLineNonZeroAndNothingChanged()
    {
        string inputs = WriteInputs();
        BadInput("no job store at", "job", "add", "--parser", "csvp", inputs);
        Assert.False(File.Exists(Db));

        Ok("parser", "register", WriteParser("csvp", "1.0"));
        Ok("job", "add", "--parser", "csvp", Path.Combine(inputs, "a.csv"));
        byte[] before = File.ReadAllBytes(Db);

        BadInput("unknown parser 'nope'", "job", "add", "--parser", "nope", inputs);
        BadInput("parser csvp has no version 9.9", "job", "add", "--parser", "csvp@9.9", inputs);
        BadInput("no such file or folder: missing.csv", "job", "add", "--parser", "csvp", inputs, "missing.csv");
        BadInput("no job 7", "job", "cancel", "7");
        BadInput("no job 7", "job", "retry", "7");
        Assert.Equal(before, File.ReadAllBytes(Db));

        Assert.Equal(2, Cli("jobs", "--state", "sideways").ExitCode);
        Assert.Equal(2, Cli("job", "show", "abc").ExitCode);
        Assert.Equal(2, Cli("job", "add", inputs).ExitCode);

        // A store from a newer casparian is refused by every command and left as it was.
        SqliteRuntime.EnsureInitialized();
        using (var raw = new SqliteConnection($"Data Source={Db};Pooling=False"))
        {
            raw.Open();
            using var cmd = raw.CreateCommand();
            cmd.CommandText = "PRAGMA user_version = 7";
            cmd.ExecuteNonQuery();
        }
        before = File.ReadAllBytes(Db);
        BadInput("schema version 7", "jobs");
        BadInput("schema version 7", "job", "add", "--parser", "csvp", inputs);
        BadInput("schema version 7", "parser", "register", WriteParser("other", "1.0"));
        Assert.Equal(before, File.ReadAllBytes(Db));

        string garbage = _work.File("garbage.db");
        File.WriteAllBytes(garbage, Encoding.UTF8.GetBytes(new string('x', 5000)));
        BadInput("not an SQLite database", "jobs", "--db", garbage);
        BadInput("not an SQLite database", "job", "show", "1", "--db", garbage);
        Assert.Equal(new string('x', 5000), File.ReadAllText(garbage));
    }

    [Fact]
    public void JobCommands_ParserRegister_SameVersionNewSourceIsRefused()
    {
        string file = WriteParser("csvp", "1.0");
        Ok("parser", "register", file);
        Assert.Contains("already registered with the same source", Ok("parser", "register", file).Stdout);
        WriteParser("csvp", "1.0", body: "    return []\n");
        BadInput("bump the version", "parser", "register", file);
        BadInput("", "parser", "register", _work.File("absent.py"));

        var ls = Ok("parser", "ls").Stdout.TrimEnd().Split('\n');
        Assert.Equal(2, ls.Length);
        Assert.StartsWith("NAME", ls[0]);
        Assert.StartsWith("csvp", ls[1]);
        Assert.Contains("system", ls[1]);
    }

    [Fact]
    public void JobCommands_EmptyHome_ListsNothingAndCreatesNothing()
    {
        Assert.Contains("no jobs", Ok("jobs").Stdout);
        Assert.Contains("no parsers registered", Ok("parser", "ls").Stdout);
        Assert.False(File.Exists(Db));
    }

    // ---- the sentinel role ------------------------------------------------------------------

    private static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    [Fact]
    public void Sentinel_Binary_DispatchesCancelsAndStopsCleanlyOnSigterm()
    {
        Ok("parser", "register", WriteParser("csvp", "1.0"));
        string inputs = WriteInputs();
        Ok("job", "add", "--parser", "csvp", inputs);
        int port = FreePort();

        var psi = new ProcessStartInfo(Repo.Binary) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false, WorkingDirectory = _work.Path };
        foreach (var a in new[] { "sentinel", "--bind", $"tcp://127.0.0.1:{port}", "--heartbeat-timeout", "30" }) psi.ArgumentList.Add(a);
        psi.Environment["CASPARIAN_HOME"] = _home.Path;
        using var sentinel = Process.Start(psi)!;
        var stderr = new StringBuilder();
        sentinel.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        sentinel.BeginErrorReadLine();
        try
        {
            // First start over tcp://: the sentinel made its keys under HOME/keys and said how a worker joins.
            string keys = Path.Combine(_home.Path, "keys");
            string token = Eventually.Value(() => SentinelKeys.ReadJoinToken(keys), ScriptedWorker.Patience, "the join token", () => stderr.ToString());
            string key = SentinelKeys.ReadPublicKey(keys)!;
            using var worker = new ScriptedWorker($"tcp://127.0.0.1:{port}", "bin-worker", ["csvp"], slots: 2, token: token, serverKey: key);
            var first = worker.Expect(OpCode.Dispatch);
            var second = worker.Expect(OpCode.Dispatch);
            Assert.Equal([1ul, 2ul], new[] { first.JobId, second.JobId });
            Assert.Equal(Path.Combine(inputs, "a.csv"), first.Decode(ProtocolJson.Default.Dispatch).FilePath);

            worker.Conclude(1, ReceiptStatus.Success, new() { ["rows"] = 1 });
            Assert.Equal(3ul, worker.Expect(OpCode.Dispatch).JobId);

            // The CLI writes the store while the sentinel runs; the sentinel relays the cancel.
            Assert.Contains("sentinel will tell worker bin-worker to abort it", Ok("job", "cancel", "2").Stdout);
            Assert.Equal(2ul, worker.Expect(OpCode.Abort).JobId);
            worker.Conclude(2, ReceiptStatus.Aborted);
            worker.Conclude(3, ReceiptStatus.Failed, error: "ValueError: nope");

            string table = "";
            Eventually.True(() => (table = Ok("jobs").Stdout).Contains("1 completed, 1 failed, 1 cancelled"), ScriptedWorker.Patience,
                "the three conclusions in the store", () => table);
            Assert.Contains("0 queued, 0 running, 1 completed, 1 failed, 1 cancelled (3 total)", table);
            Assert.Contains("metrics:    rows=1", Ok("job", "show", "1").Stdout);
            Assert.Contains("error:      ValueError: nope", Ok("job", "show", "3").Stdout);
        }
        finally
        {
            using (var kill = Process.Start("kill", ["-TERM", sentinel.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])) kill.WaitForExit();
            if (!sentinel.WaitForExit(10_000)) sentinel.Kill();
        }
        sentinel.WaitForExit();
        lock (stderr)
        {
            Assert.True(sentinel.ExitCode == 0, $"exit {sentinel.ExitCode}\n{stderr}");
            Assert.Contains("worker bin-worker joined", stderr.ToString());
            Assert.Contains($"casparian worker --connect tcp://127.0.0.1:{port} --sentinel-key '{SentinelKeys.ReadPublicKey(Path.Combine(_home.Path, "keys"))}' --token ", stderr.ToString());
            Assert.Contains("stopped", stderr.ToString());
        }
    }

    [Fact]
    public void Sentinel_Binary_AddressInUseIsUnavailable()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        try
        {
            int port = ((IPEndPoint)l.LocalEndpoint).Port;
            var r = Cli("sentinel", "--bind", $"tcp://127.0.0.1:{port}");
            Assert.True(r.ExitCode == 4, r.ToString());
            Assert.Contains("already in use", r.Stderr);
        }
        finally
        {
            l.Stop();
        }
    }
}
