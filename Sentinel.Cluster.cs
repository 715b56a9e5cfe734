// Several sentinels on one store (issue 16). The store keeps the truth (Store.Postgres.Cluster.cs):
// each sentinel renews a lease there every quarter of its lease_ttl, in the turn's transaction, and
// the one holding the leader row runs the maintenance (the stale sweep). A worker that fails over from
// a dead sentinel reports its jobs in flight in its heartbeats; this sentinel adopts those it does not
// know once the store lets it (their sentinel's lease has expired). On a file store the lease is a
// no-op and this sentinel always leads (it holds the store's pid lock).
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
