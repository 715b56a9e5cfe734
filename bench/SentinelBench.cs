// Sentinel end to end (SPEC §2, §6): jobs go QUEUED → DISPATCH → CONCLUDE → COMPLETED (committed)
// through a real sentinel on loopback TCP, with benchmark workers (DEALER threads) that conclude
// every DISPATCH at once. What is measured is the control plane alone: socket, loop and store.
using System.ComponentModel;
using BenchmarkDotNet.Attributes;
using NetMQ;
using NetMQ.Sockets;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[Description("Each invocation runs 20,000 jobs through the sentinel; times are per job. Fleet = workers x slots each. " +
             "Workers are held until the invocation starts, then conclude instantly; the invocation ends when the last " +
             "conclusion is committed to the store.")]
public class SentinelBench
{
    private const int Jobs = 20_000;

    [Params("1x4", "4x4", "1x64")]
    public string Fleet { get; set; } = "1x4";

    /// <summary>The link as users get it (CURVE, true) or with --insecure (plaintext): the cost of encryption.</summary>
    [Params(false, true)]
    public bool Curve { get; set; } = true;

    private string _dir = "";
    private IJobStore _store = null!;
    private Sentinel _sentinel = null!;
    private Thread _sentinelThread = null!;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<BenchWorker> _workers = [];
    private NewJob[] _jobs = [];

    [GlobalSetup]
    public void Setup()
    {
        string[] fleet = Fleet.Split('x');
        int workers = int.Parse(fleet[0], System.Globalization.CultureInfo.InvariantCulture);
        int slots = int.Parse(fleet[1], System.Globalization.CultureInfo.InvariantCulture);
        _dir = Directory.CreateTempSubdirectory("casparian-bench-sentinel-").FullName;
        string db = Path.Combine(_dir, "casparian.db");
        _store = JobStores.Open(Defaults.Store(db));
        const string source = "def parse(path):\n    return [{'x': 1}]\n";
        _store.RegisterParser(new ParserRecord
        {
            Name = "bench",
            Version = "1.0",
            Source = source,
            EnvHash = Hashes.SystemEnv,
            SourceHash = Hashes.Sha256Hex(source),
            ArtifactHash = Hashes.ArtifactHash(source, ""),
        });
        _jobs = [.. Enumerable.Range(0, Jobs).Select(i => new NewJob("bench", "1.0", $"/data/in/{i:D7}.csv", "h"))];

        _sentinel = new Sentinel(Defaults.Sentinel("tcp://127.0.0.1:*", db, new RoleLog(Console.Error, "sentinel", quiet: true, TimeProvider.System)) with
        {
            JobTimeout = null,
            // Under load, claims follow every freed slot; the poll only matters when work is added to an idle sentinel.
            PollInterval = TimeSpan.FromMilliseconds(5),
            Insecure = !Curve,
        });
        _sentinel.Start();
        _sentinelThread = new Thread(() => _sentinel.Run(_stop.Token)) { Name = "sentinel", IsBackground = true };
        _sentinelThread.Start();
        for (int i = 0; i < workers; i++) _workers.Add(new BenchWorker(_sentinel.Endpoint, $"bench-{i}", slots, Curve));
        Started(_sentinel, db);

        // Checked before every run: a small batch goes through and lands COMPLETED with its receipt.
        var first = _store.EnqueueMany(_jobs[..100]);
        Run(100);
        if (_store.Get(first) is not { State: JobState.Completed, MetricsJson: """{"rows":1}""" } || _store.Counts()[JobState.Completed] != 100)
            throw new InvalidOperationException("jobs did not complete through the sentinel");
    }

    /// <summary>For a variant that adds something beside the running sentinel (StatusBench: its status page).</summary>
    private protected virtual void Started(Sentinel sentinel, string db) { }

    private protected virtual void Stopping() { }

    [GlobalCleanup]
    public void Cleanup()
    {
        Stopping();
        foreach (var w in _workers) w.Dispose();
        _stop.Cancel();
        _sentinelThread.Join();
        _sentinel.Dispose();
        _store.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [IterationSetup]
    public void Queue()
    {
        foreach (var w in _workers) w.Hold();
        _store.EnqueueMany(_jobs);
    }

    [Benchmark(OperationsPerInvoke = Jobs)]
    [Throughput(1, Unit = "jobs")]
    [Target("end to end through the sentinel: ≥ 5,000 jobs/s")]
    public void EndToEnd() => Run(Jobs);

    /// <summary>Releases the workers and returns once <paramref name="count"/> conclusions are committed.</summary>
    private void Run(int count) => Run(_store, _workers, count);

    /// <summary>Releases <paramref name="workers"/> and returns once <paramref name="count"/> conclusions are committed to <paramref name="store"/>.</summary>
    internal static void Run(IJobStore store, IReadOnlyList<BenchWorker> workers, int count)
    {
        using var done = new Countdown(count);
        foreach (var w in workers) w.Release(done);
        if (!done.Wait(TimeSpan.FromMinutes(2))) throw new TimeoutException($"{done.Remaining} of {count} jobs were never dispatched and concluded");
        // Each worker's conclusions arrive in order on its socket and commit in order, so its last job
        // being COMPLETED means all of its jobs are.
        foreach (var w in workers)
        {
            long last = w.LastConcluded;
            // A worker that has concluded nothing yet holds nothing to wait for (the others took every job).
            if (last == 0) continue;
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (store.Get(last)?.State != JobState.Completed)
            {
                if (DateTime.UtcNow > deadline) throw new TimeoutException($"job {last} was concluded but never committed COMPLETED");
                Thread.Sleep(0);
            }
        }
        foreach (var w in workers) w.Hold();
    }

    /// <summary>Conclusions still to come in this invocation; workers signal from their own threads.</summary>
    internal sealed class Countdown(int count) : IDisposable
    {
        private int _remaining = count;
        private readonly ManualResetEventSlim _done = new(count <= 0);

        public int Remaining => Volatile.Read(ref _remaining);

        public void Signal()
        {
            if (Interlocked.Decrement(ref _remaining) == 0) _done.Set();
        }

        public bool Wait(TimeSpan timeout) => _done.Wait(timeout);

        public void Dispose() => _done.Dispose();
    }

    /// <summary>A worker that answers every DISPATCH with SUCCESS at once, except while held.</summary>
    internal sealed class BenchWorker : IDisposable
    {
        private static readonly byte[] Receipt = Payload.Encode(new JobReceipt
        {
            Status = ReceiptStatus.Success,
            Metrics = new() { ["rows"] = 1 },
            Artifacts = [new() { ["topic"] = "output", ["uri"] = "file:///out/output/job.parquet" }],
        }, ProtocolJson.Default.JobReceipt);

        private static readonly byte[] Alive = Payload.Encode(new Heartbeat { Status = WorkerStatus.Alive }, ProtocolJson.Default.Heartbeat);

        private readonly Thread _thread;
        private volatile bool _stopping;
        private volatile Countdown? _release;
        private long _lastConcluded;

        public long LastConcluded => Interlocked.Read(ref _lastConcluded);

        public BenchWorker(string endpoint, string id, int slots, bool curve)
        {
            _thread = new Thread(() => Loop(endpoint, id, slots, curve)) { Name = id, IsBackground = true };
            _thread.Start();
        }

        public void Hold() => _release = null;

        public void Release(Countdown done) => _release = done;

        private void Loop(string endpoint, string id, int slots, bool curve)
        {
            using var socket = new DealerSocket();
            if (curve)
            {
                socket.Options.CurveCertificate = new NetMQCertificate();
                socket.Options.CurveServerKey = Defaults.Keys.Certificate.PublicKey;
            }
            socket.Connect(endpoint);
            Wire.Send(socket, OpCode.Identify, 0, new Identify { Capabilities = ["*"], WorkerId = id, Slots = slots, AuthToken = Defaults.Keys.JoinToken },
                ProtocolJson.Default.Identify);
            var held = new Queue<ulong>();
            while (!_stopping)
            {
                var release = _release;
                if (release is not null)
                    while (held.Count > 0) Conclude(socket, held.Dequeue(), release);
                NetMQMessage? m = null;
                if (!socket.TryReceiveMultipartMessage(TimeSpan.FromMilliseconds(held.Count > 0 ? 1 : 20), ref m)) continue;
                var msg = Wire.FromDealerFrames(m);
                if (msg.Op == OpCode.Heartbeat) Wire.Send(socket, OpCode.Heartbeat, 0, Alive);
                else if (msg.Op != OpCode.Dispatch) continue;
                else if (_release is { } open) Conclude(socket, msg.JobId, open);
                else held.Enqueue(msg.JobId);
            }
        }

        private void Conclude(DealerSocket socket, ulong jobId, Countdown done)
        {
            Wire.Send(socket, OpCode.Conclude, jobId, Receipt);
            Interlocked.Exchange(ref _lastConcluded, (long)jobId);
            done.Signal();
        }

        public void Dispose()
        {
            _stopping = true;
            _thread.Join();
        }
    }
}
