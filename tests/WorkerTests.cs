// The worker against a scripted sentinel: a real ROUTER on loopback plays the sentinel's side of
// protocol v4, and every job runs the real shim in the real python3.
using System.Diagnostics;
using System.Text;
using NetMQ;
using NetMQ.Sockets;
using Xunit;

namespace Casparian.Tests;

/// <summary>The sentinel's side of the wire, scripted by a test. Heartbeats are kept aside unless asked for.</summary>
internal sealed class ScriptedSentinel : IDisposable
{
    private readonly RouterSocket _router = new();
    private readonly List<WireMessage> _heartbeats = [];

    public ScriptedSentinel(int port = 0)
    {
        TestKeys.Server(_router);
        Port = port == 0 ? _router.BindRandomPort("tcp://127.0.0.1") : Bind(port);
        Address = $"tcp://127.0.0.1:{Port}";
    }

    private int Bind(int port)
    {
        // A ROUTER disposed a moment ago releases its port asynchronously: retry briefly, as a
        // restarted sentinel would.
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                _router.Bind($"tcp://127.0.0.1:{port}");
                return port;
            }
            catch (NetMQ.AddressAlreadyInUseException) when (attempt < 100)
            {
                Thread.Sleep(50);
            }
        }
    }

    public int Port { get; }
    public string Address { get; }
    public byte[]? Worker { get; private set; }

    /// <summary>The next message that is not a timer heartbeat (or any message when <paramref name="op"/> is Heartbeat).</summary>
    public WireMessage Receive(OpCode op, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        if (op == OpCode.Heartbeat && _heartbeats.Count > 0)
        {
            var first = _heartbeats[0];
            _heartbeats.RemoveAt(0);
            return first;
        }
        while (true)
        {
            var left = deadline - DateTime.UtcNow;
            NetMQMessage? m = null;
            if (left <= TimeSpan.Zero || !_router.TryReceiveMultipartMessage(left, ref m))
                throw new TimeoutException($"no {op.ToWireName()} from the worker within {timeout ?? TimeSpan.FromSeconds(60)}");
            var w = Wire.FromRouterFrames(m!);
            Worker = w.Identity;
            if (w.Op == op) return w;
            if (w.Op == OpCode.Heartbeat) { _heartbeats.Add(w); continue; }
            throw new InvalidOperationException($"expected {op.ToWireName()}, got {w.Op.ToWireName()} for job {w.JobId}: {Encoding.UTF8.GetString(w.Payload)}");
        }
    }

    public JobReceipt Conclude(ulong jobId, TimeSpan? timeout = null)
    {
        var m = Receive(OpCode.Conclude, timeout);
        Assert.Equal(jobId, m.JobId);
        return m.Decode(ProtocolJson.Default.JobReceipt);
    }

    public void Send<T>(OpCode op, ulong jobId, T payload, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info) =>
        Wire.Send(_router, Worker!, op, jobId, payload, info);

    public void SendRaw(OpCode op, ulong jobId, byte[] payload) => Wire.Send(_router, Worker!, op, jobId, payload);

    public void SendFrames(params byte[][] frames)
    {
        var m = new NetMQMessage();
        m.Append(Worker!);
        foreach (var f in frames) m.Append(f);
        _router.SendMultipartMessage(m);
    }

    public void Dispatch(ulong jobId, Dispatch d) => Send(OpCode.Dispatch, jobId, d, ProtocolJson.Default.Dispatch);

    public void Dispose() => _router.Dispose();
}

/// <summary>A worker running in this process against <paramref name="connect"/>, with its state in a temp dir.</summary>
internal sealed class WorkerRun : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;
    private readonly EnvManager _envs;

    private readonly StringWriter _log = new();

    public TempDir Dir { get; } = new();
    public Worker Worker { get; }

    /// <summary>What the worker logged so far.</summary>
    public string Log
    {
        get { lock (_log) return _log.ToString(); }
    }
    public string Output => Dir.File("output");
    public string Logs => Dir.File("logs");
    public string Wheelhouse => Dir.File("wheels");

    public WorkerRun(string connect, int slots = 2, TimeSpan? heartbeat = null, TimeSpan? grace = null, long logLimit = 1 << 20,
        Func<WorkerOptions, WorkerOptions>? configure = null)
    {
        Directory.CreateDirectory(Wheelhouse);
        _envs = new EnvManager(Defaults.Venv(Dir.File("venvs")) with { Wheelhouse = Wheelhouse });
        // Output, parsers and logs under Dir: Output, Dir/parsers, Logs.
        var executor = new JobExecutor(Defaults.Executor(Dir.Path) with { LogLimit = logLimit }, _envs);
        var host = new WorkerHost { Envs = _envs, Executor = executor, Warm = new WarmGuests(Defaults.Warm with { MaxZygotes = 0 }, _ => { }) };
        var options = Defaults.Worker(connect, "test-worker", new RoleLog(TextWriter.Synchronized(_log), "worker", quiet: false, TimeProvider.System)) with
        {
            Slots = slots,
            HeartbeatInterval = heartbeat ?? TimeSpan.FromHours(1),
            ShutdownGrace = grace ?? TimeSpan.FromSeconds(30),
        };
        Worker = new Worker(configure?.Invoke(options) ?? options, executor.RunAsync, host.PrepareEnv);
        _thread = new Thread(() => Worker.Run(_stop.Token)) { IsBackground = true, Name = "worker-under-test" };
        _thread.Start();
    }

    /// <summary>SIGTERM's path: stop taking jobs, let running ones finish or abort them, then return.</summary>
    public bool Stop(TimeSpan wait)
    {
        _stop.Cancel();
        return _thread.Join(wait);
    }

    public void Dispose()
    {
        Stop(TimeSpan.FromSeconds(60));
        Worker.Dispose();
        _envs.Dispose();
        Dir.Dispose();
        _stop.Dispose();
    }
}

public sealed class WorkerTests
{
    private static Dispatch Job(string source, string input, long fileVersionId = 1, int? timeoutSeconds = null) => new()
    {
        PluginName = "t",
        FilePath = input,
        FileVersionId = fileVersionId,
        EnvHash = "system",
        SourceCode = source,
        TimeoutSeconds = timeoutSeconds,
    };

    private static string Input(WorkerRun w, string name = "in.txt", string text = "x\n")
    {
        string path = w.Dir.File(name);
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>Parser source that announces itself in a file and then waits for <paramref name="release"/> to appear.</summary>
    private static string Waiting(string started, string release) => $$"""
        import os, time
        def parse(path):
            open({{Guest.PyLiteral(started)}}, "a").write(f"{os.getpid()}\n")
            while not os.path.exists({{Guest.PyLiteral(release)}}):
                time.sleep(0.02)
            return {"path": [path]}
        """;

    private static void WaitFor(Func<bool> condition, string what, int seconds = 60) =>
        Eventually.True(condition, TimeSpan.FromSeconds(seconds), what);

    [Fact]
    public void Worker_Connect_IdentifiesWithIdSlotsAndCapabilities()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address, slots: 3);
        var id = s.Receive(OpCode.Identify).Decode(ProtocolJson.Default.Identify);
        Assert.Equal("test-worker", id.WorkerId);
        Assert.Equal(3, id.Slots);
        Assert.Equal(["*"], id.Capabilities);
    }

    [Fact]
    public void Worker_Dispatch_WritesParquetAndConcludesSuccess()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        string input = Input(w);
        s.Dispatch(41, Job("""
            def parse(path):
                print("parsing", path)
                return {"n": [1, 2, None], "x": [0.5, float("inf"), 2.0], "s": ["a", "é", None], "b": [True, False, None]}
            """, input, fileVersionId: 9));
        var r = s.Conclude(41);

        Assert.True(r.Status == ReceiptStatus.Success, r.ErrorMessage);
        Assert.Equal(3, r.Metrics["rows"]);
        Assert.Equal(1, r.Metrics["tables"]);
        var artifact = Assert.Single(r.Artifacts);
        Assert.Equal("output", artifact["topic"]);
        string path = new Uri(artifact["uri"]).LocalPath;
        Assert.StartsWith(w.Output, path);

        var t = ParquetTable.Read(path);
        Assert.Equal([1L, 2L, null], t.Columns["n"]);
        Assert.Equal([0.5, double.PositiveInfinity, 2.0], t.Columns["x"]);
        Assert.Equal(["a", "é", null], t.Columns["s"]);
        Assert.Equal([true, false, null], t.Columns["b"]);
        Assert.Equal([41L, 41L, 41L], t.Columns["_job_id"]);
        Assert.Equal([input, input, input], t.Columns["_source"]);
        Assert.Equal(["t", "t", "t"], t.Columns["_parser"]);
        Assert.Equal(SinkTarget.SourceFileName("t", input), Path.GetFileName(path));
        Assert.Contains($"parsing {input}", File.ReadAllText(Path.Combine(w.Logs, "job-41.log")));
    }

    [Fact]
    public void Worker_Dispatch_ParserRaises_ConcludesFailedWithExceptionText()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        s.Dispatch(5, Job("def parse(path):\n    raise ValueError('bad row 7')\n", Input(w)));
        var r = s.Conclude(5);
        Assert.Equal(ReceiptStatus.Failed, r.Status);
        Assert.Contains("ValueError: bad row 7", r.ErrorMessage);
        Assert.Contains("Traceback", r.ErrorMessage);
        Assert.False(r.Metrics.ContainsKey(JobExecutor.TransientMetric));
        Assert.Empty(Directory.Exists(w.Output) ? Directory.GetFiles(w.Output, "*", SearchOption.AllDirectories) : []);
    }

    [Fact]
    public void Worker_Dispatch_TransientError_ConcludesFailedMarkedTransient()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        s.Dispatch(6, Job("from casparian import TransientError\ndef parse(path):\n    raise TransientError('database busy')\n", Input(w)));
        var r = s.Conclude(6);
        Assert.Equal(ReceiptStatus.Failed, r.Status);
        Assert.Contains("database busy", r.ErrorMessage);
        Assert.Equal(1, r.Metrics[JobExecutor.TransientMetric]);
        Assert.Equal(2, r.Metrics["exit_code"]);
    }

    [Fact]
    public void Worker_Dispatch_BeyondSlots_IsRejectedAtOnce()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address, slots: 1);
        s.Receive(OpCode.Identify);
        string started = w.Dir.File("started"), release = w.Dir.File("release");
        s.Dispatch(1, Job(Waiting(started, release), Input(w)));
        WaitFor(() => File.Exists(started), "job 1 to start");
        s.Dispatch(2, Job(Waiting(started, release), Input(w)));

        var rejected = s.Conclude(2);
        Assert.Equal(ReceiptStatus.Rejected, rejected.Status);
        Assert.Contains("1 slot(s) busy", rejected.ErrorMessage);

        File.WriteAllText(release, "");
        Assert.Equal(ReceiptStatus.Success, s.Conclude(1).Status);
    }

    [Fact]
    public void Worker_HeartbeatProbe_AnsweredWhileEverySlotIsBusy()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address, slots: 2);
        s.Receive(OpCode.Identify);
        string started = w.Dir.File("started"), release = w.Dir.File("release");
        s.Dispatch(11, Job(Waiting(started, release), Input(w)));
        s.Dispatch(12, Job(Waiting(started, release), Input(w)));
        WaitFor(() => File.Exists(started) && File.ReadAllLines(started).Length == 2, "both jobs to start");

        var clock = Stopwatch.StartNew();
        s.SendRaw(OpCode.Heartbeat, 0, []);
        // The timer interval is an hour, so this heartbeat is the probe's answer. The bound is
        // generous for a loaded machine; the loop never blocks, so it normally takes a millisecond.
        var hb = s.Receive(OpCode.Heartbeat, TimeSpan.FromSeconds(5)).Decode(ProtocolJson.Default.Heartbeat);
        clock.Stop();
        Assert.Equal(WorkerStatus.Busy, hb.Status);
        Assert.Equal(2, hb.ActiveJobCount);
        Assert.Equal([11L, 12L], hb.ActiveJobIds!.Order());

        File.WriteAllText(release, "");
        var done = new[] { s.Receive(OpCode.Conclude).JobId, s.Receive(OpCode.Conclude).JobId };
        Assert.Equal([11ul, 12ul], done.Order());
    }

    [Fact]
    public void Worker_Abort_KillsTheProcessTreeAndConcludesAborted()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        string pids = w.Dir.File("pids");
        s.Dispatch(21, Job($$"""
            import os, subprocess, sys, time
            def parse(path):
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
                with open({{Guest.PyLiteral(pids)}}, "w") as f:
                    f.write(f"{os.getpid()} {child.pid}\n")
                time.sleep(600)
            """, Input(w)));
        WaitFor(() => File.Exists(pids) && File.ReadAllText(pids).EndsWith('\n'), "the parser and its child to start");
        int[] tree = Guest.ReadPids(pids);

        s.SendRaw(OpCode.Abort, 21, []);
        var r = s.Conclude(21, TimeSpan.FromSeconds(10));
        Assert.Equal(ReceiptStatus.Aborted, r.Status);
        Assert.Empty(Guest.WaitGone(tree, TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public void Worker_FourConcurrentJobs_RunTogetherAndStayIsolated()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address, slots: 4);
        s.Receive(OpCode.Identify);
        string gate = w.Dir.File("gate");
        Directory.CreateDirectory(gate);
        // Each job waits until all four are running, so they can only finish if they truly run at once;
        // each keeps a module-level counter that would leak between jobs sharing an interpreter.
        string source = $$"""
            import os, time
            COUNT = 0
            def parse(path):
                global COUNT
                COUNT += 1
                open(os.path.join({{Guest.PyLiteral(gate)}}, os.path.basename(path)), "w").close()
                deadline = time.time() + 60
                while len(os.listdir({{Guest.PyLiteral(gate)}})) < 4 and time.time() < deadline:
                    time.sleep(0.02)
                return {"file": [os.path.basename(path)], "count": [COUNT], "pid": [os.getpid()]}
            """;
        for (ulong j = 1; j <= 4; j++) s.Dispatch(j, Job(source, Input(w, $"in{j}.txt")));

        var pids = new HashSet<long>();
        var receipts = Enumerable.Range(0, 4).Select(_ =>
        {
            var m = s.Receive(OpCode.Conclude);
            return (m.JobId, Receipt: m.Decode(ProtocolJson.Default.JobReceipt));
        }).OrderBy(x => x.JobId).ToList();
        foreach (var (jobId, r) in receipts)
        {
            Assert.True(r.Status == ReceiptStatus.Success, r.ErrorMessage);
            var t = ParquetTable.Read(new Uri(r.Artifacts[0]["uri"]).LocalPath);
            Assert.Equal([$"in{jobId}.txt"], t.Columns["file"]);
            Assert.Equal([1L], t.Columns["count"]);
            pids.Add((long)t.Columns["pid"][0]!);
        }
        Assert.Equal(4, pids.Count);
    }

    [Fact]
    public void Worker_PrepareEnv_BuildsOfflineThenReportsCachedAndRunsInIt()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        Wheel.Build(w.Wheelhouse, "tinypkg", "1.0", "ANSWER = 42\n");
        string lockfile = "tinypkg==1.0\n";
        string hash = Hashes.Sha256Hex(lockfile);

        s.Send(OpCode.PrepareEnv, 0, new PrepareEnv { EnvHash = hash, LockfileContent = lockfile }, ProtocolJson.Default.PrepareEnv);
        var first = s.Receive(OpCode.EnvReady, TimeSpan.FromMinutes(3)).Decode(ProtocolJson.Default.EnvReady);
        Assert.Equal(hash, first.EnvHash);
        Assert.False(first.Cached);
        Assert.True(File.Exists(first.InterpreterPath), first.InterpreterPath);

        s.Send(OpCode.PrepareEnv, 0, new PrepareEnv { EnvHash = hash, LockfileContent = lockfile }, ProtocolJson.Default.PrepareEnv);
        Assert.True(s.Receive(OpCode.EnvReady).Decode(ProtocolJson.Default.EnvReady).Cached);

        s.Dispatch(31, Job("import tinypkg\ndef parse(path):\n    return {'answer': [tinypkg.ANSWER]}\n", Input(w)) with { EnvHash = hash, LockfileContent = lockfile });
        var r = s.Conclude(31);
        Assert.True(r.Status == ReceiptStatus.Success, r.ErrorMessage);
        Assert.Equal([42L], ParquetTable.Read(new Uri(r.Artifacts[0]["uri"]).LocalPath).Columns["answer"]);
    }

    [Fact]
    public void Worker_PrepareEnv_UnknownPackage_AnswersErr()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        string lockfile = "no-such-package==9.9\n";
        s.Send(OpCode.PrepareEnv, 0, new PrepareEnv { EnvHash = Hashes.Sha256Hex(lockfile), LockfileContent = lockfile }, ProtocolJson.Default.PrepareEnv);
        var err = s.Receive(OpCode.Err, TimeSpan.FromMinutes(3)).Decode(ProtocolJson.Default.ErrorPayload);
        Assert.Contains("no-such-package", err.Message);
    }

    [Fact]
    public void Worker_BundleDispatch_RunsAParserOfTwoModules()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        string dir = w.Dir.File("bundle");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "parser.py"), "from helper import double\nname = 'doubler'\nversion = '1.0.0'\ndef parse(path):\n    return {'v': [double(21)]}\n");
        File.WriteAllText(Path.Combine(dir, "helper.py"), "def double(x):\n    return 2 * x\n");
        var bundle = ParserBundle.Load(dir);

        for (ulong j = 1; j <= 2; j++)
        {
            s.Dispatch(j, Job(bundle.EntrySource, Input(w)) with { ParserArchive = Convert.ToBase64String(bundle.Archive), PluginName = bundle.Name });
            var r = s.Conclude(j);
            Assert.True(r.Status == ReceiptStatus.Success, r.ErrorMessage);
            Assert.Equal([42L], ParquetTable.Read(new Uri(r.Artifacts[0]["uri"]).LocalPath).Columns["v"]);
        }
        // Both jobs used one extraction, kept by source hash.
        Assert.Equal([bundle.SourceHash], Directory.GetDirectories(w.Dir.File("parsers")).Select(Path.GetFileName));
    }

    [Theory]
    // A path out of the output folder: "../x" + "rows" would be a folder beside it.
    [InlineData("../x", "../x")]
    // Upper case: not the start of a topic name.
    [InlineData("Bad", "Bad")]
    // A folder separator.
    [InlineData("a/b", "a/b")]
    // Starts with '_', not a letter.
    [InlineData("_x", "_x")]
    // A line break: the message shows it escaped and stays one line.
    [InlineData("x\n../y", "x\\n../y")]
    // 65 characters, one past the limit.
    [InlineData("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")]
    public void Worker_Dispatch_BadTopicPrefix_FailsPermanentlyBeforeTheParserRuns_AndWritesNothing(string prefix, string shown)
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        string ran = w.Dir.File("ran");
        string parser = $$"""
            from casparian import Output
            def parse(path):
                open({{Guest.PyLiteral(ran)}}, "a").write("ran\n")
                yield Output("rows", [{"n": 1}, {"n": 2}])
            """;
        s.Dispatch(7, Job(parser, Input(w)) with { TopicPrefix = prefix });
        var r = s.Conclude(7);
        Assert.Equal(ReceiptStatus.Failed, r.Status);
        Assert.Equal($"DISPATCH for parser t carries topic_prefix '{shown}', which is not the start of a topic name ([a-z][a-z0-9_]*, at most 64 characters)", r.ErrorMessage);
        Assert.False(r.Metrics.ContainsKey(JobExecutor.TransientMetric));
        Assert.False(File.Exists(ran));
        Assert.Empty(Directory.EnumerateFileSystemEntries(w.Dir.Path, "*rows*", SearchOption.AllDirectories));
        Assert.Empty(Directory.Exists(w.Output) ? Directory.EnumerateFiles(w.Output, "*", SearchOption.AllDirectories) : []);

        // The same job under a valid prefix: the parser runs, and its topic lands prefixed inside the output folder.
        s.Dispatch(8, Job(parser, Input(w)) with { TopicPrefix = "ok_" });
        var ok = s.Conclude(8);
        Assert.True(ok.Status == ReceiptStatus.Success, ok.ErrorMessage);
        var artifact = Assert.Single(ok.Artifacts);
        Assert.Equal("ok_rows", artifact["topic"]);
        string path = new Uri(artifact["uri"]).LocalPath;
        Assert.Equal(Path.Combine(w.Output, "ok_rows"), Path.GetDirectoryName(path));
        Assert.Equal([1L, 2L], ParquetTable.Read(path).Columns["n"]);
        Assert.Equal(["ran"], File.ReadAllLines(ran));
    }

    [Fact]
    public void Worker_UnreadableDispatch_ConcludesFailedAtOnce()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        s.SendRaw(OpCode.Dispatch, 77, "{\"plugin_name\": 3}"u8.ToArray());
        var r = s.Conclude(77);
        Assert.Equal(ReceiptStatus.Failed, r.Status);
        Assert.StartsWith("bad DISPATCH payload:", r.ErrorMessage);
    }

    [Fact]
    public void Worker_GarbageFromTheSentinel_IsCountedAndServingContinues()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        var random = new Random(7);
        s.SendFrames(RandomBytes(random, 40));                                  // one frame of noise
        s.SendFrames(new Header(OpCode.Heartbeat, 0, 0).ToArray(), [], []);    // three frames
        s.SendFrames(new Header(OpCode.Abort, 1, 9).ToArray(), [1, 2]);        // length mismatch
        s.SendFrames([4, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], []);   // opcode 99
        s.SendRaw(OpCode.Identify, 0, []);                                     // an opcode workers never get

        s.SendRaw(OpCode.Heartbeat, 0, []);
        s.Receive(OpCode.Heartbeat, TimeSpan.FromSeconds(10));
        WaitFor(() => w.Worker.MalformedMessages == 5, "five malformed messages to be counted", 10);
    }

    private static byte[] RandomBytes(Random r, int n)
    {
        var b = new byte[n];
        r.NextBytes(b);
        return b;
    }

    [Fact]
    public void Worker_SentinelRestart_WorkerIdentifiesAgain()
    {
        int port;
        using (var first = new ScriptedSentinel())
        {
            port = first.Port;
            using var w = new WorkerRun(first.Address);
            first.Receive(OpCode.Identify);
            first.Dispose();
            using var second = new ScriptedSentinel(port);
            var again = second.Receive(OpCode.Identify, TimeSpan.FromSeconds(30)).Decode(ProtocolJson.Default.Identify);
            Assert.Equal("test-worker", again.WorkerId);
        }
    }

    [Fact]
    public void Worker_Stop_LetsRunningJobsFinishThenConcludes()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address);
        s.Receive(OpCode.Identify);
        string started = w.Dir.File("started"), release = w.Dir.File("release");
        s.Dispatch(1, Job(Waiting(started, release), Input(w)));
        WaitFor(() => File.Exists(started), "the job to start");

        var stopping = Task.Run(() => w.Stop(TimeSpan.FromSeconds(60)));
        // While draining, new work is turned away.
        Thread.Sleep(200);
        s.Dispatch(2, Job("def parse(path):\n    return None\n", Input(w)));
        Assert.Equal(ReceiptStatus.Rejected, s.Conclude(2).Status);
        File.WriteAllText(release, "");
        Assert.Equal(ReceiptStatus.Success, s.Conclude(1).Status);
        Assert.True(stopping.Result, "Run returned after the last job concluded");
    }

    [Fact]
    public void Worker_Stop_AbortsJobsThatOutliveTheGracePeriod()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address, grace: TimeSpan.FromMilliseconds(300));
        s.Receive(OpCode.Identify);
        string started = w.Dir.File("started");
        s.Dispatch(1, Job(Waiting(started, w.Dir.File("never")), Input(w)));
        // The file exists a moment before its pid is written in it.
        WaitFor(() => File.Exists(started) && File.ReadAllText(started).EndsWith('\n'), "the job to start");
        int pid = Guest.ReadPids(started)[0];

        Assert.True(w.Stop(TimeSpan.FromSeconds(30)));
        Assert.Equal(ReceiptStatus.Aborted, s.Conclude(1).Status);
        Assert.False(Guest.Alive(pid));
    }

    [Fact]
    public void Worker_ChattyParser_DoesNotHangAndTheLogIsCapped()
    {
        using var s = new ScriptedSentinel();
        using var w = new WorkerRun(s.Address, logLimit: 256 << 10);
        s.Receive(OpCode.Identify);
        // About 20 MB of print output.
        s.Dispatch(8, Job("def parse(path):\n    line = 'x' * 199\n    for i in range(100_000):\n        print(i, line)\n    return {'done': [True]}\n", Input(w)));
        var r = s.Conclude(8, TimeSpan.FromMinutes(2));
        Assert.True(r.Status == ReceiptStatus.Success, r.ErrorMessage);
        Assert.Equal(100_000, r.Metrics["log_lines"]);
        string log = Path.Combine(w.Logs, "job-8.log");
        Assert.InRange(new FileInfo(log).Length, 256 << 10, (256 << 10) + (64 << 10));
        Assert.Matches(@"\[log capped at 262144 bytes; \d+ more line\(s\) not written\]\n$", File.ReadAllText(log));
    }

    [Fact]
    public void Worker_NativeBinary_ServesAJobAndStopsCleanlyOnSigterm()
    {
        using var s = new ScriptedSentinel();
        using var dir = new TempDir();
        var psi = new ProcessStartInfo(Repo.Binary) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in new[] { "worker", "--connect", s.Address, "--sentinel-key", TestKeys.Shared.PublicKey, "--output", dir.File("out"), "--slots", "2" }) psi.ArgumentList.Add(a);
        psi.Environment["CASPARIAN_HOME"] = dir.File("home");
        psi.Environment["CASPARIAN_TOKEN"] = TestKeys.Shared.JoinToken;
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        try
        {
            var id = s.Receive(OpCode.Identify, TimeSpan.FromSeconds(30)).Decode(ProtocolJson.Default.Identify);
            Assert.Equal(TestKeys.Shared.JoinToken, id.AuthToken);
            Assert.Equal(2, id.Slots);
            // The id persists in the home directory.
            Assert.Equal(File.ReadAllText(Path.Combine(dir.File("home"), "worker", "id")).Trim(), id.WorkerId);

            string input = dir.File("in.csv");
            File.WriteAllText(input, "a,b\n1,x\n2,y\n");
            s.Dispatch(3, Job("import csv\ndef parse(path):\n    return list(csv.DictReader(open(path)))\n", input));
            var r = s.Conclude(3);
            Assert.True(r.Status == ReceiptStatus.Success, r.ErrorMessage);
            var t = ParquetTable.Read(new Uri(r.Artifacts[0]["uri"]).LocalPath);
            Assert.Equal(["1", "2"], t.Columns["a"]);
            Assert.Equal(["x", "y"], t.Columns["b"]);
        }
        finally
        {
            using (var kill = Process.Start("kill", ["-TERM", p.Id.ToString()])) kill.WaitForExit();
            Assert.True(p.WaitForExit(30_000), "worker exits after SIGTERM");
        }
        Assert.True(p.ExitCode == 0, stderr.Result);
    }
}
