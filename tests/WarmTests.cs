// Warm guests (WarmGuests.cs, Zygote.cs, shim/zygote.py) against the real python3: a child forked
// per job behaves exactly as a cold guest, starts clean, dies alone when its job ends, and a dead
// zygote costs a retry on a cold guest, never a job.
using Xunit;

namespace Casparian.Tests;

public sealed class WarmTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly WarmGuests _warm = new(Defaults.Warm, _ => { });

    public void Dispose()
    {
        _warm.Dispose();
        _dir.Dispose();
    }

    private Task<(GuestResult Result, RecordingSink Sink)> Warm(string source, string? input = null, TimeSpan? timeout = null, CancellationToken abort = default, RecordingSink? sink = null) =>
        Guest.RunAsync(_dir, source, input, warm: _warm, timeout: timeout, abort: abort, sink: sink);

    private static List<int> Zygotes() =>
        [.. Posix.Descendants(Environment.ProcessId).Where(p => Posix.CommandLine(p).Contains("zygote.py", StringComparison.Ordinal) && Posix.Parent(p) == Environment.ProcessId)];

    private const string Counter = """
        import os
        COUNT = 0
        def parse(path):
            global COUNT
            COUNT += 1
            return {"count": [COUNT], "pid": [os.getpid()]}
        """;

    [Fact]
    public async Task Warm_EachJobStartsFromTheCleanImport_ACounterIsAlwaysOne()
    {
        var pids = new List<long>();
        for (int i = 0; i < 5; i++)
        {
            var (r, s) = await Warm(Counter);
            using (s)
            {
                Assert.True(r.Succeeded, Guest.Describe(r, s));
                Assert.True(r.Warm, "the job ran on a cold guest");
                var columns = s.Columns();
                Assert.Equal(1L, columns["count"].Single());
                pids.Add((long)columns["pid"].Single()!);
            }
        }
        // One zygote served all five, each job in a process of its own.
        Assert.Equal(5, pids.Distinct().Count());
        Assert.Single(Zygotes());
        Assert.Equal(1, _warm.Count);
    }

    [Fact]
    public async Task Warm_ChildEndsWithoutAtexit_ADirectoryMadeAtImportServesEveryFile()
    {
        // docs/parser-api.md: a warm child ends with os._exit. Were the zygote's atexit handlers run in
        // each child, the first would remove the directory and the second job would fail.
        const string source = """
            import atexit, os, shutil, tempfile
            SCRATCH = tempfile.mkdtemp(dir=os.path.dirname(__file__))
            atexit.register(shutil.rmtree, SCRATCH)
            def parse(path):
                atexit.register(print, "a child's own handler")
                name = os.path.join(SCRATCH, str(os.getpid()))
                open(name, "w").close()
                return {"exists": [os.path.isdir(SCRATCH)], "files": [len(os.listdir(SCRATCH))]}
            """;
        for (int i = 0; i < 3; i++)
        {
            var (r, s) = await Warm(source);
            using (s)
            {
                Assert.True(r.Succeeded, Guest.Describe(r, s));
                Assert.True(r.Warm, "the job ran on a cold guest");
                Assert.Equal(true, s.Columns()["exists"].Single());
                Assert.Equal((long)i + 1, s.Columns()["files"].Single()); // the disk is shared: one more file per job
            }
        }
    }

    [Fact]
    public async Task Warm_LoggingSetUpInTheZygote_AJobsBasicConfigDoesNotReachTheNext()
    {
        // The log handler is installed once in the zygote and each child points it at its own
        // bridge: one job's level and format must stay in that job's process.
        const string source = """
            import logging
            def parse(path):
                logging.debug("debug line")
                logging.getLogger("p").info("info line")
                logging.basicConfig(level=logging.DEBUG, format="changed|%(message)s")
                return None
            """;
        for (int i = 0; i < 3; i++)
        {
            var (r, s) = await Warm(source);
            using (s)
            {
                Assert.True(r.Succeeded && r.Warm, Guest.Describe(r, s));
                Assert.Equal(["p: info line"], s.Logs.Select(l => l.Text));
            }
        }
        Assert.Single(Zygotes());
    }

    [Fact]
    public async Task Warm_ModuleLevelCodeRunsOnceInTheZygote()
    {
        string marker = _dir.File("imports.txt");
        string source = $$"""
            with open({{Guest.PyLiteral(marker)}}, "a") as f:
                f.write("imported\n")
            def parse(path):
                return {"x": [1]}
            """;
        for (int i = 0; i < 3; i++)
        {
            var (r, s) = await Warm(source);
            using (s) Assert.True(r.Succeeded && r.Warm, Guest.Describe(r, s));
        }
        Assert.Equal(["imported"], File.ReadAllLines(marker));
    }

    [Theory]
    [InlineData("WARM = False\n")]
    [InlineData("import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")]
    public async Task Warm_ParserThatCannotForkRunsCold(string prelude)
    {
        var logged = new List<string>();
        using var warm = new WarmGuests(Defaults.Warm, line => { lock (logged) logged.Add(line); });
        for (int i = 0; i < 2; i++)
        {
            var (r, s) = await Guest.RunAsync(_dir, prelude + Counter, warm: warm);
            using (s)
            {
                Assert.True(r.Succeeded, Guest.Describe(r, s));
                Assert.False(r.Warm);
                Assert.Equal(1L, s.Columns()["count"].Single());
            }
        }
        // Said once, with the reason; no zygote is kept.
        Assert.Single(logged, l => l.Contains("runs on cold guests", StringComparison.Ordinal));
        Assert.Equal(0, warm.Count);
    }

    [Fact]
    public async Task Warm_ParserThatFailsToImport_FailsExactlyAsACold()
    {
        const string broken = "import no_such_module_here\ndef parse(path):\n    return None\n";
        var (cold, cs) = await Guest.RunAsync(_dir, broken);
        var (warm, ws) = await Warm(broken);
        using (cs)
        using (ws)
        {
            Assert.Equal(GuestOutcome.Failed, warm.Outcome);
            Assert.Equal(cold.ErrorMessage, warm.ErrorMessage);
            Assert.Equal(cold.ExitCode, warm.ExitCode);
        }
    }

    /// <summary>Parsers whose every observable (outcome, exit code, error line, log lines, rows) must match cold and warm.</summary>
    public static TheoryData<string> Behaviours => new()
    {
        // print, logging, raw writes to the descriptors, a subprocess writing to the inherited stdout.
        """
        import logging, os, subprocess, sys
        def parse(path):
            print("hello")
            logging.getLogger("p").warning("careful")
            sys.stderr.write("to stderr\n")
            os.write(1, b"raw fd 1\n")
            subprocess.run(["echo", "from a child process"], check=True)
            return {"a": [1, 2, 3], "b": ["x", "y", None]}
        """,
        "def parse(path):\n    raise ValueError('bad row 7')\n",
        "from casparian import TransientError\ndef parse(path):\n    raise TransientError('try later')\n",
        "import os\ndef parse(path):\n    print('before')\n    os._exit(3)\n",
        "import sys\ndef parse(path):\n    sys.exit(2)\n",
        "def parse(path):\n    for i in range(3):\n        yield {'i': list(range(i * 1000, (i + 1) * 1000))}\n",
        "def parse(path):\n    return None\n",
    };

    [Theory]
    [MemberData(nameof(Behaviours))]
    public async Task Warm_ChildIsIndistinguishableFromAColdGuest(string source)
    {
        var (cold, cs) = await Guest.RunAsync(_dir, source);
        var (warm, ws) = await Warm(source);
        using (cs)
        using (ws)
        {
            Assert.True(warm.Warm, Guest.Describe(warm, ws));
            Assert.Equal(cold.Outcome, warm.Outcome);
            Assert.Equal(cold.ExitCode, warm.ExitCode);
            Assert.Equal(cold.ErrorMessage, warm.ErrorMessage);
            Assert.Equal(cold.Traceback?.Split('\n')[^1], warm.Traceback?.Split('\n')[^1]);
            Assert.Equal(cold.Rows, warm.Rows);
            // Lines from different sources (the socket, a pipe) may interleave differently; their content may not.
            Assert.Equal(cs.Logs.Order().ToList(), ws.Logs.Order().ToList());
        }
    }

    private const string Sleeper = """
        import subprocess, sys
        def parse(path):
            subprocess.Popen(["sleep", "120"])
            print("started", flush=True)
            import time
            time.sleep(120)
        """;

    [Fact]
    public async Task Warm_AbortKillsTheChildAndWhatItStarted_TheZygoteLives()
    {
        using var abort = new CancellationTokenSource();
        var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<(GuestResult, RecordingSink)> job = Warm(Sleeper, abort: abort.Token, sink: Signalling("started", seen));
        await seen.Task.WaitAsync(TimeSpan.FromMinutes(1));
        int zygote = Zygotes().Single();
        // The job's child and its sleep; the zygote's idle spare child is not the job's and stays.
        int sleep = Posix.Descendants(zygote).Single(p => Posix.CommandLine(p) == "sleep 120");
        int child = Posix.Parent(sleep);
        Assert.Equal(zygote, Posix.Parent(child));
        List<int> before = [child, .. Posix.Descendants(child)];
        abort.Cancel();
        var (r, s) = await job;
        using (s)
        {
            Assert.Equal(GuestOutcome.Aborted, r.Outcome);
            Assert.True(Guest.WaitGone(before, TimeSpan.FromSeconds(10)).Length == 0, "the child or its sleep outlived the abort");
            Assert.True(Guest.Alive(zygote), "the zygote died with the job");
        }
        var (next, ns) = await Warm(Counter);
        using (ns) Assert.True(next.Succeeded && next.Warm, Guest.Describe(next, ns));
        Assert.Contains(zygote, Zygotes());
    }

    [Fact]
    public async Task Warm_TimeoutKillsTheChild_TheZygoteLives()
    {
        // One parser (so one zygote) for a quick job and one that sleeps until it times out.
        const string source = "import time\ndef parse(path):\n    if open(path).read() == 'sleep':\n        time.sleep(120)\n    return {'a': [1]}\n";
        string sleep = _dir.File("sleep.txt");
        File.WriteAllText(sleep, "sleep");
        var (first, fs) = await Warm(source);
        using (fs) Assert.True(first.Succeeded && first.Warm, Guest.Describe(first, fs));
        int zygote = Zygotes().Single();
        // The idle spare is handed the next job: the one that times out.
        int spare = Spare(zygote);
        var (r, s) = await Warm(source, sleep, timeout: TimeSpan.FromSeconds(1));
        using (s) Assert.Equal(GuestOutcome.TimedOut, r.Outcome);
        Assert.Empty(Guest.WaitGone([spare], TimeSpan.FromSeconds(10)));
        Assert.NotEqual(spare, Spare(zygote));
        var (next, ns) = await Warm(source);
        using (ns) Assert.True(next.Succeeded && next.Warm, Guest.Describe(next, ns));
        Assert.Equal(zygote, Zygotes().Single());
    }

    [Fact]
    public async Task Warm_ZygoteKilledMidJob_TheJobReportsItLostAndANewZygoteServesTheNext()
    {
        var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<(GuestResult, RecordingSink)> job = Warm(Sleeper, sink: Signalling("started", seen));
        await seen.Task.WaitAsync(TimeSpan.FromMinutes(1));
        int zygote = Zygotes().Single();
        var tree = Posix.Descendants(zygote);
        Posix.Kill(zygote, Posix.SigKill);
        var (r, s) = await job.WaitAsync(TimeSpan.FromMinutes(1));
        using (s)
        {
            Assert.True(r.WarmLost, Guest.Describe(r, s));
            Assert.Equal(GuestOutcome.Transient, r.Outcome);
        }
        // The child dies with its zygote, and what it started with it.
        Assert.True(Guest.WaitGone(tree, TimeSpan.FromSeconds(10)).Length == 0, "the orphaned child outlived its zygote");
        var (next, ns) = await Warm(Counter);
        using (ns) Assert.True(next.Succeeded && next.Warm, Guest.Describe(next, ns));
        Assert.NotEqual(zygote, Zygotes().Single());
    }

    /// <summary>The zygote's one idle child forked ahead of the next job, once it is there.</summary>
    private static int Spare(int zygote)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        List<int> children;
        while ((children = Posix.Descendants(zygote)).Count != 1 && DateTime.UtcNow < deadline) Thread.Sleep(20);
        return Assert.Single(children);
    }

    [Fact]
    public async Task Warm_SpareKilledWhileIdle_TheNextJobsStillRunWarmInFreshChildren()
    {
        var (first, fs) = await Warm(Counter);
        using (fs) Assert.True(first.Succeeded && first.Warm, Guest.Describe(first, fs));
        int zygote = Zygotes().Single();
        var seen = new List<int>();
        // Once: the zygote forks a replacement. Twice within a second: it leaves none and the next
        // job's child is forked on demand. Either way the job runs warm in a child no job used.
        for (int round = 0; round < 2; round++)
        {
            int spare = Spare(zygote);
            seen.Add(spare);
            Posix.Kill(spare, Posix.SigKill);
            Assert.Empty(Guest.WaitGone([spare], TimeSpan.FromSeconds(10)));
            if (round == 0)
            {
                var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
                while (Posix.Descendants(zygote) is not [int replacement] || replacement == spare)
                {
                    Assert.True(DateTime.UtcNow < deadline, "the spare killed while idle was not replaced");
                    Thread.Sleep(20);
                }
            }
        }
        for (int i = 0; i < 2; i++)
        {
            var (r, s) = await Warm(Counter);
            using (s)
            {
                Assert.True(r.Succeeded && r.Warm, Guest.Describe(r, s));
                var columns = s.Columns();
                Assert.Equal(1L, columns["count"].Single());
                int pid = (int)(long)columns["pid"].Single()!;
                Assert.DoesNotContain(pid, seen);
                seen.Add(pid);
            }
        }
        Assert.Equal(zygote, Zygotes().Single());
    }

    [Fact]
    public void Warm_Disposed_LeavesNoIdleSpareBehind()
    {
        var warm = new WarmGuests(Defaults.Warm, _ => { });
        var (r, s) = Guest.RunAsync(_dir, Counter, warm: warm).GetAwaiter().GetResult();
        int job;
        using (s)
        {
            Assert.True(r.Warm, Guest.Describe(r, s));
            job = (int)(long)s.Columns()["pid"].Single()!;
        }
        int zygote = Zygotes().Single();
        int spare = Spare(zygote);
        Assert.NotEqual(job, spare);
        warm.Dispose();
        Assert.Empty(Guest.WaitGone([zygote, spare], TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void Warm_Disposed_LeavesNoZygoteBehind()
    {
        var warm = new WarmGuests(Defaults.Warm, _ => { });
        var (r, s) = Guest.RunAsync(_dir, Counter, warm: warm).GetAwaiter().GetResult();
        using (s) Assert.True(r.Warm, Guest.Describe(r, s));
        int zygote = Zygotes().Single();
        warm.Dispose();
        Assert.Empty(Guest.WaitGone([zygote], TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task Warm_CountIsBounded_LeastRecentlyUsedGoes()
    {
        using var warm = new WarmGuests(Defaults.Warm with { MaxZygotes = 2 }, _ => { });
        for (int i = 0; i < 3; i++)
        {
            string parser = _dir.File($"p{i}.py");
            File.WriteAllText(parser, Counter);
            var (r, s) = await Guest.RunAsync(_dir, Counter, parser: GuestParser.Path(parser), warm: warm);
            using (s) Assert.True(r.Warm, Guest.Describe(r, s));
        }
        Eventually.True(() => warm.Count == 2, TimeSpan.FromSeconds(10), "two zygotes left", () => $"{warm.Count}");
    }

    [Fact]
    public async Task Warm_EnvironmentOrBundleEvicted_ItsZygoteIsStopped()
    {
        var (r, s) = await Warm(Counter);
        using (s) Assert.True(r.Warm, Guest.Describe(r, s));
        int zygote = Zygotes().Single();
        _warm.EvictUnder(Path.Combine(_dir.Path, "elsewhere"));
        Assert.Equal(1, _warm.Count);
        // The parser lives under the test directory, as a bundle lives under HOME/parsers/{hash}.
        _warm.EvictUnder(_dir.Path);
        Assert.Equal(0, _warm.Count);
        Assert.Empty(Guest.WaitGone([zygote], TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task Warm_IdleZygoteIsStopped()
    {
        using var warm = new WarmGuests(Defaults.Warm with { IdleTimeout = TimeSpan.FromSeconds(1) }, _ => { });
        var (r, s) = await Guest.RunAsync(_dir, Counter, warm: warm);
        using (s) Assert.True(r.Warm, Guest.Describe(r, s));
        Eventually.True(() => warm.Count == 0, TimeSpan.FromSeconds(30), "the idle zygote to stop");
    }

    [Fact]
    public void Run_Folder_ZygoteKilledByTheParser_FileRetriedColdAndWrittenOnce()
    {
        // The first time it runs, the parser kills its own zygote (its parent when warm) mid-job.
        string marker = _dir.File("killed-once");
        File.WriteAllText(_dir.File("p.py"), $$"""
            import os, signal
            def parse(path):
                parent = open(f"/proc/{os.getppid()}/cmdline", "rb").read()
                if b"zygote.py" in parent and not os.path.exists({{Guest.PyLiteral(marker)}}):
                    open({{Guest.PyLiteral(marker)}}, "w").close()
                    os.kill(os.getppid(), signal.SIGKILL)
                    import time
                    time.sleep(60)
                return {"file": [os.path.basename(path)]}
            """);
        Directory.CreateDirectory(_dir.File("in"));
        foreach (string n in new[] { "a", "b", "c" }) File.WriteAllText(_dir.File($"in/{n}.txt"), n);
        var r = Proc.Run(Repo.Binary, ["run", "p.py", "in", "--slots", "1"], TimeSpan.FromMinutes(3), workingDirectory: _dir.Path,
            environment: new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _dir.File("home"), ["VIRTUAL_ENV"] = null });
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(File.Exists(marker), "the parser never ran warm");
        Assert.Contains("running this file again on a cold guest", r.Stderr + r.Stdout);
        foreach (string n in new[] { "a", "b", "c" })
            Assert.Equal([$"{n}.txt"], ParquetTable.Read(_dir.File($"output/output/{n}.parquet")).Columns["file"]);
    }

    /// <summary>A sink that completes <paramref name="seen"/> when a log line contains <paramref name="text"/>.</summary>
    private static RecordingSink Signalling(string text, TaskCompletionSource seen) =>
        new() { OnLog = (_, line) => { if (line.Contains(text, StringComparison.Ordinal)) seen.TrySetResult(); } };
}
