// The store step: everything a turn produced, in one transaction (group commit), then the messages
// that depend on it. Pending work survives a failed step and is retried on a later turn.
using System.Globalization;
using Microsoft.Data.Sqlite;

namespace Casparian;

internal sealed partial class Sentinel
{
    private readonly record struct Conclusion(long JobId, string? WorkerId, JobReceipt Receipt, bool Expected);

    // Pending store work, consumed by the next successful step.
    private readonly List<Conclusion> _conclusions = [];
    private readonly List<(byte[] Identity, ulong RequestId, ParserRecord Parser)> _deploys = [];
    private readonly List<(string WorkerId, string Reason)> _lost = [];
    private readonly List<string> _adopt = [];
    private readonly List<(long JobId, string WorkerId)> _released = [];
    private readonly HashSet<string> _touch = new(StringComparer.Ordinal);
    private bool _claimWanted = true;
    private long _nextPoll;
    private long _storeRetryAt;

    /// <summary>Bounds memory if the store is down while peers keep concluding jobs we do not know.</summary>
    private const int MaxPendingConclusions = 100_000;

    // Results of the step's transaction, acted on only after it commits.
    private readonly List<(Conclusion C, bool Applied, FailResult? Fail)> _concluded = [];
    private readonly List<(byte[] Identity, ulong RequestId, ParserRecord Parser, ParserRegistration Result)> _deployed = [];
    private readonly List<(string WorkerId, string Reason, RequeueResult Result)> _requeued = [];
    private readonly List<(WorkerEntry Worker, ClaimedJob Job, Dispatch Template)> _dispatches = [];
    private readonly List<(long JobId, string Error)> _unrunnable = [];
    private List<long> _cancelled = [];
    private RequeueResult _swept;

    // Registered parsers never change under the same name and version, so their DISPATCH fields are cached.
    private readonly Dictionary<(string Name, string Version), Dispatch?> _parsers = [];

    private bool HasStoreWork =>
        _conclusions.Count > 0 || _deploys.Count > 0 || _lost.Count > 0 || _adopt.Count > 0 || _released.Count > 0 || _touch.Count > 0;

    private bool HasPendingWork => HasStoreWork || (_claimWanted && AnyClaimable(NowMs()));

    private bool AnyClaimable(long now)
    {
        foreach (var w in _workers)
            if (w.Free > 0 && w.PausedUntil <= now) return true;
        return false;
    }

    private void Step(long now, bool final)
    {
        if (!final && now < _storeRetryAt) return;
        bool poll = now >= _nextPoll;
        bool claim = !final && (_claimWanted || poll) && AnyClaimable(now);
        bool cancels = poll && _inFlight.Count > 0;
        bool sweep = !final && now >= _nextSweep;
        if (!HasStoreWork && !claim && !cancels && !sweep) return;

        ClearResults();
        try
        {
            _store.InTransaction(() =>
            {
                StoreWork(now, claim, cancels, sweep);
                return 0;
            });
        }
        catch (SqliteException e)
        {
            ClearResults();
            _storeRetryAt = now + 250;
            _log.Limited("store", $"store step failed, retrying in 250 ms with the work kept: {_store.Translate(e).Message}");
            return;
        }
        _conclusions.Clear();
        _deploys.Clear();
        _lost.Clear();
        _adopt.Clear();
        _released.Clear();
        _touch.Clear();
        _claimWanted = false;
        if (poll) _nextPoll = now + (long)_options.PollInterval.TotalMilliseconds;
        if (sweep) _nextSweep = now + Math.Max(1000, (long)_options.HeartbeatTimeout.TotalMilliseconds / 2);
        AfterCommit(now);
    }

    private void ClearResults()
    {
        _concluded.Clear();
        _deployed.Clear();
        _requeued.Clear();
        _dispatches.Clear();
        _unrunnable.Clear();
        _cancelled = [];
        _swept = default;
    }

    /// <summary>The transaction's body. Order matters: a lost worker's jobs are requeued before anyone claims.</summary>
    private void StoreWork(long now, bool claim, bool cancels, bool sweep)
    {
        foreach (var (id, reason) in _lost) _requeued.Add((id, reason, _store.RequeueWorker(id, reason)));
        foreach (var (jobId, workerId) in _released) _store.Reject(jobId, workerId);
        foreach (var id in _adopt)
        {
            // Adoption only reads, so applying it to memory now is safe even if the commit fails.
            if (FindById(id) is not { } w) continue;
            foreach (long jobId in _store.RunningOn(id))
            {
                if (!_inFlight.TryAdd(jobId, new InFlight(w, Adopted: true))) continue;
                w.Active++;
            }
            if (w.Active > 0) _log.Info($"worker {id} holds {w.Active} job(s) from before this sentinel started; keeping them");
        }
        foreach (var c in _conclusions) _concluded.Add(Apply(c));
        foreach (var (identity, request, parser) in _deploys) _deployed.Add((identity, request, parser, _store.RegisterParser(parser)));
        foreach (var id in _touch) _store.Heartbeat(id);
        if (sweep && now - _startedAt >= (long)_options.HeartbeatTimeout.TotalMilliseconds)
            _swept = _store.RequeueStale(DateTimeOffset.FromUnixTimeMilliseconds(now - (long)_options.HeartbeatTimeout.TotalMilliseconds), [.. _workers.Select(w => w.Id)]);
        if (cancels)
        {
            var watch = new List<long>(_inFlight.Count);
            foreach (var (id, f) in _inFlight)
                if (!f.Aborting) watch.Add(id);
            _cancelled = _store.CancelledAmong(watch);
        }
        if (claim) Claim(now);
    }

    private (Conclusion, bool, FailResult?) Apply(Conclusion c)
    {
        var r = c.Receipt;
        switch (r.Status)
        {
            case ReceiptStatus.Success:
                return (c, _store.Complete(c.JobId, c.WorkerId, r.Metrics, r.Artifacts), null);
            case ReceiptStatus.Failed:
                // Contract with the worker: metrics["transient"] == 1 marks a failure worth retrying
                // (guest exit code 2, SPEC §3); any other failure is permanent.
                bool transient = r.Metrics.TryGetValue("transient", out long t) && t == 1;
                var failed = _store.Fail(c.JobId, c.WorkerId, r.ErrorMessage ?? "the worker reported FAILED without a message", transient, r.Metrics);
                return (c, failed is not null, failed);
            case ReceiptStatus.Rejected:
                return (c, _store.Reject(c.JobId, c.WorkerId), null);
            default:
                // ABORTED. A job we cancelled is CANCELLED already and stays so (the store refuses the
                // change). Otherwise the worker gave up on it (shutdown, its own limits): that is not the
                // file's fault, so it is retried like a transient failure, up to the retry limit.
                var aborted = _store.Fail(c.JobId, c.WorkerId, r.ErrorMessage ?? "aborted by the worker", transient: true, r.Metrics);
                return (c, aborted is not null, aborted);
        }
    }

    /// <summary>Fills every free slot, one claim per worker, starting from a rotating worker for fairness.</summary>
    private void Claim(long now)
    {
        int n = _workers.Count;
        for (int k = 0; k < n; k++)
        {
            var w = _workers[(_nextWorkerForClaims + k) % n];
            if (w.Free == 0 || w.PausedUntil > now || w.Capabilities.Count == 0) continue;
            foreach (var job in _store.Claim(w.Id, w.Capabilities, w.Free))
            {
                if (ParserFor(job) is { } template) _dispatches.Add((w, job, template));
                else
                {
                    string error = $"parser {job.ParserName} {job.ParserVersion} is not registered in the store";
                    _store.Fail(job.Id, w.Id, error, transient: false);
                    _unrunnable.Add((job.Id, error));
                }
            }
        }
        if (n > 0) _nextWorkerForClaims = (_nextWorkerForClaims + 1) % n;
    }

    private Dispatch? ParserFor(ClaimedJob job)
    {
        var key = (job.ParserName, job.ParserVersion);
        if (_parsers.TryGetValue(key, out var cached)) return cached;
        var p = _store.GetParser(job.ParserName, job.ParserVersion);
        // DISPATCH per SPEC §2.4. No sinks: the worker writes one file per topic under its root.
        var template = p is null ? null : new Dispatch
        {
            PluginName = p.Name,
            FilePath = "",
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

    private void AfterCommit(long now)
    {
        foreach (var (id, reason, result) in _requeued)
            if (result.Total > 0) _log.Info($"worker {id}: {result.Requeued} job(s) requeued, {result.Failed} FAILED (retry limit reached): {reason}");
        if (_swept.Total > 0)
            _log.Warn($"{_swept.Requeued} job(s) RUNNING on workers that never came back were requeued, {_swept.Failed} FAILED (retry limit reached)");
        foreach (var (id, error) in _unrunnable) _log.Warn($"job {id} FAILED: {error}");

        foreach (var (c, applied, fail) in _concluded)
        {
            LogConclusion(c, applied, fail);
            if (!applied) continue;
            if (c.Receipt.Status == ReceiptStatus.Success) _activity.Completed++;
            else if (fail?.State == JobState.Failed) _activity.Failed++;
            else if (fail?.State == JobState.Queued) _activity.Retried++;
        }
        _activity.Failed += _unrunnable.Count;
        _activity.Dispatched += _dispatches.Count;
        ReportActivity(now);

        foreach (var (identity, request, parser, result) in _deployed)
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

        foreach (long id in _cancelled)
        {
            if (!_inFlight.TryGetValue(id, out var f)) continue;
            _inFlight[id] = f with { Aborting = true };
            Wire.Send(_router, f.Worker.Identity, OpCode.Abort, (ulong)id, []);
            _log.Info($"job {id} cancelled: sent ABORT to worker {f.Worker.Id}");
        }

        foreach (var (w, job, template) in _dispatches)
        {
            // file_version_id is the job id: stable for the job's life, unique per input in this store.
            var dispatch = template with { FilePath = job.InputPath, FileVersionId = job.Id };
            _inFlight[job.Id] = new InFlight(w);
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
        string error = c.Receipt.ErrorMessage is { Length: > 0 } e ? ": " + FirstLine(e) : "";
        switch (c.Receipt.Status)
        {
            case ReceiptStatus.Rejected:
                _log.Info($"job {c.JobId} rejected by {who}; requeued");
                break;
            case ReceiptStatus.Failed or ReceiptStatus.Aborted when fail is { State: JobState.Queued } f:
                _log.Info($"job {c.JobId} {status} on {who}, retry {f.RetryCount}/{_options.RetryLimit} after {f.NextAttemptAt!.Value.UtcDateTime.ToString("HH:mm:ss", CultureInfo.InvariantCulture)}{error}");
                break;
            case ReceiptStatus.Failed or ReceiptStatus.Aborted:
                _log.Warn($"job {c.JobId} FAILED on {who}{error}");
                break;
        }
    }

    /// <summary>One line of a possibly multi-line error: a Python traceback's last line names the exception.</summary>
    private static string FirstLine(string text)
    {
        var lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (lines.Length <= 1) return text.Trim();
        return (lines[0].StartsWith("Traceback", StringComparison.Ordinal) ? lines[^1] : lines[0]) + " …";
    }
}
