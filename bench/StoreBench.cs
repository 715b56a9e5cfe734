// Job store (SPEC §6): a claim+complete cycle per transaction, and batched enqueue, on a real SQLite
// file (WAL, synchronous=NORMAL), paired with the same SQL statements through Python's sqlite3.
using System.ComponentModel;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[Description("Each invocation runs 10,000 operations; times are per operation (one job). Python runs the same SQL text " +
             "(Casparian's statements, `$name` parameters) through its sqlite3 module on a file with the same schema and pragmas.")]
public class StoreBench
{
    private const int Batch = 10_000;
    private static readonly string[] Any = ["*"];
    private static readonly Dictionary<string, long> Metrics = new() { ["rows"] = 100, ["bytes"] = 4096 };
    private static readonly List<Dictionary<string, string>> Artifacts = [new() { ["topic"] = "output", ["uri"] = "file:///out/output/job.parquet" }];
    private const string Hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    private string _dir = "";
    private SqliteJobStore _store = null!;
    private NewJob[] _jobs = [];

    /// <summary>
    /// Python: a fresh store file per timing run (timeit runs setup before each repeat), stocked with
    /// more queued jobs than one run claims; the statements are Casparian's own SQL.
    /// </summary>
    public static string PythonSetup =>
        "import sqlite3, tempfile, os, time, shutil, atexit, hashlib\n" +
        "_d = tempfile.mkdtemp(prefix='casparian-bench-')\n" +
        "atexit.register(shutil.rmtree, _d, True)\n" +
        "db = sqlite3.connect(os.path.join(_d, 'jobs.db'), isolation_level=None)\n" +
        "for pragma in ('busy_timeout = 10000', 'journal_mode = WAL', 'synchronous = NORMAL', 'wal_autocheckpoint = 10000', 'cache_size = -16384'):\n" +
        "    db.execute('PRAGMA ' + pragma)\n" +
        $"db.executescript({PyString(SqliteJobStore.SchemaSql)})\n" +
        $"CLAIM = {PyString(SqliteJobStore.ClaimSql)}\n" +
        $"COMPLETE = {PyString(SqliteJobStore.CompleteSql)}\n" +
        $"ENQUEUE = {PyString(SqliteJobStore.EnqueueSql)}\n" +
        "METRICS = '{\"rows\":100,\"bytes\":4096}'\n" +
        "ARTIFACTS = '[{\"topic\":\"output\",\"uri\":\"file:///out/output/job.parquet\"}]'\n" +
        "def ms(): return int(time.time() * 1000)\n" +
        "db.execute('BEGIN')\n" +
        "def job(i):\n" +
        "    path = f'/data/in/{i:07}.csv'\n" +
        "    return dict(parser='bench', version='1.0', path=path, hash=hashlib.sha256(path.encode()).hexdigest(), priority=0, now=ms(), prefix='')\n" +
        $"db.executemany(ENQUEUE, [job(i) for i in range({Batch + 100})])\n" +
        "db.execute('COMMIT')\n" +
        "def cycle():\n" +
        "    db.execute('BEGIN IMMEDIATE')\n" +
        "    now = ms()\n" +
        "    for (job_id, *_rest) in db.execute(CLAIM, dict(worker='bench', now=now, any=1, caps='[]')).fetchall():\n" +
        "        db.execute(COMPLETE, dict(now=now, metrics=METRICS, artifacts=ARTIFACTS, hash=None, id=job_id, worker='bench'))\n" +
        "    db.execute('COMMIT')\n" +
        "_pending = [0]\n" +
        "def enqueue():\n" +
        "    if _pending[0] == 0: db.execute('BEGIN IMMEDIATE')\n" +
        "    db.execute(ENQUEUE, job(_pending[0]))\n" +
        "    _pending[0] += 1\n" +
        $"    if _pending[0] == {Batch}: db.execute('COMMIT'); _pending[0] = 0\n";

    private static string PyString(string text) => "'''" + text.Replace("\\", "\\\\").Replace("'''", "\\'\\'\\'") + "'''";

    [GlobalSetup]
    public void Setup()
    {
        _dir = Directory.CreateTempSubdirectory("casparian-bench-store-").FullName;
        _store = new SqliteJobStore(Defaults.Store(Path.Combine(_dir, "jobs.db")));
        // Distinct content hashes, as real files have: the completed-content index then takes random inserts.
        _jobs = [.. Enumerable.Range(0, Batch).Select(i => $"/data/in/{i:D7}.csv").Select(p => new NewJob("bench", "1.0", p, Hashes.Sha256Hex(p)))];

        // Checked before every run: a claimed job completes with its receipt stored.
        long id = _store.Enqueue(_jobs[0] with { ContentHash = Hash });
        if (Cycle() != 1 || _store.Get(id) is not { State: JobState.Completed, MetricsJson: """{"rows":100,"bytes":4096}""" })
            throw new InvalidOperationException("claim+complete did not complete the job");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _store.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>A fresh file stocked with one invocation's jobs, as the Python side gets for each timing run.</summary>
    [IterationSetup(Target = nameof(ClaimComplete))]
    public void Stock()
    {
        _store.Dispose();
        foreach (var f in Directory.GetFiles(_dir)) File.Delete(f);
        _store = new SqliteJobStore(Defaults.Store(Path.Combine(_dir, "jobs.db")));
        _store.EnqueueMany(_jobs);
    }

    private int Cycle() => _store.InTransaction(() =>
    {
        int done = 0;
        foreach (var job in _store.Claim("bench", Any, 1))
            if (_store.Complete(job.Id, "bench", Metrics, Artifacts, parsedHash: null, out _)) done++;
        return done;
    });

    [Benchmark(OperationsPerInvoke = Batch)]
    [Throughput(1, Unit = "jobs")]
    [Target("claim+complete, one job per transaction: ≥ 5,000 jobs/s")]
    [Python("cycle()", Number = Batch)]
    public int ClaimComplete()
    {
        int done = 0;
        for (int i = 0; i < Batch; i++) done += Cycle();
        if (done != Batch) throw new InvalidOperationException($"claimed {done} of {Batch} stocked jobs");
        return done;
    }

    [Benchmark(OperationsPerInvoke = Batch)]
    [Throughput(1, Unit = "jobs")]
    [Target("batched enqueue: ≥ 100,000 jobs/s")]
    [Python("enqueue()", Number = Batch)]
    public long EnqueueBatch() => _store.EnqueueMany(_jobs);
}
