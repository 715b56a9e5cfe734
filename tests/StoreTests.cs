// The job store against real SQLite files in temp directories.
using System.Collections.Concurrent;
using Microsoft.Data.Sqlite;
using Xunit;

namespace Casparian.Tests;

/// <summary>A clock that moves only when told, so backoff is testable without sleeping.</summary>
internal sealed class ManualClock(DateTimeOffset start) : TimeProvider
{
    private DateTimeOffset _now = start;

    public ManualClock() : this(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero)) { }

    public override DateTimeOffset GetUtcNow() => _now;

    public void Advance(TimeSpan by) => _now += by;
}

public sealed class StoreTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly ManualClock _clock = new();

    public void Dispose() => _dir.Dispose();

    private string DbPath => _dir.File("jobs.db");

    private SqliteJobStore Open(int retryLimit = 3, TimeSpan? backoff = null) => new(new StoreOptions
    {
        Path = DbPath,
        RetryLimit = retryLimit,
        BackoffBase = backoff ?? TimeSpan.FromSeconds(2),
        BackoffMax = TimeSpan.FromSeconds(60),
        Clock = _clock,
    });

    private static NewJob Job(string path, int priority = 0, string parser = "p") => new(parser, "1.0", path, "hash-" + path, priority);

    private static readonly string[] Any = ["*"];

    [Fact]
    public void Store_Claim_EveryJobExactlyOnce_WithConcurrentClaimers()
    {
        using (var store = Open())
            store.EnqueueMany([.. Enumerable.Range(0, 2000).Select(i => Job($"/in/{i}"))]);

        var claimed = new ConcurrentBag<(long Id, string Worker)>();
        var threads = Enumerable.Range(0, 4).Select(t => new Thread(() =>
        {
            // Each thread is its own connection, as separate processes would be.
            using var store = new SqliteJobStore(new StoreOptions { Path = DbPath, BusyTimeout = TimeSpan.FromSeconds(30) });
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
        _clock.Advance(TimeSpan.FromSeconds(3));
        var job = Assert.Single(store.Claim("w7", Any, 1));
        Assert.Equal(new ClaimedJob(id, "p", "1.0", "/x", 0, 0), job);
        var row = store.Get(id)!;
        Assert.Equal(JobState.Running, row.State);
        Assert.Equal("w7", row.Worker);
        Assert.Equal(_clock.GetUtcNow(), row.ClaimedAt);
        Assert.Equal(_clock.GetUtcNow(), row.HeartbeatAt);
        Assert.Equal(_clock.GetUtcNow() - TimeSpan.FromSeconds(3), row.CreatedAt);
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
            Assert.Equal(_clock.GetUtcNow() + TimeSpan.FromSeconds(delay), r.NextAttemptAt);

            _clock.Advance(TimeSpan.FromSeconds(delay) - TimeSpan.FromMilliseconds(1));
            Assert.Empty(store.Claim("w", Any, 1));
            _clock.Advance(TimeSpan.FromMilliseconds(1));
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
            Assert.True(r.NextAttemptAt <= _clock.GetUtcNow() + TimeSpan.FromSeconds(60));
            _clock.Advance(TimeSpan.FromSeconds(60));
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
            _clock.Advance(TimeSpan.FromMinutes(5));
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
        _clock.Advance(TimeSpan.FromSeconds(90));
        store.Claim("gone2", Any, 1);
        Assert.Equal(1, store.Heartbeat("gone2"));

        var result = store.RequeueStale(_clock.GetUtcNow() - TimeSpan.FromSeconds(60), ["here"]);
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
        _clock.Advance(TimeSpan.FromSeconds(30));
        Assert.Equal(1, store.Heartbeat("w"));
        Assert.Equal(0, store.Heartbeat("other"));
        Assert.Equal(_clock.GetUtcNow(), store.Get(id)!.HeartbeatAt);
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
    public void Store_Lookups_UseIndexesNotScans()
    {
        using var store = Open();
        store.EnqueueMany([.. Enumerable.Range(0, 100).Select(i => Job($"/{i}"))]);

        string get = string.Join(" | ", store.ExplainQueryPlan("SELECT * FROM jobs WHERE id = $id", ("$id", 5L)));
        Assert.Contains("USING INTEGER PRIMARY KEY", get);

        string claim = string.Join(" | ", store.ExplainQueryPlan(SqliteJobStore.ClaimSql,
            ("$worker", "w"), ("$now", 0L), ("$any", 0), ("$caps", "[\"p\"]")));
        Assert.True(claim.Contains("USING COVERING INDEX jobs_queue"), claim);
        Assert.Contains("USING INTEGER PRIMARY KEY", claim);
        Assert.DoesNotContain("TEMP B-TREE", claim);

        string done = string.Join(" | ", store.ExplainQueryPlan(
            "SELECT 1 FROM jobs WHERE content_hash = $h AND parser_name = $p AND parser_version = $v AND state = 'COMPLETED' LIMIT 1",
            ("$h", "x"), ("$p", "p"), ("$v", "1")));
        Assert.Contains("jobs_done", done);

        string running = string.Join(" | ", store.ExplainQueryPlan("SELECT id FROM jobs WHERE state = 'RUNNING' AND worker = $w", ("$w", "w")));
        Assert.Contains("USING INDEX jobs_running (worker=?)", running);

        string failed = string.Join(" | ", store.ExplainQueryPlan("SELECT id FROM jobs WHERE state IN ('FAILED', 'CANCELLED') AND state = 'FAILED' ORDER BY id DESC LIMIT 5"));
        Assert.Contains("jobs_attention", failed);
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

    private static ParserRecord Parser(string name, string version, string source, byte[]? archive = null) => new()
    {
        Name = name,
        Version = version,
        Source = source,
        EnvHash = ParserRecord.SystemEnv,
        SourceHash = Hashes.Sha256Hex(source),
        ArtifactHash = Hashes.ArtifactHash(source, ""),
        Archive = archive,
    };

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
    public void Store_Open_NewerSchemaIsRefusedAndLeftUnchanged()
    {
        using (var store = Open()) store.Enqueue(Job("/x"));
        using (var raw = new SqliteConnection($"Data Source={DbPath};Pooling=False"))
        {
            raw.Open();
            using var cmd = raw.CreateCommand();
            cmd.CommandText = "PRAGMA user_version = 99";
            cmd.ExecuteNonQuery();
        }
        byte[] before = File.ReadAllBytes(DbPath);
        var e = Assert.Throws<InputException>(() => Open());
        Assert.Contains("schema version 99", e.Message);
        Assert.Contains("upgrade casparian", e.Message);
        Assert.Equal(before, File.ReadAllBytes(DbPath));
    }

    [Fact]
    public void Store_Open_GarbageFileIsRefusedAndLeftUnchanged()
    {
        byte[] garbage = [.. Enumerable.Range(0, 4096).Select(i => (byte)(i * 7))];
        File.WriteAllBytes(DbPath, garbage);
        var e = Assert.Throws<InputException>(() => Open());
        Assert.Contains("not an SQLite database", e.Message);
        Assert.Equal(garbage, File.ReadAllBytes(DbPath));
    }

    [Fact]
    public void Store_Open_ForeignSqliteDatabaseIsRefused()
    {
        SqliteRuntime.EnsureInitialized();
        using (var raw = new SqliteConnection($"Data Source={DbPath};Pooling=False"))
        {
            raw.Open();
            using var cmd = raw.CreateCommand();
            cmd.CommandText = "CREATE TABLE notes (t TEXT)";
            cmd.ExecuteNonQuery();
        }
        Assert.Contains("not a Casparian job store", Assert.Throws<InputException>(() => Open()).Message);
    }

    [Fact]
    public void Store_Open_MissingFileWithoutCreateIsRefused()
    {
        var e = Assert.Throws<InputException>(() => new SqliteJobStore(new StoreOptions { Path = DbPath, Create = false }));
        Assert.Contains("no job store", e.Message);
        Assert.False(File.Exists(DbPath));
    }
}
