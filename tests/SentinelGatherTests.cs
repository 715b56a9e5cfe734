// A sentinel on a shared (PostgreSQL) store gathers conclusions into one store step while jobs are
// still out (SentinelOptions.GatherWindow): a real sentinel, a real server, a scripted worker.
// Conclusions that share a step share its clock reading, so their finished_at is equal to the
// millisecond; conclusions stored in steps of their own are as far apart as they were sent.
using Xunit;

namespace Casparian.Tests;

public sealed class SentinelGatherTests
{
    private static long[] Queue(string url, int count)
    {
        using var store = JobStores.Open(Defaults.Store(url));
        store.RegisterParser(SentinelTests.Parser("csv", bundled: false));
        return [.. Enumerable.Range(0, count).Select(i => store.Enqueue(new NewJob("csv", "1.0", $"/data/in-{i}.csv", $"h{i}")))];
    }

    private static JobRecord Completed(string url, long id) => Eventually.Value(() =>
    {
        using var store = JobStores.Open(Defaults.Store(url));
        return store.Get(id) is { State: var s } job && s == JobState.Completed ? job : null;
    }, ScriptedWorker.Patience, $"job {id} to be COMPLETED");

    /// <summary>Two jobs out on one worker; it concludes the first, waits, then the second.</summary>
    private static (JobRecord First, JobRecord Second) ConcludeApart(TimeSpan window, bool waitForFirst)
    {
        string url = PgServer.Shared.NewDatabase();
        var ids = Queue(url, 2);
        using var host = new SentinelHost(url, configure: o => o with { GatherWindow = window });
        using var worker = new ScriptedWorker(host.Endpoint, "w1", ["csv"], slots: 2);
        var first = (long)worker.Expect(OpCode.Dispatch).JobId;
        var second = (long)worker.Expect(OpCode.Dispatch).JobId;
        Assert.Equal(ids.Order(), new[] { first, second }.Order());

        worker.Conclude(first, ReceiptStatus.Success, new() { ["rows"] = 1 });
        if (waitForFirst) Completed(url, first);
        else Thread.Sleep(200);
        worker.Conclude(second, ReceiptStatus.Success, new() { ["rows"] = 1 });
        return (Completed(url, first), Completed(url, second));
    }

    [PgFact]
    public void Sentinel_OnASharedStore_ConclusionsWithinTheGatherWindow_ShareOneStoreStep()
    {
        // A window far longer than the 200 ms between the two conclusions: the first waits for the second.
        var (first, second) = ConcludeApart(TimeSpan.FromSeconds(3), waitForFirst: false);
        Assert.NotNull(first.FinishedAt);
        Assert.Equal(first.FinishedAt, second.FinishedAt);
    }

    [PgFact]
    public void Sentinel_OnASharedStore_WithNoGatherWindow_StoresEachConclusionAtOnce()
    {
        // The first job is COMPLETED while the second is still out, so the two steps are apart.
        var (first, second) = ConcludeApart(TimeSpan.Zero, waitForFirst: true);
        Assert.True(second.FinishedAt > first.FinishedAt, $"finished {first.FinishedAt:O} then {second.FinishedAt:O}");
    }
}
