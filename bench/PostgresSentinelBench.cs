// Two sentinels sharing one PostgreSQL store (issue 16), end to end, beside one sentinel on SQLite in
// the same run: jobs go QUEUED → DISPATCH → CONCLUDE → COMPLETED through real sentinels on loopback
// TCP (CURVE on, as users get it), with SentinelBench's instant workers. Four workers of four slots:
// two connect to each PostgreSQL sentinel; all four to the SQLite one. PostgreSQL is a throwaway
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

    private PgServer _server = null!;
    private string _dir = "";
    private readonly CancellationTokenSource _stop = new();
    private readonly List<(Sentinel Sentinel, Thread Thread)> _sentinels = [];
    private readonly List<SentinelBench.BenchWorker> _pgWorkers = [];
    private readonly List<SentinelBench.BenchWorker> _asyncWorkers = [];
    private readonly List<SentinelBench.BenchWorker> _sqliteWorkers = [];
    private IJobStore _pg = null!;
    private IJobStore _pgAsync = null!;
    private IJobStore _sqlite = null!;
    private NewJob[] _jobs = [];

    [GlobalSetup]
    public void Setup()
    {
        _server = new PgServer(durable: true);
        _dir = Directory.CreateTempSubdirectory("casparian-bench-pgsentinel-").FullName;
        string url = _server.NewDatabase(), asyncUrl = _server.NewDatabase() + "?synchronous_commit=off", file = Path.Combine(_dir, "casparian.db");
        _pg = JobStores.Open(Defaults.Store(url));
        _pgAsync = JobStores.Open(Defaults.Store(asyncUrl));
        _sqlite = JobStores.Open(Defaults.Store(file));
        const string source = "def parse(path):\n    return [{'x': 1}]\n";
        var parser = new ParserRecord
        {
            Name = "bench",
            Version = "1.0",
            Source = source,
            EnvHash = Hashes.SystemEnv,
            SourceHash = Hashes.Sha256Hex(source),
            ArtifactHash = Hashes.ArtifactHash(source, ""),
        };
        _pg.RegisterParser(parser);
        _pgAsync.RegisterParser(parser);
        _sqlite.RegisterParser(parser);
        _jobs = [.. Enumerable.Range(0, Jobs).Select(i => new NewJob("bench", "1.0", $"/data/in/{i:D7}.csv", "h"))];

        string a = StartSentinel(url), b = StartSentinel(url), c = StartSentinel(asyncUrl), d = StartSentinel(asyncUrl), s = StartSentinel(file);
        for (int i = 0; i < 4; i++)
        {
            _pgWorkers.Add(new SentinelBench.BenchWorker(i % 2 == 0 ? a : b, $"pg-{i}", Slots, curve: true));
            _asyncWorkers.Add(new SentinelBench.BenchWorker(i % 2 == 0 ? c : d, $"async-{i}", Slots, curve: true));
            _sqliteWorkers.Add(new SentinelBench.BenchWorker(s, $"sqlite-{i}", Slots, curve: true));
        }

        // Checked before every run: a batch goes through each and lands COMPLETED, through both PostgreSQL
        // sentinels. 2,000 jobs, not 200: one sentinel once finished 200 before the other's first claim.
        const int check = 2_000;
        foreach (var (store, workers) in new[] { (_pg, _pgWorkers), (_pgAsync, _asyncWorkers), (_sqlite, _sqliteWorkers) })
        {
            foreach (var w in workers) w.Hold();
            long first = store.EnqueueMany(_jobs[..check]);
            SentinelBench.Run(store, workers, check);
            if (store.Get(first) is not { State: JobState.Completed, MetricsJson: """{"rows":1}""" } || store.Counts()[JobState.Completed] != check)
                throw new InvalidOperationException("jobs did not complete through the sentinels");
        }
        // Workers 0 and 2 connect to one sentinel, 1 and 3 to the other; one worker of a pair may find the queue empty.
        foreach (var workers in new[] { _pgWorkers, _asyncWorkers })
            if (workers[0].LastConcluded == 0 && workers[2].LastConcluded == 0 || workers[1].LastConcluded == 0 && workers[3].LastConcluded == 0)
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
        foreach (var w in _pgWorkers.Concat(_asyncWorkers).Concat(_sqliteWorkers)) w.Dispose();
        _stop.Cancel();
        foreach (var (sentinel, thread) in _sentinels)
        {
            thread.Join();
            sentinel.Dispose();
        }
        _pg.Dispose();
        _pgAsync.Dispose();
        _sqlite.Dispose();
        _server.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [IterationSetup(Target = nameof(EndToEnd))]
    public void QueuePg()
    {
        foreach (var w in _pgWorkers) w.Hold();
        _pg.EnqueueMany(_jobs);
    }

    [IterationSetup(Target = nameof(EndToEndAsync))]
    public void QueuePgAsync()
    {
        foreach (var w in _asyncWorkers) w.Hold();
        _pgAsync.EnqueueMany(_jobs);
    }

    [IterationSetup(Target = nameof(EndToEndSqlite))]
    public void QueueSqlite()
    {
        foreach (var w in _sqliteWorkers) w.Hold();
        _sqlite.EnqueueMany(_jobs);
    }

    [Benchmark(OperationsPerInvoke = Jobs)]
    [Throughput(1, Unit = "jobs")]
    [Target("end to end, two sentinels on one PostgreSQL store, 4 workers x 4 slots: ≥ 5,000 jobs/s")]
    [Versus(nameof(EndToEndSqlite))]
    public void EndToEnd() => SentinelBench.Run(_pg, _pgWorkers, Jobs);

    [Benchmark(OperationsPerInvoke = Jobs)]
    [Throughput(1, Unit = "jobs")]
    [Target("end to end, two sentinels on one PostgreSQL store, 4 workers x 4 slots: ≥ 5,000 jobs/s")]
    [Versus(nameof(EndToEndSqlite))]
    public void EndToEndAsync() => SentinelBench.Run(_pgAsync, _asyncWorkers, Jobs);

    [Benchmark(OperationsPerInvoke = Jobs)]
    [Throughput(1, Unit = "jobs")]
    public void EndToEndSqlite() => SentinelBench.Run(_sqlite, _sqliteWorkers, Jobs);
}
