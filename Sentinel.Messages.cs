// One handler per opcode a peer may send (SPEC §2.2). Handlers only change memory (the worker table,
// in-flight jobs) and queue store work in the turn's TurnWork (Sentinel.Step.cs); nothing here
// touches the disk.
using NetMQ;

namespace Casparian;

internal sealed partial class Sentinel
{
    private void Handle(NetMQMessage message)
    {
        WireMessage m;
        try
        {
            m = Wire.FromRouterFrames(message);
        }
        catch (ProtocolException e)
        {
            Malformed(message.FrameCount > 0 ? message[0].ToByteArray() : null, e.Message);
            return;
        }
        var worker = FindByIdentity(m.Identity!);
        if (worker is not null) worker.LastSeen = NowMs();
        try
        {
            switch (m.Op)
            {
                case OpCode.Identify: OnIdentify(m, worker); break;
                case OpCode.Heartbeat: OnHeartbeat(m, worker); break;
                case OpCode.Conclude: OnConclude(m, worker); break;
                case OpCode.Err: OnErr(m, worker); break;
                case OpCode.EnvReady: OnEnvReady(m, worker); break;
                case OpCode.Deploy: OnDeploy(m); break;
                default:
                    Malformed(m.Identity, $"unexpected {m.Op.ToWireName()} from a peer (a sentinel receives IDENTIFY, HEARTBEAT, CONCLUDE, ERR, ENV_READY, DEPLOY)");
                    break;
            }
        }
        catch (PayloadJsonException e)
        {
            Malformed(m.Identity, e.Message);
            // Request-style messages get an answer, so the sender is not left waiting.
            if (m.Op is OpCode.Identify or OpCode.Deploy) SendErr(m.Identity!, m.JobId, e.Message);
        }
    }

    private void Malformed(byte[]? identity, string detail)
    {
        long count = Interlocked.Increment(ref _malformed);
        Metrics.Dropped("malformed");
        string from = identity is null ? "" : $" from {Describe(identity)}";
        _log.Limited("malformed", $"dropped malformed message{from}: {detail} ({count} so far)");
    }

    private string Describe(byte[] identity) => FindByIdentity(identity) is { } w ? $"worker {w.Id}" : $"peer {Convert.ToHexStringLower(identity)}";

    private void SendErr(byte[] identity, ulong jobId, string message) =>
        Wire.Send(_router, identity, OpCode.Err, jobId, new ErrorPayload { Message = message }, ProtocolJson.Default.ErrorPayload);

    private void OnIdentify(WireMessage m, WorkerEntry? known)
    {
        var hello = m.Decode(ProtocolJson.Default.Identify);
        byte[] identity = m.Identity!;
        // A worker without an id is named by its socket identity; it cannot be recognised after a restart.
        string id = string.IsNullOrWhiteSpace(hello.WorkerId) ? "peer-" + Convert.ToHexStringLower(identity) : hello.WorkerId;
        int slots = Math.Clamp(hello.Slots ?? DefaultSlots, 1, MaxSlots);
        var capabilities = hello.Capabilities.Where(c => !string.IsNullOrWhiteSpace(c)).Distinct(StringComparer.Ordinal).ToList();
        long now = NowMs();

        if (known is not null && known.Id == id)
        {
            // The same socket saying hello again (e.g. after it noticed our restart): it keeps its jobs.
            known.Capabilities = capabilities;
            known.Slots = slots;
            _work.ClaimWanted = true;
            _log.Info($"worker {id} identified again ({Summary(known)})");
            return;
        }
        if (known is not null) DropWorker(known, $"socket of worker {known.Id} now identifies as {id}");
        if (FindById(id) is { } previous)
        {
            // Same worker id on a new socket: the worker process restarted, and what it held is gone.
            DropWorker(previous, $"worker {id} restarted (new connection)");
        }
        else
        {
            // Unknown to this sentinel: if we restarted, the store may show it holding jobs it is still running.
            _work.Adopt.Add(id);
        }
        var entry = new WorkerEntry(identity, id, capabilities, slots, now);
        _workers.Add(entry);
        _work.ClaimWanted = true;
        _log.Info($"worker {id} joined ({Summary(entry)})");
    }

    private static string Summary(WorkerEntry w) =>
        $"{w.Slots} slot(s), capabilities: {(w.Capabilities.Count == 0 ? "none" : string.Join(", ", w.Capabilities))}";

    private void OnHeartbeat(WireMessage m, WorkerEntry? worker)
    {
        // An empty payload is a bare "alive"; anything else must be a valid HEARTBEAT.
        var beat = m.Payload.Length == 0 ? null : m.Decode(ProtocolJson.Default.Heartbeat);
        if (worker is null)
        {
            _log.Limited("unknown-worker", $"HEARTBEAT from unknown peer {Convert.ToHexStringLower(m.Identity!)}; asked it to IDENTIFY");
            Metrics.Dropped("unknown_peer");
            SendErr(m.Identity!, 0, UnknownWorker);
            return;
        }
        long now = NowMs();
        if (now - worker.LastStoreHeartbeat >= (long)_options.HeartbeatTimeout.TotalMilliseconds / 4)
        {
            worker.LastStoreHeartbeat = now;
            _work.Touch.Add(worker.Id);
        }
        if (beat is not null) Reconcile(worker, beat);
        if (beat?.Figures is { } figures) Metrics.Figures(figures);
    }

    internal const string UnknownWorker = "unknown worker: send IDENTIFY first (the sentinel may have restarted)";

    /// <summary>
    /// Releases adopted or aborting jobs the worker no longer reports. Only a heartbeat that lists its
    /// jobs (or says IDLE with none) is authoritative; freshly dispatched jobs are never released here,
    /// since the heartbeat may have left before the DISPATCH arrived.
    /// </summary>
    private void Reconcile(WorkerEntry worker, Heartbeat beat)
    {
        HashSet<long>? reported = beat.ActiveJobIds is { } ids ? [.. ids]
            : beat.Status == WorkerStatus.Idle && beat.ActiveJobCount == 0 ? [] : null;
        if (reported is null) return;
        List<long>? gone = null;
        foreach (var (id, f) in _inFlight)
            if (f.Worker == worker && (f.Adopted || f.Aborting) && !reported.Contains(id)) (gone ??= []).Add(id);
        if (gone is null) return;
        foreach (var id in gone)
        {
            bool adopted = _inFlight[id].Adopted;
            _inFlight.Remove(id);
            worker.Active--;
            // An adopted job the worker does not have was lost with its previous process: back to the queue.
            if (adopted) _work.Released.Add((id, worker.Id));
        }
        _work.ClaimWanted = true;
    }

    private void OnConclude(WireMessage m, WorkerEntry? worker)
    {
        var receipt = m.Decode(ProtocolJson.Default.JobReceipt);
        long jobId = (long)m.JobId;
        if (worker is null)
        {
            // Probably ours from before a restart. The store applies it only if the job is still RUNNING
            // and no live worker holds it; either way the peer should identify.
            SendErr(m.Identity!, m.JobId, UnknownWorker);
            if (_inFlight.TryGetValue(jobId, out var holder))
            {
                _log.Limited("late", $"ignored {StatusName(receipt.Status)} for job {jobId} from an unknown peer ({Convert.ToHexStringLower(m.Identity!)}): the job is running on worker {holder.Worker.Id}");
                return;
            }
            if (_work.Conclusions.Count >= MaxPendingConclusions)
            {
                _log.Limited("late", $"ignored {StatusName(receipt.Status)} for job {jobId} from an unknown peer ({Convert.ToHexStringLower(m.Identity!)}): too much pending work");
                return;
            }
            _work.Conclusions.Add(new Conclusion(jobId, null, receipt, Expected: false));
            return;
        }
        bool expected = _inFlight.TryGetValue(jobId, out var f) && f.Worker == worker;
        if (expected)
        {
            _inFlight.Remove(jobId);
            worker.Active--;
            _work.ClaimWanted = true;
            if (receipt.Status == ReceiptStatus.Rejected) worker.PausedUntil = NowMs() + 1000;
        }
        // Even when unexpected the store decides: the job may be this worker's from before our restart.
        _work.Conclusions.Add(new Conclusion(jobId, worker.Id, receipt, expected));
    }

    private static string StatusName(ReceiptStatus status) => status switch
    {
        ReceiptStatus.Success => "SUCCESS",
        ReceiptStatus.Failed => "FAILED",
        ReceiptStatus.Rejected => "REJECTED",
        _ => "ABORTED",
    };

    private void OnErr(WireMessage m, WorkerEntry? worker)
    {
        string who = worker is null ? $"peer {Convert.ToHexStringLower(m.Identity!)}" : $"worker {worker.Id}";
        string job = m.JobId == 0 ? "" : $" (job {m.JobId})";
        var err = m.Payload.Length == 0 ? null : m.Decode(ProtocolJson.Default.ErrorPayload);
        _log.Limited("err", $"{who} reported an error{job}: {err?.Message ?? "(no message)"}");
    }

    private void OnEnvReady(WireMessage m, WorkerEntry? worker)
    {
        var ready = m.Decode(ProtocolJson.Default.EnvReady);
        if (worker is null) return;
        if (!worker.ReadyEnvs.Contains(ready.EnvHash)) worker.ReadyEnvs.Add(ready.EnvHash);
        _log.Info($"worker {worker.Id}: environment {ready.EnvHash} ready at {ready.InterpreterPath}{(ready.Cached ? " (cached)" : "")}");
    }

    private void OnDeploy(WireMessage m)
    {
        var d = m.Decode(ProtocolJson.Default.Deploy);
        string what = $"DEPLOY of {d.PluginName} {d.Version}";
        if (d.PluginName.Length == 0 || d.Version.Length == 0)
        {
            SendErr(m.Identity!, m.JobId, $"{what}: plugin_name and version must not be empty");
            return;
        }
        bool system = d.LockfileContent.Length == 0;
        string lockHash = Hashes.Sha256Hex(d.LockfileContent);
        if (d.EnvHash != lockHash && !(system && d.EnvHash == Hashes.SystemEnv))
        {
            SendErr(m.Identity!, m.JobId, $"{what}: env_hash mismatch: expected {lockHash} (sha256 of lockfile_content), got {d.EnvHash}");
            return;
        }
        string artifact = Hashes.ArtifactHash(d.SourceCode, d.LockfileContent);
        if (d.ArtifactHash != artifact)
        {
            SendErr(m.Identity!, m.JobId, $"{what}: artifact_hash mismatch: expected {artifact} (sha256 of source then lockfile), got {d.ArtifactHash}");
            return;
        }
        // The signature is carried for compatibility and not verified: there is no key infrastructure yet.
        _work.Deploys.Add((m.Identity!, m.JobId, new ParserRecord
        {
            Name = d.PluginName,
            Version = d.Version,
            Source = d.SourceCode,
            Lockfile = system ? null : d.LockfileContent,
            EnvHash = system ? Hashes.SystemEnv : lockHash,
            SourceHash = Hashes.Sha256Hex(d.SourceCode),
            LockfileHash = system ? null : lockHash,
            ArtifactHash = artifact,
        }));
    }
}
