// The file catalog and supersede (issue 13), on a real SQLite file and real files, each paired with the
// same work in Python (the same SQL text through sqlite3, the same file system calls):
//   SupersedeStep      per job: the SUCCESS receipt's store transaction (COMPLETED, and the job made the
//                      current output of its source) plus removing the earlier job's file of a topic
//                      the new job no longer writes (under the directory's flock, after reading the
//                      file's footer to see it is no later job's, as a worker does), and syncing that
//                      directory. Target < 1 ms.
//   AddUnchanged100k   `job add` of a folder of 100,000 files that the catalog already holds, unchanged:
//                      walk, stat, look each path up, skip all. Target < 2 s.
using System.ComponentModel;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[Description("SupersedeStep: each invocation completes 2,000 claimed jobs, each in its own transaction, for sources that already have a " +
             "current output, and deletes one superseded file per job (under the directory's flock, after reading its footer) with a directory fsync; time per job. AddUnchanged100k: one " +
             "`job add` plan over 100,000 unchanged files (walk + stat + catalog lookups, nothing hashed, nothing queued). Python runs " +
             "Casparian's own SQL through sqlite3 and the same os calls.")]
public class CatalogBench
{
    private const int Batch = 2_000;
    private const int Files = 100_000;
    private static readonly string[] Any = ["*"];
    private static readonly Dictionary<string, long> Metrics = new() { ["rows"] = 100 };

    private static readonly string Root = Path.Combine(Path.GetTempPath(), "casparian-bench-catalog");
    private static string Tree => Path.Combine(Root, "tree");
    private static string Superseded => Path.Combine(Root, "superseded");

    private SqliteJobStore _store = null!;
    private SqliteJobStore _big = null!;
    private ParserRecord _parser = null!;
    private OutputOptions _output = null!;
    private List<long> _claimed = [];

    private static string PyString(string text) => "'''" + text.Replace("\\", "\\\\").Replace("'''", "\\'\\'\\'") + "'''";

    /// <summary>
    /// Python: the 100k-file store the C# setup built (read only), and for the supersede step a fresh
    /// store per timing run stocked as the C# iteration setup stocks it.
    /// </summary>
    public static string PythonSetup =>
        "import sqlite3, tempfile, os, time, shutil, atexit, json, fcntl\n" +
        "_d = tempfile.mkdtemp(prefix='casparian-bench-')\n" +
        "atexit.register(shutil.rmtree, _d, True)\n" +
        "def connect(path):\n" +
        "    db = sqlite3.connect(path, isolation_level=None)\n" +
        "    for pragma in ('busy_timeout = 10000', 'journal_mode = WAL', 'synchronous = NORMAL', 'wal_autocheckpoint = 10000', 'cache_size = -16384'):\n" +
        "        db.execute('PRAGMA ' + pragma)\n" +
        "    return db\n" +
        "db = connect(os.path.join(_d, 'jobs.db'))\n" +
        $"db.executescript({PyString(SqliteJobStore.SchemaSql)})\n" +
        $"CLAIM = {PyString(SqliteJobStore.ClaimSql)}\n" +
        $"COMPLETE = {PyString(SqliteJobStore.CompleteSql)}\n" +
        $"ENQUEUE = {PyString(SqliteJobStore.EnqueueSql)}\n" +
        $"SUPERSEDE = {PyString(SqliteJobStore.SupersedeSql)}\n" +
        $"SUPERSEDE_SOURCE = {PyString(SqliteJobStore.SupersedeSourceSql)}\n" +
        $"LOOKUP = {PyString(SqliteJobStore.LookupSql)}\n" +
        "def ms(): return int(time.time() * 1000)\n" +
        "_sd = os.path.join(_d, 'superseded'); os.mkdir(_sd)\n" +
        "def stock():\n" +
        "    db.execute('BEGIN IMMEDIATE')\n" +
        $"    jobs = [dict(parser='bench', version='1.0', path=f'/data/in/{{i:07}}.csv', hash=f'h{{i}}', priority=0, now=ms(), prefix='') for i in range({Batch})]\n" +
        "    db.executemany(ENQUEUE, jobs)\n" +
        $"    for _ in range({Batch}):\n" +
        "        (jid, *_r) = db.execute(CLAIM, dict(worker='w', now=ms(), any=1, caps='[]')).fetchone()\n" +
        "        db.execute(COMPLETE, dict(now=ms(), metrics='{}', artifacts='[]', hash=None, id=jid, worker='w'))\n" +
        "        db.execute(SUPERSEDE, dict(parsed=None, now=ms(), id=jid))\n" +
        "        db.execute(SUPERSEDE_SOURCE, dict(parsed=None, now=ms(), id=jid))\n" +
        "    db.executemany(ENQUEUE, jobs)\n" +
        $"    claimed = [db.execute(CLAIM, dict(worker='w', now=ms(), any=1, caps='[]')).fetchone()[0] for _ in range({Batch})]\n" +
        "    db.execute('COMMIT')\n" +
        $"    for i in range({Batch}):\n" +
        "        with open(os.path.join(_sd, f'{i}.parquet'), 'wb') as f: f.write(b'x')\n" +
        "    return claimed\n" +
        "_claimed = stock(); _next = [0]\n" +
        "def step():\n" +
        "    i = _next[0]; _next[0] += 1\n" +
        "    jid = _claimed[i]; now = ms()\n" +
        "    db.execute('BEGIN IMMEDIATE')\n" +
        "    db.execute(COMPLETE, dict(now=now, metrics='{\"rows\":100}', artifacts='[]', hash=None, id=jid, worker='w'))\n" +
        "    db.execute(SUPERSEDE, dict(parsed=None, now=now, id=jid))\n" +
        "    db.execute(SUPERSEDE_SOURCE, dict(parsed=None, now=now, id=jid))\n" +
        "    db.execute('COMMIT')\n" +
        "    path = os.path.join(_sd, f'{i}.parquet')\n" +
        "    lock = os.open(_sd, os.O_RDONLY); fcntl.flock(lock, fcntl.LOCK_EX)\n" +
        "    with open(path, 'rb') as f: f.seek(0, 2); f.seek(max(0, f.tell() - 8)); f.read()\n" +
        "    os.remove(path)\n" +
        "    fcntl.flock(lock, fcntl.LOCK_UN); os.close(lock)\n" +
        "    fd = os.open(_sd, os.O_RDONLY); os.fsync(fd); os.close(fd)\n" +
        $"big = connect({PyString(Path.Combine(Root, "big.db"))})\n" +
        "def add_unchanged():\n" +
        $"    tree = {PyString(Tree)}\n" +
        "    files = []\n" +
        "    for d, dirs, names in os.walk(tree):\n" +
        "        dirs.sort()\n" +
        "        files.extend(os.path.join(d, n) for n in sorted(names) if not n.startswith('.'))\n" +
        "    stats = [(p, os.stat(p)) for p in files]\n" +
        "    known = {}\n" +
        "    for i in range(0, len(files), 5000):\n" +
        "        for row in big.execute(LOOKUP, dict(paths=json.dumps(files[i:i + 5000]), parser='bench', version='1.0', prefix='')):\n" +
        "            known[files[i + row[0]]] = row\n" +
        "    unchanged = 0\n" +
        "    for p, st in stats:\n" +
        "        e = known.get(p)\n" +
        "        if e and e[2] == st.st_size and e[3] == st.st_mtime_ns // 1000 and (e[9] or (e[6] == '1.0' and e[7] == e[1])): unchanged += 1\n" +
        $"    assert unchanged == {Files}, unchanged\n";

    [GlobalSetup]
    public void Setup()
    {
        if (Directory.Exists(Root)) Directory.Delete(Root, recursive: true);
        Directory.CreateDirectory(Superseded);
        _output = Defaults.Output(Root);
        _parser = new ParserRecord { Name = "bench", Version = "1.0", Source = "", EnvHash = Hashes.SystemEnv, SourceHash = "s", ArtifactHash = "a" };

        // 100k files in 100 folders, known to the catalog with a current output of this version.
        for (int d = 0; d < 100; d++)
        {
            string dir = Path.Combine(Tree, $"d{d:D3}");
            Directory.CreateDirectory(dir);
            for (int f = 0; f < Files / 100; f++) File.WriteAllText(Path.Combine(dir, $"f{f:D4}.csv"), $"x\n{d},{f}\n");
        }
        _big = new SqliteJobStore(Defaults.Store(Path.Combine(Root, "big.db")));
        _big.RegisterParser(_parser);
        var plan = Plan();
        Queue(_big, plan.ToQueue);
        _big.InTransaction(() =>
        {
            foreach (var job in _big.Claim("w", Any, Files)) _big.Complete(job.Id, "w", Metrics, [], parsedHash: null, out _);
            return 0;
        });
        if (Plan() is not { ToQueue.Count: 0, Unchanged.Count: Files }) throw new InvalidOperationException("the second plan did not skip every file");
    }

    private static void Queue(IJobStore store, List<(string Path, string Hash)> files) =>
        store.EnqueueMany([.. files.Select(f => new NewJob("bench", "1.0", f.Path, f.Hash))]);

    private SourcePlan Plan() => Catalog.Plan(_big, _parser, Catalog.Stat(Commands.ExpandInputs([Tree])), force: false);

    /// <summary>Keeps the tree and its store: the Python pairing, timed after this process ends, reads them (Setup starts afresh).</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _store?.Dispose();
        _big.Dispose();
    }

    /// <summary>A fresh store whose Batch sources each have a current output, and a second job for each, claimed; one file per job to supersede.</summary>
    [IterationSetup(Target = nameof(SupersedeStep))]
    public void Stock()
    {
        _store?.Dispose();
        foreach (var f in Directory.GetFiles(Root, "jobs.db*")) File.Delete(f);
        _store = new SqliteJobStore(Defaults.Store(Path.Combine(Root, "jobs.db")));
        var jobs = Enumerable.Range(0, Batch).Select(i => (Path: $"/data/in/{i:D7}.csv", Hash: $"h{i}")).ToList();
        Queue(_store, jobs);
        _store.InTransaction(() =>
        {
            foreach (var job in _store.Claim("w", Any, Batch)) _store.Complete(job.Id, "w", Metrics, [], parsedHash: null, out _);
            return 0;
        });
        Queue(_store, jobs);
        _claimed = _store.InTransaction(() => _store.Claim("w", Any, Batch).Select(j => j.Id).ToList());
        for (int i = 0; i < Batch; i++) File.WriteAllBytes(Path.Combine(Superseded, $"{i}.parquet"), [1]);
    }

    [Benchmark(OperationsPerInvoke = Batch)]
    [Throughput(1, Unit = "jobs")]
    [Target("supersede step per job: < 1 ms")]
    [Python("step()", Number = Batch)]
    public int SupersedeStep()
    {
        for (int i = 0; i < Batch; i++)
        {
            if (!_store.Complete(_claimed[i], "w", Metrics, [], parsedHash: null, out _)) throw new InvalidOperationException($"job {_claimed[i]} did not complete");
            JobOutput.RemoveSuperseded(_output, (ulong)_claimed[i], [new Uri(Path.Combine(Superseded, $"{i}.parquet")).AbsoluteUri], [], newestWins: true);
        }
        return Batch;
    }

    [Benchmark]
    [Throughput(Files, Unit = "files")]
    [Target("job add of 100k unchanged files: < 2 s")]
    [Python("add_unchanged()", Number = 1, Repeat = 3)]
    public int AddUnchanged100k()
    {
        var plan = Plan();
        if (plan.Unchanged.Count != Files) throw new InvalidOperationException($"{plan.Unchanged.Count} of {Files} unchanged");
        return plan.Unchanged.Count;
    }
}
