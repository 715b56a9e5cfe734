// The batched forms a sentinel's turn uses (CompleteMany, ClaimMany, CompleteAndClaim, GetOutputs): the
// same outcome as the per-job calls, on every store.
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
    public void Store_CompleteAndClaim_CompletesFirst_SoAClaimSeesTheOutputJustCompleted()
    {
        using var store = Open();
        long first = store.Enqueue(Job("/in/a"));
        Assert.Single(store.Claim("w", Any, 1));
        long again = store.Enqueue(Job("/in/a") with { ContentHash = "hash-2" });
        long other = store.Enqueue(Job("/in/b"));

        var (completed, claimed) = store.CompleteAndClaim(
            [new Completion(first, "w", new Dictionary<string, long> { ["rows"] = 3 }, Artifact("t", "file:///out/t/a1.parquet"), null),
             new Completion(other, "w", NoMetrics, [], null)],
            [new ClaimRequest("w", Any, 1), new ClaimRequest("v", Any, 5)]);

        Assert.Equal([(true, null), (false, null)], completed);
        Assert.Equal((JobState.Completed, """{"rows":3}"""), (store.Get(first)!.State, store.Get(first)!.MetricsJson));
        Assert.Equal(2, claimed.Count);
        // The job for the same source is claimed with the output completed in the same call as current.
        var (job, current) = Assert.Single(claimed[0]);
        Assert.Equal((again, first), (job.Id, current!.JobId));
        Assert.Equal([other], claimed[1].Select(c => c.Job.Id));
        Assert.Equal(("w", "v"), (store.Get(again)!.Worker, store.Get(other)!.Worker));
        var none = store.CompleteAndClaim([], []);
        Assert.Empty(none.Completed);
        Assert.Empty(none.Claimed);
    }

    [Fact]
    public void Store_CompleteAndClaim_InsideATransaction_RollsBackWithIt()
    {
        using var store = Open();
        long id = store.Enqueue(Job("/in/a"));
        Assert.Single(store.Claim("w", Any, 1));
        long next = store.Enqueue(Job("/in/b"));
        Assert.Throws<InvalidOperationException>(() => store.InTransaction<int>(() =>
        {
            var (completed, claimed) = store.CompleteAndClaim([new Completion(id, "w", NoMetrics, Artifact("t", "file:///out/t/a.parquet"), null)], [new ClaimRequest("w", Any, 1)]);
            Assert.Equal([(true, null)], completed);
            Assert.Equal([next], claimed[0].Select(c => c.Job.Id));
            throw new InvalidOperationException("the turn failed after completing and claiming");
        }));
        Assert.Equal((JobState.Running, JobState.Queued), (store.Get(id)!.State, store.Get(next)!.State));
        Assert.Null(store.GetOutput("p", "/in/a"));
    }

    [Fact]
    public void Store_ClaimMany_IsClaimForEachWorkerInOrder_WithEachJobsCurrentOutput()
    {
        using var store = Open();
        store.Enqueue(Job("/in/a"));
        long earlier = RunOne(store);
        long a = store.Enqueue(Job("/in/a") with { ContentHash = "hash-2" });
        long q1 = store.Enqueue(Job("/in/q1", parser: "q"));
        long b = store.Enqueue(Job("/in/b"));
        long urgent = store.Enqueue(Job("/in/urgent", priority: 5));
        long q2 = store.Enqueue(Job("/in/q2", parser: "q"));

        var claimed = store.ClaimMany([new ClaimRequest("wq", ["q"], 1), new ClaimRequest("w", Any, 3), new ClaimRequest("idle", ["none"], 2), new ClaimRequest("full", Any, 0)]);

        Assert.Equal(4, claimed.Count);
        // Each request as Claim: its capabilities, its count, priority first then oldest, earlier requests first.
        Assert.Equal([q1], claimed[0].Select(c => c.Job.Id));
        Assert.Equal([urgent, a, b], claimed[1].Select(c => c.Job.Id));
        Assert.Empty(claimed[2]);
        Assert.Empty(claimed[3]);
        Assert.Equal(("wq", "w", "w"), (store.Get(q1)!.Worker, store.Get(urgent)!.Worker, store.Get(b)!.Worker));
        Assert.Equal(JobState.Queued, store.Get(q2)!.State);
        // The current output its DISPATCH supersedes, only where there is one.
        var (job, current) = claimed[1][1];
        Assert.Equal(("hash-2", earlier), (job.ContentHash, current!.JobId));
        Assert.Equal(store.GetOutput("p", "/in/a"), current);
        Assert.Null(claimed[1][0].Current);
        Assert.Empty(store.ClaimMany([]));
    }

    [Fact]
    public void Store_ClaimMany_WorkersOfOneCapabilitySet_TakeTheQueueInRequestOrder_PastOneStatementsWorth()
    {
        // PostgreSQL claims for neighbouring workers of one capability set in one statement (at most 256
        // slots each, Store.Postgres.Turn.cs); the outcome is still one Claim per request, in order.
        using var store = Open();
        long first = store.EnqueueMany([.. Enumerable.Range(0, 330).Select(i => Job($"/in/{i:D3}", priority: i % 3 == 0 ? 1 : 0))]);
        long q = store.Enqueue(Job("/in/q", parser: "q"));
        var queueOrder = Enumerable.Range(0, 330).Select(i => first + i).OrderBy(id => (id - first) % 3 == 0 ? 0 : 1).ThenBy(id => id).ToList();

        // a and b share a statement, c starts the next (300 slots), q1 claims from another set, then d.
        var claimed = store.ClaimMany([
            new ClaimRequest("a", Any, 100), new ClaimRequest("b", Any, 100), new ClaimRequest("c", Any, 100),
            new ClaimRequest("q1", ["q"], 2), new ClaimRequest("d", Any, 4),
        ]);

        Assert.Equal(queueOrder[..100], claimed[0].Select(c => c.Job.Id));
        Assert.Equal(queueOrder[100..200], claimed[1].Select(c => c.Job.Id));
        Assert.Equal(queueOrder[200..300], claimed[2].Select(c => c.Job.Id));
        Assert.Equal([q], claimed[3].Select(c => c.Job.Id));
        Assert.Equal(queueOrder[300..304], claimed[4].Select(c => c.Job.Id));
        foreach (var (worker, jobs) in new[] { "a", "b", "c", "q1", "d" }.Zip(claimed))
            Assert.All(jobs, c => Assert.Equal((JobState.Running, worker), (store.Get(c.Job.Id)!.State, store.Get(c.Job.Id)!.Worker)));
        Assert.Equal(26, store.Counts()[JobState.Queued]);

        // Overlapping sets ("*" and a list that covers these jobs) still take the queue in request order.
        var next = store.ClaimMany([new ClaimRequest("y", Any, 10), new ClaimRequest("x", ["p"], 10), new ClaimRequest("z", Any, 10)]);
        Assert.Equal([queueOrder[304..314], queueOrder[314..324], queueOrder[324..]], next.Select(jobs => jobs.Select(c => c.Job.Id).ToList()));
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
