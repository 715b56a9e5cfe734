// A real sentinel on loopback, driven by scripted DEALER workers that speak protocol v4 byte for byte,
// with the store checked through its own connection (as the CLI would).
using System.Text;
using System.Text.Json;
using NetMQ;
using NetMQ.Sockets;
using Xunit;

namespace Casparian.Tests;

/// <summary>A sentinel serving on its own thread; stops and persists on dispose.</summary>
internal sealed class SentinelHost : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;
    private readonly StringWriter _log = new();
    private Exception? _failure;

    public Sentinel Sentinel { get; }
    public string Endpoint => Sentinel.Endpoint;

    public SentinelHost(string db, string bind = "tcp://127.0.0.1:*", TimeSpan? heartbeatTimeout = null, int retryLimit = 3, TimeSpan? jobTimeout = null,
        TimeSpan? deadlineGrace = null, Func<SentinelOptions, SentinelOptions>? configure = null)
    {
        var log = new RoleLog(TextWriter.Synchronized(_log), "sentinel", quiet: false, TimeProvider.System);
        var options = Defaults.Sentinel(bind, db, log);
        options = options with
        {
            Store = options.Store with { RetryLimit = retryLimit, RetryBackoff = TimeSpan.FromMilliseconds(50) },
            HeartbeatTimeout = heartbeatTimeout ?? TimeSpan.FromSeconds(60),
            JobTimeout = jobTimeout,
            DeadlineGrace = deadlineGrace ?? options.DeadlineGrace,
            PollInterval = TimeSpan.FromMilliseconds(50),
        };
        Sentinel = new Sentinel(configure?.Invoke(options) ?? options);
        try
        {
            Sentinel.Start();
        }
        catch
        {
            Sentinel.Dispose();
            throw;
        }
        _thread = new Thread(() =>
        {
            try { Sentinel.Run(_stop.Token); }
            catch (Exception e) { _failure = e; }
        }) { IsBackground = true, Name = "sentinel" };
        _thread.Start();
    }

    public string Log
    {
        get { lock (_log) return _log.ToString(); }
    }

    public void Dispose()
    {
        _stop.Cancel();
        Assert.True(_thread.Join(TimeSpan.FromSeconds(10)), "sentinel stopped within 10 s");
        Sentinel.Dispose();
        _stop.Dispose();
        if (_failure is not null) throw new InvalidOperationException("the sentinel loop failed", _failure);
    }
}

/// <summary>A scripted worker: a DEALER sending exactly [header, payload].</summary>
internal sealed class ScriptedWorker : IDisposable
{
    private readonly DealerSocket _socket = new();
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    /// <summary>
    /// <paramref name="curve"/>: a CURVE client of the test keys (false: plaintext, as an outsider
    /// might try). <paramref name="token"/>: the join token its IDENTIFY carries (default the test keys').
    /// </summary>
    public ScriptedWorker(string endpoint, string? id = "w1", string[]? capabilities = null, int? slots = null, bool identify = true,
        bool curve = true, string? token = UseTestToken, string? serverKey = null)
    {
        if (curve && endpoint.StartsWith("tcp://", StringComparison.Ordinal)) TestKeys.Client(_socket, serverKey);
        _token = token == UseTestToken ? TestKeys.Shared.JoinToken : token;
        _socket.Connect(endpoint);
        if (identify) Identify(id, capabilities ?? ["*"], slots);
    }

    private const string UseTestToken = "\0test-keys";
    private readonly string? _token;

    public void Identify(string? id, string[] capabilities, int? slots) =>
        Send(OpCode.Identify, 0, Payload.Encode(new Identify { Capabilities = [.. capabilities], WorkerId = id, Slots = slots, AuthToken = _token }, ProtocolJson.Default.Identify));

    public void Send(OpCode op, ulong jobId, byte[] payload) => Wire.Send(_socket, op, jobId, payload);

    public void SendFrames(params byte[][] frames)
    {
        for (int i = 0; i < frames.Length - 1; i++) _socket.SendMoreFrame(frames[i]);
        _socket.SendFrame(frames[^1]);
    }

    public void Heartbeat(WorkerStatus status = WorkerStatus.Alive, List<long>? active = null) =>
        Send(OpCode.Heartbeat, 0, Payload.Encode(new Heartbeat { Status = status, ActiveJobIds = active, ActiveJobCount = active?.Count ?? 0 }, ProtocolJson.Default.Heartbeat));

    public void Conclude(long jobId, ReceiptStatus status, Dictionary<string, long>? metrics = null, List<Dictionary<string, string>>? artifacts = null, string? error = null) =>
        Send(OpCode.Conclude, (ulong)jobId, Payload.Encode(new JobReceipt { Status = status, Metrics = metrics ?? [], Artifacts = artifacts ?? [], ErrorMessage = error }, ProtocolJson.Default.JobReceipt));

    public WireMessage? TryReceive(TimeSpan timeout)
    {
        NetMQMessage? m = null;
        return _socket.TryReceiveMultipartMessage(timeout, ref m) ? Wire.FromDealerFrames(m) : null;
    }

    /// <summary>The next message with <paramref name="op"/>, skipping others (probes); heartbeats meanwhile if asked.</summary>
    public WireMessage Expect(OpCode op, TimeSpan? timeout = null, TimeSpan? heartbeatEvery = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? Patience);
        while (DateTime.UtcNow < deadline)
        {
            var slice = heartbeatEvery ?? TimeSpan.FromMilliseconds(200);
            if (heartbeatEvery is not null) Heartbeat();
            if (TryReceive(slice) is { } m && m.Op == op) return m;
        }
        throw new TimeoutException($"no {op.ToWireName()} within {timeout ?? Patience}");
    }

    /// <summary>Asserts no message with <paramref name="op"/> arrives within <paramref name="window"/>.</summary>
    public void ExpectNone(OpCode op, TimeSpan window)
    {
        var deadline = DateTime.UtcNow + window;
        while (DateTime.UtcNow < deadline)
            if (TryReceive(TimeSpan.FromMilliseconds(50)) is { } m && m.Op == op)
                Assert.Fail($"unexpected {op.ToWireName()} for job {m.JobId}");
    }

    public void Dispose() => _socket.Dispose();
}

public sealed class SentinelTests : IDisposable
{
    private readonly TempDir _dir = new();
    private string Db => _dir.File("casparian.db");

    public void Dispose() => _dir.Dispose();

    private IJobStore Store() => JobStores.Open(Defaults.Store(Db));

    private static readonly byte[] Archive = [0x50, 0x4B, 0x05, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    private const string Source = "def parse(path):\n    return [{'x': 1}]\n";
    private const string Lockfile = "version = 1\n";

    /// <summary>A parser record as `parser register` stores it; <paramref name="bundled"/>: with a lockfile and archive.</summary>
    internal static ParserRecord Parser(string name, string version = "1.0", bool bundled = true) => new()
    {
        Name = name,
        Version = version,
        Source = Source,
        Lockfile = bundled ? Lockfile : null,
        EnvHash = bundled ? Hashes.Sha256Hex(Lockfile) : Hashes.SystemEnv,
        SourceHash = Hashes.Sha256Hex(Source),
        LockfileHash = bundled ? Hashes.Sha256Hex(Lockfile) : null,
        ArtifactHash = Hashes.ArtifactHash(Source, bundled ? Lockfile : ""),
        Archive = bundled ? Archive : null,
        EntryModule = "parser",
    };

    private long[] Queue(int count, string parser = "csv", int priority = 0, bool register = true)
    {
        using var store = Store();
        if (register) store.RegisterParser(Parser(parser));
        return [.. Enumerable.Range(0, count).Select(i => store.Enqueue(new NewJob(parser, "1.0", $"/data/{parser}-{i}.csv", $"h{parser}{i}", priority)))];
    }

    private JobRecord WaitForState(long id, JobState state)
    {
        JobRecord? seen = null;
        return Eventually.Value(() =>
        {
            using var store = Store();
            seen = store.Get(id);
            return seen?.State == state ? seen : null;
        }, ScriptedWorker.Patience, $"job {id} to reach {state.Name()}", () => $"last seen {seen}");
    }

    [Fact]
    public void Sentinel_Dispatch_HasExactFieldsAndSuccessCompletesTheJob()
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db, jobTimeout: TimeSpan.FromSeconds(90));
        using var worker = new ScriptedWorker(host.Endpoint, "w1", ["csv"]);

        var m = worker.Expect(OpCode.Dispatch);
        Assert.Equal((ulong)id, m.JobId);
        using (var doc = JsonDocument.Parse(m.Payload))
        {
            // SPEC §2.4: these names, in this order, then our extensions.
            Assert.Equal(["plugin_name", "file_path", "sinks", "file_version_id", "env_hash", "source_code", "artifact_hash",
                          "parser_archive", "lockfile_content", "parser_version", "timeout_seconds", "content_hash"],
                doc.RootElement.EnumerateObject().Select(p => p.Name));
            Assert.Equal(JsonValueKind.Array, doc.RootElement.GetProperty("sinks").ValueKind);
            Assert.Equal(0, doc.RootElement.GetProperty("sinks").GetArrayLength());
        }
        var d = m.Decode(ProtocolJson.Default.Dispatch);
        Assert.Equal("csv", d.PluginName);
        Assert.Equal("/data/csv-0.csv", d.FilePath);
        Assert.Equal(id, d.FileVersionId);
        Assert.Equal(Hashes.Sha256Hex(Lockfile), d.EnvHash);
        Assert.Equal(Source, d.SourceCode);
        Assert.Equal(Hashes.ArtifactHash(Source, Lockfile), d.ArtifactHash);
        Assert.Equal(Archive, Convert.FromBase64String(d.ParserArchive!));
        Assert.Equal(Lockfile, d.LockfileContent);
        Assert.Equal("1.0", d.ParserVersion);
        Assert.Equal(90, d.TimeoutSeconds);

        Assert.Equal(JobState.Running, WaitForState(id, JobState.Running).State);
        worker.Conclude(id, ReceiptStatus.Success, new() { ["rows"] = 100, ["bytes"] = 2048 },
            [new() { ["topic"] = "output", ["uri"] = "file:///out/output/job.parquet" }]);
        var done = WaitForState(id, JobState.Completed);
        Assert.Equal("w1", done.Worker);
        Assert.Equal("""{"rows":100,"bytes":2048}""", done.MetricsJson);
        Assert.Equal("""[{"topic":"output","uri":"file:///out/output/job.parquet"}]""", done.ArtifactsJson);
    }

    [Fact]
    public void Sentinel_Dispatch_WithoutLockfileSaysSystemAndLeavesOutExtensions()
    {
        long id;
        using (var store = Store())
        {
            store.RegisterParser(Parser("plain", bundled: false));
            id = store.Enqueue(new NewJob("plain", "1.0", "/x", "h"));
        }
        using var host = new SentinelHost(Db);
        using var worker = new ScriptedWorker(host.Endpoint);
        var m = worker.Expect(OpCode.Dispatch);
        using var doc = JsonDocument.Parse(m.Payload);
        Assert.Equal("system", doc.RootElement.GetProperty("env_hash").GetString());
        Assert.False(doc.RootElement.TryGetProperty("parser_archive", out _));
        Assert.False(doc.RootElement.TryGetProperty("lockfile_content", out _));
        Assert.False(doc.RootElement.TryGetProperty("timeout_seconds", out _));
        Assert.Equal((ulong)id, m.JobId);
    }

    [Fact]
    public void Sentinel_Slots_AreAllFilledAndRefilled()
    {
        var ids = Queue(10);
        using var host = new SentinelHost(Db);
        using var worker = new ScriptedWorker(host.Endpoint, "w1", ["*"], slots: null);

        // No slots field: the default of 4, all at once, in queue order.
        var first = Enumerable.Range(0, 4).Select(_ => (long)worker.Expect(OpCode.Dispatch).JobId).ToList();
        Assert.Equal(ids[..4], first);
        worker.ExpectNone(OpCode.Dispatch, TimeSpan.FromMilliseconds(400));

        worker.Conclude(first[0], ReceiptStatus.Success);
        Assert.Equal((ulong)ids[4], worker.Expect(OpCode.Dispatch).JobId);
        worker.ExpectNone(OpCode.Dispatch, TimeSpan.FromMilliseconds(300));
    }

    [Fact]
    public void Sentinel_Slots_FollowWhatTheWorkerDeclares()
    {
        Queue(12);
        using var host = new SentinelHost(Db);
        using var worker = new ScriptedWorker(host.Endpoint, "big", ["*"], slots: 7);
        for (int i = 0; i < 7; i++) worker.Expect(OpCode.Dispatch);
        worker.ExpectNone(OpCode.Dispatch, TimeSpan.FromMilliseconds(400));
    }

    [Fact]
    public void Sentinel_SilentWorker_LosesItsJobsToAnotherAndItsLateConcludeIsIgnored()
    {
        var ids = Queue(2);
        using var host = new SentinelHost(Db, heartbeatTimeout: TimeSpan.FromSeconds(1.5));
        using var silent = new ScriptedWorker(host.Endpoint, "silent", ["*"], slots: 2);
        var held = new[] { (long)silent.Expect(OpCode.Dispatch).JobId, (long)silent.Expect(OpCode.Dispatch).JobId };
        Assert.Equal(ids, held.Order());

        using var alive = new ScriptedWorker(host.Endpoint, "alive", ["*"], slots: 2);
        var retaken = new[]
        {
            (long)alive.Expect(OpCode.Dispatch, heartbeatEvery: TimeSpan.FromMilliseconds(200)).JobId,
            (long)alive.Expect(OpCode.Dispatch, heartbeatEvery: TimeSpan.FromMilliseconds(200)).JobId,
        };
        Assert.Equal(ids, retaken.Order());
        Assert.Contains("worker silent silent for", host.Log);

        // The silent worker wakes up and reports: too late, it was dropped, and a peer that has not
        // identified again is not heard (it is told to identify).
        silent.Conclude(ids[0], ReceiptStatus.Success, new() { ["rows"] = 666 });
        WaitForLog(host, $"dropped CONCLUDE for job {ids[0]} from peer");
        silent.Expect(OpCode.Err);
        alive.Conclude(ids[0], ReceiptStatus.Success, new() { ["rows"] = 1 });
        var done = WaitForState(ids[0], JobState.Completed);
        Assert.Equal("alive", done.Worker);
        Assert.Equal("""{"rows":1}""", done.MetricsJson);
        Assert.Equal(1, done.RetryCount);
    }

    private static void WaitForLog(SentinelHost host, string text) =>
        Eventually.True(() => host.Log.Contains(text), ScriptedWorker.Patience, $"'{text}' in the log", () => host.Log);

    [Fact]
    public void Sentinel_QuietWorker_IsProbedWithAHeartbeat()
    {
        using var host = new SentinelHost(Db, heartbeatTimeout: TimeSpan.FromSeconds(1.2));
        using var worker = new ScriptedWorker(host.Endpoint);
        var probe = worker.Expect(OpCode.Heartbeat, TimeSpan.FromSeconds(5));
        Assert.Equal(WorkerStatus.Alive, probe.Decode(ProtocolJson.Default.Heartbeat).Status);
    }

    [Fact]
    public void Sentinel_ErrAndEnvReady_AreLoggedAndItKeepsServing()
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db);
        using var worker = new ScriptedWorker(host.Endpoint, "w", ["*"], slots: 1);
        worker.Send(OpCode.EnvReady, 0, Payload.Encode(new EnvReady { EnvHash = "abc123", InterpreterPath = "/venvs/abc123/bin/python", Cached = true }, ProtocolJson.Default.EnvReady));
        worker.Send(OpCode.Err, 5, Payload.Encode(new ErrorPayload { Message = "disk on fire" }, ProtocolJson.Default.ErrorPayload));
        WaitForLog(host, "worker w: environment abc123 ready at /venvs/abc123/bin/python (cached)");
        WaitForLog(host, "worker w reported an error (job 5): disk on fire");
        Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch).JobId);
        Assert.Equal(0, host.Sentinel.MalformedMessages);
    }

    [Fact]
    public void Sentinel_StoreLocked_KeepsServingAndCommitsTheWorkLater()
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db);
        using var worker = new ScriptedWorker(host.Endpoint);
        Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch).JobId);
        using (var blocker = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={Db};Pooling=False"))
        {
            blocker.Open();
            using var begin = blocker.CreateCommand();
            begin.CommandText = "BEGIN IMMEDIATE";
            begin.ExecuteNonQuery();

            worker.Conclude(id, ReceiptStatus.Success, new() { ["rows"] = 3 });
            WaitForLog(host, "store step failed, retrying");
            // Between attempts the socket is served: a stranger's heartbeat is answered.
            using var stranger = new ScriptedWorker(host.Endpoint, identify: false);
            stranger.Heartbeat();
            stranger.Expect(OpCode.Err);
            using (var store = Store()) Assert.Equal(JobState.Running, store.Get(id)!.State);
        }
        Assert.Equal("""{"rows":3}""", WaitForState(id, JobState.Completed).MetricsJson);
    }

    [Fact]
    public void Sentinel_Ipc_IsRefusedAsNotPrivate()
    {
        // NetMQ's ipc:// is a loopback TCP port: it "listened" even on a directory that does not exist.
        var e = Assert.Throws<UsageException>(() => new SentinelHost(Db, bind: $"ipc://{_dir.File("no/such/dir/sentinel.ipc")}"));
        Assert.Contains("tcp:// only", e.Message);
        Assert.Contains("ipc:// is a loopback TCP port", e.Message);
    }

    [Fact]
    public void Sentinel_Inproc_ServesAWorkerInTheSameProcess()
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db, bind: $"inproc://sentinel-test-{Guid.NewGuid():N}");
        using var worker = new ScriptedWorker(host.Endpoint);
        Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch).JobId);
    }

    [Fact]
    public void Sentinel_JobNoLiveWorkerCanRun_DoesNotBlockOthers()
    {
        long rare = Queue(1, parser: "rare", priority: 100)[0];
        var csv = Queue(2, parser: "csv");
        using var host = new SentinelHost(Db);
        using var worker = new ScriptedWorker(host.Endpoint, "w", ["csv"], slots: 4);
        var got = new[] { (long)worker.Expect(OpCode.Dispatch).JobId, (long)worker.Expect(OpCode.Dispatch).JobId };
        Assert.Equal(csv, got);
        worker.ExpectNone(OpCode.Dispatch, TimeSpan.FromMilliseconds(300));
        using (var store = Store()) Assert.Equal(JobState.Queued, store.Get(rare)!.State);

        using var capable = new ScriptedWorker(host.Endpoint, "r", ["rare"]);
        Assert.Equal((ulong)rare, capable.Expect(OpCode.Dispatch).JobId);
    }

    [Fact]
    public void Sentinel_HigherPriorityIsDispatchedFirst()
    {
        var low = Queue(2, priority: 0);
        var high = Queue(2, priority: 5, register: false);
        using var host = new SentinelHost(Db);
        using var worker = new ScriptedWorker(host.Endpoint, "w", ["*"], slots: 1);
        var order = new List<long>();
        for (int i = 0; i < 4; i++)
        {
            long id = (long)worker.Expect(OpCode.Dispatch).JobId;
            order.Add(id);
            worker.Conclude(id, ReceiptStatus.Success);
        }
        Assert.Equal([.. high, .. low], order);
    }

    private static byte[][] Message(OpCode op, ulong jobId, string json)
    {
        byte[] payload = Encoding.UTF8.GetBytes(json);
        return [new Header(op, jobId, (uint)payload.Length).ToArray(), payload];
    }

    // Each case is a message as a DEALER sends it (the ROUTER adds the identity frame).
    public static TheoryData<string, byte[][]> Garbage => new()
    {
        // One frame of random bytes: too few frames.
        { "random-bytes", [[.. Enumerable.Range(0, 40).Select(i => (byte)(i * 37 + 11))]] },
        // Three frames: one too many.
        { "three-frames", [new Header(OpCode.Heartbeat, 0, 0).ToArray(), [], []] },
        // A header shorter than 16 bytes.
        { "short-header", [[4, 4, 0], []] },
        // Version 3 instead of 4.
        { "bad-version", [[3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], []] },
        // Opcode 200 does not exist.
        { "bad-opcode", [[4, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], []] },
        // Header says 100 payload bytes, the frame has 2.
        { "length-mismatch", [new Header(OpCode.Conclude, 1, 100).ToArray(), "{}"u8.ToArray()] },
        // IDENTIFY whose payload is not JSON.
        { "bad-json", [new Header(OpCode.Identify, 0, 5).ToArray(), "{nope"u8.ToArray()] },
        // IDENTIFY without its required capabilities.
        { "missing-field", [new Header(OpCode.Identify, 0, 2).ToArray(), "{}"u8.ToArray()] },
        // CONCLUDE with an unknown status.
        { "bad-status", Message(OpCode.Conclude, 1, """{"status":"MAYBE","metrics":{},"artifacts":[]}""") },
        // HEARTBEAT whose job id is a string.
        { "bad-type", Message(OpCode.Heartbeat, 0, """{"status":"ALIVE","current_job_id":"seven"}""") },
        // A DISPATCH sent to the sentinel: a worker-bound opcode.
        { "wrong-direction", [new Header(OpCode.Dispatch, 1, 0).ToArray(), []] },
        // An empty CONCLUDE payload.
        { "empty-conclude", [new Header(OpCode.Conclude, 1, 0).ToArray(), []] },
    };

    [Theory]
    [MemberData(nameof(Garbage))]
    public void Sentinel_GarbageFrames_AreCountedAndItKeepsServing(string name, byte[][] frames)
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db);
        // The vandal identifies (with the token, and no capabilities, so it gets no work): a peer that
        // has not is refused before its payload is read (SecurityTests).
        using (var vandal = new ScriptedWorker(host.Endpoint, "vandal", capabilities: []))
        {
            for (int i = 0; i < 3; i++) vandal.SendFrames(frames);
            Eventually.True(() => host.Sentinel.MalformedMessages >= 3, ScriptedWorker.Patience, $"{name}: three malformed messages counted", () => host.Log);
        }
        Assert.True(host.Sentinel.MalformedMessages == 3, $"{name}: {host.Sentinel.MalformedMessages} malformed counted\n{host.Log}");
        Assert.Contains("dropped malformed message", host.Log);

        using var worker = new ScriptedWorker(host.Endpoint);
        Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch).JobId);
        worker.Conclude(id, ReceiptStatus.Success);
        WaitForState(id, JobState.Completed);
    }

    [Fact]
    public void Sentinel_Cancel_SendsAbortAndTheJobStaysCancelled()
    {
        var ids = Queue(2);
        using var host = new SentinelHost(Db);
        using var worker = new ScriptedWorker(host.Endpoint, "w", ["*"], slots: 1);
        Assert.Equal((ulong)ids[0], worker.Expect(OpCode.Dispatch).JobId);

        using (var store = Store()) store.Cancel(ids[0]);
        var abort = worker.Expect(OpCode.Abort);
        Assert.Equal((ulong)ids[0], abort.JobId);
        Assert.Empty(abort.Payload);

        worker.Conclude(ids[0], ReceiptStatus.Aborted, error: "aborted");
        // The freed slot takes the next job; the cancelled one stays cancelled.
        Assert.Equal((ulong)ids[1], worker.Expect(OpCode.Dispatch).JobId);
        using (var store = Store()) Assert.Equal(JobState.Cancelled, store.Get(ids[0])!.State);
    }

    [Fact]
    public void Sentinel_Failed_TransientIsRetriedAndPermanentIsFailed()
    {
        var ids = Queue(2);
        using var host = new SentinelHost(Db, retryLimit: 1);
        using var worker = new ScriptedWorker(host.Endpoint, "w", ["*"], slots: 1);

        Assert.Equal((ulong)ids[0], worker.Expect(OpCode.Dispatch).JobId);
        worker.Conclude(ids[0], ReceiptStatus.Failed, new() { ["transient"] = 1 }, error: "MemoryError");
        // ids[0] waits out its backoff; the queue does not wait behind it.
        Assert.Equal((ulong)ids[1], worker.Expect(OpCode.Dispatch).JobId);
        worker.Conclude(ids[1], ReceiptStatus.Failed, error: "Traceback (most recent call last):\n  File \"p.py\"\nValueError: bad row 3");
        var failed = WaitForState(ids[1], JobState.Failed);
        Assert.Equal(0, failed.RetryCount);
        Assert.Contains("ValueError: bad row 3", failed.Error);

        Assert.Equal((ulong)ids[0], worker.Expect(OpCode.Dispatch).JobId);
        using (var store = Store()) Assert.Equal(1, store.Get(ids[0])!.RetryCount);
        worker.Conclude(ids[0], ReceiptStatus.Failed, new() { ["transient"] = 1 }, error: "MemoryError again");
        Assert.Equal("MemoryError again", WaitForState(ids[0], JobState.Failed).Error);
        Assert.Contains($"job {ids[0]} FAILED on worker w: MemoryError again", host.Log);
    }

    [Fact]
    public void Sentinel_Rejected_IsRequeuedWithoutARetry()
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db);
        using var worker = new ScriptedWorker(host.Endpoint, "w", ["*"], slots: 1);
        Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch).JobId);
        worker.Conclude(id, ReceiptStatus.Rejected);
        Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch).JobId);
        using var store = Store();
        Assert.Equal((JobState.Running, 0), (store.Get(id)!.State, store.Get(id)!.RetryCount));
    }

    [Fact]
    public void Sentinel_WorkerRestart_NewConnectionSameIdRequeuesWhatItHeld()
    {
        var ids = Queue(2);
        using var host = new SentinelHost(Db);
        using (var before = new ScriptedWorker(host.Endpoint, "w", ["*"], slots: 2))
        {
            before.Expect(OpCode.Dispatch);
            before.Expect(OpCode.Dispatch);
        }
        using var after = new ScriptedWorker(host.Endpoint, "w", ["*"], slots: 2);
        var again = new[] { (long)after.Expect(OpCode.Dispatch).JobId, (long)after.Expect(OpCode.Dispatch).JobId };
        Assert.Equal(ids, again.Order());
        Assert.Contains("worker w identified from a new connection (takeover or restart)", host.Log);
    }

    [Fact]
    public void Sentinel_Restart_WorkerReidentifiesAndKeepsItsJobs()
    {
        var ids = Queue(3);
        int port;
        using (var first = new SentinelHost(Db))
        {
            port = int.Parse(first.Endpoint[(first.Endpoint.LastIndexOf(':') + 1)..]);
            using var w = new ScriptedWorker(first.Endpoint, "keeper", ["*"], slots: 2);
            w.Expect(OpCode.Dispatch);
            w.Expect(OpCode.Dispatch);
        }
        // The second sentinel finds ids[0] and ids[1] RUNNING on "keeper"; keeper says hello again.
        using var second = Rebind(port);
        using var keeper = new ScriptedWorker(second.Endpoint, identify: false);
        keeper.Heartbeat();
        Assert.Contains("IDENTIFY", keeper.Expect(OpCode.Err).Decode(ProtocolJson.Default.ErrorPayload).Message);
        keeper.Identify("keeper", ["*"], slots: 2);
        keeper.ExpectNone(OpCode.Dispatch, TimeSpan.FromMilliseconds(400));

        // Its heartbeat lists only ids[0]: ids[1] was lost with its old process and goes back to the queue.
        keeper.Heartbeat(WorkerStatus.Busy, [ids[0]]);
        Assert.Equal((ulong)ids[1], keeper.Expect(OpCode.Dispatch).JobId);
        keeper.Conclude(ids[0], ReceiptStatus.Success, new() { ["rows"] = 5 });
        Assert.Equal("""{"rows":5}""", WaitForState(ids[0], JobState.Completed).MetricsJson);
        Assert.Equal((ulong)ids[2], keeper.Expect(OpCode.Dispatch).JobId);
    }

    /// <summary>A sentinel on a port just released: NetMQ closes the old listener asynchronously.</summary>
    private SentinelHost Rebind(int port)
    {
        var deadline = DateTime.UtcNow + ScriptedWorker.Patience;
        while (true)
        {
            try { return new SentinelHost(Db, bind: $"tcp://127.0.0.1:{port}"); }
            catch (UnavailableException) when (DateTime.UtcNow < deadline) { Thread.Sleep(100); }
        }
    }

    private static byte[] DeployPayload(string name, string version, string source, string lockfile, string? artifactHash = null, string? envHash = null) =>
        Payload.Encode(new Deploy
        {
            PluginName = name,
            Version = version,
            SourceCode = source,
            LockfileContent = lockfile,
            EnvHash = envHash ?? Hashes.Sha256Hex(lockfile),
            ArtifactHash = artifactHash ?? Hashes.ArtifactHash(source, lockfile),
            Signature = "",
            PublisherName = "tests",
            AuthToken = TestKeys.Shared.AdminToken,
        }, ProtocolJson.Default.Deploy);

    [Fact]
    public void Sentinel_Deploy_StoresTheParserAndAcks()
    {
        using var host = new SentinelHost(Db);
        using var cli = new ScriptedWorker(host.Endpoint, identify: false);
        cli.Send(OpCode.Deploy, 7, DeployPayload("sales", "2.0", Source, Lockfile));
        var m = cli.Expect(OpCode.Ack);
        Assert.Equal(7ul, m.JobId);
        var ack = m.Decode(ProtocolJson.Default.Ack);
        Assert.True(ack.Success, ack.Message);
        using (var store = Store())
        {
            var p = store.GetParser("sales", "2.0")!;
            Assert.Equal(ack.PluginId, p.Id);
            Assert.Equal((Source, Lockfile, Hashes.Sha256Hex(Lockfile), Hashes.ArtifactHash(Source, Lockfile)), (p.Source, p.Lockfile, p.EnvHash, p.ArtifactHash));
            Assert.Null(p.Archive);
        }

        // Again, same source: fine. Same version, new source: refused.
        cli.Send(OpCode.Deploy, 8, DeployPayload("sales", "2.0", Source, Lockfile));
        Assert.True(cli.Expect(OpCode.Ack).Decode(ProtocolJson.Default.Ack).Success);
        cli.Send(OpCode.Deploy, 9, DeployPayload("sales", "2.0", Source + "# changed\n", Lockfile));
        var refused = cli.Expect(OpCode.Ack).Decode(ProtocolJson.Default.Ack);
        Assert.False(refused.Success);
        Assert.Contains("bump the version", refused.Message);

        // No lockfile: the system environment.
        cli.Send(OpCode.Deploy, 10, DeployPayload("bare", "1", Source, "", envHash: "system"));
        Assert.True(cli.Expect(OpCode.Ack).Decode(ProtocolJson.Default.Ack).Success);
        using (var store = Store()) Assert.Equal("system", store.GetParser("bare")!.EnvHash);
    }

    [Fact]
    public void Sentinel_Deploy_BadHashesGetErrAndStoreNothing()
    {
        using var host = new SentinelHost(Db);
        using var cli = new ScriptedWorker(host.Endpoint, identify: false);
        cli.Send(OpCode.Deploy, 1, DeployPayload("evil", "1", Source, Lockfile, artifactHash: new string('0', 64)));
        var err = cli.Expect(OpCode.Err).Decode(ProtocolJson.Default.ErrorPayload);
        Assert.Contains("artifact_hash mismatch", err.Message);

        cli.Send(OpCode.Deploy, 2, DeployPayload("evil", "1", Source, Lockfile, envHash: Hashes.Sha256Hex("other")));
        Assert.Contains("env_hash mismatch", cli.Expect(OpCode.Err).Decode(ProtocolJson.Default.ErrorPayload).Message);

        cli.Send(OpCode.Deploy, 3, Encoding.UTF8.GetBytes("""{"plugin_name":"x"}"""));
        Assert.Contains("DEPLOY", cli.Expect(OpCode.Err).Decode(ProtocolJson.Default.ErrorPayload).Message);

        using var store = Store();
        Assert.Null(store.GetParser("evil"));
    }
}
