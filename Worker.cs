// The worker (SPEC §1, §2): a DEALER connected to the sentinel, running up to N jobs at once.
//
// One NetMQPoller thread owns the socket and everything the socket touches: the table of running
// jobs, heartbeats, and shutdown. Jobs, environment builds and all other blocking work run on the
// thread pool and post their results back through a NetMQQueue, so the loop answers a heartbeat
// probe at once even while every slot is busy.
using NetMQ;
using NetMQ.Monitoring;
using NetMQ.Sockets;

namespace Casparian;

internal sealed record WorkerOptions
{
    /// <summary>The sentinel's address, or several ','-separated: the worker uses one at a time and fails over to the next when it is unreachable.</summary>
    public required string Connect { get; init; }
    /// <summary>The sentinel's CURVE public key (Z85): the link is encrypted and only that sentinel can answer. Null: plaintext (inproc://, --insecure).</summary>
    public required string? SentinelKey { get; init; }
    /// <summary>The join token sent in IDENTIFY (auth_token); null sends none.</summary>
    public required string? JoinToken { get; init; }
    /// <summary>Largest inbound message; a sentinel sending more is disconnected.</summary>
    public required long MessageLimit { get; init; }
    public required string WorkerId { get; init; }
    public required int Slots { get; init; }
    public required TimeSpan HeartbeatInterval { get; init; }
    public required TimeSpan ShutdownGrace { get; init; }
    /// <summary>Parser names this worker runs; "*" is any.</summary>
    public required IReadOnlyList<string> Capabilities { get; init; }
    public required RoleLog Log { get; init; }
}

/// <summary>Runs one DISPATCH to its receipt; must return (not throw) once <paramref name="abort"/> fires.</summary>
internal delegate Task<JobReceipt> JobRunner(ulong jobId, Dispatch dispatch, CancellationToken abort);

/// <summary>Builds (or finds) an environment for PREPARE_ENV.</summary>
internal delegate Task<EnvReady> EnvPreparer(PrepareEnv request, CancellationToken cancel);

internal sealed class Worker : IDisposable
{
    private static readonly TimeSpan Linger = TimeSpan.FromSeconds(5);

    private readonly WorkerOptions _options;
    private readonly JobRunner _runJob;
    private readonly EnvPreparer _prepareEnv;
    private readonly RoleLog _log;

    private readonly DealerSocket _socket;
    private readonly NetMQQueue<Action> _inbox = new();
    private readonly NetMQTimer _heartbeatTimer;
    private readonly NetMQTimer _graceTimer;
    private readonly NetMQTimer _failoverTimer;
    private readonly string[] _endpoints;
    private int _endpoint;
    private long _downSince;
    private readonly NetMQMonitor _monitor;
    private readonly NetMQPoller _poller;
    private readonly CancellationTokenSource _lifetime = new();

    // Loop-thread state.
    private readonly Dictionary<ulong, RunningJob> _jobs = [];
    private bool _draining;
    private bool _disconnected;
    // Connections the sentinel closed before sending anything: a CURVE handshake that failed.
    private int _silentDrops;
    private long _connectedAt;
    private bool _heardFromSentinel;
    private bool _handshakeWarned;
    private long _malformed;

    private sealed class RunningJob(ulong id, CancellationTokenSource abort)
    {
        public ulong Id { get; } = id;
        public CancellationTokenSource Abort { get; } = abort;
        public bool AbortRequested { get; set; }
    }

    private readonly WorkerFigureCollector? _figures;

    /// <param name="figures">Sent in each HEARTBEAT when given (the executor's guest start times).</param>
    public Worker(WorkerOptions options, JobRunner runJob, EnvPreparer prepareEnv, WorkerFigureCollector? figures = null)
    {
        _options = options;
        _figures = figures;
        _runJob = runJob;
        _prepareEnv = prepareEnv;
        _log = options.Log;

        _socket = new DealerSocket();
        // CONCLUDEs queued just before shutdown must still reach the sentinel.
        _socket.Options.Linger = Linger;
        _socket.Options.MaxMsgSize = options.MessageLimit;
        if (options.SentinelKey is { } key)
        {
            if (!CurveKeys.TryDecode(key, out byte[] serverKey)) throw WorkerThrow.Key_Bad(key);
            // Our own key pair is fresh each run: the sentinel authorizes workers by join token, not by key.
            _socket.Options.CurveCertificate = new NetMQCertificate();
            _socket.Options.CurveServerKey = serverKey;
        }
        _socket.ReceiveReady += (_, _) => DrainSocket();
        _inbox.ReceiveReady += (_, e) =>
        {
            while (e.Queue.TryDequeue(out var action, TimeSpan.Zero)) action();
        };
        _heartbeatTimer = new NetMQTimer(options.HeartbeatInterval);
        _heartbeatTimer.Elapsed += (_, _) => SendHeartbeat();
        _graceTimer = new NetMQTimer(options.ShutdownGrace) { Enable = false };
        _graceTimer.Elapsed += (_, _) => AbortAllAfterGrace();
        _endpoints = options.Connect.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        _failoverTimer = new NetMQTimer(FailoverCheck) { Enable = _endpoints.Length > 1 };
        _failoverTimer.Elapsed += (_, _) => CheckFailover();

        // A sentinel that restarts loses its worker table; the DEALER reconnects on its own, and the
        // monitor tells us when, so we can introduce ourselves again.
        _monitor = new NetMQMonitor(_socket, $"inproc://worker-monitor-{Guid.NewGuid():N}", SocketEvents.Connected | SocketEvents.Disconnected);
        _monitor.Connected += (_, _) =>
        {
            _connectedAt = Environment.TickCount64;
            OnConnected();
        };
        _monitor.Disconnected += (_, _) => OnDisconnected();

        _poller = [_socket, _inbox, _heartbeatTimer, _graceTimer, _failoverTimer];
        _monitor.AttachToPoller(_poller);
    }

    /// <summary>Serves until <paramref name="stop"/> fires and every running job has concluded.</summary>
    public void Run(CancellationToken stop)
    {
        _downSince = Environment.TickCount64;
        _socket.Connect(_endpoints[0]);
        _log.Info($"connected to {_endpoints[0]}; {_options.Slots} slot(s){(_endpoints.Length > 1 ? $"; fails over to {string.Join(", ", _endpoints[1..])}" : "")}");
        SendIdentify();
        using var registration = stop.Register(() => _inbox.Enqueue(BeginDrain));
        _poller.Run();
        _log.Info("stopped");
    }

    /// <summary>Jobs running now (for tests and status lines); safe from any thread only as a snapshot.</summary>
    public int ActiveJobs => Volatile.Read(ref _activeCount);
    private int _activeCount;

    public long MalformedMessages => Interlocked.Read(ref _malformed);

    private void OnDisconnected()
    {
        _disconnected = true;
        _downSince = Environment.TickCount64;
        if (_heardFromSentinel || Environment.TickCount64 - _connectedAt > 2000)
        {
            _heardFromSentinel = false;
            _silentDrops = 0;
            return;
        }
        // NetMQ reports no handshake failure as such: the sentinel just closes the connection at once,
        // before anything arrives. A few in a row is a key mismatch, not a restart.
        if (++_silentDrops < 3 || _handshakeWarned) return;
        _handshakeWarned = true;
        _log.Warn(_options.SentinelKey is null
            ? $"the sentinel at {_options.Connect} closes every connection before the handshake completes: it expects CURVE; give this worker --sentinel-key (`casparian keys` on the sentinel's machine prints it)"
            : $"the CURVE handshake with the sentinel at {_options.Connect} fails: --sentinel-key is not that sentinel's public key (or the sentinel runs --insecure); `casparian keys` on its machine prints the right one");
    }

    private void OnConnected()
    {
        _downSince = 0;
        if (!_disconnected) return;
        _disconnected = false;
        _log.Info("reconnected; identifying again");
        SendIdentify();
        SendHeartbeat();
    }

    /// <summary>
    /// The sentinel no longer knows us (it dropped us as silent, e.g. after this process was stopped
    /// past its heartbeat timeout, or it restarted without our connection dropping): say hello again,
    /// at most once a second, however many ERRs are in flight.
    /// </summary>
    private void Reidentify()
    {
        long now = Environment.TickCount64;
        if (now - _lastReidentify < 1000) return;
        _lastReidentify = now;
        _log.Info("the sentinel does not know this worker (dropped or restarted); identifying again");
        SendIdentify();
        SendHeartbeat();
    }

    private long _lastReidentify = long.MinValue / 2;

    private void SendIdentify() =>
        Wire.Send(_socket, OpCode.Identify, 0,
            new Identify { Capabilities = [.. _options.Capabilities], WorkerId = _options.WorkerId, Slots = _options.Slots, AuthToken = _options.JoinToken },
            ProtocolJson.Default.Identify);

    private void SendHeartbeat()
    {
        var ids = _jobs.Keys.Select(id => (long)id).ToList();
        Wire.Send(_socket, OpCode.Heartbeat, 0, new Heartbeat
        {
            Status = ids.Count == 0 ? WorkerStatus.Idle : WorkerStatus.Busy,
            CurrentJobId = ids.Count == 0 ? null : ids[0],
            ActiveJobCount = ids.Count,
            ActiveJobIds = ids,
            Figures = _figures?.Take(),
        }, ProtocolJson.Default.Heartbeat);
    }

    private void DrainSocket()
    {
        NetMQMessage? message = null;
        while (_socket.TryReceiveMultipartMessage(TimeSpan.Zero, ref message))
        {
            _heardFromSentinel = true;
            _silentDrops = 0;
            WireMessage m;
            try
            {
                m = Wire.FromDealerFrames(message);
            }
            catch (ProtocolException e)
            {
                Malformed(e.Message);
                continue;
            }
            try
            {
                Handle(m);
            }
            catch (PayloadJsonException e)
            {
                Malformed(e.Message);
                // A DISPATCH we cannot read still has a job id: fail it at once rather than leave
                // the sentinel waiting for a heartbeat timeout.
                if (m.Op == OpCode.Dispatch && m.JobId != 0)
                    SendConclude(m.JobId, new JobReceipt { Status = ReceiptStatus.Failed, ErrorMessage = e.Message });
            }
        }
    }

    private void Malformed(string why)
    {
        long n = Interlocked.Increment(ref _malformed);
        _log.Limited("malformed", $"dropped malformed message #{n}: {why}");
    }

    private void Handle(WireMessage m)
    {
        switch (m.Op)
        {
            case OpCode.Dispatch:
                OnDispatch(m.JobId, m.Decode(ProtocolJson.Default.Dispatch));
                break;
            case OpCode.Abort:
                OnAbort(m.JobId);
                break;
            case OpCode.Heartbeat:
                // A probe from the sentinel: answer at once.
                SendHeartbeat();
                break;
            case OpCode.PrepareEnv:
                OnPrepareEnv(m.Decode(ProtocolJson.Default.PrepareEnv));
                break;
            case OpCode.Err:
                var err = m.Payload.Length == 0 ? null : m.Decode(ProtocolJson.Default.ErrorPayload);
                if (err?.Message.StartsWith(Sentinel.UnknownWorkerPrefix, StringComparison.Ordinal) == true)
                {
                    Reidentify();
                    break;
                }
                _log.Info($"sentinel reported an error{(m.JobId != 0 ? $" for job {m.JobId}" : "")}: {err?.Message ?? "(no message)"}");
                break;
            case OpCode.Reload:
                _log.Info("RELOAD received; settings are read at start, so nothing changes until restart");
                break;
            default:
                Malformed($"unexpected {m.Op.ToWireName()} from the sentinel");
                break;
        }
    }

    private void OnDispatch(ulong jobId, Dispatch dispatch)
    {
        if (_jobs.ContainsKey(jobId))
        {
            // Already running here (a re-sent DISPATCH after a sentinel restart): it will conclude once.
            _log.Info($"job {jobId} is already running here; duplicate DISPATCH ignored");
            return;
        }
        if (_draining || _jobs.Count >= _options.Slots)
        {
            string why = _draining ? "worker is shutting down" : $"all {_options.Slots} slot(s) busy";
            SendConclude(jobId, new JobReceipt { Status = ReceiptStatus.Rejected, ErrorMessage = why });
            return;
        }

        var job = new RunningJob(jobId, CancellationTokenSource.CreateLinkedTokenSource(_lifetime.Token));
        _jobs.Add(jobId, job);
        Interlocked.Increment(ref _activeCount);
        _log.Info($"job {jobId}: {dispatch.PluginName} on {dispatch.FilePath}");
        _ = Task.Run(async () =>
        {
            JobReceipt receipt;
            try
            {
                receipt = await _runJob(jobId, dispatch, job.Abort.Token).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                // The runner reports failures as receipts; reaching here is a bug in it, and the job still concludes.
                receipt = new JobReceipt { Status = ReceiptStatus.Failed, ErrorMessage = $"worker error: {e.GetType().Name}: {e.Message}" };
            }
            _inbox.Enqueue(() => Finish(job, receipt));
        });
    }

    private void Finish(RunningJob job, JobReceipt receipt)
    {
        if (job.AbortRequested && receipt.Status != ReceiptStatus.Success)
            receipt = receipt with { Status = ReceiptStatus.Aborted };
        _jobs.Remove(job.Id);
        Interlocked.Decrement(ref _activeCount);
        job.Abort.Dispose();
        // Logged before it is sent, so the log never lags behind what the store already shows.
        string detail = receipt.ErrorMessage is { } e ? ": " + Text.Headline(e) : "";
        _log.Info($"job {job.Id}: {receipt.Status.ToString().ToUpperInvariant()}{detail}");
        SendConclude(job.Id, receipt);
        if (_draining && _jobs.Count == 0) _poller.Stop();
    }

    private void SendConclude(ulong jobId, JobReceipt receipt) =>
        Wire.Send(_socket, OpCode.Conclude, jobId, receipt, ProtocolJson.Default.JobReceipt);

    private void OnAbort(ulong jobId)
    {
        if (!_jobs.TryGetValue(jobId, out var job))
        {
            _log.Info($"ABORT for job {jobId}, which is not running here; ignored");
            return;
        }
        job.AbortRequested = true;
        // CancelAsync runs the cancellation callbacks (process kills) off this thread.
        _ = job.Abort.CancelAsync();
    }

    private void OnPrepareEnv(PrepareEnv request)
    {
        _ = Task.Run(async () =>
        {
            try
            {
                var ready = await _prepareEnv(request, _lifetime.Token).ConfigureAwait(false);
                _inbox.Enqueue(() => Wire.Send(_socket, OpCode.EnvReady, 0, ready, ProtocolJson.Default.EnvReady));
            }
            catch (Exception e)
            {
                var err = new ErrorPayload { Message = e is CasparianException ? e.Message : $"environment {request.EnvHash}: {e.GetType().Name}: {e.Message}" };
                _inbox.Enqueue(() => Wire.Send(_socket, OpCode.Err, 0, err, ProtocolJson.Default.ErrorPayload));
            }
        });
    }

    /// <summary>How often a worker with several sentinels checks whether it should fail over.</summary>
    private static readonly TimeSpan FailoverCheck = TimeSpan.FromMilliseconds(250);
    /// <summary>How long the current sentinel may stay unreachable before the worker tries the next one.</summary>
    private const long FailoverAfterMs = 1500;

    /// <summary>
    /// With several sentinels (issue 16): when the current one has been unreachable a while, connect to
    /// the next instead. The new connection identifies again and its heartbeat lists the jobs still in
    /// flight, which that sentinel adopts once the store says their sentinel is gone.
    /// </summary>
    private void CheckFailover()
    {
        if (_downSince == 0 || Environment.TickCount64 - _downSince < FailoverAfterMs) return;
        string from = _endpoints[_endpoint];
        _endpoint = (_endpoint + 1) % _endpoints.Length;
        string to = _endpoints[_endpoint];
        try
        {
            _socket.Disconnect(from);
        }
        catch (EndpointNotFoundException)
        {
            // Never connected there (NetMQ forgets an endpoint it gave up on): nothing to undo.
        }
        _disconnected = true;
        _heardFromSentinel = false;
        _silentDrops = 0;
        _downSince = Environment.TickCount64;
        _log.Warn($"sentinel {from} unreachable for {FailoverAfterMs / 1000.0:0.#} s; failing over to {to} with {_jobs.Count} job(s) in flight");
        _socket.Connect(to);
    }

    private void BeginDrain()
    {
        if (_draining) return;
        _draining = true;
        if (_jobs.Count == 0)
        {
            _poller.Stop();
            return;
        }
        _log.Info($"stopping: {_jobs.Count} job(s) get {_options.ShutdownGrace.TotalSeconds:0.#} s to finish");
        _graceTimer.Enable = true;
    }

    private void AbortAllAfterGrace()
    {
        _graceTimer.Enable = false;
        _log.Info($"grace period over; aborting {_jobs.Count} job(s)");
        foreach (var job in _jobs.Values)
        {
            job.AbortRequested = true;
            _ = job.Abort.CancelAsync();
        }
    }

    public void Dispose()
    {
        _lifetime.Cancel();
        // Order matters: the monitor detaches itself from the poller, so it goes first; then the
        // poller, then what it polled; the socket last.
        _monitor.Dispose();
        _poller.Dispose();
        _heartbeatTimer.Enable = false;
        _failoverTimer.Enable = false;
        _inbox.Dispose();
        _socket.Dispose();
        _lifetime.Dispose();
    }
}

/// <summary>A worker id that survives restarts: created once as {dir}/id and read from then on.</summary>
internal static class WorkerIdentity
{
    public static string LoadOrCreate(string dir)
    {
        string path = Path.Combine(dir, "id");
        if (TryRead(path) is { } existing) return existing;
        Directory.CreateDirectory(dir);
        string host = new string(Environment.MachineName.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' ? c : '-').ToArray());
        string fresh = $"{host}-{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(4))}";
        string temp = $"{path}.{Environment.ProcessId}.tmp";
        File.WriteAllText(temp, fresh + "\n");
        try
        {
            // Two workers starting at once on one home: the first rename wins and both use its id.
            File.Move(temp, path, overwrite: false);
        }
        catch (IOException) when (File.Exists(path))
        {
            File.Delete(temp);
        }
        return TryRead(path) ?? throw WorkerThrow.Id_Unreadable(path);
    }

    private static string? TryRead(string path)
    {
        try
        {
            string id = File.ReadAllText(path).Trim();
            return id.Length > 0 ? id : null;
        }
        catch (FileNotFoundException) { return null; }
        catch (DirectoryNotFoundException) { return null; }
    }
}

internal static class WorkerThrow
{
    public static InputException Dispatch_BadArchive(string parser) =>
        new($"DISPATCH for parser {parser} carries a parser_archive that is not base64");
    public static InputException Dispatch_BadTopicPrefix(string parser, string prefix) =>
        new($"DISPATCH for parser {parser} carries topic_prefix '{Text.Clip(Text.Escaped(prefix), 80)}', which is not the start of a topic name ([a-z][a-z0-9_]*, at most {Sources.MaxTopicPrefix} characters)");
    public static UsageException Key_Bad(string key) =>
        new($"sentinel key '{Text.Clip(key, 60)}' is not a Z85 CURVE public key ({CurveKeys.Z85Length} characters); `casparian keys` on the sentinel's machine prints it");
    public static UnavailableException Id_Unreadable(string path) =>
        new($"worker id file {path} is empty or unreadable; delete it to get a new id");
}
