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
        else if (m.Op is not (OpCode.Identify or OpCode.Deploy))
        {
            // Nothing from a peer that has not identified is acted on, a CONCLUDE least of all: it
            // would let any socket finish any RUNNING job (a DEPLOY carries its own proof).
            Refuse(m);
            return;
        }
        try
        {
            switch (m.Op)
            {
                case OpCode.Identify: OnIdentify(m, worker); break;
                case OpCode.Heartbeat: OnHeartbeat(m, worker!); break;
                case OpCode.Conclude: OnConclude(m, worker!); break;
                case OpCode.Err: OnErr(m, worker!); break;
                case OpCode.EnvReady: OnEnvReady(m, worker!); break;
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

    /// <summary>
    /// Drops a message from a peer that has not identified, and counts it. A HEARTBEAT or CONCLUDE gets
    /// ERR "unknown worker" back: a real worker that we forgot (our restart, a timeout) identifies again.
    /// </summary>
    private void Refuse(WireMessage m)
    {
        long count = Interlocked.Increment(ref _refused);
        Metrics.Dropped("unknown_peer");
        string job = m.JobId == 0 ? "" : $" for job {m.JobId}";
        _log.Limited("refused", $"dropped {m.Op.ToWireName()}{job} from peer {Convert.ToHexStringLower(m.Identity!)}, which has not identified ({count} refused so far)");
        if (m.Op is OpCode.Heartbeat or OpCode.Conclude) SendErr(m.Identity!, m.JobId, UnknownWorker);
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
        string peer = Convert.ToHexStringLower(identity);
        if (_options.Keys is { } keys && !Tokens.Matches(hello.AuthToken, keys.JoinToken))
        {
            long count = Interlocked.Increment(ref _refused);
            Metrics.Dropped("unauthenticated");
            string claimed = hello.WorkerId is { Length: > 0 } w ? $" as worker {Text.Clip(w, MaxIdLength)}" : "";
            _log.Limited("refused", $"refused IDENTIFY{claimed} from peer {peer}: {(hello.AuthToken is null ? "no join token" : "wrong join token")} ({count} refused so far)");
            SendErr(identity, 0, hello.AuthToken is null ? IdentifyNoToken : IdentifyWrongToken);
            if (known is not null) DropWorker(known, $"worker {known.Id} identified again without a valid join token");
            return;
        }
        if (hello.WorkerId is { Length: > MaxIdLength } || hello.WorkerId?.Any(char.IsControl) == true)
        {
            Malformed(identity, $"IDENTIFY with a worker_id of {hello.WorkerId.Length} characters, or with control characters (at most {MaxIdLength} printable)");
            SendErr(identity, 0, $"IDENTIFY refused: worker_id must be at most {MaxIdLength} printable characters");
            return;
        }
        // A worker without an id is named by its socket identity; it cannot be recognised after a restart.
        string id = string.IsNullOrWhiteSpace(hello.WorkerId) ? "peer-" + peer : hello.WorkerId;
        int slots = Math.Clamp(hello.Slots ?? DefaultSlots, 1, MaxSlots);
        var capabilities = hello.Capabilities.Where(c => !string.IsNullOrWhiteSpace(c)).Distinct(StringComparer.Ordinal).ToList();
        long now = NowMs();
        string? token = _options.Keys is null ? null : hello.AuthToken;

        if (known is not null && known.Id == id)
        {
            // The same socket saying hello again (e.g. after it noticed our restart): it keeps its jobs.
            known.Capabilities = capabilities;
            known.Slots = slots;
            known.Token = token;
            _work.ClaimWanted = true;
            _log.Info($"worker {id} identified again ({Summary(known)})");
            return;
        }
        if (known is not null) DropWorker(known, $"socket of worker {known.Id} now identifies as {id}");
        if (FindById(id) is { } previous)
        {
            // Same worker id on a new socket: the worker restarted, or someone holding the join token
            // claims its id. Either way the old connection's jobs go back to the queue; the newcomer
            // does not inherit them, and its CONCLUDEs for them are not expected.
            _log.Warn($"takeover: worker {id} identified from a new connection (peer {peer}); dropping the old connection");
            DropWorker(previous, $"worker {id} identified from a new connection (takeover or restart)");
        }
        else
        {
            // Unknown to this sentinel: if we restarted, the store may show it holding jobs it is still running.
            _work.Adopt.Add(id);
        }
        var entry = new WorkerEntry(identity, id, capabilities, slots, now, token);
        _workers.Add(entry);
        Volatile.Write(ref _workerCount, _workers.Count);
        _work.ClaimWanted = true;
        _log.Info($"worker {id} joined ({Summary(entry)})");
    }

    /// <summary>Longest worker_id accepted: it is stored with every job the worker runs.</summary>
    internal const int MaxIdLength = 128;
    /// <summary>Most characters of a capability list a log line carries; a peer chooses its size.</summary>
    internal const int MaxLoggedCapabilities = 200;

    internal const string IdentifyNoToken = "IDENTIFY refused: no join token (auth_token); start the worker with --token (`casparian keys` on the sentinel's machine prints it)";
    internal const string IdentifyWrongToken = "IDENTIFY refused: wrong join token (auth_token); it may have been rotated, `casparian keys` on the sentinel's machine prints the current one";

    private static string Summary(WorkerEntry w) =>
        $"{w.Slots} slot(s), capabilities: {(w.Capabilities.Count == 0 ? "none" : Text.Clip(string.Join(", ", w.Capabilities), MaxLoggedCapabilities) + (w.Capabilities.Count > 3 ? $" ({w.Capabilities.Count} in all)" : ""))}";

    private void OnHeartbeat(WireMessage m, WorkerEntry worker)
    {
        // An empty payload is a bare "alive"; anything else must be a valid HEARTBEAT.
        var beat = m.Payload.Length == 0 ? null : m.Decode(ProtocolJson.Default.Heartbeat);
        long now = NowMs();
        if (now - worker.LastStoreHeartbeat >= (long)_options.HeartbeatTimeout.TotalMilliseconds / 4)
        {
            worker.LastStoreHeartbeat = now;
            _work.Touch.Add(worker.Id);
        }
        if (beat is not null)
        {
            Reconcile(worker, beat);
            AdoptReported(worker, beat);
        }
        if (beat?.Figures is { } figures) Metrics.Figures(figures);
    }

    /// <summary>How an ERR to a peer the sentinel does not know starts; a worker answers it with IDENTIFY.</summary>
    internal const string UnknownWorkerPrefix = "unknown worker";
    internal const string UnknownWorker = UnknownWorkerPrefix + ": send IDENTIFY first (the sentinel may have restarted or dropped this worker as silent)";

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

    private void OnConclude(WireMessage m, WorkerEntry worker)
    {
        var receipt = m.Decode(ProtocolJson.Default.JobReceipt);
        long jobId = (long)m.JobId;
        bool expected = _inFlight.TryGetValue(jobId, out var f) && f.Worker == worker;
        if (expected && f.PastDeadline && receipt.Status != ReceiptStatus.Success)
            receipt = receipt with { Status = ReceiptStatus.Aborted, ErrorMessage = $"job passed its deadline ({DeadlineText}); aborted: {receipt.ErrorMessage}" };
        if (expected)
        {
            _inFlight.Remove(jobId);
            worker.Active--;
            _work.ClaimWanted = true;
            if (receipt.Status == ReceiptStatus.Rejected) worker.PausedUntil = NowMs() + 1000;
        }
        // Even when unexpected the store decides: the job may be this worker's from before our restart.
        if (!expected && _work.Conclusions.Count >= MaxPendingConclusions)
        {
            _log.Limited("late", $"ignored {StatusName(receipt.Status)} for job {jobId} from worker {worker.Id}: too much pending work");
            return;
        }
        _work.Conclusions.Add(new Conclusion(jobId, worker.Id, receipt, expected));
    }

    private static string StatusName(ReceiptStatus status) => status switch
    {
        ReceiptStatus.Success => "SUCCESS",
        ReceiptStatus.Failed => "FAILED",
        ReceiptStatus.Rejected => "REJECTED",
        _ => "ABORTED",
    };

    private void OnErr(WireMessage m, WorkerEntry worker)
    {
        string who = $"worker {worker.Id}";
        string job = m.JobId == 0 ? "" : $" (job {m.JobId})";
        var err = m.Payload.Length == 0 ? null : m.Decode(ProtocolJson.Default.ErrorPayload);
        _log.Limited("err", $"{who} reported an error{job}: {err?.Message ?? "(no message)"}");
    }

    private void OnEnvReady(WireMessage m, WorkerEntry worker)
    {
        var ready = m.Decode(ProtocolJson.Default.EnvReady);
        if (!worker.ReadyEnvs.Contains(ready.EnvHash)) worker.ReadyEnvs.Add(ready.EnvHash);
        _log.Info($"worker {worker.Id}: environment {ready.EnvHash} ready at {ready.InterpreterPath}{(ready.Cached ? " (cached)" : "")}");
    }

    private void OnDeploy(WireMessage m)
    {
        var d = m.Decode(ProtocolJson.Default.Deploy);
        string what = $"DEPLOY of {Text.Clip(d.PluginName, MaxIdLength)} {Text.Clip(d.Version, MaxIdLength)}";
        if (_options.Keys is not { } keys || !Tokens.Matches(d.AuthToken, keys.AdminToken))
        {
            // Code from this message would run on every worker: without the admin token nothing is stored.
            long count = Interlocked.Increment(ref _refused);
            Metrics.Dropped("unauthenticated");
            string why = _options.Keys is null ? "this sentinel takes no DEPLOY (in-process link)" : d.AuthToken is null ? "no admin token (auth_token)" : "wrong admin token (auth_token)";
            _log.Limited("refused", $"refused {what} from peer {Convert.ToHexStringLower(m.Identity!)}: {why} ({count} refused so far)");
            Wire.Send(_router, m.Identity!, OpCode.Ack, m.JobId,
                new Ack { Success = false, Message = $"{what} refused: {why}; the admin token is in HOME/keys/{SentinelKeys.AdminTokenFile} on the sentinel's machine" },
                ProtocolJson.Default.Ack);
            return;
        }
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
        // TOPICS is read statically, as `parser register` reads it, so a deployed parser's sinks reach DISPATCH too.
        List<TopicSetting> topics;
        try
        {
            topics = Topics.Read(d.SourceCode, what);
        }
        catch (InputException e)
        {
            SendErr(m.Identity!, m.JobId, e.Message);
            return;
        }
        // The signature is carried for compatibility and not verified: the admin token above is the proof.
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
            TopicsJson = topics.Count == 0 ? null : Topics.ToJson(topics),
        }));
    }
}
