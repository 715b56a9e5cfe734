// Sources (issue 19): the cost of watching a big folder, on real files and a real SQLite store.
//   Rescan100k     a watcher's rescan of a source of 100,000 files, none changed since its last pass:
//                  one directory walk (size and mtime from the walk) and an in-memory probe per file.
//                  Target < 1 s.
//   DryRun100k     `scan NAME --dry-run` of the same source: a fresh pass, so every file is looked up in
//                  the catalog (which holds them all, unchanged) and none is read or routed. Target < 2 s.
// Each is paired with the same work in Python, timed on the same machine in the same run: os.scandir
// with lstat per entry into a dict, compared with the previous walk's; and the walk plus Casparian's
// own catalog lookup (LookupSql) through sqlite3, in the same chunks.
using System.ComponentModel;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[Description("A source of 100,000 files in 100 folders, every one already in the catalog with the same size and mtime (a --check run " +
             "uses 2,000). Rescan100k: one pass of a watcher that has seen them all (nothing queued). DryRun100k: `scan --dry-run`'s " +
             "fresh pass (walk, catalog lookups, nothing hashed, routed or queued).")]
public class SourcesBench
{
    private static readonly string Root = Path.Combine(Path.GetTempPath(), "casparian-bench-sources");
    private static string Tree => Path.Combine(Root, "tree");
    private static readonly ScanSettings Settings = new() { Settle = TimeSpan.Zero, FileLimit = 1_000_000 };

    private int _files;
    private SqliteJobStore _store = null!;
    private WatchSource _source = null!;
    private List<RoutingRule> _rules = [];
    private SourceScan _watcher = null!;

    /// <summary>Python, run before every timing: a first walk (as the watcher's last pass) and a connection to the store the C# setup left.</summary>
    public static string PythonSetup =>
        "import os, sqlite3, json\n" +
        $"TREE = {ShimBench.PyString(RealPath.Of(Tree))}\n" +
        $"LOOKUP = {ShimBench.PyString(SqliteJobStore.LookupSql)}\n" +
        "def walk():\n" +
        "    seen, stack = {}, [TREE]\n" +
        "    while stack:\n" +
        "        with os.scandir(stack.pop()) as it:\n" +
        "            for e in it:\n" +
        "                if e.name.startswith('.') or e.is_symlink(): continue\n" +
        "                if e.is_dir(follow_symlinks=False): stack.append(e.path)\n" +
        "                else:\n" +
        "                    st = e.stat(follow_symlinks=False)\n" +
        "                    seen[e.path] = (st.st_size, st.st_mtime_ns // 1000)\n" +
        "    return seen\n" +
        "last = walk()\n" +
        $"db = sqlite3.connect({ShimBench.PyString(Path.Combine(Root, "jobs.db"))})\n" +
        "def rescan():\n" +
        "    now = walk()\n" +
        "    same = sum(1 for p, s in now.items() if last.get(p) == s)\n" +
        "    assert same == len(last), same\n" +
        "def dry_run():\n" +
        "    now = walk(); paths = sorted(now)\n" +
        "    known = 0\n" +
        "    for i in range(0, len(paths), 5000):\n" +
        "        for row in db.execute(LOOKUP, dict(paths=json.dumps(paths[i:i + 5000]), parser='', version='', prefix='')):\n" +
        "            if (row[2], row[3]) == now[paths[i + int(row[0])]]: known += 1\n" +
        "    assert known == len(paths), known\n";

    [GlobalSetup]
    public void Setup()
    {
        _files = Program.Checking ? 2_000 : 100_000;
        if (Directory.Exists(Root)) Directory.Delete(Root, recursive: true);
        for (int d = 0; d < 100; d++)
        {
            string dir = Path.Combine(Tree, $"d{d:D3}");
            Directory.CreateDirectory(dir);
            for (int f = 0; f < _files / 100; f++) File.WriteAllText(Path.Combine(dir, $"f{f:D4}.csv"), $"x\n{d},{f}\n");
        }
        _store = new SqliteJobStore(Defaults.Store(Path.Combine(Root, "jobs.db")));
        _source = new WatchSource("bench", RealPath.Of(Tree), Recursive: true, []);
        _store.AddSource(_source);
        _store.AddRule(new RoutingRule(0, "bench", "**/*.csv", "bench", null, 0));
        _rules = _store.ListRules();
        // The catalog holds every file as it is on disk (as after a first pass queued them all).
        var stats = Catalog.Stat(Commands.ExpandInputs([Tree]));
        _store.RecordSources([.. stats.Select(s => new SourceObservation(s, "h"))]);
        _watcher = new SourceScan(_source, Settings);
        if (_watcher.Pass(_store, _rules, DateTimeOffset.UtcNow).Known != _files) throw new InvalidOperationException("the first pass did not find every file known");
    }

    /// <summary>Keeps the tree and its store: the Python pairing, timed after this process ends, reads them (Setup starts afresh).</summary>
    [GlobalCleanup]
    public void Cleanup() => _store.Dispose();

    [Benchmark]
    [Throughput(100_000, Unit = "files")]
    [Target("rescan of 100k unchanged files: < 1 s")]
    [Python("rescan()", Number = 1, Repeat = 3)]
    public int Rescan100k()
    {
        var report = _watcher.Pass(_store, _rules, DateTimeOffset.UtcNow);
        if (report.Known != _files || report.Rules.Count != 0) throw new InvalidOperationException($"{report.Known} of {_files} unchanged");
        return report.Known;
    }

    [Benchmark]
    [Throughput(100_000, Unit = "files")]
    [Target("scan --dry-run of 100k unchanged files: < 2 s")]
    [Python("dry_run()", Number = 1, Repeat = 3)]
    public int DryRun100k()
    {
        var report = new SourceScan(_source, Settings).Pass(_store, _rules, DateTimeOffset.UtcNow, dryRun: true);
        if (report.Known != _files || report.Rules.Count != 0) throw new InvalidOperationException($"{report.Known} of {_files} unchanged");
        return report.Known;
    }
}
