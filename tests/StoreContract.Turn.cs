// The batched forms a sentinel's turn uses (CompleteMany, GetOutputs): the same outcome as the
// per-job calls, on every store.
using Xunit;

namespace Casparian.Tests;

public abstract partial class JobStoreContract
{
    [Fact]
    public void Store_CompleteMany_IsCompleteForEachJob_RefusalsAndQueuedHashesIncluded()
    {
        using var store = Open();
        store.RecordSources([new(new SourceStat("/in/a", 4, 100), "hash-/in/a")]);
        long older = store.Enqueue(Job("/in/a"));
        long newer = store.Enqueue(Job("/in/a") with { ContentHash = "hash-2" });
        long changed = store.Enqueue(Job("/in/changed"));
        long foreign = store.Enqueue(Job("/in/foreign"));
        long cancelled = store.Enqueue(Job("/in/cancelled"));
        Assert.Equal(5, store.Claim("w", Any, 5).Count);
        store.Cancel(cancelled);

        var results = store.CompleteMany([
            new Completion(newer, "w", new Dictionary<string, long> { ["rows"] = 2 }, Artifact("t", "file:///out/t/new.parquet"), "hash-2"),
            new Completion(changed, "w", NoMetrics, Artifact("t", "file:///out/t/changed.parquet"), "hash-new"),
            new Completion(foreign, "other-worker", NoMetrics, Artifact("t", "file:///out/t/foreign.parquet"), null),
            new Completion(cancelled, "w", NoMetrics, Artifact("t", "file:///out/t/late.parquet"), null),
            new Completion(older, "w", NoMetrics, Artifact("t", "file:///out/t/old.parquet"), "hash-old"),
            new Completion(999_999, "w", NoMetrics, [], null),
        ]);

        Assert.Equal([(true, null), (true, "hash-/in/changed"), (false, null), (false, null), (true, "hash-/in/a"), (false, null)], results);
        Assert.Equal((JobState.Completed, """{"rows":2}"""), (store.Get(newer)!.State, store.Get(newer)!.MetricsJson));
        Assert.Equal(JobState.Running, store.Get(foreign)!.State);
        Assert.Equal(JobState.Cancelled, store.Get(cancelled)!.State);
        // Newest wins, as completing them one by one does: the older job's parsed hash is not the catalog's content.
        var current = store.GetOutput("p", "/in/a")!;
        Assert.Equal((newer, "hash-2"), (current.JobId, current.ContentHash));
        Assert.Equal("hash-2", store.LookupSources("p", "1.0", ["/in/a"], "")["/in/a"].ContentHash);
        // A source the catalog did not hold gets its row from the completion.
        Assert.Equal("hash-new", store.LookupSources("p", "1.0", ["/in/changed"], "")["/in/changed"].ContentHash);
        Assert.Null(store.GetOutput("p", "/in/foreign"));
        Assert.Null(store.GetOutput("p", "/in/cancelled"));
        Assert.Empty(store.CompleteMany([]));
    }

    [Fact]
    public void Store_CompleteMany_InsideATransaction_RollsBackWithIt()
    {
        using var store = Open();
        long id = store.Enqueue(Job("/in/a"));
        Assert.Single(store.Claim("w", Any, 1));
        Assert.Throws<InvalidOperationException>(() => store.InTransaction<int>(() =>
        {
            Assert.Equal([(true, null)], store.CompleteMany([new Completion(id, "w", NoMetrics, Artifact("t", "file:///out/t/a.parquet"), null)]));
            throw new InvalidOperationException("the turn failed after completing");
        }));
        Assert.Equal(JobState.Running, store.Get(id)!.State);
        Assert.Null(store.GetOutput("p", "/in/a"));
    }

    [Fact]
    public void Store_GetOutputs_ReturnsEachPairsCurrentOutput_AndLeavesOutTheRest()
    {
        using var store = Open();
        store.Enqueue(Job("/in/a"));
        long a = RunOne(store);
        store.Enqueue(Job("/in/a", parser: "q"));
        long q = RunOne(store, "u");
        store.Enqueue(Job("/in/b"));
        long b = RunOne(store);

        var found = store.GetOutputs([("p", "/in/a"), ("q", "/in/a"), ("p", "/in/b"), ("q", "/in/b"), ("p", "/in/none"), ("p", "/in/a")]);
        Assert.Equal(3, found.Count);
        Assert.Equal(store.GetOutput("p", "/in/a"), found[("p", "/in/a")]);
        Assert.Equal((a, q, b), (found[("p", "/in/a")].JobId, found[("q", "/in/a")].JobId, found[("p", "/in/b")].JobId));
        Assert.Equal([$"file:///out/u/{q}.parquet"], found[("q", "/in/a")].Uris());
        Assert.Empty(store.GetOutputs([]));
    }
}
