// The store step: everything a turn produced, in one transaction (group commit), then the messages
// that depend on it. Pending work survives a failed step and is retried on a later turn.
using System.Diagnostics;
using System.Globalization;

namespace Casparian;

internal sealed partial class Sentinel
{
    /// <param name="HeldSince">
    /// Set on a conclusion held back (Sentinel.Cluster.cs): the claim time of the attempt it concludes,
    /// so a retry applies it only to that attempt; <paramref name="HeldUntil"/> is when holding it stops.
    /// </param>
    private readonly record struct Conclusion(long JobId, string? WorkerId, JobReceipt Receipt, bool Expected, DateTimeOffset? HeldSince = null, long HeldUntil = 0);

    /// <summary>Bounds memory if the store is down while peers keep concluding jobs we do not know.</summary>
    private const int MaxPendingConclusions = 100_000;

    /// <summary>
    /// The sentinel's store work, in one place. Gathered: what the handlers and the worker checks
    /// queue during a turn, consumed by the next step that commits and kept when a step fails.
    /// Produced: what the step's transaction returned, acted on (sent, logged) only after it commits.
    /// Schedule: when the store is next polled and swept, and retried after a failed step.
    /// </summary>
    private sealed class TurnWork
    {
        public readonly List<Conclusion> Conclusions = [];
        public readonly List<(byte[] Identity, ulong RequestId, ParserRecord Parser)> Deploys = [];
        public readonly List<(string WorkerId, string Reason)> Lost = [];
        public readonly List<string> Adopt = [];
        public readonly List<(long JobId, string WorkerId)> Released = [];
        /// <summary>Jobs past the server-side deadline whose worker did not answer the ABORT: requeued as a retry.</summary>
        public readonly List<(long JobId, string WorkerId, string Reason)> Expired = [];
        public readonly HashSet<string> Touch = new(StringComparer.Ordinal);
        /// <summary>A slot may have freed or a worker joined: claim without waiting for the poll.</summary>
        public bool ClaimWanted = true;

        public readonly List<(Conclusion C, bool Applied, FailResult? Fail, string? QueuedHash)> Concluded = [];
        /// <summary>Conclusions refused only because another live sentinel owns the job: held and tried again (Sentinel.Cluster.cs).</summary>
        public readonly List<(Conclusion C, bool New)> Held = [];
        public readonly List<(byte[] Identity, ulong RequestId, ParserRecord Parser, ParserRegistration Result)> Deployed = [];
        public readonly List<(string WorkerId, string Reason, RequeueResult Result)> Requeued = [];
        public readonly List<(WorkerEntry Worker, ClaimedJob Job, Dispatch Dispatch)> Dispatches = [];
        public readonly List<(long JobId, string Error)> Unrunnable = [];
        public List<long> Cancelled = [];
        public RequeueResult Swept;

        public long NextPoll;
        public long NextSweep;
        public long RetryAt;

        public bool HasStoreWork =>
            Conclusions.Count > 0 || Deploys.Count > 0 || Lost.Count > 0 || Adopt.Count > 0 || Released.Count > 0 || Expired.Count > 0 || Touch.Count > 0;

        public void ClearProduced()
        {
            Concluded.Clear();
            Held.Clear();
            Deployed.Clear();
            Requeued.Clear();
            Dispatches.Clear();
            Unrunnable.Clear();
            Cancelled = [];
            Swept = default;
        }

        public void ClearGathered()
        {
            Conclusions.Clear();
            Deploys.Clear();
            Lost.Clear();
            Adopt.Clear();
            Released.Clear();
            Expired.Clear();
            Touch.Clear();
            ClaimWanted = false;
        }
    }

    private readonly TurnWork _work = new();
    private int _nextWorkerForClaims;

    // Registered parsers never change under the same name and version, so their DISPATCH fields are cached.
    private readonly Dictionary<(string Name, string Version), Dispatch?> _parsers = [];
    /// <summary>A parser's sinks under a routing rule's topic prefix, built once per (parser, prefix).</summary>
    private readonly Dictionary<(string Name, string Version, string Prefix), List<SinkConfig>> _prefixedSinks = [];

    private bool HasPendingWork => _work.HasStoreWork || (_work.ClaimWanted && AnyClaimable(NowMs()));

    private bool AnyClaimable(long now)
    {
        foreach (var w in _workers)
            if (w.Free > 0 && w.PausedUntil <= now) return true;
        return false;
    }

    private void Step(long now, bool final)
    {
        if (!final && now < _work.RetryAt) return;
        if (!final) RetryHeld(now);
        // A job queued on a store that notifies (PostgreSQL): claim now rather than at the next poll.
        if (_store.QueueSignalled()) _work.ClaimWanted = true;
        bool poll = now >= _work.NextPoll;
        bool claim = !final && (_work.ClaimWanted || poll) && AnyClaimable(now);
        bool cancels = poll && _inFlight.Count > 0;
        bool sweep = !final && now >= _work.NextSweep;
        bool renew = !final && RenewDue(now);
        if (!_work.HasStoreWork && !claim && !cancels && !sweep && !renew)
        {
            // Nothing to do at this poll (no worker, no job): the next poll still moves on, or the
            // loop would find the poll due again at once and spin (issue 11 item 4).
            if (poll) _work.NextPoll = now + PollEvery;
            return;
        }

        _work.ClearProduced();
        long stepStarted = Stopwatch.GetTimestamp();
        try
        {
            if (!renew && !cancels && !sweep && OnlyCompletions()) CompleteAndClaim(now, claim);
            else _store.InTransaction(() =>
            {
                if (renew) RenewLease(now);
                StoreWork(now, claim, cancels, sweep && _leading);
                return 0;
            });
        }
        catch (StoreUnavailableException e)
        {
            // Transient (another process holds the lock, the disk is full): the work is kept and the
            // step retried; the sentinel serves its socket meanwhile. Any other StoreException (corrupt,
            // read-only, not a store) does not pass by itself: it stops the sentinel with its exit code
            // instead of retrying forever (issue 11 item 5).
            _work.ClearProduced();
            _work.RetryAt = now + 250;
            _log.Limited("store", $"store step failed, retrying in 250 ms with the work kept: {e.Message}");
            return;
        }
        _work.ClearGathered();
        if (poll) _work.NextPoll = now + PollEvery;
        if (sweep) _work.NextSweep = now + Math.Max(1000, (long)_options.HeartbeatTimeout.TotalMilliseconds / 2);
        RecordTurn(stepStarted);
        AfterCommit(now);
    }

    /// <summary>The transaction's body. Order matters: a lost worker's jobs are requeued before anyone claims.</summary>
    private void StoreWork(long now, bool claim, bool cancels, bool sweep)
    {
        foreach (var (id, reason) in _work.Lost) _work.Requeued.Add((id, reason, _store.RequeueWorker(id, reason)));
        foreach (var (jobId, workerId) in _work.Released) _store.Reject(jobId, workerId);
        foreach (var (jobId, workerId, reason) in _work.Expired) _store.Fail(jobId, workerId, reason, transient: true);
        foreach (var id in _work.Adopt)
        {
            // Adoption only reads, so applying it to memory now is safe even if the commit fails.
            if (FindById(id) is not { } w) continue;
            int adopted = 0;
            foreach (long jobId in _store.RunningOn(id))
            {
                if (!_inFlight.TryAdd(jobId, new InFlight(w, Adopted: true, Deadline: DeadlineFrom(now)))) continue;
                w.Active++;
                adopted++;
            }
            if (adopted > 0) _log.Info($"worker {id} holds {adopted} job(s) from before this sentinel started, or from a sentinel that stopped; keeping them");
        }
        ApplyConclusions(now);
        foreach (var (identity, request, parser) in _work.Deploys) _work.Deployed.Add((identity, request, parser, _store.RegisterParser(parser)));
        foreach (var id in _work.Touch) _store.Heartbeat(id);
        if (sweep && now - _startedAt >= (long)_options.HeartbeatTimeout.TotalMilliseconds)
            _work.Swept = _store.RequeueStale(DateTimeOffset.FromUnixTimeMilliseconds(now - (long)_options.HeartbeatTimeout.TotalMilliseconds), [.. _workers.Select(w => w.Id)]);
        if (cancels)
        {
            var watch = new List<long>(_inFlight.Count);
            foreach (var (id, f) in _inFlight)
                if (!f.Aborting) watch.Add(id);
            _work.Cancelled = _store.CancelledAmong(watch);
        }
        if (claim) Claim(now);
    }

    /// <summary>
    /// Whether the turn's store work is only fresh successes (and claims), with nothing for the contract
    /// records: the common turn under load, which <see cref="CompleteAndClaim"/> does in one round trip.
    /// </summary>
    private bool OnlyCompletions()
    {
        if (_work.Deploys.Count > 0 || _work.Lost.Count > 0 || _work.Adopt.Count > 0 || _work.Released.Count > 0 || _work.Expired.Count > 0 || _work.Touch.Count > 0)
            return false;
        foreach (var c in _work.Conclusions)
            if (c.Receipt.Status != ReceiptStatus.Success || c.HeldSince is not null || ContractRecords.Needed(c.Receipt.Artifacts)) return false;
        return true;
    }

    /// <summary>
    /// The turn as one <see cref="IJobStore.CompleteAndClaim"/>: the same outcome as <see cref="StoreWork"/>
    /// on such a turn. What may follow it outside that transaction only reads (a refused conclusion's
    /// owner), or fails a claimed job whose parser is gone; if that fails, the job stays RUNNING here
    /// undispatched and the stale sweep requeues it.
    /// </summary>
    private void CompleteAndClaim(long now, bool claim)
    {
        var (batch, batched) = Completions();
        var asking = claim ? Asking(now) : [];
        var (completed, claimed) = _store.CompleteAndClaim(batch, [.. asking.Select(w => new ClaimRequest(w.Id, w.Capabilities, w.Free))]);
        Conclude(now, batched, completed);
        Dispatch(asking, claimed);
    }

    /// <summary>
    /// The turn's conclusions, in order. The successes complete together (<see cref="IJobStore.CompleteMany"/>:
    /// one statement on PostgreSQL); a held retry, a repeated job id and every other outcome go one by one.
    /// </summary>
    private void ApplyConclusions(long now)
    {
        var (batch, batched) = Completions();
        Conclude(now, batched, batch.Count > 0 ? _store.CompleteMany(batch) : []);
    }

    /// <summary>The turn's fresh successes, each job once, and where each conclusion's result sits among them.</summary>
    private (List<Completion> Batch, Dictionary<int, int> Batched) Completions()
    {
        var batch = new List<Completion>();
        var batched = new Dictionary<int, int>();
        var ids = new HashSet<long>();
        for (int i = 0; i < _work.Conclusions.Count; i++)
        {
            var c = _work.Conclusions[i];
            if (c.Receipt.Status != ReceiptStatus.Success || c.HeldSince is not null || !ids.Add(c.JobId)) continue;
            batched[i] = batch.Count;
            batch.Add(new Completion(c.JobId, c.WorkerId, c.Receipt.Metrics, c.Receipt.Artifacts, c.Receipt.ContentHash));
        }
        return (batch, batched);
    }

    private void Conclude(long now, Dictionary<int, int> batched, List<(bool Done, string? QueuedHash)> completed)
    {
        for (int i = 0; i < _work.Conclusions.Count; i++)
        {
            var c = _work.Conclusions[i];
            var result = batched.TryGetValue(i, out int k) ? Completed(c, completed[k].Done, completed[k].QueuedHash) : Apply(c);
            if (!result.Item2 && HoldBack(c, now) is { } held) _work.Held.Add((held, c.HeldSince is null));
            else _work.Concluded.Add(result);
        }
    }

    private (Conclusion, bool, FailResult?, string?) Completed(Conclusion c, bool completed, string? queuedHash)
    {
        // Quarantine counts and the topics' schemas (issue 14), in the same transaction.
        if (completed && ContractRecords.Record(_store, c.JobId, c.Receipt.Artifacts)) _topicSchemas = null;
        return (c, completed, null, queuedHash);
    }

    private (Conclusion, bool, FailResult?, string?) Apply(Conclusion c)
    {
        var r = c.Receipt;
        // A held conclusion is for the attempt claimed then: once the job moved on (requeued, claimed again) it is refused.
        if (c.HeldSince is { } since && (_store.Get(c.JobId) is not { State: JobState.Running } current || current.Worker != c.WorkerId || current.ClaimedAt != since))
            return (c, false, null, null);
        switch (r.Status)
        {
            case ReceiptStatus.Success:
                bool completed = _store.Complete(c.JobId, c.WorkerId, r.Metrics, r.Artifacts, r.ContentHash, out string? queuedHash);
                return Completed(c, completed, queuedHash);
            case ReceiptStatus.Failed:
                // Contract with the worker: metrics["transient"] == 1 marks a failure worth retrying
                // (guest exit code 2, SPEC §3); any other failure is permanent.
                bool transient = r.Metrics.TryGetValue("transient", out long t) && t == 1;
                var failed = _store.Fail(c.JobId, c.WorkerId, r.ErrorMessage ?? "the worker reported FAILED without a message", transient, r.Metrics);
                return (c, failed is not null, failed, null);
            case ReceiptStatus.Rejected:
                return (c, _store.Reject(c.JobId, c.WorkerId), null, null);
            default:
                // ABORTED. A job we cancelled is CANCELLED already and stays so (the store refuses the
                // change). Otherwise the worker gave up on it (shutdown, its own limits): that is not the
                // file's fault, so it is retried like a transient failure, up to the retry limit.
                var aborted = _store.Fail(c.JobId, c.WorkerId, r.ErrorMessage ?? "aborted by the worker", transient: true, r.Metrics);
                return (c, aborted is not null, aborted, null);
        }
    }

    /// <summary>
    /// Fills every free slot, one claim per worker, starting from a rotating worker for fairness, all in
    /// one <see cref="IJobStore.ClaimMany"/> (one round trip on PostgreSQL), each job with the current
    /// output its DISPATCH supersedes.
    /// </summary>
    private void Claim(long now)
    {
        var asking = Asking(now);
        if (asking.Count == 0) return;
        Dispatch(asking, _store.ClaimMany([.. asking.Select(w => new ClaimRequest(w.Id, w.Capabilities, w.Free))]));
    }

    /// <summary>The workers with a free slot, starting from a rotating one for fairness.</summary>
    private List<WorkerEntry> Asking(long now)
    {
        int n = _workers.Count;
        var asking = new List<WorkerEntry>(n);
        for (int k = 0; k < n; k++)
        {
            var w = _workers[(_nextWorkerForClaims + k) % n];
            if (w.Free > 0 && w.PausedUntil <= now && w.Capabilities.Count > 0) asking.Add(w);
        }
        if (n > 0) _nextWorkerForClaims = (_nextWorkerForClaims + 1) % n;
        return asking;
    }

    /// <summary>Each claimed job's DISPATCH, to be sent after the commit; a job whose parser is not stored FAILS.</summary>
    private void Dispatch(List<WorkerEntry> asking, List<List<(ClaimedJob Job, CurrentOutput? Current)>> claimed)
    {
        for (int i = 0; i < asking.Count; i++)
        {
            var w = asking[i];
            foreach (var (job, current) in claimed[i])
            {
                if (ParserFor(job) is { } template) _work.Dispatches.Add((w, job, DispatchOf(job, template, current)));
                else
                {
                    string error = $"parser {job.ParserName} {job.ParserVersion} is not registered in the store";
                    _store.Fail(job.Id, w.Id, error, transient: false);
                    _work.Unrunnable.Add((job.Id, error));
                }
            }
        }
    }

    private Dispatch? ParserFor(ClaimedJob job)
    {
        var key = (job.ParserName, job.ParserVersion);
        if (_parsers.TryGetValue(key, out var cached)) return cached;
        var p = _store.GetParser(job.ParserName, job.ParserVersion);
        // DISPATCH per SPEC §2.4. Sinks: the parser's declared topics with the config's overrides
        // (Topics.cs); a topic in neither goes to OUTPUT/{topic} on the worker.
        if (p is not null) _declaredTopics[key] = Topics.FromJson(p.TopicsJson, $"parser {p.Name} {p.Version}");
        var template = p is null ? null : new Dispatch
        {
            PluginName = p.Name,
            FilePath = "",
            Sinks = Topics.Effective(_declaredTopics[key], _options.Topics),
            FileVersionId = 0,
            EnvHash = p.EnvHash,
            SourceCode = p.Source,
            ArtifactHash = p.ArtifactHash,
            ParserArchive = p.Archive is { } zip ? Convert.ToBase64String(zip) : null,
            LockfileContent = p.Lockfile,
            ParserVersion = p.Version,
            TimeoutSeconds = _options.JobTimeout is { } t ? (int)Math.Ceiling(t.TotalSeconds) : null,
        };
        if (template is not null) _parsers[key] = template;
        return template;
    }

    private readonly Dictionary<(string Name, string Version), List<TopicSetting>> _declaredTopics = [];

    /// <summary>
    /// The sinks of a job routed with a topic prefix, named by the final (prefixed) names: the parser's
    /// declared topics keep their contract and mode but not their sink uri (the prefix exists to keep
    /// the two routes' output apart), and the config file's [topics.FINAL] applies, looked up by the
    /// final name (Topics.Prefixed).
    /// </summary>
    private List<SinkConfig> SinksOf(ClaimedJob job, Dispatch template)
    {
        if (job.TopicPrefix.Length == 0) return template.Sinks;
        var key = (job.ParserName, job.ParserVersion, job.TopicPrefix);
        if (!_prefixedSinks.TryGetValue(key, out var sinks))
            _prefixedSinks[key] = sinks = Topics.Effective(Topics.Prefixed(_declaredTopics[(job.ParserName, job.ParserVersion)], job.TopicPrefix), _options.Topics);
        return sinks;
    }

    /// <summary>
    /// The job's DISPATCH: its parser's template with the source, the queued hash (lineage's
    /// _source_hash), and the files of this parser's current output for the source, which the worker
    /// removes once its own output is in place (issue 13: supersede on commit).
    /// </summary>
    private Dispatch DispatchOf(ClaimedJob job, Dispatch template, CurrentOutput? current)
    {
        var previous = current?.Uris();
        // file_version_id is the job id: stable for the job's life, unique per input in this store.
        return template with
        {
            FilePath = job.InputPath,
            FileVersionId = job.Id,
            ContentHash = job.ContentHash,
            Sinks = SinksOf(job, template),
            TopicPrefix = job.TopicPrefix.Length > 0 ? job.TopicPrefix : null,
            Supersedes = previous is { Count: > 0 } ? previous : null,
            TopicSchemas = (_topicSchemas ??= _store.CurrentTopicSchemas()) is { Count: > 0 } schemas ? schemas : null,
        };
    }

    // The schema registry's current versions, read once and again only after a completion changed one:
    // this sentinel is the store's only writer of them (one sentinel per store).
    private List<TopicSchemaDef>? _topicSchemas;

    private void AfterCommit(long now)
    {
        KeepHeld(now);
        foreach (var (id, reason, result) in _work.Requeued)
            if (result.Total > 0) _log.Info($"worker {id}: {result.Requeued} job(s) requeued, {result.Failed} FAILED (retry limit reached): {reason}");
        if (_work.Swept.Total > 0)
            _log.Warn($"{_work.Swept.Requeued} job(s) RUNNING on workers that never came back were requeued, {_work.Swept.Failed} FAILED (retry limit reached)");
        foreach (var (id, error) in _work.Unrunnable) _log.Warn($"job {id} FAILED: {error}");

        foreach (var (c, applied, fail, queuedHash) in _work.Concluded)
        {
            LogConclusion(c, applied, fail);
            if (applied && c.HeldSince is not null)
                _log.Info($"job {c.JobId}: accepted the held {StatusName(c.Receipt.Status)} from worker {c.WorkerId}; its sentinel's lease has expired");
            if (applied && queuedHash is not null)
                _log.Warn($"job {c.JobId}: the input changed after it was queued; recorded the content parsed ({Hashes.Short(c.Receipt.ContentHash!)}), not the content queued ({Hashes.Short(queuedHash)})");
            if (!applied) continue;
            if (c.Receipt.Status == ReceiptStatus.Success) _activity.Completed++;
            else if (fail?.State == JobState.Failed) _activity.Failed++;
            else if (fail?.State == JobState.Queued) _activity.Retried++;
        }
        _activity.Failed += _work.Unrunnable.Count;
        _activity.Dispatched += _work.Dispatches.Count;
        ReportActivity(now);

        foreach (var (identity, request, parser, result) in _work.Deployed)
        {
            var ack = result.Outcome switch
            {
                RegisterOutcome.Created => new Ack { Success = true, Message = $"stored parser {parser.Name} {parser.Version}", PluginId = result.Id },
                RegisterOutcome.Unchanged => new Ack { Success = true, Message = $"parser {parser.Name} {parser.Version} is already stored with the same source", PluginId = result.Id },
                _ => new Ack { Success = false, Message = $"parser {parser.Name} {parser.Version} already exists with a different source; bump the version", PluginId = result.Id },
            };
            Wire.Send(_router, identity, OpCode.Ack, request, ack, ProtocolJson.Default.Ack);
            if (result.Outcome == RegisterOutcome.Created) _log.Info($"deployed parser {parser.Name} {parser.Version} (id {result.Id})");
        }

        foreach (long id in _work.Cancelled)
        {
            if (!_inFlight.TryGetValue(id, out var f)) continue;
            _inFlight[id] = f with { Aborting = true };
            Wire.Send(_router, f.Worker.Identity, OpCode.Abort, (ulong)id, []);
            _log.Info($"job {id} cancelled: sent ABORT to worker {f.Worker.Id}");
        }

        foreach (var (w, job, dispatch) in _work.Dispatches)
        {
            _inFlight[job.Id] = new InFlight(w, Deadline: DeadlineFrom(now));
            w.Active++;
            Wire.Send(_router, w.Identity, OpCode.Dispatch, (ulong)job.Id, dispatch, ProtocolJson.Default.Dispatch);
        }
    }

    /// <summary>What happened since the last status line: one line a minute while anything does.</summary>
    private struct Activity
    {
        public long Dispatched, Completed, Failed, Retried;
    }

    private Activity _activity;
    private long _nextStatus;
    private const long StatusEveryMs = 60_000;

    private void ReportActivity(long now)
    {
        if (now < _nextStatus) return;
        var a = _activity;
        if (a.Dispatched + a.Completed + a.Failed + a.Retried > 0 && _nextStatus > 0)
            _log.Info($"in the last {(now - _nextStatus + StatusEveryMs) / 1000} s: {a.Dispatched} dispatched, {a.Completed} completed, {a.Failed} failed, {a.Retried} to retry; " +
                      $"{_inFlight.Count} running on {_workers.Count} worker(s)");
        _activity = default;
        _nextStatus = now + StatusEveryMs;
    }

    private void LogConclusion(Conclusion c, bool applied, FailResult? fail)
    {
        string who = c.WorkerId is null ? "an unknown peer" : $"worker {c.WorkerId}";
        string status = StatusName(c.Receipt.Status);
        if (!applied)
        {
            if (c.Expected && c.Receipt.Status == ReceiptStatus.Aborted) _log.Info($"job {c.JobId}: {who} confirmed the abort");
            else _log.Limited("late", $"ignored {status} for job {c.JobId} from {who}: the job is no longer running there (moved on, cancelled or unknown)");
            return;
        }
        string error = c.Receipt.ErrorMessage is { Length: > 0 } e ? ": " + Text.Headline(e) : "";
        switch (c.Receipt.Status)
        {
            case ReceiptStatus.Rejected:
                _log.Info($"job {c.JobId} rejected by {who}; requeued");
                break;
            case ReceiptStatus.Failed or ReceiptStatus.Aborted when fail is { State: JobState.Queued } f:
                _log.Info($"job {c.JobId} {status} on {who}, retry {f.RetryCount}/{_options.Store.RetryLimit} after {f.NextAttemptAt!.Value.UtcDateTime.ToString("HH:mm:ss", CultureInfo.InvariantCulture)}{error}");
                break;
            case ReceiptStatus.Failed or ReceiptStatus.Aborted:
                _log.Warn($"job {c.JobId} FAILED on {who}{error}");
                break;
        }
    }
}
