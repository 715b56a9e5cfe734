// Sources and routing rules (issue 19) through the native binary: a watched folder of mixed files
// routed by two rules to two parsers, the unknown file listed as unmatched, a file copied in slowly
// parsed once and complete, rename/delete/re-add, a rule change followed by `scan` (new files only;
// --reroute explicit), symlinks out of a source not followed, and sources declared in casparian.toml.
using System.Globalization;
using System.Text;
using Xunit;

namespace Casparian.Tests;

public sealed class SourcesTests : IDisposable
{
    private readonly Cluster _c = new();

    public void Dispose() => _c.Dispose();

    private string Drop => _c.File("drop");

    /// <summary>Two parsers as single files: CSV rows to topic csv_rows, JSON lines to topic events.</summary>
    private void RegisterParsers()
    {
        string csv = _c.File("src_csv.py");
        File.WriteAllText(csv, """
            import csv
            name = "src_csv"
            version = "1.0"

            def parse(path):
                with open(path, newline="") as f:
                    rows = [{"n": int(r["n"]), "word": r["word"]} for r in csv.DictReader(f)]
                from casparian import Output
                yield Output("csv_rows", rows)
            """);
        string jsonl = _c.File("src_jsonl.py");
        File.WriteAllText(jsonl, """
            import json
            name = "src_jsonl"
            version = "1.0"

            def parse(path):
                with open(path) as f:
                    rows = [json.loads(line) for line in f if line.strip()]
                from casparian import Output
                yield Output("events", [{"level": r["level"], "msg": r["msg"]} for r in rows])
            """);
        _c.Ok("parser", "register", csv);
        _c.Ok("parser", "register", jsonl);
    }

    private void AddSourceWithTwoRules()
    {
        Directory.CreateDirectory(Path.Combine(Drop, "logs"));
        Assert.StartsWith($"added source drop: {Drop} and its subfolders", _c.Ok("source", "add", "drop", Drop, "--recursive").Stdout);
        Assert.StartsWith("added rule 1: drop **/*.csv -> src_csv (now src_csv 1.0), priority 0", _c.Ok("rule", "add", "drop", "**/*.csv", "src_csv").Stdout);
        Assert.StartsWith("added rule 2: drop **/*.jsonl -> src_jsonl@1.0", _c.Ok("rule", "add", "drop", "**/*.jsonl", "src_jsonl@1.0").Stdout);
    }

    private static void WriteCsv(string path, int rows, int start = 0)
    {
        var sb = new StringBuilder("n,word\n");
        for (int i = start; i < start + rows; i++) sb.Append(CultureInfo.InvariantCulture, $"{i},w{i}\n");
        File.WriteAllText(path, sb.ToString());
    }

    private static void Age(string path) => File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddMinutes(-5));

    private string ParquetOf(string parser, string topic, string source) =>
        Path.Combine(_c.Home, "output", topic, SinkTarget.SourceFileName(parser, source));

    [Fact]
    public void Sources_TwoRules_RouteEachFileToItsParser_TheUnknownFileIsListedAsUnmatched()
    {
        RegisterParsers();
        AddSourceWithTwoRules();
        string csv = Path.Combine(Drop, "sales.csv");
        string jsonl = Path.Combine(Drop, "logs", "app.jsonl");
        string unknown = Path.Combine(Drop, "dump.bin");
        WriteCsv(csv, 3);
        File.WriteAllText(jsonl, "{\"level\": \"info\", \"msg\": \"up\"}\n{\"level\": \"error\", \"msg\": \"down\"}\n");
        File.WriteAllBytes(unknown, [1, 2, 3]);
        foreach (var f in new[] { csv, jsonl, unknown }) Age(f);

        // The preview: each file's rule and parser, the unknown one unmatched.
        string test = _c.Ok("rule", "test", "drop").Stdout;
        Assert.Matches(@"(?m)^dump\.bin +- +- +\(unmatched\) +-$", test);
        Assert.Matches(@"(?m)^logs/app\.jsonl +2 +\*\*/\*\.jsonl +src_jsonl 1\.0 +-$", test);
        Assert.Matches(@"(?m)^sales\.csv +1 +\*\*/\*\.csv +src_csv 1\.0 +-$", test);
        Assert.Contains("3 file(s): 2 routed, 1 unmatched, 0 ignored", test);

        // A dry run says what it would queue, per rule, and queues nothing.
        string dry = _c.Ok("scan", "drop", "--dry-run").Stdout;
        Assert.Contains($"source drop ({Drop}): 3 file(s); 0 unchanged since they were routed, 1 unmatched, 0 settling, 0 ignored (dry run: nothing queued or recorded)", dry);
        Assert.Contains($"rule 1 **/*.csv -> src_csv 1.0: would queue 1, 0 with content this version already processed or has queued\n  {csv}\n", dry);
        Assert.Contains($"rule 2 **/*.jsonl -> src_jsonl 1.0: would queue 1, 0 with content this version already processed or has queued\n  {jsonl}\n", dry);
        Assert.Contains($"unmatched (no rule): 1\n  {unknown}\n", dry);
        Assert.Empty(_c.Jobs());

        // start watches the source: each file to its rule's parser, read back value by value.
        var r = Proc.Run(Repo.Binary, ["start", "--drain", "--slots", "2"], TimeSpan.FromSeconds(90), _c.Root,
            new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _c.Home, ["CASPARIAN_PYTHON"] = Cluster.Python });
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains($"  watching source drop ({Drop}, recursive): 2 rule(s)", r.Stderr);
        Assert.Contains("queued 1 new file(s) for src_csv 1.0 (source drop, rule 1: **/*.csv)", r.Stderr);
        Assert.Contains("queued 1 new file(s) for src_jsonl 1.0 (source drop, rule 2: **/*.jsonl)", r.Stderr);
        Assert.Contains("source drop: 1 file(s) match no rule ('casparian source show drop' lists them)", r.Stderr);
        Assert.Equal(new[] { csv, jsonl }.Order(StringComparer.Ordinal), _c.Jobs().Select(j => j.Input).Order(StringComparer.Ordinal));
        Assert.All(_c.Jobs(), j => Assert.Equal("COMPLETED", j.State));
        var rows = ParquetTable.Read(ParquetOf("src_csv", "csv_rows", csv));
        Assert.Equal([0L, 1L, 2L], rows.Columns["n"]);
        Assert.Equal(["w0", "w1", "w2"], rows.Columns["word"]);
        var events = ParquetTable.Read(ParquetOf("src_jsonl", "events", jsonl));
        Assert.Equal(["info", "error"], events.Columns["level"]);
        Assert.Equal(["up", "down"], events.Columns["msg"]);

        string show = _c.Ok("source", "show", "drop").Stdout;
        Assert.Contains($"unmatched files (no rule matched them at the last scan): 1\n  {unknown}\n", show);
        Assert.Matches(@"(?m)^drop +2 +1 +yes +- +store +" + System.Text.RegularExpressions.Regex.Escape(Drop) + "$", _c.Ok("source", "ls").Stdout);

        // Everything is routed now: a second scan has nothing new, and says the unknown file is still unmatched.
        string again = _c.Ok("scan", "drop").Stdout;
        Assert.Contains("3 file(s); 2 unchanged since they were routed, 1 unmatched", again);
        Assert.Contains("nothing new or changed to queue", again);
        Assert.Equal(2, _c.Jobs().Count);
    }

    [Fact]
    public void Sources_AFileCopiedInSlowly_IsParsedOnceAndComplete_RenameDeleteAndReaddAreHandled()
    {
        RegisterParsers();
        AddSourceWithTwoRules();
        var start = _c.Spawn("start", ["start", "--slots", "2", "--settle-interval", "1.5s"]);
        _c.WaitUntil("start to watch the source", TimeSpan.FromSeconds(30),
            () => start.Stderr.Contains("  watching source drop", StringComparison.Ordinal) || start.HasExited);
        Assert.False(start.HasExited, start.ToString());

        // Written in 5 chunks over 2 s: each chunk changes size and mtime, so the file settles only after the last.
        string slow = Path.Combine(Drop, "slow.csv");
        using (var f = new FileStream(slow, FileMode.CreateNew, FileAccess.Write))
        {
            f.Write("n,word\n"u8);
            for (int chunk = 0; chunk < 5; chunk++)
            {
                var sb = new StringBuilder();
                for (int i = chunk * 20; i < chunk * 20 + 20; i++) sb.Append(CultureInfo.InvariantCulture, $"{i},w{i}\n");
                f.Write(Encoding.UTF8.GetBytes(sb.ToString()));
                f.Flush();
                Thread.Sleep(500);
            }
        }
        _c.WaitUntil("the slow file's job to complete", TimeSpan.FromSeconds(60), () => _c.Jobs() is [{ State: "COMPLETED" }]);
        var t = ParquetTable.Read(ParquetOf("src_csv", "csv_rows", slow));
        Assert.Equal(Enumerable.Range(0, 100).Select(i => (object?)(long)i), t.Columns["n"]);

        // Renamed: a new path is a new source file, parsed under its new name.
        string renamed = Path.Combine(Drop, "renamed.csv");
        File.Move(slow, renamed);
        _c.WaitUntil("the renamed file's job to complete", TimeSpan.FromSeconds(60),
            () => _c.Jobs() is [_, { State: "COMPLETED" } j] && j.Input == renamed);
        Assert.Equal(100, ParquetTable.Read(ParquetOf("src_csv", "csv_rows", renamed)).Rows);

        // Deleted, then the same content added back: skipped as unchanged, no new job.
        byte[] content = File.ReadAllBytes(renamed);
        File.Delete(renamed);
        Thread.Sleep(1500);
        File.WriteAllBytes(renamed, content);
        _c.WaitUntil("start to skip the re-added file", TimeSpan.FromSeconds(30),
            () => start.Stderr.Contains("queued 0 new file(s) for src_csv 1.0 (source drop, rule 1: **/*.csv); 1 unchanged file(s) skipped", StringComparison.Ordinal));
        Assert.Equal(2, _c.Jobs().Count);

        // Edited: reprocessed, and its new rows replace the old ones in the same file.
        WriteCsv(renamed, 2, start: 500);
        _c.WaitUntil("the edited file's job to complete", TimeSpan.FromSeconds(60), () => _c.Jobs() is [_, _, { State: "COMPLETED" }]);
        Assert.Equal([500L, 501L], ParquetTable.Read(ParquetOf("src_csv", "csv_rows", renamed)).Columns["n"]);

        start.Signal(Posix.SigInt);
        Assert.True(start.WaitForExit(TimeSpan.FromSeconds(30)) == 0, start.ToString());
    }

    [Fact]
    public void Sources_ASentinelPicksUpASourceAddedWhileItRuns_AndQueuesItsFilesForAWorker()
    {
        RegisterParsers();
        var sentinel = _c.StartSentinel();
        AddSourceWithTwoRules();
        string jsonl = Path.Combine(Drop, "logs", "late.jsonl");
        File.WriteAllText(jsonl, "{\"level\": \"warn\", \"msg\": \"late\"}\n");
        _c.WaitUntil("the sentinel to queue the dropped file", TimeSpan.FromSeconds(30),
            () => sentinel.Stderr.Contains("queued 1 new file(s) for src_jsonl 1.0 (source drop, rule 2: **/*.jsonl)", StringComparison.Ordinal));
        _c.StartWorker("w1");
        _c.WaitUntil("the job to complete", TimeSpan.FromSeconds(60), () => _c.Jobs() is [{ State: "COMPLETED" } j] && j.Input == jsonl);
        var events = ParquetTable.Read(Path.Combine(_c.Output, "events", SinkTarget.SourceFileName("src_jsonl", jsonl)));
        Assert.Equal(["late"], events.Columns["msg"]);
    }

    [Fact]
    public void Sources_RuleChangeThenScan_RoutesNewAndUnmatchedFilesOnly_RerouteIsExplicit()
    {
        RegisterParsers();
        Directory.CreateDirectory(Drop);
        _c.Ok("source", "add", "drop", Drop);
        _c.Ok("rule", "add", "drop", "*.csv", "src_csv");
        string a = Path.Combine(Drop, "a.csv"), notes = Path.Combine(Drop, "notes.txt");
        WriteCsv(a, 1);
        File.WriteAllText(notes, "n,word\n1,x\n");
        Age(a);
        Age(notes);
        Assert.Contains("rule 1 *.csv -> src_csv 1.0: queued 1", _c.Ok("scan", "drop").Stdout);
        Assert.Equal(["notes.txt"], _c.Ok("source", "show", "drop").Stdout.Split('\n').Where(l => l.StartsWith("  /", StringComparison.Ordinal)).Select(Path.GetFileName));

        // A rule that takes every file, tried first: the unmatched file is new to routing and takes it;
        // a.csv was routed already and keeps its parser until rerouted explicitly.
        _c.Ok("rule", "add", "drop", "*", "src_jsonl", "--priority", "10");
        string scan = _c.Ok("scan", "drop").Stdout;
        Assert.Contains($"rule 2 * -> src_jsonl 1.0: queued 1, 0 with content this version already processed or has queued\n  {notes}\n", scan);
        Assert.DoesNotContain(a, scan);
        Assert.Equal([(a, "src_csv"), (notes, "src_jsonl")], Parsers());
        Assert.Contains("unmatched files (no rule matched them at the last scan): 0", _c.Ok("source", "show", "drop").Stdout);

        string dry = _c.Ok("scan", "drop", "--reroute", "--dry-run").Stdout;
        Assert.Contains($"rule 2 * -> src_jsonl 1.0: would queue 1, 1 with content this version already processed or has queued\n  {a}\n", dry);
        _c.Ok("scan", "drop", "--reroute");
        Assert.Equal([(a, "src_csv"), (notes, "src_jsonl"), (a, "src_jsonl")], Parsers());

        // Removing the rule leaves the jobs; rule ls shows what is left, in the order tried.
        Assert.Equal("removed rule 2\n", _c.Ok("rule", "rm", "2").Stdout);
        Assert.Matches(@"^ID +SOURCE +PRIORITY +GLOB +PARSER +PREFIX +FROM\n1 +drop +0 +\*\.csv +src_csv +- +store\n$", _c.Ok("rule", "ls").Stdout);
        var gone = _c.Cli("rule", "rm", "2");
        Assert.Equal(3, gone.ExitCode);
        Assert.StartsWith("error: no rule 2 in ", gone.Stderr);
    }

    private List<(string Input, string Parser)> Parsers()
    {
        var lines = _c.Ok("jobs", "--json").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        return [.. lines.Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement)
            .Select(e => (e.GetProperty("input").GetString()!, e.GetProperty("parser").GetString()!.Split(' ', '@')[0]))];
    }

    [Fact]
    public void Sources_SymlinksOutOfTheFolderAreNotFollowed_TheFolderIsStoredByItsRealPath()
    {
        RegisterParsers();
        string real = _c.File("real-drop");
        Directory.CreateDirectory(real);
        string link = _c.File("drop-link");
        Directory.CreateSymbolicLink(link, real);
        Assert.StartsWith($"added source drop: {real} and its subfolders;", _c.Ok("source", "add", "drop", link, "--recursive").Stdout);
        _c.Ok("rule", "add", "drop", "**/*.csv", "src_csv");

        string outside = _c.File("outside");
        Directory.CreateDirectory(outside);
        WriteCsv(Path.Combine(outside, "secret.csv"), 1);
        File.CreateSymbolicLink(Path.Combine(real, "secret.csv"), Path.Combine(outside, "secret.csv"));
        Directory.CreateSymbolicLink(Path.Combine(real, "elsewhere"), outside);
        string mine = Path.Combine(real, "mine.csv");
        WriteCsv(mine, 1);
        Age(mine);
        string dry = _c.Ok("scan", "drop", "--dry-run").Stdout;
        Assert.Contains($"1 file(s);", dry);
        Assert.Contains($"would queue 1, 0 with content this version already processed or has queued\n  {mine}\n", dry);
        Assert.DoesNotContain("secret", dry);

        var missing = _c.Cli("source", "add", "other", _c.File("nope"));
        Assert.Equal(3, missing.ExitCode);
        Assert.Equal($"error: source folder {_c.File("nope")} does not exist or is not a folder; create it first\n", missing.Stderr);
        var twice = _c.Cli("source", "add", "drop", real);
        Assert.Equal(3, twice.ExitCode);
        Assert.StartsWith("error: a source named 'drop' exists already", twice.Stderr);
        var badRule = _c.Cli("rule", "add", "drop", "../*.csv", "src_csv");
        Assert.Equal(3, badRule.ExitCode);
        Assert.StartsWith("error: rule add: glob '../*.csv' is invalid", badRule.Stderr);
        var noParser = _c.Cli("rule", "add", "drop", "*.csv", "nosuch");
        Assert.Equal(3, noParser.ExitCode);
    }

    [Fact]
    public void Sources_IgnoreGlobsAndTopLevelOnly_LeaveFilesOutOfRouting()
    {
        RegisterParsers();
        Directory.CreateDirectory(Path.Combine(Drop, "sub"));
        foreach (string name in new[] { "a.csv", "a.csv.part", "sub/b.csv", ".hidden.csv" }) File.WriteAllText(Path.Combine(Drop, name), "n,word\n1,x\n");
        Assert.Equal($"added source drop: {Drop}, ignoring *.part; route its files with 'casparian rule add drop GLOB PARSER'\n",
            _c.Ok("source", "add", "drop", Drop, "--ignore", "*.part").Stdout);
        _c.Ok("rule", "add", "drop", "**/*", "src_csv");
        string test = _c.Ok("rule", "test", "drop").Stdout;
        // Not recursive: sub/ is not looked at; hidden files never are; *.part is ignored, not unmatched.
        Assert.Matches(@"^FILE +RULE +GLOB +PARSER +PREFIX\na\.csv +1 +\*\*/\* +src_csv 1\.0 +-\na\.csv\.part +- +- +\(ignored\) +-\n2 file\(s\): 1 routed, 0 unmatched, 1 ignored\n$", test);
    }

    [Fact]
    public void Sources_DeclaredInCasparianToml_AreListedWithTheirLine_AndScanned()
    {
        RegisterParsers();
        Directory.CreateDirectory(Drop);
        string toml = Path.Combine(_c.Root, "casparian.toml");
        File.WriteAllText(toml, """
            [[sources]]
            name = "kept_in_git"
            dir = "drop"
            ignore = ["*.tmp"]

            [[rules]]
            source = "kept_in_git"
            glob = "*.jsonl"
            parser = "src_jsonl"
            priority = 3
            """);
        string events = Path.Combine(Drop, "e.jsonl");
        File.WriteAllText(events, "{\"level\": \"info\", \"msg\": \"x\"}\n");
        File.WriteAllText(Path.Combine(Drop, "skip.tmp"), "");
        Age(events);
        Age(Path.Combine(Drop, "skip.tmp"));

        Assert.Matches(@"(?m)^kept_in_git +1 +0 +no +\*\.tmp +" + System.Text.RegularExpressions.Regex.Escape(toml) + ":1 +" + System.Text.RegularExpressions.Regex.Escape(Drop) + "$",
            _c.Ok("source", "ls").Stdout);
        Assert.Matches(@"(?m)^- +kept_in_git +3 +\*\.jsonl +src_jsonl +- +" + System.Text.RegularExpressions.Regex.Escape(toml) + ":6$", _c.Ok("rule", "ls").Stdout);
        string config = _c.Ok("config").Stdout;
        Assert.Contains($"# kept_in_git = {Drop} ignore *.tmp  # {toml}:1\n", config);
        Assert.Contains($"# {toml}:6: kept_in_git *.jsonl -> src_jsonl priority 3  # {toml}:6\n", config);

        string scan = _c.Ok("scan", "kept_in_git").Stdout;
        Assert.Contains("2 file(s); 0 unchanged since they were routed, 0 unmatched, 0 settling, 1 ignored", scan);
        Assert.Contains($"queued 1, 0 with content", scan);
        Assert.Equal([events], _c.Jobs().Select(j => j.Input));

        var rm = _c.Cli("source", "rm", "kept_in_git");
        Assert.Equal(3, rm.ExitCode);
        Assert.Equal($"error: source 'kept_in_git' is declared in the config file ({toml}:1); edit or remove it there\n", rm.Stderr);

        File.AppendAllText(toml, "\n[[rules]]\nsource = \"kept_in_git\"\nglob = \"*\"\nparser = \"src_csv\"\ncolour = \"red\"\n");
        var bad = _c.Cli("source", "ls");
        Assert.Equal(3, bad.ExitCode);
        Assert.Equal($"error: {toml}:11: unknown key 'colour'; known keys: source, glob, parser, priority, topic_prefix\n", bad.Stderr);
    }
    [Fact]
    public void Sources_TwoRulesWithTopicPrefixes_RouteOneSourceToOneParser_ItsTopicsLandUnderThePrefixedNames()
    {
        RegisterParsers();
        Directory.CreateDirectory(Path.Combine(Drop, "crm"));
        Directory.CreateDirectory(Path.Combine(Drop, "erp"));
        // The config file names a sink for one prefixed topic, by its final name.
        File.WriteAllText(Path.Combine(_c.Root, "casparian.toml"), "[topics.erp_csv_rows]\nsink = \"parquet://erp_lake\"\n");
        _c.Ok("source", "add", "drop", Drop, "--recursive");
        var bad = _c.Cli("rule", "add", "drop", "**/*.csv", "src_csv", "--topic-prefix", "Crm-");
        Assert.Equal(3, bad.ExitCode);
        Assert.StartsWith("error: rule add --topic-prefix: topic prefix 'Crm-' is invalid; a prefix is the start of a topic name", bad.Stderr);
        Assert.Single(bad.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("topics written as crm_TOPIC", _c.Ok("rule", "add", "drop", "crm/*.csv", "src_csv", "--topic-prefix", "crm_").Stdout);
        _c.Ok("rule", "add", "drop", "erp/*.csv", "src_csv", "--topic-prefix", "erp_");
        Assert.Matches(@"(?m)^1 +drop +0 +crm/\*\.csv +src_csv +crm_ +store$", _c.Ok("rule", "ls").Stdout);
        Assert.Matches(@"(?m)^2 +drop +0 +erp/\*\.csv +src_csv +erp_ +store$", _c.Ok("rule", "ls").Stdout);

        string crm = Path.Combine(Drop, "crm", "a.csv");
        string erp = Path.Combine(Drop, "erp", "a.csv");
        WriteCsv(crm, 2);
        WriteCsv(erp, 3, start: 10);
        Age(crm);
        Age(erp);
        string test = _c.Ok("rule", "test", "drop").Stdout;
        Assert.Matches(@"(?m)^crm/a\.csv +1 +crm/\*\.csv +src_csv 1\.0 +crm_$", test);
        Assert.Matches(@"(?m)^erp/a\.csv +2 +erp/\*\.csv +src_csv 1\.0 +erp_$", test);

        var r = Proc.Run(Repo.Binary, ["start", "--drain", "--slots", "2"], TimeSpan.FromSeconds(90), _c.Root,
            new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _c.Home, ["CASPARIAN_PYTHON"] = Cluster.Python });
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("queued 1 new file(s) for src_csv 1.0 (source drop, rule 1: crm/*.csv, topics as crm_TOPIC)", r.Stderr);
        Assert.All(_c.Jobs(), j => Assert.Equal("COMPLETED", j.State));
        Assert.Equal(2, _c.Jobs().Count);
        Assert.Contains("crm_TOPIC (the routing rule's prefix)", _c.Ok("job", "show", "1").Stdout);

        // crm_ + csv_rows under the default sink; erp_ + csv_rows under the config's sink for that final name.
        var a = ParquetTable.Read(ParquetOf("src_csv", "crm_csv_rows", crm));
        Assert.Equal([0L, 1L], a.Columns["n"]);
        Assert.Equal(["w0", "w1"], a.Columns["word"]);
        var b = ParquetTable.Read(ParquetOf("src_csv", "erp_lake", erp));
        Assert.Equal([10L, 11L, 12L], b.Columns["n"]);
        Assert.Equal(["w10", "w11", "w12"], b.Columns["word"]);
        Assert.False(Directory.Exists(Path.Combine(_c.Home, "output", "csv_rows")));
        Assert.False(Directory.Exists(Path.Combine(_c.Home, "output", "erp_csv_rows")));
    }

    private ProcessResult StartDrain()
    {
        var r = Proc.Run(Repo.Binary, ["start", "--drain", "--slots", "2"], TimeSpan.FromSeconds(90), _c.Root,
            new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _c.Home, ["CASPARIAN_PYTHON"] = Cluster.Python });
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    [Fact]
    public void Sources_RerouteUnderAChangedTopicPrefix_ReparsesIntoTheNewTopics_AndTheCurrentOutputNamesTheNewPrefix()
    {
        RegisterParsers();
        Directory.CreateDirectory(Drop);
        _c.Ok("source", "add", "drop", Drop);
        _c.Ok("rule", "add", "drop", "*.csv", "src_csv", "--topic-prefix", "p1_");
        string a = Path.Combine(Drop, "a.csv"), b = Path.Combine(Drop, "b.csv");
        WriteCsv(a, 2);
        WriteCsv(b, 3, start: 10);
        Age(a);
        Age(b);
        Assert.Contains("rule 1 *.csv -> src_csv 1.0 (topics as p1_TOPIC): queued 2, 0 with content", _c.Ok("scan", "drop").Stdout);
        StartDrain();
        Assert.Equal(["COMPLETED", "COMPLETED"], _c.Jobs().Select(j => j.State));
        Assert.Equal([0L, 1L], ParquetTable.Read(ParquetOf("src_csv", "p1_csv_rows", a)).Columns["n"]);
        Assert.Equal([10L, 11L, 12L], ParquetTable.Read(ParquetOf("src_csv", "p1_csv_rows", b)).Columns["n"]);

        // The rule now writes under p2_. A plain scan leaves files routed before alone; --reroute queues
        // them again (their output under p1_ is not output under p2_), and a second --reroute while those
        // jobs wait queues nothing more (they are pending under p2_).
        _c.Ok("rule", "rm", "1");
        _c.Ok("rule", "add", "drop", "*.csv", "src_csv", "--topic-prefix", "p2_");
        Assert.Contains("2 unchanged since they were routed", _c.Ok("scan", "drop").Stdout);
        Assert.Equal(2, _c.Jobs().Count);
        Assert.Contains($" *.csv -> src_csv 1.0 (topics as p2_TOPIC): queued 2, 0 with content this version already processed or has queued\n  {a}\n  {b}\n",
            _c.Ok("scan", "drop", "--reroute").Stdout);
        Assert.Contains(" *.csv -> src_csv 1.0 (topics as p2_TOPIC): queued 0, 2 with content", _c.Ok("scan", "drop", "--reroute").Stdout);
        Assert.Equal(4, _c.Jobs().Count);

        StartDrain();
        Assert.All(_c.Jobs(), j => Assert.Equal("COMPLETED", j.State));
        Assert.Equal(4, _c.Jobs().Count);
        var ra = ParquetTable.Read(ParquetOf("src_csv", "p2_csv_rows", a));
        Assert.Equal([0L, 1L], ra.Columns["n"]);
        Assert.Equal(["w0", "w1"], ra.Columns["word"]);
        var rb = ParquetTable.Read(ParquetOf("src_csv", "p2_csv_rows", b));
        Assert.Equal([10L, 11L, 12L], rb.Columns["n"]);
        Assert.Equal(["w10", "w11", "w12"], rb.Columns["word"]);
        // The p2_ jobs superseded the p1_ output: its files are gone.
        Assert.False(File.Exists(ParquetOf("src_csv", "p1_csv_rows", a)));
        Assert.False(File.Exists(ParquetOf("src_csv", "p1_csv_rows", b)));
        Assert.Contains("p2_TOPIC (the routing rule's prefix)", _c.Ok("job", "show", "3").Stdout);

        using var store = JobStores.Open(Defaults.Store(_c.Db) with { Create = false });
        foreach (var (source, job) in new[] { (a, 3L), (b, 4L) })
        {
            var current = store.GetOutput("src_csv", source)!;
            Assert.Equal(("p2_", job), (current.TopicPrefix, current.JobId));
            Assert.Equal([ParquetOf("src_csv", "p2_csv_rows", source)], current.Uris().Select(u => new Uri(u).LocalPath));
        }
        // Settled under p2_: a further --reroute finds nothing to do.
        Assert.Contains("queued 0, 2 with content", _c.Ok("scan", "drop", "--reroute").Stdout);
    }

    [Fact]
    public void Sources_BackfillOfFilesRoutedUnderPrefixes_ReparsesEachUnderItsOwnPrefix()
    {
        RegisterParsers();
        Directory.CreateDirectory(Drop);
        _c.Ok("source", "add", "drop", Drop);
        _c.Ok("rule", "add", "drop", "crm_*.csv", "src_csv", "--topic-prefix", "crm_", "--priority", "1");
        _c.Ok("rule", "add", "drop", "*.csv", "src_csv");
        string crm = Path.Combine(Drop, "crm_a.csv"), plain = Path.Combine(Drop, "plain.csv");
        WriteCsv(crm, 2);
        WriteCsv(plain, 3, start: 10);
        Age(crm);
        Age(plain);
        StartDrain();
        Assert.Equal(["COMPLETED", "COMPLETED"], _c.Jobs().Select(j => j.State));

        // Version 1.1 upper-cases the words; a backfill re-parses each file under the prefix its output was made with.
        string v11 = _c.File("src_csv_11.py");
        File.WriteAllText(v11, """
            import csv
            name = "src_csv"
            version = "1.1"

            def parse(path):
                with open(path, newline="") as f:
                    rows = [{"n": int(r["n"]), "word": r["word"].upper()} for r in csv.DictReader(f)]
                from casparian import Output
                yield Output("csv_rows", rows)
            """);
        _c.Ok("parser", "register", v11);
        Assert.Equal($"would queue 2 source(s) whose current output of src_csv came from another version for src_csv 1.1 (dry run: nothing queued)\n  {crm}\n  {plain}\n",
            _c.Ok("parser", "backfill", "src_csv", "--dry-run").Stdout);
        Assert.StartsWith("queued 2 source(s) whose current output of src_csv came from another version for src_csv 1.1 (jobs 3-4)", _c.Ok("parser", "backfill", "src_csv").Stdout);
        // While they wait, each is pending under its own prefix: nothing more to queue.
        Assert.StartsWith("queued 0 source(s) whose current output of src_csv came from another version for src_csv 1.1; 2 more already queued or running",
            _c.Ok("parser", "backfill", "src_csv").Stdout);
        StartDrain();
        Assert.Equal(["COMPLETED", "COMPLETED", "COMPLETED", "COMPLETED"], _c.Jobs().Select(j => j.State));

        var a = ParquetTable.Read(ParquetOf("src_csv", "crm_csv_rows", crm));
        Assert.Equal([0L, 1L], a.Columns["n"]);
        Assert.Equal(["W0", "W1"], a.Columns["word"]);
        var b = ParquetTable.Read(ParquetOf("src_csv", "csv_rows", plain));
        Assert.Equal([10L, 11L, 12L], b.Columns["n"]);
        Assert.Equal(["W10", "W11", "W12"], b.Columns["word"]);
        Assert.False(File.Exists(ParquetOf("src_csv", "csv_rows", crm)));
        Assert.False(File.Exists(ParquetOf("src_csv", "crm_csv_rows", plain)));
        using var store = JobStores.Open(Defaults.Store(_c.Db) with { Create = false });
        Assert.Equal(("1.1", "crm_"), (store.GetOutput("src_csv", crm)!.ParserVersion, store.GetOutput("src_csv", crm)!.TopicPrefix));
        Assert.Equal(("1.1", ""), (store.GetOutput("src_csv", plain)!.ParserVersion, store.GetOutput("src_csv", plain)!.TopicPrefix));
    }

    /// <summary>A parser whose topic `sales` has an int64 `code` under a discard_row contract; <paramref name="fixedCodes"/> strips the letters from codes like X-12.</summary>
    private string MessyParser(string version, bool fixedCodes) => WriteParser($"messy_{version}.py", $$$"""
        import csv
        import re
        from casparian import Output

        name = "messy"
        version = "{{{version}}}"

        TOPICS = {"sales": {"schema": {"id": "int64", "code": "int64", "note": "string?"}, "contract": "discard_row", "max_quarantine": 0.5}}


        def parse(path):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            if {{{(fixedCodes ? "True" : "False")}}}:
                for r in rows:
                    r["code"] = re.sub(r"\D", "", r["code"])
            yield Output("sales", rows)
        """);

    private string WriteParser(string name, string source)
    {
        string path = _c.File(name);
        File.WriteAllText(path, source);
        return path;
    }

    [Fact]
    public void Sources_QuarantineReplayOfAFileRoutedUnderAPrefix_ReplaysIntoThePrefixedTopic()
    {
        _c.Ok("parser", "register", MessyParser("1.0", fixedCodes: false));
        Directory.CreateDirectory(Drop);
        _c.Ok("source", "add", "drop", Drop);
        _c.Ok("rule", "add", "drop", "*.csv", "messy", "--topic-prefix", "crm_");
        string input = Path.Combine(Drop, "messy.csv");
        File.WriteAllText(input, "id,code,note\n1,12,a\n2,X-12,b\n3,7,c\n4,Y-9,d\n5,30,e\n");
        Age(input);
        StartDrain();
        Assert.Equal(["COMPLETED"], _c.Jobs().Select(j => j.State));
        Assert.Equal([1L, 3L, 5L], ParquetTable.Read(ParquetOf("messy", "crm_sales", input)).Columns["id"]);
        Assert.Matches(@"1\s+messy 1\.0\s+crm_sales\s+2\s+type=2", _c.Ok("quarantine", "ls").Stdout);

        // 1.1 fixes the codes: the replay re-parses the file under crm_, so the rows land in crm_sales, not sales.
        _c.Ok("parser", "register", MessyParser("1.1", fixedCodes: true));
        Assert.StartsWith("queued 1 source(s) with quarantined rows for messy 1.1 (job 2)", _c.Ok("quarantine", "replay", "--parser", "messy").Stdout);
        Assert.Contains("crm_TOPIC (the routing rule's prefix)", _c.Ok("job", "show", "2").Stdout);
        StartDrain();
        Assert.Equal(["COMPLETED", "COMPLETED"], _c.Jobs().Select(j => j.State));
        var sales = ParquetTable.Read(ParquetOf("messy", "crm_sales", input));
        Assert.Equal([1L, 2L, 3L, 4L, 5L], sales.Columns["id"]);
        Assert.Equal([12L, 12L, 7L, 9L, 30L], sales.Columns["code"]);
        Assert.Equal([2L, 2L, 2L, 2L, 2L], sales.Columns["_job_id"]);
        Assert.False(Directory.Exists(Path.Combine(_c.Home, "output", "sales")));
        Assert.Equal("no quarantined rows\n", _c.Ok("quarantine", "ls").Stdout);
    }
}
