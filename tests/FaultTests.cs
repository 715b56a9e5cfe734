// Issue 11 section 2: the faults found from outside, each reproduced through real parts (the native
// binary, real sockets, real SQLite files, real python3, a real full or read-only file system) and
// checked to be fixed. Each test fails on the code before its fix.
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Data.Sqlite;
using Xunit;

namespace Casparian.Tests;

/// <summary>
/// A tmpfs of a given size mounted at a directory: a real ENOSPC, or (remounted read-only) a real
/// read-only file system. Mounting needs root; CI runs the tests as root or with sudo (as build.sh does).
/// </summary>
internal sealed class Tmpfs : IDisposable
{
    public string Path { get; }

    public Tmpfs(string path, string size)
    {
        Path = path;
        Directory.CreateDirectory(path);
        Mount("-t", "tmpfs", "-o", $"size={size},mode=0777", "tmpfs", path);
    }

    public void ReadOnly() => Mount("-o", "remount,ro", Path);

    private static void Mount(params string[] args)
    {
        bool root = Environment.UserName == "root";
        var r = root ? Proc.Run("mount", args) : Proc.Run("sudo", ["-n", "mount", .. args]);
        if (r.ExitCode != 0) throw new InvalidOperationException($"mount {string.Join(' ', args)} failed (these tests need root or passwordless sudo): {r}");
    }

    public void Dispose()
    {
        bool root = Environment.UserName == "root";
        if (root) Proc.Run("umount", ["-l", Path]); else Proc.Run("sudo", ["-n", "umount", "-l", Path]);
    }
}

public sealed class FaultTests : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);
    private readonly Cluster _c = new();

    public void Dispose() => _c.Dispose();

    private void Register() => Assert.StartsWith("registered parser e2e_csv 1.0", _c.Ok("parser", "register", _c.WriteBundle()).Stdout);

    private static string Sha256(byte[] bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    private static Dispatch Job(string source, string input, int? timeoutSeconds = null) => new()
    {
        PluginName = "t",
        FilePath = input,
        FileVersionId = 1,
        EnvHash = "system",
        SourceCode = source,
        TimeoutSeconds = timeoutSeconds,
    };

    /// <summary>
    /// Runs one job of <paramref name="source"/> over an input holding <paramref name="content"/> on a
    /// real worker (a scripted sentinel's side), its output root a 256 KiB tmpfs when <paramref name="fullDisk"/>;
    /// <paramref name="check"/> sees the receipt while the worker's directories still exist.
    /// </summary>
    private static void OnWorker(string source, byte[] content, Action<JobReceipt, WorkerRun> check, bool fullDisk = false)
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        using var full = fullDisk ? new Tmpfs(w.Output, "256k") : null;
        s.Receive(OpCode.Identify);
        string input = w.Dir.File("in.txt");
        File.WriteAllBytes(input, content);
        s.Dispatch(7, Job(source, input));
        check(s.Conclude(7), w);
    }

    private static string[] FilesUnder(string dir) =>
        Directory.Exists(dir) ? Directory.GetFiles(dir, "*", SearchOption.AllDirectories) : [];

    // ---- 2. a dropped worker that is still connected rejoins ---------------------------------------

    [Fact]
    public void Fault_WorkerStoppedPastTheHeartbeatTimeout_RejoinsAfterSigcontAndTheQueueMoves()
    {
        Register();
        var sentinel = _c.StartSentinel(heartbeatTimeout: "1.5s");
        var worker = _c.StartWorker("paused");
        _c.WaitUntil("the worker to join", Patience, () => sentinel.Stderr.Contains("worker paused joined", StringComparison.Ordinal));

        worker.Signal(19); // SIGSTOP: the connection stays up, the heartbeats stop
        try
        {
            _c.WaitUntil("the sentinel to drop the stopped worker", Patience, () => sentinel.Stderr.Contains("worker paused silent for", StringComparison.Ordinal));
        }
        finally
        {
            worker.Signal(18); // SIGCONT
        }
        _c.WriteInputs(3);
        _c.Ok("job", "add", "--parser", "e2e_csv", _c.Inputs);
        _c.WaitForJobs(3, Patience);
        Assert.All(_c.Jobs(), j => Assert.Equal("COMPLETED", j.State));
        _c.WaitUntil("the worker's log to say it identified again", Patience, () => worker.Stderr.Contains("identifying again", StringComparison.Ordinal));
    }

    // ---- 4. an idle sentinel does not spin -------------------------------------------------------

    [Fact]
    public void Fault_IdleSentinelWithoutWorkers_TurnsAFewTimesASecondNotThousands()
    {
        using var host = new SentinelHost(_c.File("idle.db"));
        var clock = Stopwatch.StartNew();
        long first = host.Sentinel.Turns;
        Thread.Sleep(1500);
        long turns = host.Sentinel.Turns - first;
        double seconds = clock.Elapsed.TotalSeconds;
        // A turn waits up to the poll interval (50 ms here) or 100 ms: about 20 a second. The spinning
        // loop made about 100,000 a second; 200 a second leaves room for any scheduler.
        Assert.True(turns < 200 * seconds + 50, $"{turns} turns in {seconds:0.00} s while idle");
    }

    // ---- 5. a damaged, empty or read-only store ---------------------------------------------------

    private void QueueMany(int files)
    {
        Register();
        _c.WriteInputs(files);
        _c.Ok("job", "add", "--parser", "e2e_csv", _c.Inputs);
    }

    [Fact]
    public void Fault_CorruptStore_IsReportedInOneLineWithExitFiveByJobsAndStart()
    {
        QueueMany(300);
        Assert.False(File.Exists(_c.Db + "-wal") && new FileInfo(_c.Db + "-wal").Length > 0, "the store was checkpointed on close");
        // Damage the jobs-table page holding the oldest job: `jobs` (the newest 50 and the counts from
        // their indexes) never reads it, so it used to call the store healthy.
        byte[] file = File.ReadAllBytes(_c.Db);
        int at = file.AsSpan().IndexOf(Encoding.UTF8.GetBytes("in-000.csv"));
        Assert.True(at >= 4096, "job 1's row lies past the first page");
        using (var f = new FileStream(_c.Db, FileMode.Open, FileAccess.Write))
        {
            f.Position = at / 4096 * 4096;
            f.Write(Enumerable.Repeat((byte)0x5A, 4096).ToArray());
        }
        var jobs = _c.Cli("jobs");
        Assert.True(jobs.ExitCode == 5, jobs.ToString());
        Assert.Single(jobs.Stderr.TrimEnd().Split('\n'));
        Assert.Contains($"job store {_c.Db} is damaged", jobs.Stderr);

        // It used to freeze, retrying "database file is corrupt" every 250 ms.
        var start = Proc.Run(Repo.Binary, ["start", "--drain"], TimeSpan.FromSeconds(60), _c.Root,
            new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _c.Home, ["CASPARIAN_PYTHON"] = Cluster.Python });
        Assert.True(start.ExitCode == 5, start.ToString());
        Assert.Contains("is damaged", start.Stderr);
    }

    [Fact]
    public void Fault_EmptyStoreFile_IsNotSilentlyANewStore()
    {
        string empty = _c.File("empty.db");
        File.WriteAllBytes(empty, []);
        foreach (var args in new[] { new[] { "jobs", "--db", empty }, ["parser", "register", _c.WriteBundle(), "--db", empty], ["sentinel", "--bind", "tcp://127.0.0.1:0", "--db", empty] })
        {
            var r = _c.Cli(args);
            Assert.True(r.ExitCode == 5, $"{string.Join(' ', args)}: {r}");
            Assert.Contains("is an empty file (0 bytes)", r.Stderr);
        }
        Assert.Equal(0, new FileInfo(empty).Length);
    }

    [Fact]
    public void Fault_ReadOnlyStoreDirectory_ReadCommandsWorkAndWritesFailInOneLine()
    {
        using var fs = new Tmpfs(_c.File("ro"), "16m");
        string db = Path.Combine(fs.Path, "casparian.db");
        Register();
        _c.Ok("parser", "register", _c.WriteBundle(), "--db", db);
        _c.WriteInputs(2);
        _c.Ok("job", "add", "--parser", "e2e_csv", _c.Inputs, "--db", db);
        fs.ReadOnly();

        Assert.Contains("2 queued", _c.Ok("jobs", "--db", db).Stdout);
        Assert.Contains("state:      QUEUED", _c.Ok("job", "show", "1", "--db", db).Stdout);
        Assert.Contains("e2e_csv", _c.Ok("parser", "ls", "--db", db).Stdout);
        var add = _c.Cli("job", "add", "--parser", "e2e_csv", _c.Inputs, "--db", db, "--force");
        Assert.NotEqual(0, add.ExitCode);
        Assert.Single(add.Stderr.TrimEnd().Split('\n'));
    }

    [Fact]
    public void Fault_PermanentStoreErrorUnderTheSentinel_StopsItWithTheErrorInsteadOfLooping()
    {
        string db = _c.File("damaged.db");
        using (var store = JobStores.Open(Defaults.Store(db))) store.Enqueue(new NewJob("csv", "1.0", "/in/a.csv", new string('0', 64)));
        var options = Defaults.Sentinel("tcp://127.0.0.1:*", db, RoleLog.None) with { PollInterval = TimeSpan.FromMilliseconds(50) };
        using var sentinel = new Sentinel(options);
        sentinel.Start();
        using var stop = new CancellationTokenSource();
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try { sentinel.Run(stop.Token); }
            catch (Exception e) { failure = e; }
        });
        thread.Start();
        // Damage the store under the running sentinel: the queue's index goes, so every claim fails
        // with an error that no retry can fix (a remount read-only is refused while the file is open).
        SqliteRuntime.EnsureInitialized();
        using (var raw = new SqliteConnection($"Data Source={db};Pooling=False;Default Timeout=30"))
        {
            raw.Open();
            using var drop = raw.CreateCommand();
            drop.CommandText = "DROP INDEX jobs_queue";
            drop.ExecuteNonQuery();
        }
        // A worker joining makes the sentinel claim.
        using var worker = new ScriptedWorker(sentinel.Endpoint, "w1");
        bool ended = thread.Join(TimeSpan.FromSeconds(30));
        stop.Cancel();
        Assert.True(ended, "the sentinel kept retrying a store error that does not pass");
        var e = Assert.IsAssignableFrom<StoreException>(failure);
        Assert.IsNotType<StoreUnavailableException>(e);
        Assert.Contains("jobs_queue", e.Message);
        thread.Join();
    }

    // ---- 6. one sentinel per store ---------------------------------------------------------------

    [Fact]
    public void Fault_SecondSentinelOnOneStore_IsRefusedNamingTheHoldersPid()
    {
        var first = _c.StartSentinel();
        var second = _c.Cli("sentinel", "--bind", $"tcp://127.0.0.1:{Cluster.FreePort()}");
        Assert.True(second.ExitCode == 4, second.ToString());
        Assert.Contains($"job store {_c.Db} is in use by another sentinel or 'casparian start' (pid {first.Pid})", second.Stderr);

        // `start` on the same store (another home, --db) is refused the same way.
        var start = Proc.Run(Repo.Binary, ["start", "--drain", "--db", _c.Db], TimeSpan.FromSeconds(60), _c.Root,
            new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _c.File("home2"), ["CASPARIAN_PYTHON"] = Cluster.Python });
        Assert.True(start.ExitCode == 4, start.ToString());
        Assert.Contains($"(pid {first.Pid})", start.Stderr);

        // In one process too: a second Sentinel object on the file.
        using var host = new SentinelHost(_c.File("inproc.db"));
        var e = Assert.Throws<UnavailableException>(() => new Sentinel(Defaults.Sentinel("tcp://127.0.0.1:*", _c.File("inproc.db"), RoleLog.None)));
        Assert.Contains($"(pid {Environment.ProcessId})", e.Message);
    }

    // ---- 7. the hash of what was parsed -----------------------------------------------------------

    [Fact]
    public void Fault_FileChangedAfterJobAdd_StoreRecordsTheParsedContentAndTheOldContentIsNotSkipped()
    {
        Register();
        string input = _c.File("changing.csv");
        byte[] before = Encoding.UTF8.GetBytes("file,row,value\n1,0,old\n");
        byte[] after = Encoding.UTF8.GetBytes("file,row,value\n1,0,new\n1,1,newer\n");
        File.WriteAllBytes(input, before);
        _c.Ok("job", "add", "--parser", "e2e_csv", input);
        File.WriteAllBytes(input, after);

        var sentinel = _c.StartSentinel();
        _c.StartWorker("w1");
        _c.WaitForJobs(1, Patience);
        Assert.Contains($"sha256:     {Sha256(after)}", _c.Ok("job", "show", "1").Stdout);
        _c.WaitUntil("the sentinel to log the change", Patience, () => sentinel.Stderr.Contains("job 1: the input changed after it was queued", StringComparison.Ordinal));

        // The old content was never parsed, so queueing it again is not skipped as "already completed".
        File.WriteAllBytes(input, before);
        Assert.StartsWith("queued 1 job(s)", _c.Ok("job", "add", "--parser", "e2e_csv", input).Stdout);
    }

    [Fact]
    public void Fault_Receipt_CarriesTheHashOfTheBytesParsed()
    {
        byte[] content = Encoding.UTF8.GetBytes("alpha\nbeta\n");
        OnWorker("def parse(path):\n    return {'line': open(path).read().split()}\n", content, (r, _) =>
        {
            Assert.True(r.Status == ReceiptStatus.Success, r.ErrorMessage);
            Assert.Equal(Sha256(content), r.ContentHash);
        });
    }
    [Fact]
    public void Fault_InputRewrittenWhileParsed_FailsTransientAndCommitsNothing()
    {
        OnWorker("""
            import time
            def parse(path):
                rows = open(path).read().split()
                time.sleep(0.05)
                with open(path, "a") as f:
                    f.write("two and more\n")
                return {"line": rows}
            """, "one\n"u8.ToArray(), (r, w) =>
        {
            Assert.Equal(ReceiptStatus.Failed, r.Status);
            Assert.Contains("changed while it was parsed", r.ErrorMessage);
            Assert.Equal(1, r.Metrics[JobExecutor.TransientMetric]);
            Assert.Empty(FilesUnder(w.Output));
        });
    }

    // ---- 8. a full disk is transient --------------------------------------------------------------

    [Fact]
    public void Fault_OutputDiskFull_IsTransientAndLeavesNothingBehind()
    {
        // About 4 MB of incompressible text: it cannot fit in 256 KiB, compressed or not.
        OnWorker("import os\ndef parse(path):\n    return {'blob': [os.urandom(2048).hex() for _ in range(1000)]}\n", "x\n"u8.ToArray(), (r, w) =>
        {
            Assert.Equal(ReceiptStatus.Failed, r.Status);
            Assert.Contains("No space left on device", r.ErrorMessage);
            Assert.Equal(1, r.Metrics[JobExecutor.TransientMetric]);
            Assert.Empty(FilesUnder(w.Output));
        }, fullDisk: true);
    }

    // ---- 9. sys.exit(2) is transient, end to end ----------------------------------------------------

    [Fact]
    public void Fault_SysExit2_IsRetriedUpToTheRetryLimit()
    {
        string dir = _c.File("exit2");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "parser.py"), "import sys\nname = 'exit2'\nversion = '1.0'\n\ndef parse(path):\n    sys.exit(2)\n");
        _c.Ok("parser", "register", dir);
        File.WriteAllText(_c.File("x.csv"), "a\n");
        _c.Ok("job", "add", "--parser", "exit2", _c.File("x.csv"));
        _c.StartSentinel();
        _c.StartWorker("w1");
        _c.WaitUntil("the job to fail after its retries", Patience, () => _c.Jobs() is [{ State: "FAILED" }]);
        var job = Assert.Single(_c.Jobs());
        Assert.Equal(3, job.Retries);
        Assert.Contains("sys.exit(2)", job.Error);
    }

    // ---- 10. truncated output is not accepted -------------------------------------------------------

    [Fact]
    public void Fault_GuestExitsZeroWithoutEndOfStream_FailsAndCommitsNothing()
    {
        OnWorker("import os, sys\ndef parse(path):\n    yield {'a': [1, 2]}\n    sys.stdout.flush()\n    os._exit(0)\n", "x\n"u8.ToArray(), (r, w) =>
        {
            Assert.Equal(ReceiptStatus.Failed, r.Status);
            Assert.Contains("without an end-of-stream frame", r.ErrorMessage);
            Assert.Empty(FilesUnder(w.Output));
        });
    }

    // ---- 11. symlinks do not escape the output root --------------------------------------------------

    [Fact]
    public void Fault_SymlinkInsideTheOutputRoot_CannotLeadAWriteOutsideIt()
    {
        using var dir = new TempDir();
        string root = dir.File("out"), outside = dir.File("outside"), inside = dir.File("out/real");
        Directory.CreateDirectory(root);
        Directory.CreateDirectory(outside);
        Directory.CreateDirectory(inside);
        File.CreateSymbolicLink(Path.Combine(root, "link"), outside);
        File.CreateSymbolicLink(Path.Combine(root, "events"), outside);
        File.CreateSymbolicLink(Path.Combine(root, "fine"), inside);
        var options = Defaults.Output(root);

        // An explicit sink through the link, and a topic whose default directory is the link.
        var e = Assert.Throws<OutputException>(() => new JobOutput(options, 1, null, [new SinkConfig { Topic = "t", Uri = "parquet://link/x" }]));
        Assert.Contains($"really {outside}", e.Message);
        using (var output = new JobOutput(options, 2, null, []))
        using (var batch = new Apache.Arrow.RecordBatch.Builder().Append("a", false, c => c.Int64(v => v.Append(1))).Build())
            Assert.Throws<OutputException>(() => output.Write("events", batch));
        Assert.Empty(FilesUnder(outside));

        // A link that stays inside the root is fine.
        using (var output = new JobOutput(options, 3, null, [new SinkConfig { Topic = "t", Uri = "parquet://fine/x" }]))
        {
            using (var batch = new Apache.Arrow.RecordBatch.Builder().Append("a", false, c => c.Int64(v => v.Append(1))).Build())
                output.Write("t", batch);
            output.Commit();
        }
        Assert.Single(FilesUnder(inside));
    }

    // ---- 12. the server-side deadline ----------------------------------------------------------------

    [Fact]
    public void Fault_WorkerHoldingAJobPastItsDeadline_GetsAbortThenTheJobIsRequeued()
    {
        string db = _c.File("deadline.db");
        long id;
        using (var store = JobStores.Open(Defaults.Store(db)))
        {
            store.RegisterParser(new ParserRecord
            {
                Name = "csv", Version = "1.0", Source = "x", EnvHash = Hashes.SystemEnv, SourceHash = Hashes.Sha256Hex("x"),
                ArtifactHash = Hashes.ArtifactHash("x", ""),
            });
            id = store.Enqueue(new NewJob("csv", "1.0", "/in/a.csv", new string('0', 64)));
        }
        using var host = new SentinelHost(db, jobTimeout: TimeSpan.FromSeconds(1), deadlineGrace: TimeSpan.FromSeconds(1));
        using var worker = new ScriptedWorker(host.Endpoint, "stuck");
        Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch).JobId);
        // It heartbeats BUSY with the job and never concludes, not even after the ABORT.
        var abort = worker.Expect(OpCode.Abort, TimeSpan.FromSeconds(30), heartbeatEvery: TimeSpan.FromMilliseconds(200));
        Assert.Equal((ulong)id, abort.JobId);
        Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch, TimeSpan.FromSeconds(30), heartbeatEvery: TimeSpan.FromMilliseconds(200)).JobId);
        using var check = JobStores.Open(Defaults.Store(db));
        var job = check.Get(id)!;
        Assert.Equal(1, job.RetryCount);
        Assert.Contains("passed its deadline", host.Log);
    }

    // ---- 13. small ones -------------------------------------------------------------------------------

    [Fact]
    public void Fault_RunOnOneFile_KillsWhatTheParserLeftRunning()
    {
        string pidFile = _c.File("child.pid");
        File.WriteAllText(_c.File("p.py"), $$"""
            import subprocess
            def parse(path):
                # The shell exits at once: its sleep leaves the parser's process tree but not its group.
                subprocess.run(["sh", "-c", "sleep 300 > /dev/null 2>&1 & echo $! > " + {{Guest.PyLiteral(pidFile)}}])
                return {"a": [1]}
            """);
        File.WriteAllText(_c.File("x.csv"), "a\n");
        var r = Proc.Run(Repo.Binary, ["run", "p.py", "x.csv"], TimeSpan.FromMinutes(1), _c.Root,
            new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _c.Home, ["VIRTUAL_ENV"] = null, ["CASPARIAN_PYTHON"] = Cluster.Python });
        Assert.True(r.ExitCode == 0, r.ToString());
        int child = int.Parse(File.ReadAllText(pidFile).Trim(), CultureInfo.InvariantCulture);
        _c.Track([child]);
        Assert.Empty(Guest.WaitGone([child], TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public void Fault_ParserRegister_RefusesAFileNameWithAControlCharacter()
    {
        string dir = _c.File("ctl");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "parser.py"), "name = 'ctl'\nversion = '1.0'\n\ndef parse(path):\n    return None\n");
        File.WriteAllText(Path.Combine(dir, "help\ner.py"), "X = 1\n");
        var r = _c.Cli("parser", "register", dir);
        Assert.True(r.ExitCode == 3, r.ToString());
        Assert.Contains("'help\\x0aer.py' contains a control character", r.Stderr);
    }

    [Fact]
    public void Fault_JobAddFolder_WithANonUtf8Name_QueuesTheOthersAndNamesIt()
    {
        Register();
        _c.WriteInputs(2);
        // .NET cannot name such a file; python can.
        var made = Proc.Run(Cluster.Python, ["-c", $"import os; open(os.path.join(os.fsencode({Guest.PyLiteral(_c.Inputs)}), b'bad\\xff.csv'), 'wb').write(b'file,row,value\\n')"]);
        Assert.True(made.ExitCode == 0, made.ToString());
        var r = _c.Cli("job", "add", "--parser", "e2e_csv", _c.Inputs);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.StartsWith("queued 2 job(s)", r.Stdout);
        Assert.Contains($"skipped {_c.Inputs}/bad?.csv: its name is not valid UTF-8", r.Stderr);
    }

    [Fact]
    public void Fault_StartDrainStoppedBySigterm_ExitsInterrupted()
    {
        Register();
        _c.WriteInputs(1);
        _c.Ok("job", "add", "--parser", "e2e_csv", _c.Inputs);
        var start = _c.Spawn("start", ["start", "--drain", "--shutdown-grace", "1s"], env: new Dictionary<string, string?> { ["E2E_SLEEP"] = "60" });
        _c.WaitUntil("the job to run", Patience, () => _c.Jobs() is [{ State: "RUNNING" }] && start.Guests().Count > 0);
        start.Signal(Posix.SigTerm);
        Assert.Equal(130, start.WaitForExit(TimeSpan.FromSeconds(60)));
        Assert.Contains("130  interrupted", _c.Ok("--help").Stdout);
    }
}
