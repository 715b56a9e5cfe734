// ZeroMQ layer (SPEC §2.3): one DEALER→ROUTER→DEALER round trip, and the sentinel's dispatch loop
// without the store, each against the same exchange in pyzmq (Debian's python3-zmq on libzmq).
// Every peer is a real socket on loopback TCP, owned by its own thread as in the running system:
//
//   RoundTrip     bench thread: DEALER ──HEARTBEAT──▶ echo thread: ROUTER   (RoundTripCurve: the same over CURVE)
//                               DEALER ◀────ACK───── (reflects the heartbeat's current_job_id)
//   DispatchLoop  bench thread: ROUTER ──DISPATCH──▶ worker thread: DEALER
//                 (the sentinel) ROUTER ◀─CONCLUDE── (SUCCESS receipt per job), 4 jobs in flight
//
// Both sides encode and decode every payload on every message, as the real roles do.
using System.ComponentModel;
using BenchmarkDotNet.Attributes;
using NetMQ;
using NetMQ.Sockets;

namespace Casparian.Bench;

[MemoryDiagnoser]
[Description("NetMQ over loopback TCP against pyzmq (libzmq) in Debian's /usr/bin/python3, both with real peers on their own threads. " +
             "The Python pairs run both peers as threads of one interpreter, so they share its GIL. " +
             "Allocations are process-wide, so they include the peer thread's and NetMQ's own.")]
public class ZmqBench
{
    public const int Jobs = 1_000;

    /// <summary>Jobs in flight during the dispatch loop: a worker's 4 slots.</summary>
    public const int Window = 4;

    private const string Loopback = "tcp://127.0.0.1";

    /// <summary>Liveness only: a dead peer fails the run instead of hanging it.</summary>
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    private static readonly Heartbeat HeartbeatValue = new()
    {
        Status = WorkerStatus.Busy,
        CurrentJobId = 123_456,
        ActiveJobCount = 4,
        ActiveJobIds = [123_456, 123_457, 123_458, 123_459],
    };

    private static readonly Dispatch DispatchValue = new()
    {
        PluginName = "sales_csv",
        FilePath = "/data/incoming/2026/11/sales-000123.csv",
        Sinks = [new SinkConfig { Topic = "output", Uri = "parquet://output" }],
        FileVersionId = 1,
        EnvHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        SourceCode = "import csv\n\ndef parse(path):\n    with open(path) as f:\n        return list(csv.DictReader(f))\n",
        ArtifactHash = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
    };

    private Peer? _echo;
    private DealerSocket? _dealer;

    private RouterSocket? _router;
    private Peer? _worker;
    private byte[] _workerIdentity = [];
    private ulong _nextJobId = 1;
    private List<ulong>? _concluded;

    private NetMQMessage? _received;

    /// <summary>
    /// Runs once per interpreter (timeit re-runs a setup per repeat, and these sockets and threads must
    /// outlive the repeats). Same payload bytes as the C# side, checked before anything is timed.
    /// </summary>
    public static string PythonGlobals =>
        $$"""
        import atexit, json, struct, threading, zmq
        SEP = (',', ':')
        JOBS, WINDOW = {{Jobs}}, {{Window}}
        beat_json = {{Parity.BytesLiteral(Payload.Encode(HeartbeatValue, ProtocolJson.Default.Heartbeat))}}
        dispatch_json = {{Parity.BytesLiteral(Payload.Encode(DispatchValue, ProtocolJson.Default.Dispatch))}}
        beat, base = json.loads(beat_json), json.loads(dispatch_json)
        assert json.dumps(beat, separators=SEP).encode() == beat_json
        assert json.dumps(base, separators=SEP).encode() == dispatch_json
        ctx = zmq.Context()
        stopping = threading.Event()
        peers = []

        def serve(sock, handle):
            sock.RCVTIMEO = 100
            while not stopping.is_set():
                try:
                    frames = sock.recv_multipart()
                except zmq.Again:
                    continue
                handle(sock, frames)
            sock.close(0)

        def peer(sock, handle):
            t = threading.Thread(target=serve, args=(sock, handle), daemon=True)
            t.start()
            peers.append(t)

        def echo(router, frames):
            ident, h, b = frames
            v, op, _, jid, n = struct.unpack('!BBHQI', h)
            if v != 4 or op > 11 or n != len(b): raise ValueError(h)
            hb = json.loads(b)
            p = json.dumps({'success': True, 'message': 'alive', 'plugin_id': hb.get('current_job_id')}, separators=SEP).encode()
            router.send_multipart([ident, struct.pack('!BBHQI', 4, 11, 0, jid, len(p)), p])

        def work(dealer, frames):
            h, b = frames
            v, op, _, jid, n = struct.unpack('!BBHQI', h)
            if v != 4 or op > 11 or n != len(b): raise ValueError(h)
            d = json.loads(b)
            if op != 2 or d['file_version_id'] != jid: raise ValueError(jid)
            p = json.dumps({'status': 'SUCCESS', 'metrics': {'rows': 100000, 'bytes': 4194304, 'batches': 2, 'duration_ms': 812},
                            'artifacts': [{'topic': 'output', 'uri': f'file:///out/output/job-{jid}.parquet'}]}, separators=SEP).encode()
            dealer.send_multipart([struct.pack('!BBHQI', 4, 5, 0, jid, len(p)), p])

        echo_router = ctx.socket(zmq.ROUTER)
        port = echo_router.bind_to_random_port('{{Loopback}}')
        peer(echo_router, echo)
        dealer = ctx.socket(zmq.DEALER)
        dealer.RCVTIMEO = {{(int)Patience.TotalMilliseconds}}
        dealer.connect(f'{{Loopback}}:{port}')

        router = ctx.socket(zmq.ROUTER)
        router.RCVTIMEO = {{(int)Patience.TotalMilliseconds}}
        port = router.bind_to_random_port('{{Loopback}}')
        worker = ctx.socket(zmq.DEALER)
        worker.connect(f'{{Loopback}}:{port}')
        p = json.dumps({'capabilities': ['*'], 'worker_id': 'bench-worker', 'slots': WINDOW}, separators=SEP).encode()
        worker.send_multipart([struct.pack('!BBHQI', 4, 1, 0, 0, len(p)), p])
        worker_ident, h, _ = router.recv_multipart()
        assert struct.unpack('!BBHQI', h)[1] == 1
        peer(worker, work)
        next_id = 1

        def dispatch(jid):
            base['file_version_id'] = jid
            p = json.dumps(base, separators=SEP).encode()
            router.send_multipart([worker_ident, struct.pack('!BBHQI', 4, 2, 0, jid, len(p)), p])

        def run_batch(concluded=None):
            global next_id
            nxt, end = next_id, next_id + JOBS
            in_flight = []
            while len(in_flight) < WINDOW and nxt < end:
                in_flight.append(nxt)
                dispatch(nxt)
                nxt += 1
            done = 0
            while done < JOBS:
                _, h, b = router.recv_multipart()
                v, op, _, jid, n = struct.unpack('!BBHQI', h)
                if v != 4 or op > 11 or n != len(b): raise ValueError(h)
                r = json.loads(b)
                if op != 5 or r['status'] != 'SUCCESS': raise ValueError(jid)
                slot = in_flight.index(jid)
                done += 1
                if concluded is not None: concluded.append(jid)
                if nxt < end:
                    in_flight[slot] = nxt
                    dispatch(nxt)
                    nxt += 1
                else:
                    in_flight[slot] = 0
            next_id = end
            return done

        def close():
            stopping.set()
            for t in peers: t.join()
            dealer.close(0)
            router.close(0)
            ctx.term()

        atexit.register(close)

        p = json.dumps(beat, separators=SEP).encode()
        dealer.send_multipart([struct.pack('!BBHQI', 4, 4, 0, 0, len(p)), p])
        h, b = dealer.recv_multipart()
        assert struct.unpack('!BBHQI', h) == (4, 11, 0, 0, len(b)), h
        assert json.loads(b) == {'success': True, 'message': 'alive', 'plugin_id': 123456}, b
        ids = []
        assert run_batch(ids) == JOBS and sorted(ids) == list(range(1, JOBS + 1)) and next_id == JOBS + 1
        """;

    [GlobalSetup(Target = nameof(RoundTrip))]
    public void SetupRoundTrip() => OpenRoundTrip(curve: false);

    [GlobalSetup(Target = nameof(RoundTripCurve))]
    public void SetupRoundTripCurve() => OpenRoundTrip(curve: true);

    /// <summary>The echo pair; with <paramref name="curve"/>, a CURVE server and client as the sentinel and a worker use them.</summary>
    private void OpenRoundTrip(bool curve)
    {
        int port = 0;
        var server = new NetMQCertificate();
        _echo = new Peer("echo router", () => new RouterSocket(), s =>
        {
            if (curve)
            {
                s.Options.CurveServer = true;
                s.Options.CurveCertificate = server;
            }
            port = s.BindRandomPort(Loopback);
        }, Echo);
        _dealer = new DealerSocket();
        if (curve)
        {
            _dealer.Options.CurveCertificate = new NetMQCertificate();
            _dealer.Options.CurveServerKey = server.PublicKey;
        }
        _dealer.Connect($"{Loopback}:{port}");

        var ack = Exchange(out var header);
        if (header != new Header(OpCode.Ack, 0, header.PayloadLength) || ack != new Ack { Success = true, Message = "alive", PluginId = 123_456 })
            throw new InvalidOperationException($"echo answered {header} {ack}, expected an ACK reflecting current_job_id 123456");
    }

    [GlobalCleanup(Targets = [nameof(RoundTrip), nameof(RoundTripCurve)])]
    public void CleanupRoundTrip()
    {
        _dealer?.Dispose();
        _echo?.Dispose();
    }

    [GlobalSetup(Target = nameof(DispatchLoop))]
    public void SetupDispatchLoop()
    {
        _router = new RouterSocket();
        int port = _router.BindRandomPort(Loopback);
        _worker = new Peer("worker dealer", () => new DealerSocket(), s =>
        {
            s.Connect($"{Loopback}:{port}");
            Wire.Send(s, OpCode.Identify, 0, new Identify { Capabilities = ["*"], WorkerId = "bench-worker", Slots = Window }, ProtocolJson.Default.Identify);
        }, Work);
        var identify = Wire.FromRouterFrames(Receive(_router, _worker));
        if (identify.Op != OpCode.Identify) throw new InvalidOperationException($"worker opened with {identify.Op.ToWireName()}, expected IDENTIFY");
        _workerIdentity = identify.Identity!;

        _concluded = [];
        int done = DispatchLoop();
        var expected = Enumerable.Range(1, Jobs).Select(i => (ulong)i);
        if (done != Jobs || _nextJobId != Jobs + 1 || !_concluded.Order().SequenceEqual(expected))
            throw new InvalidOperationException($"dispatch loop concluded {done} jobs ({_concluded.Count} ids, next {_nextJobId}), expected exactly jobs 1..{Jobs}");
        _concluded = null;
    }

    [GlobalCleanup(Target = nameof(DispatchLoop))]
    public void CleanupDispatchLoop()
    {
        _worker?.Dispose();
        _router?.Dispose();
    }

    [Benchmark]
    [Python("""
        p = json.dumps(beat, separators=SEP).encode()
        dealer.send_multipart([struct.pack('!BBHQI', 4, 4, 0, 0, len(p)), p])
        h, b = dealer.recv_multipart()
        v, op, _, jid, n = struct.unpack('!BBHQI', h)
        if v != 4 or op > 11 or n != len(b): raise ValueError(h)
        ack = json.loads(b)
        """, Interpreter = "/usr/bin/python3")]
    public object RoundTrip() => Exchange(out _);

    /// <summary>The same round trip over CURVE (encrypted, authenticated), as every tcp:// link is by default.</summary>
    [Benchmark]
    public object RoundTripCurve() => Exchange(out _);

    /// <summary>One sentinel batch: <see cref="Jobs"/> DISPATCHes, at most <see cref="Window"/> unanswered, each CONCLUDE decoded.</summary>
    [Benchmark]
    [Throughput(Jobs, Unit = "jobs")]
    [Python("run_batch()", Interpreter = "/usr/bin/python3", Number = 1, Repeat = 7)]
    public int DispatchLoop()
    {
        var router = _router!;
        // Job ids start at 1, so 0 marks a free slot.
        Span<ulong> inFlight = stackalloc ulong[Window];
        ulong next = _nextJobId, end = _nextJobId + Jobs;
        for (int slot = 0; slot < Window && next < end; slot++)
        {
            inFlight[slot] = next;
            SendDispatch(router, next++);
        }
        int done = 0;
        while (done < Jobs)
        {
            var m = Wire.FromRouterFrames(Receive(router, _worker!));
            var receipt = m.Decode(ProtocolJson.Default.JobReceipt);
            int slot = inFlight.IndexOf(m.JobId);
            if (m.Op != OpCode.Conclude || slot < 0 || receipt.Status != ReceiptStatus.Success)
                throw new InvalidOperationException($"worker sent {m.Op.ToWireName()} {receipt.Status} for job {m.JobId}, which is not in flight");
            done++;
            _concluded?.Add(m.JobId);
            if (next < end)
            {
                inFlight[slot] = next;
                SendDispatch(router, next++);
            }
            else
            {
                inFlight[slot] = 0;
            }
        }
        _nextJobId = end;
        return done;
    }

    private Ack Exchange(out Header header)
    {
        Wire.Send(_dealer!, OpCode.Heartbeat, 0, HeartbeatValue, ProtocolJson.Default.Heartbeat);
        var reply = Wire.FromDealerFrames(Receive(_dealer!, _echo!));
        header = reply.Header;
        return reply.Decode(ProtocolJson.Default.Ack);
    }

    private void SendDispatch(RouterSocket router, ulong jobId) =>
        Wire.Send(router, _workerIdentity, OpCode.Dispatch, jobId, DispatchValue with { FileVersionId = (long)jobId }, ProtocolJson.Default.Dispatch);

    private NetMQMessage Receive(NetMQSocket socket, Peer from)
    {
        if (!socket.TryReceiveMultipartMessage(Patience, ref _received, 3))
            throw new TimeoutException($"no message from the {from.Name} within {Patience.TotalSeconds} s", from.Failure);
        return _received!;
    }

    /// <summary>The echo peer: answers each HEARTBEAT with an ACK carrying its current_job_id.</summary>
    private static void Echo(NetMQSocket router, NetMQMessage message)
    {
        var m = Wire.FromRouterFrames(message);
        var beat = m.Decode(ProtocolJson.Default.Heartbeat);
        Wire.Send(router, m.Identity!, OpCode.Ack, m.JobId, new Ack { Success = true, Message = "alive", PluginId = beat.CurrentJobId }, ProtocolJson.Default.Ack);
    }

    /// <summary>The worker peer: concludes each DISPATCH at once with a SUCCESS receipt.</summary>
    private static void Work(NetMQSocket dealer, NetMQMessage message)
    {
        var m = Wire.FromDealerFrames(message);
        var dispatch = m.Decode(ProtocolJson.Default.Dispatch);
        if (m.Op != OpCode.Dispatch || dispatch.FileVersionId != (long)m.JobId)
            throw new InvalidOperationException($"worker got {m.Op.ToWireName()} for job {m.JobId} with file_version_id {dispatch.FileVersionId}");
        Wire.Send(dealer, OpCode.Conclude, m.JobId, new JobReceipt
        {
            Status = ReceiptStatus.Success,
            Metrics = new() { ["rows"] = 100_000, ["bytes"] = 4_194_304, ["batches"] = 2, ["duration_ms"] = 812 },
            Artifacts = [new() { ["topic"] = "output", ["uri"] = $"file:///out/output/job-{m.JobId}.parquet" }],
        }, ProtocolJson.Default.JobReceipt);
    }

    /// <summary>
    /// A socket created, used and disposed by one dedicated thread, which hands each message to
    /// <c>handle</c> until disposed. A failure stops the thread and is kept for the waiting side's error.
    /// </summary>
    private sealed class Peer : IDisposable
    {
        private static readonly TimeSpan StopPoll = TimeSpan.FromMilliseconds(100);

        private readonly Thread _thread;
        private readonly ManualResetEventSlim _opened = new();
        private volatile bool _stopping;
        private volatile Exception? _failure;

        /// <param name="open">Binds or connects; runs on the peer's thread before the constructor returns.</param>
        public Peer(string name, Func<NetMQSocket> create, Action<NetMQSocket> open, Action<NetMQSocket, NetMQMessage> handle)
        {
            Name = name;
            _thread = new Thread(() => Run(create, open, handle)) { Name = name, IsBackground = true };
            _thread.Start();
            if (!_opened.Wait(Patience)) throw new TimeoutException($"the {name} did not open its socket within {Patience.TotalSeconds} s");
            if (_failure is { } e) throw new InvalidOperationException($"the {name} failed to open its socket", e);
        }

        public string Name { get; }

        public Exception? Failure => _failure;

        private void Run(Func<NetMQSocket> create, Action<NetMQSocket> open, Action<NetMQSocket, NetMQMessage> handle)
        {
            try
            {
                using var socket = create();
                open(socket);
                _opened.Set();
                NetMQMessage? message = null;
                while (!_stopping)
                    if (socket.TryReceiveMultipartMessage(StopPoll, ref message)) handle(socket, message!);
            }
            catch (Exception e)
            {
                _failure = e;
            }
            finally
            {
                _opened.Set();
            }
        }

        public void Dispose()
        {
            _stopping = true;
            _thread.Join();
            _opened.Dispose();
        }
    }
}
