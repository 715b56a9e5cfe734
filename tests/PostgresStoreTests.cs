// The PostgreSQL store beyond the shared contract (StoreContract.cs): the URL, errors as one line with
// the right exit code, schema versioning, the sentinels' leases and ownership of RUNNING jobs, and
// NOTIFY wake-ups, on a real server (tests/PostgresSupport.cs).
using Npgsql;
using Xunit;

namespace Casparian.Tests;

public sealed class PostgresStoreTests
{
    private static readonly string[] Any = ["*"];

    private static IJobStore Open(string url, string? sentinel = null) => JobStores.Open(Defaults.Store(url) with { Sentinel = sentinel });

    [Fact]
    public void Postgres_Url_ParsesAndMessagesNeverShowThePassword()
    {
        var u = PostgresUrl.Parse("postgresql://ann:s%40cret@db.internal:6543/jobs?sslmode=require");
        Assert.Equal(("db.internal", 6543, "jobs", "ann", "s@cret", "require"), (u.Host, u.Port, u.Database, u.User, u.Password, u.SslMode));
        Assert.Equal("postgresql://ann@db.internal:6543/jobs", u.Display);
        Assert.Equal(5432, PostgresUrl.Parse("postgres://db/jobs").Port);
        var e = Assert.Throws<InputException>(() => PostgresUrl.Parse("postgresql://ann:secret@db.internal"));
        Assert.Equal("job store 'postgresql://ann:***@db.internal': it names no database (postgresql://USER[:PASS]@HOST[:PORT]/DB); give postgresql://USER[:PASS]@HOST[:PORT]/DB, or a file path for an SQLite store", e.Message);
        Assert.Contains("'timeout' is not supported", Assert.Throws<InputException>(() => PostgresUrl.Parse("postgresql://db/jobs?timeout=3")).Message);
        // The durability trade is explicit, shows in messages, and takes only on or off.
        Assert.True(u.SynchronousCommit);
        var trade = PostgresUrl.Parse("postgresql://ann@db/jobs?synchronous_commit=off&sslmode=disable");
        Assert.Equal((false, "disable", "postgresql://ann@db:5432/jobs?synchronous_commit=off"), (trade.SynchronousCommit, trade.SslMode, trade.Display));
        Assert.Contains("synchronous_commit=local is not on or off", Assert.Throws<InputException>(() => PostgresUrl.Parse("postgresql://db/jobs?synchronous_commit=local")).Message);
    }

    [PgFact]
    public void Postgres_SynchronousCommitOff_SetsItForTheStoresConnectionsOnly()
    {
        string url = PgServer.Shared.NewDatabase();
        // The test server runs with synchronous_commit off from its command line; the URL's option is the client's own.
        Assert.Equal(("off", "command line"), Setting(url, "synchronous_commit"));
        Assert.Equal(("off", "client"), Setting(url + "?synchronous_commit=off", "synchronous_commit"));
        using var store = Open(url + "?synchronous_commit=off");
        Assert.Equal(1, store.Enqueue(new NewJob("p", "1.0", "/in/a.csv", "h")));
    }

    /// <summary>A setting's value and where it came from, as the store's own data source sees it.</summary>
    private static (string Value, string Source) Setting(string url, string name)
    {
        using var ds = PostgresUrl.Parse(url).DataSource(TimeSpan.FromSeconds(5));
        using var cmd = ds.CreateCommand("SELECT setting, source FROM pg_settings WHERE name = $1");
        cmd.Parameters.Add(new NpgsqlParameter { Value = name });
        using var r = cmd.ExecuteReader();
        Assert.True(r.Read());
        return (r.GetString(0), r.GetString(1));
    }

    [Fact]
    public void Postgres_NoServerListening_IsTransientWithOneLineNamingTheStore()
    {
        int port = Cluster.FreePort();
        var e = Assert.Throws<StoreUnavailableException>(() => Open($"postgresql://ann:secret@127.0.0.1:{port}/jobs"));
        Assert.Equal(ExitCode.Unavailable, e.Code);
        Assert.StartsWith($"cannot reach job store postgresql://ann@127.0.0.1:{port}/jobs: ", e.Message);
        Assert.DoesNotContain("secret", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [PgFact]
    public void Postgres_Factory_OpensAPostgresStoreAndRefusesAMissingDatabaseOrANewerSchema()
    {
        string url = PgServer.Shared.NewDatabase();
        using (var store = Open(url)) Assert.IsType<PostgresJobStore>(store);
        var missing = Assert.Throws<StoreException>(() => Open(PgServer.Shared.Url("no_such_db")));
        Assert.Equal((ExitCode.BadInput, $"cannot open job store {PgServer.Shared.Url("no_such_db")}: the database does not exist; create it (createdb) or fix the URL"),
            (missing.Code, missing.Message));
        // An empty database is not a store for a command that only reads it.
        string empty = PgServer.Shared.NewDatabase();
        Assert.StartsWith("no job store at", Assert.Throws<InputException>(() => JobStores.Open(Defaults.Store(empty) with { Create = false })).Message);

        Sql(url, "UPDATE casparian_schema SET version = 99");
        var newer = Assert.Throws<StoreException>(() => Open(url));
        Assert.Contains("has schema version 99, newer than this casparian understands (4)", newer.Message);
        string foreign = PgServer.Shared.NewDatabase();
        Sql(foreign, "CREATE TABLE jobs (id int)");
        Assert.Contains("not a Casparian job store", Assert.Throws<StoreException>(() => Open(foreign)).Message);
    }

    [PgFact]
    public void Postgres_Leases_OneLeaderAtATime_AndADeadSentinelsJobsAreAdoptedOnlyAfterItsLeaseExpires()
    {
        string url = PgServer.Shared.NewDatabase();
        using var a = Open(url, "sentinel-a");
        using var b = Open(url, "sentinel-b");
        Assert.True(a.RenewLease(TimeSpan.FromSeconds(60)));
        Assert.False(b.RenewLease(TimeSpan.FromSeconds(60)));
        Assert.True(a.RenewLease(TimeSpan.FromSeconds(60)));

        long id = a.Enqueue(new NewJob("p", "1.0", "/in/x", "h"));
        Assert.Single(a.Claim("w", Any, 1));
        // The worker fails over to b while a's lease lives: b may not touch the job.
        Assert.Empty(b.RunningOn("w"));
        Assert.False(b.Complete(id, "w", new Dictionary<string, long>(), []));
        Assert.Equal(0, b.Heartbeat("w"));
        Assert.Equal(0, b.RequeueWorker("w", "lost").Total);
        Assert.Equal(JobState.Running, a.Get(id)!.State);

        // a's lease lapses (it stopped renewing): b adopts the job and leads.
        Sql(url, "UPDATE sentinels SET expires_at = 0 WHERE name = 'sentinel-a'; UPDATE leader SET expires_at = 0");
        Assert.True(b.RenewLease(TimeSpan.FromSeconds(60)));
        Assert.Equal([id], b.RunningOn("w"));
        // Now b owns it: a, back from the dead, is refused.
        Assert.True(a.RenewLease(TimeSpan.FromSeconds(60)) is false);
        Assert.False(a.Complete(id, "w", new Dictionary<string, long>(), []));
        Assert.True(b.Complete(id, "w", new Dictionary<string, long>(), []));

        // A clean stop gives the lease and the lead up at once.
        b.EndLease();
        Assert.True(a.RenewLease(TimeSpan.FromSeconds(60)));
    }

    [PgFact]
    public void Postgres_Enqueue_NotifiesAListeningSentinel()
    {
        string url = PgServer.Shared.NewDatabase();
        using var sentinel = Open(url, "s");
        using var cli = Open(url);
        Assert.True(sentinel.Shared);
        sentinel.QueueSignalled(); // starts listening; the first answer is true (it may have missed jobs)
        Eventually.True(() => !sentinel.QueueSignalled(), TimeSpan.FromSeconds(10), "the listener to settle");
        cli.EnqueueMany([new NewJob("p", "1.0", "/in/a", "h"), new NewJob("p", "1.0", "/in/b", "h2")]);
        Eventually.True(sentinel.QueueSignalled, TimeSpan.FromSeconds(10), "a NOTIFY after job add");
        Assert.False(sentinel.QueueSignalled());
    }

    [PgFact]
    public void Postgres_CompleteAndClaim_OutsideATransaction_IsOneTransaction_AFailedClaimUndoesTheCompletions()
    {
        // Sent as one batch with no BEGIN or COMMIT of its own: PostgreSQL's implicit transaction must
        // still make it all or nothing. The server refuses a NUL in text, so the second statement fails.
        string url = PgServer.Shared.NewDatabase();
        using var store = Open(url, "s");
        long id = store.Enqueue(new NewJob("p", "1.0", "/in/a", "h"));
        Assert.Single(store.Claim("w", Any, 1));
        long next = store.Enqueue(new NewJob("p", "1.0", "/in/b", "h"));
        var done = new Completion(id, "w", new Dictionary<string, long>(), [], null);
        Assert.Throws<StoreException>(() => store.CompleteAndClaim([done], [new ClaimRequest("w\0", Any, 1)]));
        Assert.Equal((JobState.Running, JobState.Queued), (store.Get(id)!.State, store.Get(next)!.State));
        Assert.Null(store.GetOutput("p", "/in/a"));
        // The store is usable after the failure, and the same turn then goes through.
        var (completed, claimed) = store.CompleteAndClaim([done], [new ClaimRequest("w", Any, 1)]);
        Assert.Equal([(true, null)], completed);
        Assert.Equal([next], claimed[0].Select(c => c.Job.Id));
        Assert.Equal(JobState.Completed, store.Get(id)!.State);
    }

    [PgFact]
    public void Postgres_ClaimCursor_AJobRequeuedHereOrAddedWithAHigherPriority_IsClaimedFirst()
    {
        // A sentinel's batched claims continue after its last claimed job (Store.Postgres.Cursor.cs);
        // whatever makes a job claimable before that point must send the next claim back to the head.
        string url = PgServer.Shared.NewDatabase();
        using var sentinel = Open(url, "s");
        using var cli = Open(url);
        sentinel.QueueSignalled();
        Eventually.True(() => !sentinel.QueueSignalled(), TimeSpan.FromSeconds(10), "the listener to settle");
        long first = sentinel.EnqueueMany([.. Enumerable.Range(0, 6).Select(i => new NewJob("p", "1.0", $"/in/{i}", "h"))]);
        long[] ids = [.. Enumerable.Range(0, 6).Select(i => first + i)];
        ClaimRequest[] two = [new ClaimRequest("w", Any, 2)];

        Assert.Equal([ids[0], ids[1]], sentinel.ClaimMany(two)[0].Select(c => c.Job.Id));
        Assert.True(sentinel.Reject(ids[0], "w"));
        Assert.Equal([ids[0], ids[2]], sentinel.ClaimMany(two)[0].Select(c => c.Job.Id));

        // Queued by another process, with a higher priority: its NOTIFY sends the claim back to the head.
        long urgent = cli.Enqueue(new NewJob("p", "1.0", "/in/urgent", "h", 5));
        Eventually.True(sentinel.QueueSignalled, TimeSpan.FromSeconds(10), "a NOTIFY after job add");
        Assert.Equal([urgent, ids[3]], sentinel.ClaimMany(two)[0].Select(c => c.Job.Id));

        // A failure with a retry queues the job again here: claimed first once its backoff is over.
        Assert.Equal(JobState.Queued, sentinel.Fail(ids[1], "w", "flaky", transient: true)!.Value.State);
        Assert.Equal([ids[4], ids[5]], sentinel.ClaimMany(two)[0].Select(c => c.Job.Id));
        Eventually.True(() => sentinel.ClaimMany([new ClaimRequest("w", Any, 1)])[0] is [var c] && c.Job.Id == ids[1], TimeSpan.FromSeconds(20), "the retried job claimed");
    }

    [PgFact]
    public void Postgres_ClaimCursor_AJobQueuedBehindItByAnotherProcess_IsClaimedWithinAboutASecond()
    {
        string url = PgServer.Shared.NewDatabase();
        using var sentinel = Open(url, "s");
        using var cli = Open(url);
        long first = sentinel.EnqueueMany([.. Enumerable.Range(0, 5).Select(i => new NewJob("p", "1.0", $"/in/{i}", "h"))]);
        Assert.Equal(first, Assert.Single(sentinel.ClaimMany([new ClaimRequest("w", Any, 1)])[0]).Job.Id);
        Assert.Equal(JobState.Failed, sentinel.Fail(first, "w", "bad file", transient: false)!.Value.State);
        Assert.Equal([first + 1, first + 2], sentinel.ClaimMany([new ClaimRequest("w", Any, 2)])[0].Select(c => c.Job.Id));

        // `job retry` from another process queues the oldest job again; no NOTIFY, no call on this store.
        cli.Retry(first);
        var claimed = new List<long>();
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (!claimed.Contains(first) && watch.Elapsed < TimeSpan.FromSeconds(10))
        {
            claimed.AddRange(sentinel.ClaimMany([new ClaimRequest("w", Any, 1)])[0].Select(c => c.Job.Id));
            Thread.Sleep(20);
        }
        Assert.Contains(first, claimed);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"the requeued job waited {watch.Elapsed}");
        // Nothing was claimed twice, and nothing is left.
        Assert.Equal(claimed.Count, claimed.Distinct().Count());
        Assert.Equal([first, first + 3, first + 4], claimed.Order());
        Assert.Empty(sentinel.ClaimMany([new ClaimRequest("w", Any, 5)])[0]);
    }

    [PgFact]
    public void Postgres_ClaimCursor_StaysThroughAPermanentFailureAndARequeueThatQueuedNothing()
    {
        // A claim from the head walks the dead queue-index entry of every job claimed since the last
        // VACUUM, so only an operation that queues a job again here sends the next claim there. Seen
        // from outside: a job queued behind the cursor by another process (no NOTIFY) is passed over
        // while the cursor lives, and claimed first once the claims go back to the head. A cursor lives
        // a second from its chain's first claim, so a round slower than that (a stalled machine) says
        // nothing, and runs again on a fresh database.
        for (int round = 0; !CursorRound(PgServer.Shared.NewDatabase()); round++)
            Assert.True(round < 3, "four rounds each took longer than a cursor lives");
    }

    private static bool CursorRound(string url)
    {
        using var sentinel = Open(url, "s");
        using var cli = Open(url);
        long first = sentinel.EnqueueMany([.. Enumerable.Range(0, 8).Select(i => new NewJob("p", "1.0", $"/in/{i}", "h"))]);
        ClaimRequest[] two = [new ClaimRequest("w", Any, 2)];
        var watch = System.Diagnostics.Stopwatch.StartNew();
        Assert.Equal([first, first + 1], sentinel.ClaimMany(two)[0].Select(c => c.Job.Id));
        Assert.Equal(JobState.Failed, sentinel.Fail(first, "w", "bad file", transient: false)!.Value.State);
        cli.Retry(first);
        Assert.Equal(0, sentinel.RequeueStale(DateTimeOffset.UtcNow.AddHours(-1), ["w"]).Total);
        Assert.Equal(0, sentinel.RequeueWorker("another", "gone").Total);
        Assert.False(sentinel.Reject(first, "w"));
        var next = sentinel.ClaimMany(two)[0].Select(c => c.Job.Id).ToList();
        if (watch.ElapsedMilliseconds >= 900) return false;
        Assert.Equal([first + 2, first + 3], next);

        // A retry queues its job again here: the next claim goes back to the head, and finds the job
        // the other process queued.
        Assert.Equal(JobState.Queued, sentinel.Fail(first + 2, "w", "flaky", transient: true)!.Value.State);
        Assert.Equal([first, first + 4], sentinel.ClaimMany(two)[0].Select(c => c.Job.Id));
        return true;
    }

    [PgFact]
    public void Postgres_BulkEnqueue_AnalyzesTheJobsTable_SoClaimsWalkTheQueueIndexInsteadOfSortingEveryQueuedRow()
    {
        string url = PgServer.Shared.NewDatabase();
        using var store = Open(url, "s");
        // Autovacuum kept out of it, so every statistic read here is the store's own doing.
        Sql(url, "ALTER TABLE jobs SET (autovacuum_enabled = false)");
        // Small batches leave the statistics to autovacuum.
        store.EnqueueMany([.. Enumerable.Range(0, 10).Select(i => new NewJob("p", "1.0", $"/in/small-{i}", "h"))]);
        Assert.Equal(-1f, Scalar<float>(url, "SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass"));
        store.EnqueueMany([.. Enumerable.Range(0, 5000).Select(i => new NewJob("p", "1.0", $"/in/{i:D5}", "h"))]);
        Assert.Equal(5010f, Scalar<float>(url, "SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass"));
        // The claim's subquery, as the store runs it: an ordered index scan that stops after the batch, no sort.
        string plan = Scalar<string>(url, "EXPLAIN (FORMAT JSON) SELECT id FROM jobs WHERE state = 'QUEUED' AND next_attempt_at <= 0 " +
            "AND (true OR parser_name = ANY('{}')) ORDER BY priority DESC, id LIMIT 16 FOR UPDATE SKIP LOCKED");
        Assert.Contains("\"Index Name\": \"jobs_queue\"", plan);
        Assert.DoesNotContain("\"Node Type\": \"Sort\"", plan);
        // A batch that does not double what the statistics know does not analyze again; one that does, does.
        store.EnqueueMany([.. Enumerable.Range(0, 5000).Select(i => new NewJob("p", "1.0", $"/in/more-{i}", "h"))]);
        Assert.Equal(5010f, Scalar<float>(url, "SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass"));
        store.EnqueueMany([.. Enumerable.Range(0, 11000).Select(i => new NewJob("p", "1.0", $"/in/most-{i}", "h"))]);
        Assert.Equal(21010f, Scalar<float>(url, "SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass"));
    }

    [PgFact]
    public void Postgres_TurnStatements_GenericPlans_ProbeKeysOnEmptyAndOnLargeAnalyzedTables()
    {
        // Npgsql prepares the turn's statements, and PostgreSQL may keep a generic plan made while the
        // tables were empty for as long as the connection lives. That plan must stay a key probe per job
        // as outputs, sources and jobs grow, not a join over a scan of a whole table.
        string url = PgServer.Shared.NewDatabase();
        using var store = (PostgresJobStore)Open(url, "s");
        static string Positional(string sql, params string[] names)
        {
            for (int i = 0; i < names.Length; i++) sql = System.Text.RegularExpressions.Regex.Replace(sql, $"@{names[i]}\\b", $"${i + 1}");
            return sql;
        }
        string complete = Positional(store.CompleteManySql, "ids", "workers", "metrics", "artifacts", "hashes", "now", "me");
        string claim = Positional(PostgresJobStore.ClaimWithOutputSql, "slots", "me", "now", "any", "caps", "max");
        string claimAfter = Positional(PostgresJobStore.ClaimAfterWithOutputSql, "slots", "me", "now", "any", "caps", "max", "priority", "after");
        var statements = new[]
        {
            ("complete", "bigint[], text[], text[], text[], text[], bigint, text", complete),
            ("claim", "text[], text, bigint, boolean, text[], integer", claim),
            ("claim_after", "text[], text, bigint, boolean, text[], integer, integer, bigint", claimAfter),
        };
        AssertProbes(url, statements);

        // And the same once the tables are large and analyzed, as autovacuum leaves them (the turn runs
        // generic plans, which cannot see the batch size or the cursor): the cursor's seek became a walk
        // of the primary key.
        Sql(url, "INSERT INTO jobs (parser_name, parser_version, input_path, content_hash, state, created_at) " +
                 "SELECT 'p', '1.0', '/in/' || i, 'h', CASE WHEN i > 45000 THEN 'QUEUED' ELSE 'COMPLETED' END, 0 FROM generate_series(1, 50000) i; " +
                 "INSERT INTO outputs (parser_name, source_path, job_id, parser_version, content_hash, updated_at) SELECT 'p', '/in/' || i, i, '1.0', 'h', 0 FROM generate_series(1, 50000) i; " +
                 "INSERT INTO sources (path, content_hash, size, mtime, updated_at) SELECT '/in/' || i, 'h', 1, 1, 0 FROM generate_series(1, 50000) i; " +
                 "ANALYZE jobs; ANALYZE outputs; ANALYZE sources");
        AssertProbes(url, statements);

        // With priorities mixed, where walking the primary key from a cursor reads every other priority.
        Sql(url, "UPDATE jobs SET priority = id % 4; ANALYZE jobs");
        AssertProbes(url, statements);

        // And a long queue, as one big `job add` leaves it: the generic plan guesses the claim takes a
        // tenth of it, where the unbounded IN became a hash join over a sequential scan of jobs.
        Sql(url, "UPDATE jobs SET state = 'QUEUED'; ANALYZE jobs");
        AssertProbes(url, statements);
    }

    [PgFact]
    public void Postgres_TurnStatements_RunWithGenericPlans_AndLeaveTheSessionToPostgresChoice()
    {
        // Planned afresh at every execution, the turn's CTEs cost the server more than running them
        // (Store.Postgres.Turn.cs, GenericPlans); other statements, such as a one-job claim, keep custom plans.
        Assert.Equal(PostgresJobStore.MaxClaim, Sentinel.MaxSlots.ToString(System.Globalization.CultureInfo.InvariantCulture));
        string url = PgServer.Shared.NewDatabase();
        using var store = (PostgresJobStore)Open(url, "s");
        store.EnqueueMany([.. Enumerable.Range(0, 200).Select(i => new NewJob("p", "1.0", $"/in/{i}.csv", "h"))]);
        List<Completion> pending = [];
        for (int turn = 0; turn < 10; turn++)
        {
            var (completed, claimed) = store.CompleteAndClaim(pending, [new ClaimRequest("w", ["*"], 4)]);
            Assert.All(completed, c => Assert.True(c.Done));
            Assert.Equal(4, claimed[0].Count);
            pending = [.. claimed[0].Select(c => new Completion(c.Job.Id, "w", new Dictionary<string, long>(), [], null))];
        }
        for (int i = 0; i < 10; i++) Assert.Single(store.Claim("w", ["*"], 1));

        var (mode, prepared) = store.SessionPlans();
        Assert.Equal("auto", mode);
        var turnStatements = prepared.Where(p => p.Statement.Contains("unnest(") || p.Statement.StartsWith("WITH claimed AS", StringComparison.Ordinal)).ToList();
        Assert.True(turnStatements.Count >= 2, string.Join("\n", prepared.Select(p => p.Statement)));
        Assert.All(turnStatements, p => Assert.True(p.Generic > 0 && p.Custom == 0, $"{p.Generic} generic, {p.Custom} custom: {p.Statement}"));
        var oneJob = Assert.Single(prepared, p => p.Statement.StartsWith("UPDATE jobs SET state = 'RUNNING'", StringComparison.Ordinal));
        Assert.True(oneJob.Custom > 0, $"{oneJob.Generic} generic, {oneJob.Custom} custom: {oneJob.Statement}");
    }

    /// <summary>Each statement's generic plan: key probes and index seeks, no scan of a whole table.</summary>
    private static void AssertProbes(string url, (string Name, string Types, string Sql)[] statements)
    {
        foreach (var (name, types, sql) in statements)
        {
            string plan = Scalar<string>(url, $"PREPARE {name}({types}) AS {sql}; SET plan_cache_mode = force_generic_plan; " +
                $"EXPLAIN (FORMAT JSON) EXECUTE {name}({string.Join(", ", types.Split(", ").Select(t => $"NULL::{t}"))})");
            Assert.True(!plan.Contains("\"Seq Scan\""), $"{name}: {plan}");
            Assert.True(!plan.Contains("\"Hash Join\""), $"{name}: {plan}");
            // The claim from a cursor seeks to it in the queue index rather than walking from the head.
            if (name == "claim_after") Assert.True(plan.Contains("\"Index Cond\": \"((priority >= $7) AND (priority <= $7) AND (id > $8))\""), $"{name}: {plan}");
        }
    }

    private static T Scalar<T>(string url, string sql)
    {
        using var ds = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder
        {
            Host = "127.0.0.1", Port = new Uri(url).Port, Database = new Uri(url).AbsolutePath.TrimStart('/'), Username = "postgres",
        }.ConnectionString);
        using var cmd = ds.CreateCommand(sql);
        return (T)cmd.ExecuteScalar()!;
    }

    private static void Sql(string url, string sql)
    {
        using var ds = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder
        {
            Host = "127.0.0.1", Port = new Uri(url).Port, Database = new Uri(url).AbsolutePath.TrimStart('/'), Username = "postgres",
        }.ConnectionString);
        using var cmd = ds.CreateCommand(sql);
        cmd.ExecuteNonQuery();
    }
}
