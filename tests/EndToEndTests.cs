// End to end through the native binary (issue 6): a sentinel and worker processes on loopback TCP,
// a bundled parser of two modules, inputs queued with `job add`, and the store and the Parquet
// output checked afterwards: every job COMPLETED once, every input row written exactly once.
using System.Globalization;
using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.Data.Sqlite;
using Xunit;

namespace Casparian.Tests;

public sealed class EndToEndTests : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);
    private readonly Cluster _c = new();

    public void Dispose() => _c.Dispose();

    private void Register()
    {
        string stdout = _c.Ok("parser", "register", _c.WriteBundle()).Stdout;
        Assert.StartsWith("registered parser e2e_csv 1.0 (id 1): 2 file(s)", stdout);
        Assert.Contains("entry parser.py, environment system", stdout);
    }

    private static void WaitJoined(Daemon sentinel, params string[] workers)
    {
        Eventually.True(() => workers.All(w => sentinel.Stderr.Contains($"worker {w} joined", StringComparison.Ordinal)),
            TimeSpan.FromSeconds(30), $"workers {string.Join(", ", workers)} to join", sentinel.ToString);
    }

    /// <summary>
    /// How often each of <paramref name="jobs"/> concluded SUCCESS, from the workers' own log lines. The
    /// store can show COMPLETED a moment before the test has read the worker's line off its stderr pipe,
    /// so this waits until every job has at least one line before counting.
    /// </summary>
    private Dictionary<long, int> Successes(IReadOnlyList<StoredJob> jobs, params Daemon[] workers)
    {
        _c.WaitUntil("the workers to log each job's SUCCESS", TimeSpan.FromSeconds(30),
            () => Count(workers) is var c && jobs.All(j => c.ContainsKey(j.Id)));
        return Count(workers);
    }

    private static Dictionary<long, int> Count(Daemon[] workers)
    {
        var counts = new Dictionary<long, int>();
        foreach (var w in workers)
            foreach (Match m in Regex.Matches(w.Stderr, @"worker \S+: job (\d+): SUCCESS"))
            {
                long id = long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
                counts[id] = counts.GetValueOrDefault(id) + 1;
            }
        return counts;
    }

    /// <summary>
    /// The output root holds exactly one output/{parser}-{file}-{hash}.parquet per job's source and nothing else (no temp
    /// files); each file holds its own input's rows, value by value, stamped with its job id; so every
    /// input row is written exactly once. Returns the row total.
    /// </summary>
    private long AssertOutputIsExactlyTheInputs(List<StoredJob> jobs, Dictionary<string, List<(long File, long Row, string Value)>> inputs)
    {
        var expectedFiles = jobs.Select(j => $"output/{SinkTarget.SourceFileName("e2e_csv", j.Input)}").Order(StringComparer.Ordinal).ToList();
        var actualFiles = Directory.EnumerateFiles(_c.Output, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(_c.Output, f)).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(expectedFiles, actualFiles);

        long total = 0;
        var seen = new HashSet<(long, long)>();
        foreach (var job in jobs)
        {
            var t = ParquetTable.Read(Path.Combine(_c.Output, "output", SinkTarget.SourceFileName("e2e_csv", job.Input)));
            var want = inputs[job.Input];
            Assert.Equal(want.Select(r => (object?)r.File), t.Columns["file"]);
            Assert.Equal(want.Select(r => (object?)r.Row), t.Columns["row"]);
            Assert.Equal(want.Select(r => (object?)r.Value), t.Columns["value"]);
            Assert.All(t.Columns["_job_id"], v => Assert.Equal(job.Id, v));
            foreach (var r in want) Assert.True(seen.Add((r.File, r.Row)), $"row {r.File}/{r.Row} written twice");
            total += t.Rows;
        }
        Assert.Equal(inputs.Values.Sum(v => v.Count), total);
        return total;
    }

    private static void Stop(Daemon d)
    {
        d.Signal(Posix.SigTerm);
        Assert.True(d.WaitForExit(TimeSpan.FromSeconds(30)) == 0, d.ToString());
    }

    [Fact]
    public void EndToEnd_SentinelAndTwoWorkers_HundredFilesEachCompletedOnceAndEveryRowWritten()
    {
        Register();
        var inputs = _c.WriteInputs(100);
        var sentinel = _c.StartSentinel();
        var a = _c.StartWorker("w-a");
        var b = _c.StartWorker("w-b");
        WaitJoined(sentinel, "w-a", "w-b");

        Assert.Equal("queued 100 job(s) for parser e2e_csv 1.0 (jobs 1-100); 100 new or changed file(s)", _c.Ok("job", "add", "--parser", "e2e_csv", _c.Inputs).Stdout.Trim());
        _c.WaitForJobs(100, Patience);

        var jobs = _c.Jobs();
        Assert.All(jobs, j => Assert.True(j.State == "COMPLETED" && j.Retries == 0, $"job {j.Id}: {j.State}, {j.Retries} retries, {j.Error}"));
        // Spread over both workers, and each job concluded exactly once by the worker the store names.
        Assert.Equal(["w-a", "w-b"], jobs.Select(j => j.Worker!).Distinct().Order(StringComparer.Ordinal));
        var byA = Successes(jobs.Where(j => j.Worker == "w-a").ToList(), a);
        var byB = Successes(jobs.Where(j => j.Worker == "w-b").ToList(), b);
        foreach (var j in jobs)
        {
            Assert.Equal(1, byA.GetValueOrDefault(j.Id) + byB.GetValueOrDefault(j.Id));
            Assert.Equal(1, (j.Worker == "w-a" ? byA : byB).GetValueOrDefault(j.Id));
        }
        Assert.Equal(300, AssertOutputIsExactlyTheInputs(jobs, inputs));
        Assert.EndsWith("0 queued, 0 running, 100 completed, 0 failed, 0 cancelled (100 total)", _c.Ok("jobs").Stdout.TrimEnd());

        // Every worker extracted the bundle once, under its source hash, and reused it.
        foreach (string w in new[] { "w-a", "w-b" })
            Assert.Single(Directory.GetDirectories(_c.File($"home-{w}/parsers")));

        Stop(a);
        Stop(b);
        Stop(sentinel);
    }

    [Fact]
    public void EndToEnd_KillNineWorkerHoldingJobs_OtherWorkerFinishesThemOnceWithNoTempFilesOrOrphans()
    {
        Register();
        var inputs = _c.WriteInputs(12);
        var sentinel = _c.StartSentinel(heartbeatTimeout: "1.5s");
        // The doomed worker's parser writes a file's first row, starts a child, and sleeps far longer than the test.
        var doomed = _c.StartWorker("w-doomed", sleep: "120", child: true);
        WaitJoined(sentinel, "w-doomed");
        _c.Ok("job", "add", "--parser", "e2e_csv", _c.Inputs);

        // Provably mid-job: the store says RUNNING on it, its guests are alive, and each held job has a
        // half-written temp file in the output directory.
        List<StoredJob> held = [];
        List<int> guests = [], children = [], zygotes = [];
        _c.WaitUntil("w-doomed to hold two half-written jobs", TimeSpan.FromSeconds(30), () =>
        {
            held = [.. _c.Jobs().Where(j => j.State == "RUNNING" && j.Worker == "w-doomed")];
            var tree = Posix.Descendants(doomed.Pid);
            _c.Track(tree);
            guests = doomed.Guests();
            zygotes = doomed.Zygotes();
            children = [.. tree.Where(p => Posix.CommandLine(p) == "sleep 120")];
            // Warm: the two jobs' children and the zygote's idle spare, forked ahead for the next job.
            return held.Count == 2 && guests.Count == 3 && children.Count == 2 && held.All(j => TempFiles(j.Id).Length == 1);
        });

        doomed.Signal(Posix.SigKill);
        Assert.Equal(137, doomed.WaitForExit(TimeSpan.FromSeconds(10)));
        var survivor = _c.StartWorker("w-survivor");
        _c.WaitForJobs(12, Patience);

        var jobs = _c.Jobs();
        Assert.All(jobs, j => Assert.True(j.State == "COMPLETED" && j.Worker == "w-survivor", $"job {j.Id}: {j.State} on {j.Worker}: {j.Error}"));
        // The held jobs were requeued once (by the heartbeat timeout), the rest never.
        Assert.Equal(held.Select(j => j.Id), jobs.Where(j => j.Retries == 1).Select(j => j.Id));
        Assert.All(jobs.Where(j => !held.Any(h => h.Id == j.Id)), j => Assert.Equal(0, j.Retries));
        // Logged right after the requeue's commit; the test's reader of the sentinel's stderr may lag the store.
        _c.WaitUntil("the sentinel's requeue line", TimeSpan.FromSeconds(10), () => sentinel.Stderr.Contains("worker w-doomed: 2 job(s) requeued, 0 FAILED"));
        var successes = Successes(jobs, survivor);
        Assert.All(jobs, j => Assert.Equal(1, successes.GetValueOrDefault(j.Id)));
        // No input lost or written twice, and the killed attempts' temp files are gone.
        Assert.Equal(36, AssertOutputIsExactlyTheInputs(jobs, inputs));

        // The killed worker's guests, and what their parsers started, do not outlive it (they would
        // otherwise sleep on for minutes).
        // Warm guests: the fork server goes too, and its idle spare child (one of `guests`).
        Assert.Single(zygotes);
        int[] left = Guest.WaitGone([.. guests, .. children, .. zygotes], TimeSpan.FromSeconds(10));
        Assert.True(left.Length == 0, $"processes of the killed worker still running: {string.Join(", ", left.Select(p => $"{p} {Posix.CommandLine(p)}"))}");
        Stop(survivor);
        Stop(sentinel);
    }

    private string[] TempFiles(long jobId)
    {
        string dir = Path.Combine(_c.Output, "output");
        return Directory.Exists(dir) ? Directory.GetFiles(dir, $".*.parquet.tmp-{jobId}-*") : [];
    }

    [Fact]
    public void EndToEnd_SentinelRestartMidRun_WorkersIdentifyAgainAndTheQueueFinishes()
    {
        Register();
        var inputs = _c.WriteInputs(30);
        var sentinel = _c.StartSentinel();
        var a = _c.StartWorker("w-a", sleep: "0.3");
        var b = _c.StartWorker("w-b", sleep: "0.3");
        WaitJoined(sentinel, "w-a", "w-b");
        _c.Ok("job", "add", "--parser", "e2e_csv", _c.Inputs);

        _c.WaitUntil("some jobs done and some running", TimeSpan.FromSeconds(60), () =>
            _c.Jobs() is var j && j.Count(x => x.State == "COMPLETED") >= 4 && j.Count(x => x.State == "RUNNING") >= 2);
        Stop(sentinel);
        int doneBefore = _c.Jobs().Count(j => j.State == "COMPLETED");
        Assert.True(doneBefore < 30, "the restart happened mid-run");
        // Jobs conclude on the workers while no sentinel listens.
        Thread.Sleep(500);

        var again = _c.StartSentinel(samePort: true);
        _c.WaitUntil("both workers to identify again", TimeSpan.FromSeconds(30), () =>
            a.Stderr.Contains("reconnected; identifying again", StringComparison.Ordinal) && b.Stderr.Contains("reconnected; identifying again", StringComparison.Ordinal));
        _c.WaitForJobs(30, Patience);

        var jobs = _c.Jobs();
        Assert.All(jobs, j => Assert.True(j.State == "COMPLETED", $"job {j.Id}: {j.State}: {j.Error}"));
        Assert.Equal(90, AssertOutputIsExactlyTheInputs(jobs, inputs));
        // Both workers are known to the new sentinel, and both kept working.
        Assert.Matches("worker w-a (joined|identified again)", again.Stderr);
        Assert.Matches("worker w-b (joined|identified again)", again.Stderr);
        var successes = Successes(jobs, a, b);
        Assert.All(jobs, j => Assert.True(successes.GetValueOrDefault(j.Id) >= 1, $"job {j.Id} never succeeded on a worker"));
        Stop(a);
        Stop(b);
        Stop(again);
    }

    // ---- bad input: one clear line, a documented exit code, nothing changed ---------------------

    private byte[] StoreBytes() => System.IO.File.ReadAllBytes(_c.Db);

    private static string OneErrorLine(ProcessResult r, int exit)
    {
        Assert.True(r.ExitCode == exit, r.ToString());
        string line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error: ", line);
        return line;
    }

    [Fact]
    public void EndToEnd_BundleWithSymlinkLeavingTheDirectory_IsRefusedAndTheStoreIsUnchanged()
    {
        Register();
        byte[] before = StoreBytes();
        string dir = _c.File("escaping");
        Directory.CreateDirectory(dir);
        System.IO.File.WriteAllText(Path.Combine(dir, "parser.py"), "from secret import x\n\ndef parse(path):\n    return [{'x': x}]\n");
        System.IO.File.WriteAllText(_c.File("secret.py"), "x = 1\n");
        System.IO.File.CreateSymbolicLink(Path.Combine(dir, "secret.py"), "../secret.py");

        string line = OneErrorLine(_c.Cli("parser", "register", dir), 3);
        Assert.Equal($"error: parser directory {dir} contains the symlink secret.py -> ../secret.py; bundles hold regular files only: copy the file in or move the link out", line);
        Assert.Equal(before, StoreBytes());
        Assert.Single(_c.Ok("parser", "ls").Stdout.TrimEnd().Split('\n').Skip(1));
    }

    [Fact]
    public void EndToEnd_ArchiveWithDotDotEntryInTheStore_IsRefusedByTheWorkerAndNothingIsWritten()
    {
        // The CLI cannot make such a bundle, so the store is edited as a tampered store (or a rogue
        // sentinel's DISPATCH) would carry it; the worker refuses it before extracting anything.
        Register();
        using (var buffer = new MemoryStream())
        {
            using (var zip = new ZipArchive(buffer, ZipArchiveMode.Create, leaveOpen: true))
            {
                foreach (var (name, text) in new[] { ("parser.py", "def parse(path):\n    return [{'x': 1}]\n"), ("../escaped.py", "x = 1\n") })
                {
                    using var s = zip.CreateEntry(name).Open();
                    s.Write(Encoding.UTF8.GetBytes(text));
                }
            }
            SqliteRuntime.EnsureInitialized();
            using var db = new SqliteConnection($"Data Source={_c.Db};Pooling=False");
            db.Open();
            using var cmd = db.CreateCommand();
            cmd.CommandText = "UPDATE parsers SET archive = $a";
            cmd.Parameters.AddWithValue("$a", buffer.ToArray());
            Assert.Equal(1, cmd.ExecuteNonQuery());
        }
        _c.WriteInputs(1);
        _c.Ok("job", "add", "--parser", "e2e_csv", _c.Inputs);

        var r = Proc.Run(Repo.Binary, ["start", "--drain", "--output", _c.Output, "--retry-backoff", "0.1s"], TimeSpan.FromSeconds(60), _c.Root,
            new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _c.Home, ["CASPARIAN_PYTHON"] = Cluster.Python });
        Assert.True(r.ExitCode == 1, r.ToString());
        Assert.Contains("job 1 failed: ", r.Stderr);
        Assert.Contains("parser archive entry '../escaped.py' has a '..' path segment; refusing to extract the bundle", r.Stderr);
        var job = Assert.Single(_c.Jobs());
        Assert.Equal("FAILED", job.State);
        Assert.Equal(0, job.Retries); // permanent: retrying cannot fix a bad archive
        Assert.False(Directory.Exists(_c.Output) && Directory.EnumerateFileSystemEntries(_c.Output).Any());
        Assert.Empty(Directory.GetFiles(_c.Root, "escaped.py", SearchOption.AllDirectories));
        string parsers = Path.Combine(_c.Home, "parsers");
        Assert.False(Directory.Exists(parsers) && Directory.EnumerateFileSystemEntries(parsers).Any(), "nothing extracted");
    }

    [Fact]
    public void EndToEnd_SameVersionWithOnlyTheHelperModuleChanged_IsRefusedAndTheStoreIsUnchanged()
    {
        Register();
        byte[] before = StoreBytes();
        // The entry module is unchanged; the bundle's source hash covers the helper too.
        _c.WriteBundle(helperComment: "# a changed helper");
        string line = OneErrorLine(_c.Cli("parser", "register", _c.File("e2e_csv")), 3);
        Assert.StartsWith("error: parser e2e_csv 1.0 is already registered with a different source (source hash ", line);
        Assert.EndsWith($"); bump the version in {_c.File("e2e_csv")} and register again", line);
        Assert.Equal(before, StoreBytes());
    }

    public static TheoryData<string[]> CommandsReadingConfig => new()
    {
        new[] { "start", "--drain" },
        new[] { "sentinel" },
        new[] { "worker" },
        new[] { "parser", "register", "e2e_csv" },
        new[] { "job", "add", "--parser", "e2e_csv", "inputs" },
        new[] { "jobs" },
    };

    [Theory]
    [MemberData(nameof(CommandsReadingConfig))]
    public void EndToEnd_ConfigFileWithATypo_EveryCommandRefusesBeforeTouchingAnything(string[] args)
    {
        Register();
        _c.WriteInputs(2);
        _c.Ok("job", "add", "--parser", "e2e_csv", _c.Inputs);
        byte[] before = StoreBytes();
        var homeBefore = Directory.GetFileSystemEntries(_c.Home, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal).ToList();
        string toml = _c.File("casparian.toml");
        System.IO.File.WriteAllText(toml, "slots = 2\nheartbeat_timout = \"5s\"\n");

        string line = OneErrorLine(_c.Cli(args), 3);
        Assert.StartsWith($"error: config file {toml} line 2: unknown key 'heartbeat_timout' (did you mean 'heartbeat_timeout'?); known keys: ", line);
        Assert.Equal(before, StoreBytes());
        Assert.Equal(homeBefore, Directory.GetFileSystemEntries(_c.Home, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal));
        Assert.False(Directory.Exists(_c.Output));
    }
}
