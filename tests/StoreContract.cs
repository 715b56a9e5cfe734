// The job store's contract (SPEC §6), tested through IJobStore alone so every backend runs the same
// suite: a subclass names where its fresh store lives and how to open it. SqliteJobStoreContractTests
// runs it against real SQLite files; a PostgreSQL store adds its own subclass.
using System.Collections.Concurrent;
using Xunit;

namespace Casparian.Tests;

public abstract partial class JobStoreContract : IDisposable
{
    private protected ManualClock Clock { get; } = new();

    /// <summary>Options of this test's store: empty at first, the same store every time it is opened (xunit makes an instance per test).</summary>
    private protected abstract StoreOptions Fresh { get; }

    private protected abstract IJobStore Open(StoreOptions options);

    public virtual void Dispose() { }

    private IJobStore Open(int retryLimit = 3, TimeSpan? backoff = null) => Open(Fresh with
    {
        RetryLimit = retryLimit,
        RetryBackoff = backoff ?? TimeSpan.FromSeconds(2),
        RetryBackoffMax = TimeSpan.FromSeconds(60),
        Clock = Clock,
    });

    private static NewJob Job(string path, int priority = 0, string parser = "p") => new(parser, "1.0", path, "hash-" + path, priority);

    private static readonly string[] Any = ["*"];

    [Fact]
    public void Store_HasJob_FindsAJobInAnyStateByParserVersionAndContent()
    {
        using var store = Open();
        long id = store.Enqueue(Job("/in/a"));
        Assert.True(store.HasJob("p", "1.0", "hash-/in/a"));
        Assert.False(store.HasJob("p", "2.0", "hash-/in/a"));
        Assert.False(store.HasJob("q", "1.0", "hash-/in/a"));
        store.Cancel(id);
        Assert.True(store.HasJob("p", "1.0", "hash-/in/a"));
    }

    private static readonly Dictionary<string, long> NoMetrics = [];

    private static List<Dictionary<string, string>> Artifact(string topic, string uri) => [new() { ["topic"] = topic, ["uri"] = uri, ["rows"] = "1", ["bytes"] = "1" }];

    /// <summary>Claims the one due job and completes it with one artifact; returns its id.</summary>
    private static long RunOne(IJobStore store, string topic = "t", string? parsedHash = null)
    {
        var job = Assert.Single(store.Claim("w", Any, 1));
        Assert.True(store.Complete(job.Id, "w", NoMetrics, Artifact(topic, $"file:///out/{topic}/{job.Id}.parquet"), parsedHash, out _));
        return job.Id;
    }

    [Fact]
    public void Store_Complete_MakesTheJobTheCurrentOutputOfItsParserAndSource()
    {
        using var store = Open();
        store.Enqueue(Job("/in/a"));
        long first = RunOne(store);
        Assert.Equal(new CurrentOutput("p", "/in/a", first, "1.0", "hash-/in/a", store.Get(first)!.ArtifactsJson), store.GetOutput("p", "/in/a"));
        store.Enqueue(Job("/in/a") with { ParserVersion = "1.1", ContentHash = "hash-2" });
        store.Enqueue(Job("/in/a", parser: "q"));
        long second = RunOne(store, "u");
        long other = RunOne(store);
        var current = store.GetOutput("p", "/in/a")!;
        Assert.Equal((second, "1.1", "hash-2"), (current.JobId, current.ParserVersion, current.ContentHash));
        Assert.Equal([$"file:///out/u/{second}.parquet"], current.Uris());
        Assert.Equal(other, store.GetOutput("q", "/in/a")!.JobId);
        Assert.Null(store.GetOutput("p", "/in/b"));
    }

    [Fact]
    public void Store_Complete_OfAJobNotRunning_LeavesTheCurrentOutputAlone()
    {
        using var store = Open();
        store.Enqueue(Job("/in/a"));
        long first = RunOne(store);
        long id = store.Enqueue(Job("/in/a"));
        store.Cancel(id);
        Assert.False(store.Complete(id, null, NoMetrics, Artifact("t", "file:///late.parquet")));
        Assert.Equal(first, store.GetOutput("p", "/in/a")!.JobId);
    }

    [Fact]
    public void Store_Complete_OfAnOlderJobAfterANewerOne_LeavesTheNewerCurrent()
    {
        // Two jobs for one (parser, source) run at once (the file re-added while its first job runs):
        // the newer concludes first, then the older; the newer stays current, and the older's parsed
        // hash does not become the catalog's content.
        using var store = Open();
        store.RecordSources([new(new SourceStat("/in/a", 4, 100), "hash-/in/a")]);
        long older = store.Enqueue(Job("/in/a"));
        long newer = store.Enqueue(Job("/in/a") with { ContentHash = "hash-2" });
        var claimed = store.Claim("w", Any, 2);
        Assert.Equal([older, newer], claimed.Select(j => j.Id).Order());
        Assert.True(store.Complete(newer, "w", NoMetrics, Artifact("t", "file:///out/t/new.parquet"), "hash-2", out _));
        Assert.True(store.Complete(older, "w", NoMetrics, Artifact("t", "file:///out/t/old.parquet"), "hash-old", out _));
        Assert.Equal(JobState.Completed, store.Get(older)!.State);
        var current = store.GetOutput("p", "/in/a")!;
        Assert.Equal((newer, "hash-2"), (current.JobId, current.ContentHash));
        Assert.Equal(["file:///out/t/new.parquet"], current.Uris());
        Assert.Equal("hash-2", store.LookupSources("p", "1.0", ["/in/a"], "")["/in/a"].ContentHash);
    }

    [Fact]
    public void Store_RecordSources_AddsAVersionOnlyWhenTheContentChanges()
    {
        using var store = Open();
        var a = new SourceStat("/in/a", 10, 1000);
        Assert.Equal(2, store.RecordSources([new(a, "h1"), new(new SourceStat("/in/b", 5, 1000), "hb")]));
        // Touched (new mtime), same content: no version; edited: one.
        Assert.Equal(0, store.RecordSources([new(a with { MtimeUs = 2000 }, "h1")]));
        Assert.Equal(1, store.RecordSources([new(a with { Size = 11, MtimeUs = 3000 }, "h2")]));
        Assert.Equal(["h1", "h2"], store.SourceVersions("/in/a").Select(v => v.ContentHash));
        Assert.Empty(store.SourceVersions("/in/none"));

        var found = store.LookupSources("p", "1.0", ["/in/a", "/in/none", "/in/b"], "");
        Assert.Equal(["/in/a", "/in/b"], found.Keys.Order());
        var entry = found["/in/a"];
        Assert.Equal(("h2", 11L, 3000L, 2L, false), (entry.ContentHash, entry.Size, entry.MtimeUs, entry.Versions, entry.Pending));
        Assert.Null(entry.Output);
    }

    [Fact]
    public void Store_LookupSources_ReportsPendingJobsOfThatVersionAndTheCurrentOutput()
    {
        using var store = Open();
        store.RecordSources([new(new SourceStat("/in/a", 1, 1), "hash-/in/a"), new(new SourceStat("/in/b", 1, 1), "hash-/in/b")]);
        store.Enqueue(Job("/in/a"));
        store.Enqueue(Job("/in/b"));
        long a = RunOne(store);
        var found = store.LookupSources("p", "1.0", ["/in/a", "/in/b"], "");
        Assert.Equal((a, false), (found["/in/a"].Output!.JobId, found["/in/a"].Pending));
        Assert.Equal((null, true), (found["/in/b"].Output, found["/in/b"].Pending));
        Assert.False(store.LookupSources("p", "2.0", ["/in/b"], "")["/in/b"].Pending);
        Assert.Null(store.LookupSources("q", "1.0", ["/in/a"], "")["/in/a"].Output);
    }

    [Fact]
    public void Store_Complete_ParsedHashIsTheVersionOfRecord()
    {
        using var store = Open();
        store.RecordSources([new(new SourceStat("/in/a", 4, 100), "hash-/in/a")]);
        store.Enqueue(Job("/in/a"));
        RunOne(store, parsedHash: "parsed");
        Assert.Equal("parsed", store.GetOutput("p", "/in/a")!.ContentHash);
        var entry = store.LookupSources("p", "1.0", ["/in/a"], "")["/in/a"];
        // Size and mtime no longer describe the recorded content: the next `job add` hashes the file.
        Assert.Equal(("parsed", -1L, -1L), (entry.ContentHash, entry.Size, entry.MtimeUs));
        Assert.Equal(["hash-/in/a", "parsed"], store.SourceVersions("/in/a").Select(v => v.ContentHash));
        // A job queued without `job add` (no catalog row yet) still enters the catalog.
        store.Enqueue(Job("/in/b"));
        RunOne(store);
        Assert.Equal("hash-/in/b", Assert.Single(store.SourceVersions("/in/b")).ContentHash);
    }

    [Fact]
    public void Store_OutputsNotFrom_ListsTheSourcesAnotherVersionMade()
    {
        using var store = Open();
        store.Enqueue(Job("/in/a"));
        store.Enqueue(Job("/in/b") with { ParserVersion = "1.1" });
        store.Enqueue(Job("/in/c", parser: "q"));
        for (int i = 0; i < 3; i++) RunOne(store);
        Assert.Equal(["/in/a"], store.OutputsNotFrom("p", "1.1").Select(o => o.SourcePath));
        Assert.Equal(["/in/a", "/in/b"], store.OutputsNotFrom("p", "2.0").Select(o => o.SourcePath));
        Assert.Empty(store.OutputsNotFrom("q", "1.0"));
    }

    [Fact]
    public void Store_RetryManyAndCancelMany_TouchOnlyMatchingJobs()
    {
        using var store = Open(retryLimit: 0);
        long a = store.Enqueue(Job("/in/a"));
        long b = store.Enqueue(Job("/in/b", parser: "q"));
        long c = store.Enqueue(Job("/in/c"));
        long d = store.Enqueue(Job("/in/d"));
        foreach (var j in store.Claim("w", Any, 2)) store.Fail(j.Id, "w", "boom", transient: false);
        Assert.Equal([a], store.RetryMany(new JobQuery(JobState.Failed, "p")));
        Assert.Equal(JobState.Failed, store.Get(b)!.State);
        Assert.Equal([a, c, d], store.CancelMany(new JobQuery(JobState.Queued, "p")));
        Assert.Empty(store.CancelMany(new JobQuery(JobState.Queued, "p")));
        Assert.Equal([b], store.RetryMany(new JobQuery(JobState.Failed)));
        Assert.Equal(JobState.Queued, store.Get(b)!.State);
        Assert.Equal([a, c, d], store.Find(new JobQuery(JobState.Cancelled, "p")).Select(j => j.Id));
        Clock.Advance(TimeSpan.FromHours(2));
        long e = store.Enqueue(Job("/in/e"));
        Assert.Equal([e], store.Find(new JobQuery(ParserName: "p", Since: Clock.GetUtcNow() - TimeSpan.FromHours(1))).Select(j => j.Id));
    }

    [Fact]
    public void Store_Claim_EveryJobExactlyOnce_WithConcurrentClaimers()
    {
        using (var store = Open())
            store.EnqueueMany([.. Enumerable.Range(0, 2000).Select(i => Job($"/in/{i}"))]);

        var claimed = new ConcurrentBag<(long Id, string Worker)>();
        var threads = Enumerable.Range(0, 4).Select(t => new Thread(() =>
        {
            // Each thread is its own connection, as separate processes would be.
            using var store = Open(Fresh with { LockTimeout = TimeSpan.FromSeconds(30) });
            string worker = $"w{t}";
            while (true)
            {
                var got = store.Claim(worker, Any, max: 1 + t % 2);
                if (got.Count == 0) break;
                foreach (var j in got)
                {
                    claimed.Add((j.Id, worker));
                    Assert.True(store.Complete(j.Id, worker, new Dictionary<string, long>(), []));
                }
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());

        var ids = claimed.Select(c => c.Id).ToList();
        Assert.Equal(2000, ids.Count);
        Assert.Equal(2000, ids.Distinct().Count());
        Assert.True(claimed.Select(c => c.Worker).Distinct().Count() >= 2, "at least two claimers got work");
        using var check = Open();
        Assert.Equal(2000, check.Counts()[JobState.Completed]);
    }

    [Fact]
    public void Store_Claim_HighestPriorityFirstThenOldest()
    {
        using var store = Open();
        long low = store.Enqueue(Job("/low", priority: 0));
        long highOld = store.Enqueue(Job("/high-old", priority: 5));
        long mid = store.Enqueue(Job("/mid", priority: 1));
        long highNew = store.Enqueue(Job("/high-new", priority: 5));
        long negative = store.Enqueue(Job("/neg", priority: -3));

        Assert.Equal([highOld, highNew], store.Claim("w", Any, 2).Select(j => j.Id));
        Assert.Equal([mid, low, negative], store.Claim("w", Any, 10).Select(j => j.Id));
        Assert.Empty(store.Claim("w", Any, 10));
    }

    [Fact]
    public void Store_Claim_SkipsJobsNoCapabilityMatches()
    {
        using var store = Open();
        long blocked = store.Enqueue(Job("/a", priority: 9, parser: "nobody_runs_this"));
        long ok = store.Enqueue(Job("/b", parser: "csv"));

        var got = store.Claim("w", ["csv", "json"], 5);
        Assert.Equal([ok], got.Select(j => j.Id));
        Assert.Equal(JobState.Queued, store.Get(blocked)!.State);
        Assert.Equal([blocked], store.Claim("w2", Any, 5).Select(j => j.Id));
    }

    [Fact]
    public void Store_Claim_RecordsWorkerAndTimes()
    {
        using var store = Open();
        long id = store.Enqueue(Job("/x"));
        Clock.Advance(TimeSpan.FromSeconds(3));
        var job = Assert.Single(store.Claim("w7", Any, 1));
        Assert.Equal(new ClaimedJob(id, "p", "1.0", "/x", 0, 0, "hash-/x"), job);
        var row = store.Get(id)!;
        Assert.Equal(JobState.Running, row.State);
        Assert.Equal("w7", row.Worker);
        Assert.Equal(Clock.GetUtcNow(), row.ClaimedAt);
        Assert.Equal(Clock.GetUtcNow(), row.HeartbeatAt);
        Assert.Equal(Clock.GetUtcNow() - TimeSpan.FromSeconds(3), row.CreatedAt);
    }

    [Fact]
    public void Store_Complete_StoresMetricsAndArtifacts()
    {
        using var store = Open();
        long id = store.Enqueue(Job("/x"));
        store.Claim("w", Any, 1);
        Assert.True(store.Complete(id, "w", new Dictionary<string, long> { ["rows"] = 42 }, [new() { ["topic"] = "out", ["uri"] = "file:///o/x.parquet" }]));
        var row = store.Get(id)!;
        Assert.Equal(JobState.Completed, row.State);
        Assert.Equal("""{"rows":42}""", row.MetricsJson);
        Assert.Equal("""[{"topic":"out","uri":"file:///o/x.parquet"}]""", row.ArtifactsJson);
        Assert.NotNull(row.FinishedAt);
        Assert.True(store.IsCompleted("p", "1.0", "hash-/x"));
        Assert.False(store.IsCompleted("p", "2.0", "hash-/x"));
    }

    [Fact]
    public void Store_Complete_RecordsTheParsedHashAndReportsTheQueuedOneWhenTheyDiffer()
    {
        using var store = Open();
        long same = store.Enqueue(Job("/same"));
        long changed = store.Enqueue(Job("/changed"));
        store.Claim("w", Any, 2);

        Assert.True(store.Complete(same, "w", new Dictionary<string, long>(), [], "hash-/same", out string? unchanged));
        Assert.Null(unchanged);
        Assert.True(store.Complete(changed, "w", new Dictionary<string, long>(), [], "hash-new", out string? queued));
        Assert.Equal("hash-/changed", queued);
        Assert.Equal("hash-new", store.Get(changed)!.ContentHash);
        // What was parsed is what counts as done: the content queued but never parsed is not.
        Assert.True(store.IsCompleted("p", "1.0", "hash-new"));
        Assert.False(store.IsCompleted("p", "1.0", "hash-/changed"));
        // A refused completion changes nothing.
        Assert.False(store.Complete(changed, "w", new Dictionary<string, long>(), [], "hash-other", out string? refused));
        Assert.Null(refused);
        Assert.Equal("hash-new", store.Get(changed)!.ContentHash);
    }

    [Fact]
    public void Store_Complete_LateOrForeignCompletionIsRefused()
    {
        using var store = Open();
        long id = store.Enqueue(Job("/x"));
        store.Claim("w1", Any, 1);
        Assert.False(store.Complete(id, "w2", new Dictionary<string, long>(), []));     // not its job
        store.RequeueWorker("w1", "lost");
        store.Claim("w2", Any, 1);
        Assert.False(store.Complete(id, "w1", new Dictionary<string, long>(), []));     // moved on to w2
        Assert.Null(store.Fail(id, "w1", "late", transient: false));
        Assert.False(store.Reject(id, "w1"));
        Assert.Equal(JobState.Running, store.Get(id)!.State);
        Assert.True(store.Complete(id, "w2", new Dictionary<string, long>(), []));
        Assert.False(store.Complete(id, "w2", new Dictionary<string, long>(), []));     // twice
        Assert.False(store.Complete(9999, null, new Dictionary<string, long>(), []));   // no such job
    }

    [Fact]
    public void Store_Fail_TransientBacksOffExponentially()
    {
        using var store = Open(retryLimit: 5, backoff: TimeSpan.FromSeconds(2));
        long id = store.Enqueue(Job("/x"));
        var expectedDelays = new[] { 2, 4, 8, 16 };
        foreach (int delay in expectedDelays)
        {
            Assert.Single(store.Claim("w", Any, 1));
            var r = store.Fail(id, "w", "resource busy", transient: true)!.Value;
            Assert.Equal(JobState.Queued, r.State);
            Assert.Equal(Clock.GetUtcNow() + TimeSpan.FromSeconds(delay), r.NextAttemptAt);

            Clock.Advance(TimeSpan.FromSeconds(delay) - TimeSpan.FromMilliseconds(1));
            Assert.Empty(store.Claim("w", Any, 1));
            Clock.Advance(TimeSpan.FromMilliseconds(1));
        }
        var row = store.Get(id)!;
        Assert.Equal(4, row.RetryCount);
        Assert.Equal("resource busy", row.Error);
    }

    [Fact]
    public void Store_Fail_BackoffIsCapped()
    {
        using var store = Open(retryLimit: 20, backoff: TimeSpan.FromSeconds(10));
        long id = store.Enqueue(Job("/x"));
        for (int i = 0; i < 8; i++)
        {
            Assert.Single(store.Claim("w", Any, 1));
            var r = store.Fail(id, "w", "busy", transient: true)!.Value;
            Assert.True(r.NextAttemptAt <= Clock.GetUtcNow() + TimeSpan.FromSeconds(60));
            Clock.Advance(TimeSpan.FromSeconds(60));
        }
    }

    [Fact]
    public void Store_Fail_TransientBecomesFailedAfterRetryLimit()
    {
        using var store = Open(retryLimit: 2);
        long id = store.Enqueue(Job("/x"));
        for (int attempt = 0; attempt < 2; attempt++)
        {
            Assert.Single(store.Claim("w", Any, 1));
            Assert.Equal(JobState.Queued, store.Fail(id, "w", "busy", transient: true)!.Value.State);
            Clock.Advance(TimeSpan.FromMinutes(5));
        }
        Assert.Single(store.Claim("w", Any, 1));
        var last = store.Fail(id, "w", "still busy", transient: true)!.Value;
        Assert.Equal(new FailResult(JobState.Failed, 2, null), last);
        var row = store.Get(id)!;
        Assert.Equal(JobState.Failed, row.State);
        Assert.Equal("still busy", row.Error);
        Assert.NotNull(row.FinishedAt);
        Assert.Empty(store.Claim("w", Any, 1));
    }

    [Fact]
    public void Store_Fail_PermanentFailsAtOnce()
    {
        using var store = Open(retryLimit: 3);
        long id = store.Enqueue(Job("/x"));
        store.Claim("w", Any, 1);
        var r = store.Fail(id, "w", "ValueError: bad row", transient: false, new Dictionary<string, long> { ["rows"] = 3 })!.Value;
        Assert.Equal(new FailResult(JobState.Failed, 0, null), r);
        Assert.Equal("""{"rows":3}""", store.Get(id)!.MetricsJson);
    }

    [Fact]
    public void Store_Reject_RequeuesWithoutCountingARetry()
    {
        using var store = Open();
        long id = store.Enqueue(Job("/x"));
        store.Claim("w", Any, 1);
        Assert.True(store.Reject(id, "w"));
        var row = store.Get(id)!;
        Assert.Equal((JobState.Queued, 0), (row.State, row.RetryCount));
        Assert.Single(store.Claim("w", Any, 1));
    }

    [Fact]
    public void Store_OldestQueuedAt_IsTheQueueingTimeOfTheOldestJobStillQueued()
    {
        using var store = Open();
        Assert.Null(store.OldestQueuedAt());
        var first = Clock.GetUtcNow();
        long a = store.Enqueue(Job("/a"));
        Clock.Advance(TimeSpan.FromSeconds(30));
        store.Enqueue(Job("/b", priority: 9));
        Assert.Equal(first, store.OldestQueuedAt());

        // Claimed, it is no longer waiting; the next oldest is.
        Assert.Equal(a, store.Claim("w", Any, 2).Single(j => j.Id == a).Id);
        Assert.Null(store.OldestQueuedAt());
        // A retried job keeps the time it was first queued.
        store.Fail(a, "w", "flaky", transient: true);
        Assert.Equal(first, store.OldestQueuedAt());
    }

    [Fact]
    public void Store_RequeueWorker_ReturnsOnlyThatWorkersJobs()
    {
        using var store = Open(retryLimit: 1);
        var ids = Enumerable.Range(0, 6).Select(i => store.Enqueue(Job($"/{i}"))).ToArray();
        store.Claim("lost", Any, 3);
        store.Claim("alive", Any, 3);

        Assert.Equal(new RequeueResult(3, 0), store.RequeueWorker("lost", "worker lost"));
        Assert.Equal(3, store.Counts()[JobState.Queued]);
        Assert.Equal(3, store.Counts()[JobState.Running]);
        Assert.Equal("worker lost", store.Get(ids[0])!.Error);
        Assert.Equal(1, store.Get(ids[0])!.RetryCount);

        // The retry limit covers lost workers too: a file that kills its worker cannot loop forever.
        store.Claim("lost", Any, 3);
        Assert.Equal(new RequeueResult(0, 3), store.RequeueWorker("lost", "worker lost again"));
        Assert.Equal(3, store.Counts()[JobState.Failed]);
    }

    [Fact]
    public void Store_RequeueStale_SkipsFreshAndLiveWorkers()
    {
        using var store = Open();
        long stale = store.Enqueue(Job("/stale"));
        long live = store.Enqueue(Job("/live"));
        long fresh = store.Enqueue(Job("/fresh"));
        store.Claim("gone", Any, 1);
        store.Claim("here", Any, 1);
        Clock.Advance(TimeSpan.FromSeconds(90));
        store.Claim("gone2", Any, 1);
        Assert.Equal(1, store.Heartbeat("gone2"));

        var result = store.RequeueStale(Clock.GetUtcNow() - TimeSpan.FromSeconds(60), ["here"]);
        Assert.Equal(new RequeueResult(1, 0), result);
        Assert.Equal(JobState.Queued, store.Get(stale)!.State);
        Assert.Equal(JobState.Running, store.Get(live)!.State);
        Assert.Equal(JobState.Running, store.Get(fresh)!.State);
    }

    [Fact]
    public void Store_Heartbeat_RefreshesRunningJobsOfThatWorker()
    {
        using var store = Open();
        long id = store.Enqueue(Job("/x"));
        store.Claim("w", Any, 1);
        Clock.Advance(TimeSpan.FromSeconds(30));
        Assert.Equal(1, store.Heartbeat("w"));
        Assert.Equal(0, store.Heartbeat("other"));
        Assert.Equal(Clock.GetUtcNow(), store.Get(id)!.HeartbeatAt);
    }

    [Fact]
    public void Store_CancelAndRetry_FollowTheLifeCycle()
    {
        using var store = Open();
        long queued = store.Enqueue(Job("/q"));
        long running = store.Enqueue(Job("/r"));
        long done = store.Enqueue(Job("/d"));
        store.Claim("w", Any, 3);
        store.Complete(done, "w", new Dictionary<string, long>(), []);
        store.Reject(queued, "w");

        Assert.Equal(JobState.Cancelled, store.Cancel(queued).State);
        Assert.Equal(JobState.Cancelled, store.Cancel(running).State);
        Assert.Equal([running], store.CancelledAmong([running, done, 12345]));
        // The worker's answer for a cancelled job changes nothing.
        Assert.False(store.Complete(running, "w", new Dictionary<string, long>(), []));
        Assert.Null(store.Fail(running, "w", "aborted", transient: true));

        var e = Assert.Throws<InputException>(() => store.Cancel(done));
        Assert.Contains($"job {done} is COMPLETED", e.Message);
        Assert.Contains("no job 777", Assert.Throws<InputException>(() => store.Cancel(777)).Message);

        var retried = store.Retry(running);
        Assert.Equal((JobState.Queued, 0, null), (retried.State, retried.RetryCount, retried.FinishedAt));
        Assert.Contains("--force", Assert.Throws<InputException>(() => store.Retry(done)).Message);
        Assert.Contains("already queued", Assert.Throws<InputException>(() => store.Retry(running)).Message);
    }

    [Fact]
    public void Store_Counts_MatchACountOfEveryRow()
    {
        using var store = Open(retryLimit: 0);
        store.EnqueueMany([.. Enumerable.Range(0, 40).Select(i => Job($"/{i}"))]);
        foreach (var j in store.Claim("w", Any, 25))
        {
            switch (j.Id % 5)
            {
                case 0: store.Complete(j.Id, "w", new Dictionary<string, long>(), []); break;
                case 1: store.Fail(j.Id, "w", "bad", transient: false); break;
                case 2: store.Cancel(j.Id); break;
                case 3: store.Fail(j.Id, "w", "busy", transient: true); break;
            }
        }
        store.Cancel(40);
        Assert.Throws<InvalidOperationException>(() => store.InTransaction<long>(() =>
        {
            store.Enqueue(Job("/rolled-back"));
            throw new InvalidOperationException("rollback");
        }));

        store.Enqueue(Job("/after-rollback"));

        var expected = JobStates.All.ToDictionary(s => s, _ => 0L);
        foreach (var j in store.List(null, 1000)) expected[j.State]++;
        Assert.Equal(41, expected.Values.Sum());
        Assert.All(expected.Values, n => Assert.True(n > 0));
        Assert.Equal(expected, store.Counts());
    }

    [Fact]
    public void Store_InTransaction_RollsBackOnFailure()
    {
        using var store = Open();
        Assert.Throws<InvalidOperationException>(() => store.InTransaction<int>(() =>
        {
            store.Enqueue(Job("/a"));
            throw new InvalidOperationException("boom");
        }));
        Assert.Equal(0, store.Counts().Values.Sum());
        long id = store.InTransaction(() => store.Enqueue(Job("/b")));
        Assert.Equal("/b", store.Get(id)!.InputPath);
    }

    [Fact]
    public void Store_Reopen_KeepsEverything()
    {
        long id;
        using (var store = Open())
        {
            id = store.Enqueue(Job("/persist", priority: 3));
            store.RegisterParser(Parser("p", "1.0", "def parse(p): pass\n"));
        }
        using var again = Open();
        Assert.Equal("/persist", again.Get(id)!.InputPath);
        Assert.Equal(3, again.Get(id)!.Priority);
        Assert.Equal("def parse(p): pass\n", again.GetParser("p")!.Source);
    }

    [Fact]
    public void Store_RegisterParser_SameVersionNewSourceIsAConflict()
    {
        using var store = Open();
        var first = store.RegisterParser(Parser("csv", "1.0", "a", archive: [1, 2, 3]));
        Assert.Equal(RegisterOutcome.Created, first.Outcome);
        var again = store.RegisterParser(Parser("csv", "1.0", "a"));
        Assert.Equal((RegisterOutcome.Unchanged, first.Id), (again.Outcome, again.Id));
        Assert.Equal(RegisterOutcome.Conflict, store.RegisterParser(Parser("csv", "1.0", "b")).Outcome);
        Assert.Equal(RegisterOutcome.Created, store.RegisterParser(Parser("csv", "1.1", "b")).Outcome);

        Assert.Equal("1.1", store.GetParser("csv")!.Version);
        Assert.Equal([1, 2, 3], store.GetParser("csv", "1.0")!.Archive);
        Assert.Null(store.GetParser("csv", "9.9"));
        Assert.Null(store.GetParser("nope"));
        Assert.Equal([("csv", "1.0", 3L), ("csv", "1.1", 0L)], store.ListParsers().Select(p => (p.Name, p.Version, p.ArchiveBytes)));
    }

    [Fact]
    public void Store_GetParser_LatestIsTheHighestVersionNotTheLastRegistered()
    {
        // Issue 11: a rogue `slow 9.9.9` registered last became the default for `job add --parser slow`.
        // Registration order alone must not decide: 10.0 is the latest, however late 9.9.9 arrives.
        using var store = Open();
        foreach (var v in new[] { "1.9", "10.0", "1.10", "10.0-rc1", "9.9.9" })
            store.RegisterParser(Parser("slow", v, "src " + v));
        Assert.Equal("10.0", store.GetParser("slow")!.Version);
    }

    // ---- schema contracts and quarantine (issue 14) -------------------------------------------

    [Fact]
    public void Store_Quarantine_ListsOnlyJobsThatAreStillTheirSourcesCurrentOutput()
    {
        using var store = Open();
        store.Enqueue(Job("/in/a"));
        store.Enqueue(Job("/in/b", parser: "q") with { TopicPrefix = "crm_" });
        long a = RunOne(store);
        long b = RunOne(store, "u");
        store.RecordQuarantine(a, [new QuarantineCount("t", "type", 2), new QuarantineCount("t", "null", 1)]);
        store.RecordQuarantine(b, [new QuarantineCount("u", "missing", 5)]);
        // Recording a job again replaces its counts.
        store.RecordQuarantine(a, [new QuarantineCount("t", "type", 3), new QuarantineCount("t", "null", 1)]);

        var all = store.ListQuarantine(null, null, null);
        Assert.Equal([(a, "t", "null", 1L), (a, "t", "type", 3L), (b, "u", "missing", 5L)], all.Select(r => (r.JobId, r.Topic, r.Reason, r.Rows)));
        Assert.Equal(("p", "1.0", "/in/a"), (all[0].ParserName, all[0].ParserVersion, all[0].InputPath));
        // The job's topic prefix comes along: a replay re-parses the source under it.
        Assert.Equal(["", "", "crm_"], all.Select(r => r.TopicPrefix));
        Assert.Equal([b], store.ListQuarantine("u", null, null).Select(r => r.JobId));
        Assert.Equal([a, a], store.ListQuarantine(null, "p", null).Select(r => r.JobId));
        Assert.Equal([b], store.ListQuarantine(null, null, b).Select(r => r.JobId));
        Assert.Empty(store.ListQuarantine("t", "q", null));

        // A later job of the same parser and source supersedes a's quarantine in the listing.
        store.Enqueue(Job("/in/a") with { ParserVersion = "1.1" });
        RunOne(store);
        Assert.Equal([b], store.ListQuarantine(null, null, null).Select(r => r.JobId));
    }

    [Fact]
    public void Store_TopicSchema_AddsAVersionOnlyWhenTheColumnsChange()
    {
        using var store = Open();
        Assert.Empty(store.CurrentTopicSchemas());
        Assert.Empty(store.TopicSchemaHistory("t"));
        store.Enqueue(Job("/in/a"));
        store.Enqueue(Job("/in/b"));
        store.Enqueue(Job("/in/c", parser: "q"));
        long a = RunOne(store), b = RunOne(store), c = RunOne(store);
        const string V1 = """[{"name":"id","type":"int64"}]""", V2 = """[{"name":"id","type":"double"}]""";
        Assert.True(store.RecordTopicSchema("t", V1, a));
        Assert.False(store.RecordTopicSchema("t", V1, b));
        Assert.True(store.RecordTopicSchema("t", V2, c));
        Assert.True(store.RecordTopicSchema("u", V1, b));

        var history = store.TopicSchemaHistory("t");
        Assert.Equal([(1L, V1, a, "p"), (2L, V2, c, "q")], history.Select(h => (h.Version, h.Columns, h.JobId, h.ParserName)));
        Assert.Equal([("t", 2L, V2), ("u", 1L, V1)], store.CurrentTopicSchemas().Select(s => (s.Topic, s.Version, s.Columns)));
    }

    private static ParserRecord Parser(string name, string version, string source, byte[]? archive = null) => new()
    {
        Name = name,
        Version = version,
        Source = source,
        EnvHash = Hashes.SystemEnv,
        SourceHash = Hashes.Sha256Hex(source),
        ArtifactHash = Hashes.ArtifactHash(source, ""),
        Archive = archive,
    };
}

public sealed class SqliteJobStoreContractTests : JobStoreContract
{
    private readonly TempDir _dir = new();

    private protected override StoreOptions Fresh => Defaults.Store(_dir.File("jobs.db"));

    private protected override IJobStore Open(StoreOptions options) => JobStores.Open(options);

    public override void Dispose() => _dir.Dispose();
}
