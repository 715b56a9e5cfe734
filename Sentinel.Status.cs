// The sentinel's hooks into its figures (Metrics.cs): what a committed turn did, and the worker table
// as the status server shows it. Everything here runs on the sentinel thread and only reads the
// turn's results; the status server reads the snapshots SentinelMetrics publishes.
using System.Diagnostics;

namespace Casparian;

internal sealed partial class Sentinel
{
    /// <summary>The sentinel's instruments; the status server exports them (StatusServer.cs).</summary>
    internal SentinelMetrics Metrics { get; } = new();

    /// <summary>Records what the turn's committed store step produced. <paramref name="stepStarted"/>: Stopwatch ticks.</summary>
    private void RecordTurn(long stepStarted)
    {
        Metrics.StoreStep(Stopwatch.GetElapsedTime(stepStarted));
        foreach (var (c, applied, fail, _) in _work.Concluded) Metrics.Concluded(c.JobId, c.Receipt, applied, fail?.State);
        foreach (var (_, _, result) in _work.Requeued) Metrics.Requeued(result, "worker_lost");
        Metrics.Requeued(_work.Swept, "stale");
        Metrics.FailedUndispatched(_work.Unrunnable.Count);
        foreach (var (_, job, _) in _work.Dispatches) Metrics.Dispatched(job.Id);
    }

    /// <summary>Publishes the worker table for the gauges and the status page (at most twice a second).</summary>
    private void PublishWorkers(long now)
    {
        if (!Metrics.WorkersDue(now)) return;
        var views = new WorkerView[_workers.Count];
        for (int i = 0; i < views.Length; i++)
        {
            var w = _workers[i];
            views[i] = new WorkerView(w.Id, w.Slots, w.Active, w.LastSeen, [.. w.Capabilities]);
        }
        Metrics.PublishWorkers(now, views);
    }
}
