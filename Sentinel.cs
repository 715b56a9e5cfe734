// The control plane (SPEC §1, §2, §6): a ROUTER socket, the live workers, and the job store.
//
// One thread owns the socket and runs turns: receive what has arrived (bounded), handle it in
// memory, then do all store work of the turn in one transaction (conclusions, deploys, lost
// workers, claims for every free slot), and only after the commit send what it produced
// (DISPATCH, ACK, ABORT). A DISPATCH is therefore never sent for a claim that is not durable, and
// the disk is touched once per turn rather than once per message. While a commit runs, ZeroMQ
// queues incoming messages; if the store is locked or failing, the turn's work stays pending and is
// retried, so messages queue up instead of being lost.
//
// Partial files: Sentinel.Messages.cs (one handler per opcode), Sentinel.Step.cs (the group commit
// and dispatch). The sentinel is embeddable: `start` hosts one next to a worker. It depends on the
// store through IJobStore only.
using NetMQ;
using NetMQ.Sockets;

namespace Casparian;

internal sealed record SentinelOptions
{
    /// <summary>tcp://HOST:PORT (PORT may be * for a free one; see <see cref="Sentinel.Endpoint"/>) or ipc://PATH.</summary>
    public required string Bind { get; init; }
    /// <summary>The job store; its clock is the sentinel's.</summary>
    public required StoreOptions Store { get; init; }
    /// <summary>A worker silent this long is dropped and its jobs requeued.</summary>
    public required TimeSpan HeartbeatTimeout { get; init; }
    /// <summary>Sent to workers as DISPATCH timeout_seconds; null leaves it to the worker.</summary>
    public required TimeSpan? JobTimeout { get; init; }
    /// <summary>How often the store is asked for newly queued or due jobs and for cancellations.</summary>
    public required TimeSpan PollInterval { get; init; }
    public required RoleLog Log { get; init; }
}

internal sealed partial class Sentinel : IDisposable
{
    /// <summary>Slots a worker may claim, whatever it says: a ROUTER drops messages past its send high-water mark (1000).</summary>
    public const int MaxSlots = 256;
    /// <summary>Slots assumed for a worker whose IDENTIFY does not say (SPEC §9: 4).</summary>
    public const int DefaultSlots = 4;
    /// <summary>Messages handled per turn before the store step runs: bounds a turn's transaction.</summary>
    private const int MaxMessagesPerTurn = 2048;
    /// <summary>
    /// Longest a turn waits for another process's store lock (a CLI writing): the socket must not wait
    /// long, and a step that times out keeps its work and is retried on a later turn.
    /// </summary>
    private static readonly TimeSpan TurnLockTimeout = TimeSpan.FromSeconds(2);

    private readonly SentinelOptions _options;
    private readonly TimeProvider _clock;
    private readonly IJobStore _store;
    private readonly RouterSocket _router;
    private readonly RoleLog _log;

    // Workers: tens of entries, searched linearly. In-flight jobs: a dictionary (job id → holder).
    // Store work waiting for the turn's step, and the step's schedule, are in _work (Sentinel.Step.cs).
    private readonly List<WorkerEntry> _workers = [];
    private readonly Dictionary<long, InFlight> _inFlight = [];

    private readonly long _startedAt;
    private long _malformed;
    private bool _started;

    public Sentinel(SentinelOptions options)
    {
        _options = options;
        _clock = options.Store.Clock;
        _log = options.Log;
        var lockTimeout = options.Store.LockTimeout < TurnLockTimeout ? options.Store.LockTimeout : TurnLockTimeout;
        _store = JobStores.Open(options.Store with { LockTimeout = lockTimeout });
        try
        {
            _router = new RouterSocket();
        }
        catch
        {
            _store.Dispose();
            throw;
        }
        _startedAt = NowMs();
        // Jobs RUNNING in the store that no worker claims within a heartbeat timeout of our start
        // belong to workers that are gone (left over from a previous sentinel).
        _work.NextSweep = _startedAt + (long)options.HeartbeatTimeout.TotalMilliseconds;
    }

    /// <summary>The bound address, with the real port when <see cref="SentinelOptions.Bind"/> asked for *.</summary>
    public string Endpoint { get; private set; } = "";

    /// <summary>Messages dropped as malformed since start (thread-safe read).</summary>
    public long MalformedMessages => Interlocked.Read(ref _malformed);

    /// <summary>Binds the socket. Separate from <see cref="Run"/> so a host knows the address before serving.</summary>
    public void Start()
    {
        try
        {
            _router.Bind(_options.Bind);
        }
        catch (AddressAlreadyInUseException e)
        {
            throw SentinelThrow.Bind_InUse(_options.Bind, e);
        }
        catch (NetMQException e)
        {
            throw SentinelThrow.Bind_Failed(_options.Bind, e);
        }
        Endpoint = _router.Options.LastEndpoint ?? _options.Bind;
        _started = true;
        _log.Info($"listening on {Endpoint}, store {_store.Location} (heartbeat timeout {_options.HeartbeatTimeout.TotalSeconds:0.###} s, retry limit {_options.Store.RetryLimit})");
    }

    /// <summary>Serves until <paramref name="cancel"/> fires, then persists what is pending and returns.</summary>
    public void Run(CancellationToken cancel)
    {
        if (!_started) Start();
        while (!cancel.IsCancellationRequested)
        {
            ReceiveTurn(WaitBudget());
            long now = NowMs();
            CheckWorkers(now);
            Step(now, final: false);
            PublishWorkers(now);
        }
        Step(NowMs(), final: true);
        _log.Info($"stopped; {_inFlight.Count} job(s) still RUNNING on {_workers.Count} worker(s) stay in the store for their workers to conclude");
    }

    public void Dispose()
    {
        _router.Dispose();
        _store.Dispose();
        Metrics.Dispose();
    }

    private long NowMs() => _clock.GetUtcNow().ToUnixTimeMilliseconds();

    private TimeSpan WaitBudget()
    {
        long now = NowMs();
        if (HasPendingWork) return _work.RetryAt > now ? TimeSpan.FromMilliseconds(_work.RetryAt - now) : TimeSpan.Zero;
        long next = Math.Min(_work.NextPoll, now + 100);
        return TimeSpan.FromMilliseconds(Math.Clamp(next - now, 0, 100));
    }

    private void ReceiveTurn(TimeSpan firstWait)
    {
        NetMQMessage? message = null;
        if (!_router.TryReceiveMultipartMessage(firstWait, ref message, 3)) return;
        Handle(message);
        for (int n = 1; n < MaxMessagesPerTurn; n++)
        {
            message = null;
            if (!_router.TryReceiveMultipartMessage(TimeSpan.Zero, ref message, 3)) return;
            Handle(message);
        }
    }

    /// <summary>Drops workers silent past the timeout and probes those that have been quiet a while.</summary>
    private void CheckWorkers(long now)
    {
        long timeout = (long)_options.HeartbeatTimeout.TotalMilliseconds;
        long probeAfter = Math.Max(timeout / 3, 1);
        for (int i = _workers.Count - 1; i >= 0; i--)
        {
            var w = _workers[i];
            long silent = now - w.LastSeen;
            if (silent > timeout)
            {
                DropWorker(w, $"worker {w.Id} silent for {silent / 1000.0:0.#} s (heartbeat timeout {timeout / 1000.0:0.#} s)");
                continue;
            }
            if (silent > probeAfter && now - w.LastProbe > probeAfter)
            {
                w.LastProbe = now;
                Wire.Send(_router, w.Identity, OpCode.Heartbeat, 0, Probe);
            }
        }
    }

    private static readonly byte[] Probe = Payload.Encode(new Heartbeat { Status = WorkerStatus.Alive }, ProtocolJson.Default.Heartbeat);

    private void DropWorker(WorkerEntry w, string reason)
    {
        _workers.Remove(w);
        int held = ReleaseJobsOf(w);
        _work.Lost.Add((w.Id, reason));
        _log.Warn($"{reason}; requeueing {held} job(s)");
    }

    /// <summary>Forgets the in-flight jobs of <paramref name="w"/> (the store side is requeued by the caller).</summary>
    private int ReleaseJobsOf(WorkerEntry w)
    {
        var ids = new List<long>();
        foreach (var (id, f) in _inFlight)
            if (f.Worker == w) ids.Add(id);
        foreach (var id in ids) _inFlight.Remove(id);
        w.Active = 0;
        return ids.Count;
    }

    private WorkerEntry? FindByIdentity(byte[] identity)
    {
        foreach (var w in _workers)
            if (w.Identity.AsSpan().SequenceEqual(identity)) return w;
        return null;
    }

    private WorkerEntry? FindById(string id)
    {
        foreach (var w in _workers)
            if (w.Id == id) return w;
        return null;
    }

    /// <summary>A worker as the sentinel sees it. <see cref="Id"/> is what the store records.</summary>
    private sealed class WorkerEntry(byte[] identity, string id, List<string> capabilities, int slots, long now)
    {
        public byte[] Identity { get; } = identity;
        public string Id { get; } = id;
        public List<string> Capabilities { get; set; } = capabilities;
        public int Slots { get; set; } = slots;
        /// <summary>Jobs dispatched (or adopted) and not yet concluded.</summary>
        public int Active { get; set; }
        public long LastSeen { get; set; } = now;
        public long LastProbe { get; set; } = now;
        public long LastStoreHeartbeat { get; set; } = now;
        /// <summary>After a REJECTED, no dispatch until then: the worker was fuller than we thought.</summary>
        public long PausedUntil { get; set; }
        /// <summary>Environments the worker reported ready (ENV_READY).</summary>
        public List<string> ReadyEnvs { get; } = [];
        public int Free => Math.Max(0, Slots - Active);
    }

    /// <summary>
    /// A job on a worker. Adopted: found RUNNING on it in the store when it identified (we restarted);
    /// Aborting: cancelled, ABORT sent. Either kind is released when the worker's heartbeat stops listing it.
    /// </summary>
    private readonly record struct InFlight(WorkerEntry Worker, bool Adopted = false, bool Aborting = false);
}

internal static class SentinelThrow
{
    public static UnavailableException Bind_InUse(string address, Exception e) =>
        new($"cannot bind {address}: the address is already in use (another sentinel?); pick another with --bind", e);
    public static UnavailableException Bind_Failed(string address, Exception e) =>
        new($"cannot bind {address}: {e.Message}", e);
}
