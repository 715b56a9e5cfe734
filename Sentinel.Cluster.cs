// Several sentinels on one store (issue 16). The store keeps the truth (Store.Postgres.Cluster.cs):
// each sentinel renews a lease there every quarter of its lease_ttl, in the turn's transaction, and
// the one holding the leader row runs the maintenance (the stale sweep). A worker that fails over from
// a dead sentinel reports its jobs in flight in its heartbeats; this sentinel adopts those it does not
// know once the store lets it (their sentinel's lease has expired). On a file store the lease is a
// no-op and this sentinel always leads (it holds the store's pid lock).
//
// A CONCLUDE can reach this sentinel before the dead sentinel's lease has expired (a worker fails over
// in 1.5 s; a lease lasts lease_ttl). The store refuses it then: another live sentinel owns the job.
// Rather than drop the result (the job would run again once the lease lapsed), the conclusion is held
// and tried again every HeldRetry until that lease expires and the store accepts it, for at most
// lease_ttl plus a second. It applies only to the attempt it concludes (the claim time is kept), so a
// job requeued or claimed again meanwhile refuses it. A sentinel that is in fact alive keeps its lease,
// so its job is never concluded here: the hold runs out and the conclusion is refused, as before.
namespace Casparian;

internal sealed partial class Sentinel
{
    /// <summary>This sentinel's name in the store's leases and on the jobs it claims: host, pid and a random part, new each start.</summary>
    public string Name { get; } = $"{Environment.MachineName}-{Environment.ProcessId}-{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(3))}";

    /// <summary>
    /// How often a store that notifies (LISTEN/NOTIFY) is still polled, for what no notification
    /// announces: retries coming due, cancellations. Between polls a NOTIFY wakes the claim at once.
    /// </summary>
    private static readonly TimeSpan NotifiedPoll = TimeSpan.FromSeconds(1);

    private bool _leading = true;
    private long _nextRenew;

    private long PollEvery => (long)(_store.Shared && _options.PollInterval < NotifiedPoll ? NotifiedPoll : _options.PollInterval).TotalMilliseconds;

    private bool RenewDue(long now) => _store.Shared && now >= _nextRenew;

    /// <summary>Inside the turn's transaction: renews the lease, and says whether this sentinel leads the maintenance.</summary>
    private void RenewLease(long now)
    {
        bool leading = _store.RenewLease(_options.LeaseTtl);
        bool first = _nextRenew == 0;
        _nextRenew = now + Math.Max(250, (long)_options.LeaseTtl.TotalMilliseconds / 4);
        // The first renewal says only that this sentinel leads; one that never led has nothing to give up.
        if (leading != _leading && (leading || !first)) _log.Info(leading ? $"sentinel {Name} leads the store's maintenance (stale sweep)" : $"sentinel {Name} no longer leads the store's maintenance");
        _leading = leading;
    }

    /// <summary>A heartbeat listing jobs this sentinel does not know: a worker that failed over to us; adopt what the store allows.</summary>
    private void AdoptReported(WorkerEntry worker, Heartbeat beat)
    {
        if (beat.ActiveJobIds is not { Count: > 0 } ids || _work.Adopt.Contains(worker.Id)) return;
        foreach (long id in ids)
            if (!_inFlight.ContainsKey(id))
            {
                _work.Adopt.Add(worker.Id);
                return;
            }
    }

    /// <summary>How often held conclusions are tried again.</summary>
    private const long HeldRetry = 500;

    private readonly List<Conclusion> _held = [];
    private long _heldRetryAt;

    /// <summary>In the transaction, after the store refused <paramref name="c"/>: held back when the refusal is only another live sentinel's lease.</summary>
    private Conclusion? HoldBack(Conclusion c, long now)
    {
        if (!_store.Shared || c.Expected || c.WorkerId is not { } worker || _held.Count + _work.Held.Count >= MaxPendingConclusions) return null;
        if (_store.HeldElsewhere(c.JobId, worker) is not { } since || (c.HeldSince is { } was && was != since)) return null;
        return c.HeldSince is null ? c with { HeldSince = since, HeldUntil = now + (long)_options.LeaseTtl.TotalMilliseconds + 1000 } : c;
    }

    /// <summary>After the commit: keeps what was held this turn, or gives it up once its time is over.</summary>
    private void KeepHeld(long now)
    {
        foreach (var (c, isNew) in _work.Held)
        {
            if (now > c.HeldUntil)
            {
                _log.Warn($"refused {StatusName(c.Receipt.Status)} for job {c.JobId} from worker {c.WorkerId}: another sentinel still owns it and its lease stayed live; that sentinel decides");
                continue;
            }
            if (isNew)
                _log.Info($"job {c.JobId}: holding {StatusName(c.Receipt.Status)} from worker {c.WorkerId}; the job's sentinel has not yet lost its lease, retrying until it does");
            _held.Add(c);
        }
    }

    /// <summary>Before a step: the held conclusions go back into the turn's work, every <see cref="HeldRetry"/>.</summary>
    private void RetryHeld(long now)
    {
        if (_held.Count == 0 || now < _heldRetryAt) return;
        _work.Conclusions.AddRange(_held);
        _held.Clear();
        _heldRetryAt = now + HeldRetry;
    }

    /// <summary>A clean stop gives the lease up, so the other sentinels adopt this one's jobs at once.</summary>
    private void EndLease()
    {
        if (!_store.Shared) return;
        try
        {
            _store.EndLease();
        }
        catch (StoreException e)
        {
            _log.Warn($"could not give up the lease of sentinel {Name}; the others take over its jobs when it expires: {e.Message}");
        }
    }
}
