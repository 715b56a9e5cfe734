// The attacks of issue 11, each through real sockets against a real sentinel (or a real worker):
// a rogue DEPLOY, a takeover of a worker id, an unidentified CONCLUDE, plaintext against CURVE, a
// wrong token, a wrong sentinel key, a rotated token, an oversized message; and the CURVE handshake
// with libzmq (Debian's pyzmq) in both directions.
using System.Text;
using System.Text.Json;
using NetMQ;
using Xunit;

namespace Casparian.Tests;

public sealed class SecurityTests : IDisposable
{
    private readonly TempDir _dir = new();
    private string Db => _dir.File("casparian.db");
    private static readonly TimeSpan Quiet = TimeSpan.FromSeconds(1.5);

    public void Dispose() => _dir.Dispose();

    private IJobStore Store() => JobStores.Open(Defaults.Store(Db));

    private const string Source = "def parse(path):\n    return [{'x': 1}]\n";

    private long[] Queue(int count, string parser = "csv")
    {
        using var store = Store();
        store.RegisterParser(new ParserRecord
        {
            Name = parser,
            Version = "1.0",
            Source = Source,
            EnvHash = Hashes.SystemEnv,
            SourceHash = Hashes.Sha256Hex(Source),
            ArtifactHash = Hashes.ArtifactHash(Source, ""),
            EntryModule = "parser",
        });
        return [.. Enumerable.Range(0, count).Select(i => store.Enqueue(new NewJob(parser, "1.0", $"/data/{parser}-{i}.csv", $"h{parser}{i}", 0)))];
    }

    private JobState StateOf(long id)
    {
        using var store = Store();
        return store.Get(id)!.State;
    }

    private void WaitForState(long id, JobState state) =>
        Eventually.True(() => StateOf(id) == state, ScriptedWorker.Patience, $"job {id} to reach {state.Name()}", () => $"state {StateOf(id).Name()}");

    private static Deploy RogueDeploy(string? token)
    {
        const string code = "import time\ndef parse(path):\n    time.sleep(9999)\n";
        return new Deploy
        {
            PluginName = "slow",
            Version = "9.9.9",
            SourceCode = code,
            LockfileContent = "",
            EnvHash = Hashes.SystemEnv,
            ArtifactHash = Hashes.ArtifactHash(code, ""),
            Signature = "",
            PublisherName = "mallory",
            AuthToken = token,
        };
    }

    [Fact]
    public void Security_RogueDeploy_WithoutTheAdminToken_StoresNothing()
    {
        using var host = new SentinelHost(Db);
        using var client = new ScriptedWorker(host.Endpoint, identify: false);
        foreach (var token in new[] { null, "not-the-admin-token", TestKeys.Shared.JoinToken })
        {
            client.Send(OpCode.Deploy, 7, Payload.Encode(RogueDeploy(token), ProtocolJson.Default.Deploy));
            var ack = client.Expect(OpCode.Ack).Decode(ProtocolJson.Default.Ack);
            Assert.False(ack.Success, $"token {token}: {ack.Message}");
            Assert.Contains("refused", ack.Message);
        }
        using (var store = Store()) Assert.Null(store.GetParser("slow"));

        // The same DEPLOY with the admin token is stored: the refusal above is the token's doing.
        client.Send(OpCode.Deploy, 8, Payload.Encode(RogueDeploy(TestKeys.Shared.AdminToken), ProtocolJson.Default.Deploy));
        Assert.True(client.Expect(OpCode.Ack).Decode(ProtocolJson.Default.Ack).Success);
        using (var store = Store()) Assert.Equal("9.9.9", store.GetParser("slow")!.Version);
    }

    [Fact]
    public void Sentinel_Deploy_StoresTheTopicsItsSourceDeclares_AndRefusesAMalformedTopics()
    {
        // A deployed parser's TOPICS reach the store (and so DISPATCH) as a registered one's do, read
        // statically from the source; a TOPICS that is not a literal is an ERR naming the line, and nothing is stored.
        const string code = "TOPICS = {\"sales\": {\"sink\": \"sqlite://lake.db?table=sales\", \"mode\": \"replace\"}}\n\ndef parse(path):\n    return []\n";
        var deploy = RogueDeploy(TestKeys.Shared.AdminToken) with { PluginName = "topical", SourceCode = code, ArtifactHash = Hashes.ArtifactHash(code, "") };
        using var host = new SentinelHost(Db);
        using var client = new ScriptedWorker(host.Endpoint, identify: false);
        client.Send(OpCode.Deploy, 7, Payload.Encode(deploy, ProtocolJson.Default.Deploy));
        Assert.True(client.Expect(OpCode.Ack).Decode(ProtocolJson.Default.Ack).Success);
        using (var store = Store())
        {
            var sink = Assert.Single(Topics.FromJson(store.GetParser("topical")!.TopicsJson, "test"));
            Assert.Equal(("sales", "sqlite://lake.db?table=sales", SinkMode.Replace), (sink.Topic, sink.Sink, sink.Mode));
        }

        const string bad = "TOPICS = {\"sales\": {\"sink\": SINK}}\n\ndef parse(path):\n    return []\n";
        client.Send(OpCode.Deploy, 8, Payload.Encode(deploy with { PluginName = "bad", SourceCode = bad, ArtifactHash = Hashes.ArtifactHash(bad, "") }, ProtocolJson.Default.Deploy));
        Assert.Contains("DEPLOY of bad 9.9.9:1: TOPICS", Encoding.UTF8.GetString(client.Expect(OpCode.Err).Payload));
        using (var store = Store()) Assert.Null(store.GetParser("bad"));
    }

    [Fact]
    public void Security_TakeoverWithoutToken_IsRefusedAndTheJobStaysWithItsWorker()
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db);
        using var owner = new ScriptedWorker(host.Endpoint, "w1", slots: 1);
        Assert.Equal((ulong)id, owner.Expect(OpCode.Dispatch).JobId);

        using var thief = new ScriptedWorker(host.Endpoint, "w1", token: null);
        Assert.Contains("no join token", Encoding.UTF8.GetString(thief.Expect(OpCode.Err).Payload));
        thief.Conclude(id, ReceiptStatus.Success, artifacts: [new() { ["topic"] = "t", ["uri"] = "file:///tmp/forged.parquet" }]);
        Assert.Contains("unknown worker", Encoding.UTF8.GetString(thief.Expect(OpCode.Err).Payload));
        Eventually.True(() => host.Sentinel.RefusedMessages >= 2, ScriptedWorker.Patience, "IDENTIFY and CONCLUDE refused", () => host.Log);

        Assert.Equal(JobState.Running, StateOf(id));
        owner.Conclude(id, ReceiptStatus.Success, new() { ["rows"] = 1 });
        WaitForState(id, JobState.Completed);
        using var store = Store();
        Assert.Equal("w1", store.Get(id)!.Worker);
        Assert.Equal("""{"rows":1}""", store.Get(id)!.MetricsJson);
    }

    [Fact]
    public void Security_TakeoverWithToken_IsLoggedAndTheOldJobsAreRequeuedNotHandedOver()
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db);
        using var owner = new ScriptedWorker(host.Endpoint, "w1", slots: 1);
        Assert.Equal((ulong)id, owner.Expect(OpCode.Dispatch).JobId);

        // A second connection proves the token and claims the id; it takes no work of its own.
        using var newcomer = new ScriptedWorker(host.Endpoint, "w1", capabilities: []);
        Eventually.True(() => host.Log.Contains("takeover: worker w1"), ScriptedWorker.Patience, "the takeover logged", () => host.Log);
        WaitForState(id, JobState.Queued);
        newcomer.Conclude(id, ReceiptStatus.Success);
        newcomer.ExpectNone(OpCode.Dispatch, TimeSpan.FromMilliseconds(500));
        Assert.Equal(JobState.Queued, StateOf(id));

        using var other = new ScriptedWorker(host.Endpoint, "w2", slots: 1);
        Assert.Equal((ulong)id, other.Expect(OpCode.Dispatch).JobId);
    }

    [Fact]
    public void Security_UnidentifiedConclude_AfterRestart_IsDroppedAndCounted()
    {
        long id = Queue(1)[0];
        using (var first = new SentinelHost(Db))
        using (var worker = new ScriptedWorker(first.Endpoint, "w1", slots: 1))
            Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch).JobId);
        Assert.Equal(JobState.Running, StateOf(id));

        using var host = new SentinelHost(Db);
        using var rogue = new ScriptedWorker(host.Endpoint, identify: false);
        rogue.Conclude(id, ReceiptStatus.Success, new() { ["rows"] = 666 }, [new() { ["topic"] = "t", ["uri"] = "file:///tmp/made-up.parquet" }]);
        Assert.Contains("unknown worker", Encoding.UTF8.GetString(rogue.Expect(OpCode.Err).Payload));
        Assert.Equal(1, host.Sentinel.RefusedMessages);
        rogue.ExpectNone(OpCode.Ack, TimeSpan.FromMilliseconds(300));
        Assert.Equal(JobState.Running, StateOf(id));
        Assert.Contains("dropped CONCLUDE for job", host.Log);
    }

    [Fact]
    public void Security_PlaintextPeer_AgainstCurve_GetsNothing()
    {
        Queue(1);
        using var host = new SentinelHost(Db);
        // Even with the right token: without the CURVE handshake nothing gets through.
        using var plain = new ScriptedWorker(host.Endpoint, "plain", curve: false);
        plain.Heartbeat();
        Assert.Null(plain.TryReceive(Quiet));
        Assert.Equal(0, host.Sentinel.WorkerCount);
        Assert.Equal(0, host.Sentinel.RefusedMessages + host.Sentinel.MalformedMessages);
    }

    [Fact]
    public void Security_WrongToken_IsRefusedWithAnErrAndGetsNoWork()
    {
        Queue(1);
        using var host = new SentinelHost(Db);
        using var guesser = new ScriptedWorker(host.Endpoint, "guesser", token: "0123456789abcdef");
        var err = guesser.Expect(OpCode.Err).Decode(ProtocolJson.Default.ErrorPayload);
        Assert.Equal(Sentinel.IdentifyWrongToken, err.Message);
        guesser.ExpectNone(OpCode.Dispatch, TimeSpan.FromMilliseconds(500));
        Assert.Equal(0, host.Sentinel.WorkerCount);
        Assert.Contains("refused IDENTIFY as worker guesser", host.Log);
        Assert.DoesNotContain("0123456789abcdef", host.Log);
    }

    [Fact]
    public void Security_WrongSentinelKey_WorkerNeverJoinsAndSaysSoInOneLine()
    {
        Queue(1);
        using var host = new SentinelHost(Db);
        string impostorKey = new NetMQCertificate().PublicKeyZ85;
        using var run = new WorkerRun(host.Endpoint, configure: o => o with { SentinelKey = impostorKey });
        Eventually.True(() => run.Log.Contains("warning: the CURVE handshake with the sentinel at"), ScriptedWorker.Patience, "the worker's handshake warning", () => run.Log);
        Assert.Single(run.Log.Split('\n'), l => l.Contains("handshake", StringComparison.Ordinal));
        Assert.Equal(0, host.Sentinel.WorkerCount);
    }

    [Fact]
    public void Security_RotatedToken_DropsWorkersHoldingTheOldOne()
    {
        long id = Queue(1)[0];
        var keys = SentinelKeys.LoadOrCreate(_dir.File("keys"));
        using var host = new SentinelHost(Db, configure: o => o with { Keys = keys });
        using var worker = new ScriptedWorker(host.Endpoint, "w1", slots: 1, token: keys.JoinToken, serverKey: keys.PublicKey);
        Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch).JobId);

        string fresh = SentinelKeys.RotateJoinToken(keys.Dir);
        Assert.NotEqual(fresh, SentinelKeys.LoadOrCreate(_dir.File("other-keys")).JoinToken);
        var err = worker.Expect(OpCode.Err).Decode(ProtocolJson.Default.ErrorPayload);
        Assert.Equal(Sentinel.TokenRotated, err.Message);
        WaitForState(id, JobState.Queued);

        // The old token no longer joins; the new one does, and gets the requeued job.
        worker.Identify("w1", ["*"], 1);
        Assert.Equal(Sentinel.IdentifyWrongToken, worker.Expect(OpCode.Err).Decode(ProtocolJson.Default.ErrorPayload).Message);
        using var renewed = new ScriptedWorker(host.Endpoint, "w1", slots: 1, token: fresh, serverKey: keys.PublicKey);
        Assert.Equal((ulong)id, renewed.Expect(OpCode.Dispatch).JobId);
    }

    [Fact]
    public void Security_Insecure_AllowsPlaintextButStillChecksTheToken()
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db, configure: o => o with { Insecure = true });
        Assert.Contains("warning: plaintext link (--insecure)", host.Log);
        using var tokenless = new ScriptedWorker(host.Endpoint, "x", curve: false, token: null);
        tokenless.Expect(OpCode.Err);
        using var plain = new ScriptedWorker(host.Endpoint, "plain", curve: false);
        Assert.Equal((ulong)id, plain.Expect(OpCode.Dispatch).JobId);
    }

    [Fact]
    public void Security_OversizedMessage_DisconnectsThePeerBeforeItIsRead()
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db, configure: o => o with { MessageLimit = 1 << 20 });
        using var worker = new ScriptedWorker(host.Endpoint, "big", slots: 1);
        Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch).JobId);

        // 2 MB in one frame: ZeroMQ drops the connection. The DEALER reconnects as a new peer, which
        // has not identified, so its CONCLUDE is refused and the job stays RUNNING.
        worker.Send(OpCode.Err, 0, new byte[2 << 20]);
        // A CONCLUDE queued behind the big frame is lost with the connection: resend until the new one answers.
        WireMessage? err = null;
        var deadline = DateTime.UtcNow + ScriptedWorker.Patience;
        while (err is null && DateTime.UtcNow < deadline)
        {
            worker.Conclude(id, ReceiptStatus.Success);
            if (worker.TryReceive(TimeSpan.FromMilliseconds(500)) is { Op: OpCode.Err } m) err = m;
        }
        Assert.True(err is not null, "the reconnected peer was told it is unknown\n" + host.Log);
        Assert.Contains("unknown worker", Encoding.UTF8.GetString(err.Value.Payload));
        Assert.Equal(JobState.Running, StateOf(id));
        Assert.Equal(0, host.Sentinel.MalformedMessages);
    }

    [Fact]
    public void Security_OversizedDispatch_IsNotTakenByTheWorker()
    {
        using var sentinel = new ScriptedSentinel();
        using var run = new WorkerRun(sentinel.Address, configure: o => o with { MessageLimit = 1 << 20 });
        sentinel.Receive(OpCode.Identify);
        var huge = new Dispatch
        {
            PluginName = "p", FilePath = "/nonexistent", FileVersionId = 1, EnvHash = Hashes.SystemEnv,
            SourceCode = "#" + new string('x', 2 << 20),
        };
        sentinel.Dispatch(1, huge);
        // The worker is disconnected before the DISPATCH is read; it reconnects and identifies again,
        // and never concludes job 1.
        var again = sentinel.Receive(OpCode.Identify, TimeSpan.FromSeconds(20));
        Assert.Equal("test-worker", again.Decode(ProtocolJson.Default.Identify).WorkerId);
        Assert.Equal(0, run.Worker.ActiveJobs);
    }

    [Fact]
    public void Security_HugeIdentify_IsLoggedInBrief()
    {
        using var host = new SentinelHost(Db);
        var capabilities = Enumerable.Range(0, 50_000).Select(i => $"parser_{i:D6}").ToArray();
        using var worker = new ScriptedWorker(host.Endpoint, "many", capabilities, slots: 1);
        Eventually.True(() => host.Log.Contains("worker many joined"), ScriptedWorker.Patience, "the join logged", () => host.Log[..Math.Min(2000, host.Log.Length)]);
        Assert.Contains("(50000 in all)", host.Log);
        Assert.True(host.Log.Length < 4000, $"log is {host.Log.Length} characters");

        using var longId = new ScriptedWorker(host.Endpoint, new string('w', 10_000), slots: 1);
        Assert.Contains("worker_id must be at most", Encoding.UTF8.GetString(longId.Expect(OpCode.Err).Payload));
        Assert.True(host.Log.Length < 8000, $"log is {host.Log.Length} characters");
    }

    [Fact]
    public void Security_BindForeignAddress_SaysWhatFailedAndWhy()
    {
        var e = Assert.Throws<UnavailableException>(() => new SentinelHost(Db, bind: "tcp://8.8.8.8:5555"));
        Assert.StartsWith("cannot bind tcp://8.8.8.8:5555: that address is not one of this machine's", e.Message);
        Assert.DoesNotContain("Exception of type", e.Message);
    }

    [Fact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public void Keys_Created_WithPrivateModesAndRefusedWhenExposed()
    {
        var keys = SentinelKeys.LoadOrCreate(_dir.File("keys"));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(keys.Dir));
        foreach (var name in new[] { SentinelKeys.SecretFile, SentinelKeys.JoinTokenFile, SentinelKeys.AdminTokenFile })
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(keys.Dir, name)));
        Assert.Equal(40, keys.PublicKey.Length);
        Assert.Equal(keys.PublicKey, File.ReadAllText(Path.Combine(keys.Dir, SentinelKeys.PublicFile)).Trim());

        // Loaded again: the same identity and tokens.
        var again = SentinelKeys.LoadOrCreate(keys.Dir);
        Assert.Equal((keys.PublicKey, keys.JoinToken, keys.AdminToken, false), (again.PublicKey, again.JoinToken, again.AdminToken, again.Created));

        string secret = Path.Combine(keys.Dir, SentinelKeys.SecretFile);
        File.SetUnixFileMode(secret, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.OtherRead);
        var e = Assert.Throws<InputException>(() => SentinelKeys.LoadOrCreate(keys.Dir));
        Assert.Equal($"{secret} is readable by others (mode 604); run: chmod 600 {secret}", e.Message);
    }

    [Fact]
    public void Sentinel_Binary_ConnectionFloodAtTheFdLimit_SurvivesAndDispatches()
    {
        // Issue 11: with `ulimit -n 1024`, 1,500 plain TCP connects crashed the sentinel (NetMQ's I/O
        // thread, NullReferenceException in TcpListener.InCompleted). ulimit -n sets the hard limit
        // too, so raising the soft one does not help here: the sentinel must shed the flood.
        string home = _dir.File("home");
        Directory.CreateDirectory(home);
        string db = Path.Combine(home, "casparian.db");
        long id;
        using (var store = JobStores.Open(Defaults.Store(db)))
        {
            store.RegisterParser(new ParserRecord
            {
                Name = "csv", Version = "1.0", Source = Source, EnvHash = Hashes.SystemEnv,
                SourceHash = Hashes.Sha256Hex(Source), ArtifactHash = Hashes.ArtifactHash(Source, ""), EntryModule = "parser",
            });
            id = store.Enqueue(new NewJob("csv", "1.0", "/data/a.csv", "ha", 0));
        }
        int port = Cluster.FreePort();
        var psi = new System.Diagnostics.ProcessStartInfo("/bin/sh") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in new[] { "-c", $"ulimit -n 1024 && exec \"$0\" sentinel --bind tcp://127.0.0.1:{port}", Repo.Binary }) psi.ArgumentList.Add(a);
        psi.Environment["CASPARIAN_HOME"] = home;
        using var sentinel = System.Diagnostics.Process.Start(psi)!;
        var stderr = new StringBuilder();
        sentinel.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        sentinel.BeginErrorReadLine();
        string Log() { lock (stderr) return stderr.ToString(); }
        var flood = new List<System.Net.Sockets.TcpClient>();
        try
        {
            Eventually.True(() => Log().Contains("listening on"), TimeSpan.FromSeconds(20), "the sentinel listening", Log);
            for (int i = 0; i < 1500; i++)
            {
                var c = new System.Net.Sockets.TcpClient();
                try { c.Connect(System.Net.IPAddress.Loopback, port); }
                catch (System.Net.Sockets.SocketException) { }
                flood.Add(c);
            }
            Eventually.True(() => Log().Contains("connection flood?"), TimeSpan.FromSeconds(20), "the flood shed", Log);
            Assert.False(sentinel.HasExited, Log());

            string keys = Path.Combine(home, "keys");
            using var worker = new ScriptedWorker($"tcp://127.0.0.1:{port}", "after-flood", slots: 1,
                token: SentinelKeys.ReadJoinToken(keys), serverKey: SentinelKeys.ReadPublicKey(keys));
            Assert.Equal((ulong)id, worker.Expect(OpCode.Dispatch, TimeSpan.FromSeconds(20)).JobId);
            Assert.False(sentinel.HasExited, Log());
            Assert.DoesNotContain("Unhandled exception", Log());
        }
        finally
        {
            foreach (var c in flood) c.Dispose();
            if (!sentinel.HasExited) sentinel.Kill();
            sentinel.WaitForExit();
        }
    }

    [Fact]
    public void Keys_Command_PrintsTheWorkerLineAndRotatesTheToken()
    {
        var env = new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _dir.File("home") };
        var first = Proc.Run(Repo.Binary, ["keys", "--bind", "tcp://0.0.0.0:6000"], environment: env);
        Assert.True(first.ExitCode == 0, first.ToString());
        var keys = SentinelKeys.LoadOrCreate(_dir.File("home/keys"));
        Assert.Equal(
            $"sentinel public key: {keys.PublicKey}\ncasparian worker --connect tcp://{System.Net.Dns.GetHostName()}:6000 --sentinel-key '{keys.PublicKey}' --token {keys.JoinToken}\n",
            first.Stdout);

        var rotated = Proc.Run(Repo.Binary, ["keys", "rotate-token"], environment: env);
        Assert.True(rotated.ExitCode == 0, rotated.ToString());
        string token = SentinelKeys.ReadJoinToken(keys.Dir)!;
        Assert.NotEqual(keys.JoinToken, token);
        Assert.EndsWith($" --token {token}\n", rotated.Stdout);
        Assert.Equal(keys.PublicKey, SentinelKeys.ReadPublicKey(keys.Dir));
    }

    [Fact]
    public void Worker_Binary_WithoutTheSentinelKey_RefusesInOneLine()
    {
        var env = new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _dir.File("home"), ["CASPARIAN_SENTINEL_KEY"] = null };
        var r = Proc.Run(Repo.Binary, ["worker", "--connect", "tcp://127.0.0.1:9"], environment: env);
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Equal("error: worker: connecting to tcp://127.0.0.1:9 needs the sentinel's public key: --sentinel-key Z85 and --token TOKEN " +
            "(`casparian keys` on the sentinel's machine prints the whole command line), or --insecure for a plaintext link", r.Stderr.Trim());
    }

    // ---- interop with libzmq (Debian's pyzmq) ------------------------------------------------

    private const string WireHelpers = """
        import json, struct, sys, zmq
        def frames(op, job, obj):
            body = json.dumps(obj).encode() if obj is not None else b""
            return [struct.pack("!BBHQI", 4, op, 0, job, len(body)), body]
        def parse(fs):
            ver, op, _, job, n = struct.unpack("!BBHQI", fs[-2][:16])
            return op, job, (json.loads(fs[-1]) if fs[-1] else None)
        """;

    private const string PyWorker = WireHelpers + """

        endpoint, server_key, token = sys.argv[1], sys.argv[2], sys.argv[3]
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.linger = 0
        if server_key != "-":
            pub, sec = zmq.curve_keypair()
            s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, server_key.encode()
        s.connect(endpoint)
        hello = {"capabilities": ["*"], "worker_id": "pyzmq-worker", "slots": 1}
        if token != "-":
            hello["auth_token"] = token
        s.send_multipart(frames(1, 0, hello))
        got = []
        if s.poll(4000):
            op, job, body = parse(s.recv_multipart())
            got.append(op)
            if op == 2:
                s.send_multipart(frames(5, job, {"status": "SUCCESS", "metrics": {"rows": 5}, "artifacts": []}))
                s.poll(500)
        print(json.dumps(got))
        """;

    [Fact]
    public void Interop_PyzmqWorker_WithKeysAndToken_GetsWork_WithoutThemGetsNothing()
    {
        long id = Queue(1)[0];
        using var host = new SentinelHost(Db);
        var keys = TestKeys.Shared;

        var refused = PyRun(PyWorker, host.Endpoint, keys.PublicKey, "wrong-token");
        Assert.Equal("[6]", refused.Stdout.Trim());
        var plaintext = PyRun(PyWorker, host.Endpoint, "-", keys.JoinToken);
        Assert.Equal("[]", plaintext.Stdout.Trim());
        Assert.Equal(JobState.Queued, StateOf(id));

        var joined = PyRun(PyWorker, host.Endpoint, keys.PublicKey, keys.JoinToken);
        Assert.Equal("[2]", joined.Stdout.Trim());
        WaitForState(id, JobState.Completed);
    }

    private const string PySentinel = WireHelpers + """

        port_file = sys.argv[1]
        pub, sec = zmq.curve_keypair()
        r = zmq.Context.instance().socket(zmq.ROUTER)
        r.linger = 0
        r.curve_server = True
        r.curve_secretkey = sec
        r.curve_publickey = pub
        port = r.bind_to_random_port("tcp://127.0.0.1")
        with open(port_file + ".tmp", "w") as f:
            f.write(f"{port} {pub.decode()}")
        import os
        os.rename(port_file + ".tmp", port_file)
        if not r.poll(20000):
            print("no IDENTIFY"); sys.exit(1)
        fs = r.recv_multipart()
        op, job, hello = parse(fs)
        r.send_multipart([fs[0]] + frames(4, 0, {"status": "ALIVE"}))
        answer = None
        while r.poll(5000):
            fs2 = r.recv_multipart()
            if parse(fs2)[0] == 4:
                answer = parse(fs2)[2]["status"]
                break
        print(json.dumps({"op": op, "worker_id": hello["worker_id"], "auth_token": hello.get("auth_token"), "probe_answer": answer}))
        """;

    [Fact]
    public void Interop_PyzmqSentinel_OurWorkerCompletesTheCurveHandshake()
    {
        string portFile = _dir.File("py-sentinel");
        var python = Task.Run(() => PyRun(PySentinel, portFile));
        string[] parts = Eventually.Value(() => File.Exists(portFile) ? File.ReadAllText(portFile).Split(' ') : null, TimeSpan.FromSeconds(20), "pyzmq sentinel's port");
        using (var run = new WorkerRun($"tcp://127.0.0.1:{parts[0]}", configure: o => o with { SentinelKey = parts[1], JoinToken = "token-for-py" }))
        {
            Assert.True(python.Wait(TimeSpan.FromSeconds(40)), "pyzmq sentinel finished");
        }
        var result = python.Result;
        Assert.True(result.ExitCode == 0, result.ToString());
        using var doc = JsonDocument.Parse(result.Stdout);
        Assert.Equal(1, doc.RootElement.GetProperty("op").GetInt32());
        Assert.Equal("test-worker", doc.RootElement.GetProperty("worker_id").GetString());
        Assert.Equal("token-for-py", doc.RootElement.GetProperty("auth_token").GetString());
        Assert.Equal("IDLE", doc.RootElement.GetProperty("probe_answer").GetString());
    }

    private static ProcessResult PyRun(string script, params string[] args) =>
        Proc.Run(Guest.DebianPython, ["-c", script, .. args], TimeSpan.FromSeconds(60));
}
