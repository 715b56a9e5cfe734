// Two sentinels sharing one PostgreSQL store (issue 16), end to end, beside one sentinel on SQLite in
// the same run: jobs go QUEUED → DISPATCH → CONCLUDE → COMPLETED through real sentinels on loopback
// TCP (CURVE on, as users get it), with SentinelBench's instant workers. Four workers of four slots:
// two connect to each PostgreSQL sentinel; all four to the SQLite one. Each row sets up only its own
// system (its own throwaway server for each PostgreSQL row). PostgreSQL is a throwaway
// server with its durable defaults (tests/PgServer.cs, linked); EndToEndAsync's store URL says
// ?synchronous_commit=off (Store.Postgres.Url.cs), the trade SQLite's synchronous=NORMAL makes.
using System.ComponentModel;
using BenchmarkDotNet.Attributes;
using Casparian.Tests;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[Description("Each invocation runs 20,000 jobs; times are per job. PostgreSQL: two sentinels on one " +
             "store (a throwaway local server, default settings: fsync and synchronous_commit on; EndToEndAsync: the URL says " +
             "?synchronous_commit=off), two workers x 4 slots on each. SQLite: one sentinel, four workers x 4 slots. Workers " +
             "conclude every DISPATCH at once; an invocation ends when the last conclusion is committed.")]
public class PostgresSentinelBench
{
    private const int Jobs = 20_000;
    private const int Slots = 4;

    // Only the system a row measures runs in its process: each row has its own setup, so no other
    // row's sentinels poll beside it (the idle SQLite sentinel claimed every 5 ms during the PostgreSQL rows).
    private PgServer? _server;
    private string _dir = "";
    private CancellationTokenSource _stop = new();
    private readonly List<(Sentinel Sentinel, Thread Thread)> _sentinels = [];
    private readonly List<SentinelBench.BenchWorker> _workers = [];
    private IJobStore _store = null!;
    private NewJob[] _jobs = [];

    [GlobalSetup(Target = nameof(EndToEnd))]
    public void SetupDurable() => Setup(pg => pg.NewDatabase());

    [GlobalSetup(Target = nameof(EndToEndAsync))]
    public void SetupAsync() => Setup(pg => pg.NewDatabase() + "?synchronous_commit=off");

    [GlobalSetup(Target = nameof(EndToEndSqlite))]
    public void SetupSqlite() => Setup(null);

    /// <param name="database">The PostgreSQL store's URL on a fresh server; null: a SQLite file with one sentinel.</param>
    private void Setup(Func<PgServer, string>? database)
    {
        _stop = new CancellationTokenSource();
        _dir = Directory.CreateTempSubdirectory("casparian-bench-pgsentinel-").FullName;
        if (database is not null) _server = new PgServer(durable: true);
        string db = _server is null ? Path.Combine(_dir, "casparian.db") : database!(_server);
        _store = JobStores.Open(Defaults.Store(db));
        const string source = "def parse(path):\n    return [{'x': 1}]\n";
        _store.RegisterParser(new ParserRecord
        {
            Name = "bench",
            Version = "1.0",
            Source = source,
            EnvHash = Hashes.SystemEnv,
            SourceHash = Hashes.Sha256Hex(source),
            ArtifactHash = Hashes.ArtifactHash(source, ""),
        });
        _jobs = [.. Enumerable.Range(0, Jobs).Select(i => new NewJob("bench", "1.0", $"/data/in/{i:D7}.csv", "h"))];

        // PostgreSQL: workers 0 and 2 connect to one sentinel, 1 and 3 to the other. SQLite: one sentinel.
        string a = StartSentinel(db), b = _server is null ? a : StartSentinel(db);
        for (int i = 0; i < 4; i++) _workers.Add(new SentinelBench.BenchWorker(i % 2 == 0 ? a : b, $"w-{i}", Slots, curve: true));

        // Checked before every run: a batch goes through and lands COMPLETED, through both PostgreSQL
        // sentinels. 2,000 jobs, not 200: one sentinel once finished 200 before the other's first claim.
        const int check = 2_000;
        foreach (var w in _workers) w.Hold();
        long first = _store.EnqueueMany(_jobs[..check]);
        SentinelBench.Run(_store, _workers, check);
        if (_store.Get(first) is not { State: JobState.Completed, MetricsJson: """{"rows":1}""" } || _store.Counts()[JobState.Completed] != check)
            throw new InvalidOperationException("jobs did not complete through the sentinels");
        // One worker of a pair may find the queue empty, not both.
        if (_server is not null && (_workers[0].LastConcluded == 0 && _workers[2].LastConcluded == 0 || _workers[1].LastConcluded == 0 && _workers[3].LastConcluded == 0))
            throw new InvalidOperationException("a PostgreSQL sentinel dispatched nothing");
    }

    private string StartSentinel(string db)
    {
        var sentinel = new Sentinel(Defaults.Sentinel("tcp://127.0.0.1:*", db, new RoleLog(Console.Error, "sentinel", quiet: true, TimeProvider.System)) with
        {
            JobTimeout = null,
            // SQLite: claims follow every freed slot; the poll only matters when work is added to an idle
            // sentinel. PostgreSQL is woken by NOTIFY instead (and polls once a second whatever this says).
            PollInterval = TimeSpan.FromMilliseconds(5),
        });
        sentinel.Start();
        var thread = new Thread(() => sentinel.Run(_stop.Token)) { Name = "sentinel", IsBackground = true };
        thread.Start();
        _sentinels.Add((sentinel, thread));
        return sentinel.Endpoint;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var w in _workers) w.Dispose();
        _stop.Cancel();
        foreach (var (sentinel, thread) in _sentinels)
        {
            thread.Join();
            sentinel.Dispose();
        }
        _sentinels.Clear();
        _workers.Clear();
        _store.Dispose();
        _server?.Dispose();
        _server = null;
        Directory.Delete(_dir, recursive: true);
    }

    [IterationSetup]
    public void Queue()
    {
        foreach (var w in _workers) w.Hold();
        _store.EnqueueMany(_jobs);
    }

    [Benchmark(OperationsPerInvoke = Jobs)]
    [Throughput(1, Unit = "jobs")]
    [Target("end to end, two sentinels on one PostgreSQL store, 4 workers x 4 slots: ≥ 5,000 jobs/s")]
    [Versus(nameof(EndToEndSqlite))]
    public void EndToEnd() => SentinelBench.Run(_store, _workers, Jobs);

    [Benchmark(OperationsPerInvoke = Jobs)]
    [Throughput(1, Unit = "jobs")]
    [Target("end to end, two sentinels on one PostgreSQL store, 4 workers x 4 slots: ≥ 5,000 jobs/s")]
    [Versus(nameof(EndToEndSqlite))]
    public void EndToEndAsync() => SentinelBench.Run(_store, _workers, Jobs);

    [Benchmark(OperationsPerInvoke = Jobs)]
    [Throughput(1, Unit = "jobs")]
    public void EndToEndSqlite() => SentinelBench.Run(_store, _workers, Jobs);
}
