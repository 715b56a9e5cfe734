// The control plane (SPEC §1, §2, §6): a ROUTER socket, the live workers, and the job store.
//
// One thread owns the socket and runs turns: receive what has arrived (bounded), handle it in
// memory, then do all store work of the turn in one transaction (conclusions, deploys, lost
// workers, claims for every free slot), and only after the commit send what it produced
// (DISPATCH, ACK, ABORT). A DISPATCH is therefore never sent for a claim that is not durable, and
// the disk is touched once per turn rather than once per message. While a commit runs, ZeroMQ
// queues incoming messages; if the store is locked or failing, the turn's work stays pending and is
// retried, so messages queue up instead of being lost. A permanent store failure (corrupt, read-only)
// ends Run with its StoreException instead.
//
// Partial files: Sentinel.Messages.cs (one handler per opcode), Sentinel.Step.cs (the group commit
// and dispatch), Sentinel.Guard.cs (the cap on connections). The sentinel is embeddable: `start`
// hosts one next to a worker. It depends on the store through IJobStore only.
using System.Diagnostics;
using System.Runtime.InteropServices;
using NetMQ;
using NetMQ.Sockets;

namespace Casparian;

internal sealed record SentinelOptions
{
    /// <summary>
    /// tcp://HOST:PORT (PORT may be * for a free one; see <see cref="Sentinel.Endpoint"/>), or inproc://NAME
    /// for a worker in the same process. ipc:// is refused: NetMQ's is a loopback TCP port.
    /// </summary>
    public required string Bind { get; init; }
    /// <summary>
    /// The CURVE key pair and the join and admin tokens. Null only for an inproc:// link (`start`),
    /// which no other process can reach: then every IDENTIFY is accepted and DEPLOY is refused.
    /// </summary>
    public required SentinelKeys? Keys { get; init; }
    /// <summary>Plaintext tcp:// (no CURVE), with a warning; tokens are still checked.</summary>
    public required bool Insecure { get; init; }
    /// <summary>Largest inbound message; a peer sending more is disconnected by ZeroMQ before it is buffered whole.</summary>
    public required long MessageLimit { get; init; }
    /// <summary>The job store; its clock is the sentinel's.</summary>
    public required StoreOptions Store { get; init; }
    /// <summary>A worker silent this long is dropped and its jobs requeued.</summary>
    public required TimeSpan HeartbeatTimeout { get; init; }
    /// <summary>On a store shared by several sentinels: how long this one's lease lasts unrenewed (Sentinel.Cluster.cs).</summary>
    public required TimeSpan LeaseTtl { get; init; }
    /// <summary>Sent to workers as DISPATCH timeout_seconds; null leaves it to the worker.</summary>
    public required TimeSpan? JobTimeout { get; init; }
    /// <summary>How often the store is asked for newly queued or due jobs and for cancellations.</summary>
    public required TimeSpan PollInterval { get; init; }
    /// <summary>
    /// On a shared store, whose every step is a network round trip: how long a turn keeps receiving,
    /// while jobs are still out, so that more conclusions share its step (<see cref="Sentinel.ReceiveTurn"/>). Zero: none.
    /// </summary>
    public required TimeSpan GatherWindow { get; init; }
    /// <summary>
    /// Server-side deadline: a job still RUNNING <see cref="JobTimeout"/> plus this long after its
    /// DISPATCH gets an ABORT; if the worker has not concluded it this long after the ABORT, it is
    /// requeued as a retry anyway. Only with a <see cref="JobTimeout"/>.
    /// </summary>
    public required TimeSpan DeadlineGrace { get; init; }
    /// <summary>The config file's [topics.NAME] tables: they override, topic by topic, the sinks a parser declares.</summary>
    public required IReadOnlyList<TopicSetting> Topics { get; init; }
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
    private readonly IDisposable? _storeLock;

    // Workers: tens of entries, searched linearly. In-flight jobs: a dictionary (job id → holder).
    // Store work waiting for the turn's step, and the step's schedule, are in _work (Sentinel.Step.cs).
    private readonly List<WorkerEntry> _workers = [];
    private readonly Dictionary<long, InFlight> _inFlight = [];

    private readonly long _startedAt;
    /// <summary><see cref="SentinelOptions.GatherWindow"/> in Stopwatch ticks; zero unless the store is shared.</summary>
    private readonly long _gatherTicks;
    private long _malformed;
    private long _turns;
    private long _nextDeadlineCheck;
    private long _refused;
    private long _nextTokenCheck;
    private bool _started;

    public Sentinel(SentinelOptions options)
    {
        _options = options;
        _clock = options.Store.Clock;
        _log = options.Log;
        var lockTimeout = options.Store.LockTimeout < TurnLockTimeout ? options.Store.LockTimeout : TurnLockTimeout;
        _storeLock = JobStores.LockForSentinel(options.Store);
        try
        {
            _store = JobStores.Open(options.Store with { LockTimeout = lockTimeout, Sentinel = Name });
        }
        catch
        {
            _storeLock?.Dispose();
            throw;
        }
        try
        {
            _router = new RouterSocket();
        }
        catch
        {
            _store.Dispose();
            _storeLock?.Dispose();
            throw;
        }
        _startedAt = NowMs();
        if (_store.Shared) _gatherTicks = (long)(options.GatherWindow.TotalSeconds * Stopwatch.Frequency);
        // Jobs RUNNING in the store that no worker claims within a heartbeat timeout of our start
        // belong to workers that are gone (left over from a previous sentinel).
        _work.NextSweep = _startedAt + (long)options.HeartbeatTimeout.TotalMilliseconds;
    }

    /// <summary>The bound address, with the real port when <see cref="SentinelOptions.Bind"/> asked for *.</summary>
    public string Endpoint { get; private set; } = "";

    /// <summary>Turns of the serving loop since start (thread-safe read): an idle sentinel must not spin.</summary>
    public long Turns => Interlocked.Read(ref _turns);

    /// <summary>Messages dropped as malformed since start (thread-safe read).</summary>
    public long MalformedMessages => Interlocked.Read(ref _malformed);

    /// <summary>Messages dropped because the peer had not proved itself (no valid IDENTIFY, a bad token) since start (thread-safe read).</summary>
    public long RefusedMessages => Interlocked.Read(ref _refused);

    /// <summary>Workers identified now (thread-safe read of a snapshot count).</summary>
    public int WorkerCount => Volatile.Read(ref _workerCount);
    private int _workerCount;

    /// <summary>Binds the socket. Separate from <see cref="Run"/> so a host knows the address before serving.</summary>
    public void Start()
    {
        string bind = _options.Bind;
        bool inproc = bind.StartsWith("inproc://", StringComparison.Ordinal);
        if (!inproc && !bind.StartsWith("tcp://", StringComparison.Ordinal)) throw SentinelThrow.Bind_NotTcp(bind);
        if (!inproc && _options.Keys is null) throw SentinelThrow.Bind_NoKeys(bind);
        bool curve = !inproc && !_options.Insecure;
        if (curve)
        {
            _router.Options.CurveServer = true;
            _router.Options.CurveCertificate = _options.Keys!.Certificate;
        }
        _router.Options.MaxMsgSize = _options.MessageLimit;
        // Every connection costs a descriptor, and running out crashes NetMQ's I/O thread: take all
        // the kernel allows this process.
        if (!inproc && FileLimit.RaiseToHard() is var (before, after) && after != before)
            _log.Info($"open file limit raised from {before} to {after}");
        try
        {
            _router.Bind(bind);
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
        if (!inproc) ArmGuard();
        _started = true;
        _log.Info($"listening on {Endpoint}, store {_store.Location} (heartbeat timeout {_options.HeartbeatTimeout.TotalSeconds:0.###} s, retry limit {_options.Store.RetryLimit})");
        if (curve) _log.Info($"link encrypted with CURVE; sentinel public key {_options.Keys!.PublicKey}; workers must present the join token");
        else if (!inproc) _log.Warn("plaintext link (--insecure): anyone who can reach the port can read the traffic, including the join token; use it on a trusted network only");
    }

    /// <summary>Serves until <paramref name="cancel"/> fires, then persists what is pending and returns.</summary>
    public void Run(CancellationToken cancel)
    {
        if (!_started) Start();
        while (!cancel.IsCancellationRequested)
        {
            Interlocked.Increment(ref _turns);
            ReceiveTurn(WaitBudget());
            long now = NowMs();
            GuardConnections(now);
            CheckWorkers(now);
            CheckDeadlines(now);
            Step(now, final: false);
            PublishWorkers(now);
        }
        Step(NowMs(), final: true);
        EndLease();
        _log.Info($"stopped; {_inFlight.Count} job(s) still RUNNING on {_workers.Count} worker(s) stay in the store for their workers to conclude");
    }

    public void Dispose()
    {
        _router.Dispose();
        _store.Dispose();
        _storeLock?.Dispose();
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

    /// <summary>
    /// Receives what has arrived, waiting up to <paramref name="firstWait"/> for the first message. On
    /// a shared store it then keeps receiving until <see cref="SentinelOptions.GatherWindow"/> after
    /// that message, while jobs are still out: a turn costs a round trip to the server whatever it
    /// carries, and with short jobs a turn that goes at once carries about half a sentinel's slots (the
    /// other half come back while its step runs). It stops early once no job is out. ZeroMQ waits in
    /// whole milliseconds, so the window is rounded up to one.
    /// </summary>
    private void ReceiveTurn(TimeSpan firstWait)
    {
        NetMQMessage? message = null;
        if (!_router.TryReceiveMultipartMessage(firstWait, ref message, 3)) return;
        Handle(message);
        long gatherUntil = Stopwatch.GetTimestamp() + _gatherTicks;
        for (int n = 1; n < MaxMessagesPerTurn; n++)
        {
            message = null;
            if (_router.TryReceiveMultipartMessage(TimeSpan.Zero, ref message, 3))
            {
                Handle(message);
                continue;
            }
            long left = gatherUntil - Stopwatch.GetTimestamp();
            if (_inFlight.Count == 0 || left <= 0) return;
            if (!_router.TryReceiveMultipartMessage(TimeSpan.FromMilliseconds(Math.Ceiling(left * 1000.0 / Stopwatch.Frequency)), ref message, 3)) return;
            Handle(message);
        }
    }

    /// <summary>Drops workers silent past the timeout and probes those that have been quiet a while.</summary>
    private void CheckWorkers(long now)
    {
        CheckJoinToken(now);
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

    /// <summary>When a job dispatched (or adopted) now must have concluded; 0 without a job timeout.</summary>
    private long DeadlineFrom(long now) =>
        _options.JobTimeout is { } t ? now + (long)(t + _options.DeadlineGrace).TotalMilliseconds : 0;

    /// <summary>
    /// The server-side deadline (issue 11 item 12): a worker that heartbeats BUSY forever must not hold
    /// a job forever. Past its deadline a job gets an ABORT (the worker's ABORTED receipt requeues it
    /// as a retry); a worker that does not answer the ABORT within the grace loses the job anyway.
    /// </summary>
    private void CheckDeadlines(long now)
    {
        if (_options.JobTimeout is null || now < _nextDeadlineCheck || _inFlight.Count == 0) return;
        _nextDeadlineCheck = now + 250;
        List<(long Id, InFlight F)>? due = null;
        foreach (var (id, f) in _inFlight)
            if (f.Deadline > 0 && now >= f.Deadline) (due ??= []).Add((id, f));
        if (due is null) return;
        long grace = (long)_options.DeadlineGrace.TotalMilliseconds;
        foreach (var (id, f) in due)
        {
            if (!f.Aborting)
            {
                _inFlight[id] = f with { Aborting = true, PastDeadline = true, Deadline = now + grace };
                Wire.Send(_router, f.Worker.Identity, OpCode.Abort, (ulong)id, []);
                _log.Warn($"job {id} passed its deadline on worker {f.Worker.Id} ({DeadlineText}); sent ABORT");
                continue;
            }
            _inFlight.Remove(id);
            f.Worker.Active--;
            _work.ClaimWanted = true;
            _work.Expired.Add((id, f.Worker.Id, $"job passed its deadline ({DeadlineText}) on worker {f.Worker.Id}, which did not answer the ABORT within {grace / 1000.0:0.#} s; requeued"));
            _log.Warn($"job {id}: worker {f.Worker.Id} did not answer the ABORT within {grace / 1000.0:0.#} s; requeueing the job");
        }
    }

    private string DeadlineText =>
        $"job timeout {_options.JobTimeout!.Value.TotalSeconds:0.#} s + grace {_options.DeadlineGrace.TotalSeconds:0.#} s";

    private static readonly byte[] Probe = Payload.Encode(new Heartbeat { Status = WorkerStatus.Alive }, ProtocolJson.Default.Heartbeat);

    /// <summary>Once a second: a rotated join token (`casparian keys rotate-token`) drops the workers that joined with the old one.</summary>
    private void CheckJoinToken(long now)
    {
        if (_options.Keys is not { } keys || now < _nextTokenCheck) return;
        _nextTokenCheck = now + 1000;
        if (!keys.RefreshJoinToken()) return;
        _log.Warn("join token rotated; workers that joined with the old token are dropped");
        for (int i = _workers.Count - 1; i >= 0; i--)
        {
            var w = _workers[i];
            if (Tokens.Matches(w.Token, keys.JoinToken)) continue;
            SendErr(w.Identity, 0, TokenRotated);
            DropWorker(w, $"worker {w.Id} joined with a join token that has been rotated");
        }
    }

    internal const string TokenRotated = "join token rotated: this worker's token is no longer valid; restart it with the new --token (`casparian keys` prints it)";

    private void DropWorker(WorkerEntry w, string reason)
    {
        _workers.Remove(w);
        Volatile.Write(ref _workerCount, _workers.Count);
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
    private sealed class WorkerEntry(byte[] identity, string id, List<string> capabilities, int slots, long now, string? token)
    {
        public byte[] Identity { get; } = identity;
        public string Id { get; } = id;
        /// <summary>The join token it proved (null on a link without tokens); checked again when the token rotates.</summary>
        public string? Token { get; set; } = token;
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
    /// Aborting: cancelled or past its deadline, ABORT sent. Either kind is released when the worker's
    /// heartbeat stops listing it. Deadline: Unix ms after which CheckDeadlines acts (0: none).
    /// </summary>
    private readonly record struct InFlight(WorkerEntry Worker, bool Adopted = false, bool Aborting = false, long Deadline = 0, bool PastDeadline = false);
}

internal static class SentinelThrow
{
    public static UnavailableException Bind_InUse(string address, Exception e) =>
        new($"cannot bind {address}: the address is already in use (another sentinel?); pick another with --bind", e);
    public static UnavailableException Bind_Failed(string address, NetMQException e) =>
        new($"cannot bind {address}: {Why(e)}", e);
    public static UsageException Bind_NotTcp(string address) =>
        new($"cannot bind {address}: the sentinel binds tcp:// only (NetMQ's ipc:// is a loopback TCP port any local user can join); use tcp://HOST:PORT, or `casparian start` for one process");
    public static UsageException Bind_NoKeys(string address) =>
        new($"cannot bind {address}: a tcp:// sentinel needs its keys (HOME/keys)");

    // NetMQ often leaves the message empty ("Exception of type 'NetMQ.NetMQException' was thrown"): the error code says what happened.
    private static string Why(NetMQException e) => e.ErrorCode switch
    {
        ErrorCode.AddressNotAvailable => "that address is not one of this machine's (EADDRNOTAVAIL); bind an address it has, such as 127.0.0.1, or 0.0.0.0 for every interface",
        ErrorCode.AccessDenied => "permission denied (EACCES); ports below 1024 need privileges, pick a higher one",
        ErrorCode.AddressAlreadyInUse => "the address is already in use (another sentinel?); pick another with --bind",
        ErrorCode.ProtocolNotSupported => "unsupported transport; use tcp://HOST:PORT",
        ErrorCode.Invalid => "not a valid address; use tcp://HOST:PORT with a numeric IP or a resolvable host name",
        _ => $"{e.ErrorCode}{(e.InnerException is { } inner ? $" ({inner.Message})" : e.Message.StartsWith("Exception of type", StringComparison.Ordinal) ? "" : $" ({e.Message})")}",
    };
}

/// <summary>The process's open-file limit (RLIMIT_NOFILE): raised from the soft to the hard limit, which needs no privilege.</summary>
internal static partial class FileLimit
{
    private const int RlimitNofile = 7;

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Max;
    }

    [DllImport("libc", EntryPoint = "getrlimit", SetLastError = true)]
    private static extern int GetRLimit(int resource, out RLimit limit);

    [DllImport("libc", EntryPoint = "setrlimit", SetLastError = true)]
    private static extern int SetRLimit(int resource, ref RLimit limit);

    /// <summary>(soft limit before, soft limit after), or null off Linux or when the limit cannot be read.</summary>
    public static (ulong Before, ulong After)? RaiseToHard()
    {
        if (!OperatingSystem.IsLinux() || GetRLimit(RlimitNofile, out var limit) != 0) return null;
        ulong before = limit.Current;
        if (limit.Current >= limit.Max) return (before, before);
        limit.Current = limit.Max;
        return SetRLimit(RlimitNofile, ref limit) == 0 ? (before, limit.Max) : (before, before);
    }

    /// <summary>The soft limit now, or null off Linux.</summary>
    public static ulong? Current() => OperatingSystem.IsLinux() && GetRLimit(RlimitNofile, out var limit) == 0 ? limit.Current : null;
}
