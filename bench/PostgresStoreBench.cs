// The PostgreSQL job store (issue 16) beside SQLite, in one run on one machine: claim + complete and
// batched enqueue through IJobStore, each PostgreSQL benchmark paired ([Versus]) with the same work
// on an SQLite file. PostgreSQL is a throwaway server this run starts (tests/PgServer.cs, linked)
// with PostgreSQL's durable defaults: fsync and synchronous_commit on, so every commit waits for its
// WAL flush. SQLite runs as the sentinel opens it (WAL, synchronous=NORMAL: no fsync per commit). The
// *Async benchmarks open the store with ?synchronous_commit=off (Store.Postgres.Url.cs), the same
// trade as SQLite's NORMAL, made explicitly in the URL. A durable commit costs one WAL flush (about
// 4 ms on the 2-core VM the figures were taken on), so the durable benchmarks run fewer jobs.
using System.ComponentModel;
using BenchmarkDotNet.Attributes;
using Casparian.Tests;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[Description("Times are per job; an invocation runs 10,000 jobs (durable PostgreSQL claim+complete: 1,000 one per commit, " +
             "4,000 in turns). PostgreSQL: a throwaway local server with its default settings (fsync, synchronous_commit on), " +
             "one connection, as one sentinel has; *Async: the store URL says ?synchronous_commit=off. SQLite: a file in WAL " +
             "mode with synchronous=NORMAL. ClaimComplete* claim and complete one job per commit, as StoreBench; " +
             "ClaimCompleteTurn* run a sentinel's turns with a 4 x 4 fleet kept busy: each completes the 16 jobs the turn before " +
             "claimed and claims 16 more with their current outputs, in one CompleteAndClaim (one batch and commit on PostgreSQL).")]
public class PostgresStoreBench
{
    private const int Batch = 10_000;
    private const int DurableOne = 1_000;
    private const int DurableTurns = 4_000;
    private const int TurnSize = 16;
    private static readonly string[] Any = ["*"];
    private static readonly Dictionary<string, long> Metrics = new() { ["rows"] = 100, ["bytes"] = 4096 };
    private static readonly List<Dictionary<string, string>> Artifacts = [new() { ["topic"] = "output", ["uri"] = "file:///out/output/job.parquet" }];

    private PgServer _server = null!;
    private string _dir = "";
    private IJobStore _pg = null!;
    private IJobStore _pgAsync = null!;
    private IJobStore _sqlite = null!;
    private NewJob[] _jobs = [];

    [GlobalSetup]
    public void Setup()
    {
        _server = new PgServer(durable: true);
        _dir = Directory.CreateTempSubdirectory("casparian-bench-pgstore-").FullName;
        _jobs = [.. Enumerable.Range(0, Batch).Select(i => $"/data/in/{i:D7}.csv").Select(p => new NewJob("bench", "1.0", p, Hashes.Sha256Hex(p)))];
        Stock();

        // Checked before every run, on both stores: claimed jobs complete with their receipts stored.
        foreach (var store in new[] { _pg, _pgAsync, _sqlite })
        {
            long first = store.List(JobState.Queued, Batch)[0].Id;
            if (Turn(store, 1) != 1 || SentinelTurns(store, TurnSize, 2 * TurnSize) != 2 * TurnSize
                || store.Get(first) is not { State: JobState.Completed, MetricsJson: """{"rows":100,"bytes":4096}""" }
                || store.Counts()[JobState.Completed] != 1 + 2 * TurnSize)
                throw new InvalidOperationException($"claim+complete did not complete the jobs on {store.GetType().Name}");
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _pg.Dispose();
        _pgAsync.Dispose();
        _sqlite.Dispose();
        _server.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>Fresh stores (a new database, a new file) stocked with one invocation's jobs.</summary>
    [IterationSetup(Targets = [nameof(ClaimComplete), nameof(ClaimCompleteAsync), nameof(ClaimCompleteSqlite),
        nameof(ClaimCompleteTurn), nameof(ClaimCompleteTurnAsync), nameof(ClaimCompleteTurnSqlite)])]
    public void Stock()
    {
        _pg?.Dispose();
        _pgAsync?.Dispose();
        _sqlite?.Dispose();
        foreach (var f in Directory.GetFiles(_dir)) File.Delete(f);
        // Named as a sentinel's store is: its claims carry the name, its completions check ownership.
        _pg = JobStores.Open(Defaults.Store(_server.NewDatabase()) with { Sentinel = "bench" });
        _pgAsync = JobStores.Open(Defaults.Store(_server.NewDatabase() + "?synchronous_commit=off") with { Sentinel = "bench" });
        _sqlite = JobStores.Open(Defaults.Store(Path.Combine(_dir, "jobs.db")) with { Sentinel = "bench" });
        _pg.EnqueueMany(_jobs);
        _pgAsync.EnqueueMany(_jobs);
        _sqlite.EnqueueMany(_jobs);
    }

    /// <summary>One transaction: claims up to <paramref name="size"/> jobs and completes them.</summary>
    private static int Turn(IJobStore store, int size) => store.InTransaction(() =>
    {
        int done = 0;
        foreach (var job in store.Claim("bench", Any, size))
            if (store.Complete(job.Id, "bench", Metrics, Artifacts, parsedHash: null, out _)) done++;
        return done;
    });

    /// <summary>
    /// A sentinel's turns (Sentinel.Step.cs) with its workers kept busy: each turn completes the jobs the
    /// previous turn claimed and claims up to <paramref name="size"/> more with their current outputs for
    /// DISPATCH, in one CompleteAndClaim (one batch and commit on PostgreSQL); a last turn completes the rest.
    /// </summary>
    private static int SentinelTurns(IJobStore store, int size, int jobs)
    {
        int done = 0;
        List<Completion> pending = [];
        for (int i = 0; i <= jobs / size; i++)
        {
            ClaimRequest[] claims = i < jobs / size ? [new ClaimRequest("bench", Any, size)] : [];
            var (completed, claimed) = store.CompleteAndClaim(pending, claims);
            done += completed.Count(r => r.Done);
            pending = claims.Length == 0 ? [] : [.. claimed[0].Select(c => new Completion(c.Job.Id, "bench", Metrics, Artifacts, null))];
        }
        return done;
    }

    private static int Drain(IJobStore store, int size, int jobs = Batch)
    {
        int done = 0;
        if (size == 1)
            for (int i = 0; i < jobs; i++) done += Turn(store, size);
        else done = SentinelTurns(store, size, jobs);
        if (done != jobs) throw new InvalidOperationException($"claimed {done} of {jobs} stocked jobs");
        return done;
    }

    [Benchmark(OperationsPerInvoke = DurableOne)]
    [Throughput(1, Unit = "jobs")]
    [Target("claim+complete on PostgreSQL, one sentinel: ≥ 5,000 jobs/s")]
    [Versus(nameof(ClaimCompleteSqlite))]
    public int ClaimComplete() => Drain(_pg, 1, DurableOne);

    [Benchmark(OperationsPerInvoke = Batch)]
    [Throughput(1, Unit = "jobs")]
    [Target("claim+complete on PostgreSQL, one sentinel: ≥ 5,000 jobs/s")]
    [Versus(nameof(ClaimCompleteSqlite))]
    public int ClaimCompleteAsync() => Drain(_pgAsync, 1);

    [Benchmark(OperationsPerInvoke = Batch)]
    [Throughput(1, Unit = "jobs")]
    public int ClaimCompleteSqlite() => Drain(_sqlite, 1);

    [Benchmark(OperationsPerInvoke = DurableTurns)]
    [Throughput(1, Unit = "jobs")]
    [Target("claim+complete on PostgreSQL, one sentinel: ≥ 5,000 jobs/s")]
    [Versus(nameof(ClaimCompleteTurnSqlite))]
    public int ClaimCompleteTurn() => Drain(_pg, TurnSize, DurableTurns);

    [Benchmark(OperationsPerInvoke = Batch)]
    [Throughput(1, Unit = "jobs")]
    [Target("claim+complete on PostgreSQL, one sentinel: ≥ 5,000 jobs/s")]
    [Versus(nameof(ClaimCompleteTurnSqlite))]
    public int ClaimCompleteTurnAsync() => Drain(_pgAsync, TurnSize);

    [Benchmark(OperationsPerInvoke = Batch)]
    [Throughput(1, Unit = "jobs")]
    public int ClaimCompleteTurnSqlite() => Drain(_sqlite, TurnSize);

    [Benchmark(OperationsPerInvoke = Batch)]
    [Throughput(1, Unit = "jobs")]
    [Target("batched enqueue on PostgreSQL: ≥ 50,000 jobs/s")]
    [Versus(nameof(EnqueueBatchSqlite))]
    public long EnqueueBatch() => _pg.EnqueueMany(_jobs);

    [Benchmark(OperationsPerInvoke = Batch)]
    [Throughput(1, Unit = "jobs")]
    public long EnqueueBatchSqlite() => _sqlite.EnqueueMany(_jobs);
}
