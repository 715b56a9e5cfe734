// Issue 14 through the native binary: schema contracts and quarantine. A messy CSV whose `code` column
// mixes integers and codes like X-12 goes through each contract; the topic and its quarantine are read
// back value by value. A cluster (sentinel + worker over a real SQLite store) shows the store's side:
// `quarantine ls/show/replay`, and a second file whose column type drifted under evolve.
using Xunit;

namespace Casparian.Tests;

public sealed class ContractTests : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(120);
    private readonly Cluster _c = new();

    public void Dispose() => _c.Dispose();

    // id, code, note: rows 1 and 3 (0-based) carry codes that are not integers.
    private const string MessyCsv = "id,code,note\n1,12,a\n2,X-12,b\n3,7,c\n4,Y-9,d\n5,30,e\n";

    private static string Parser(string version, string topics, bool fixedCodes = false) => $$"""
        import csv
        import re

        name = "messy"
        version = "{{version}}"

        TOPICS = {{topics}}


        def parse(path):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            {{(fixedCodes ? "for r in rows:\n        r[\"code\"] = re.sub(r\"\\D\", \"\", r[\"code\"])" : "pass")}}
            yield Output("sales", rows)

        """;

    private static string Declared(string contract, string code = "int64", string extra = "") =>
        $$$"""{"sales": {"schema": {"id": "int64", "code": "{{{code}}}", "note": "string?"}, "contract": "{{{contract}}}"{{{extra}}}}}""";

    private string WriteParser(string version, string topics, bool fixedCodes = false)
    {
        string dir = _c.File($"messy-{version}");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "parser.py"), Parser(version, topics, fixedCodes));
        return dir;
    }

    private string WriteInput(string name, string text)
    {
        Directory.CreateDirectory(_c.Inputs);
        string path = Path.Combine(_c.Inputs, name);
        File.WriteAllText(path, text);
        return path;
    }

    private ProcessResult Run(string parser, string input, string output) =>
        _c.Cli("run", parser, input, "--output", output);

    private static ParquetTable Single(string dir)
    {
        var files = Directory.GetFiles(dir, "*.parquet");
        Assert.True(files.Length == 1, $"{dir}: {files.Length} parquet files");
        return ParquetTable.Read(files[0]);
    }

    [Fact]
    public void Contract_DiscardRow_WritesTheIntegerRows_QuarantinesTheOthersWithReasons_AndReplayAfterAFixClearsThem()
    {
        _c.Ok("parser", "register", WriteParser("1.0", Declared("discard_row", extra: ", \"max_quarantine\": 0.5")));
        string input = WriteInput("messy.csv", MessyCsv);
        _c.Ok("job", "add", "--parser", "messy", input);
        _c.StartSentinel();
        _c.StartWorker("w1");
        _c.WaitForJobs(1, Patience);
        Assert.Equal("COMPLETED", _c.Jobs()[0].State);

        var sales = Single(Path.Combine(_c.Output, "sales"));
        Assert.Equal([1L, 3L, 5L], sales.Columns["id"]);
        Assert.Equal([12L, 7L, 30L], sales.Columns["code"]);
        Assert.Equal(["a", "c", "e"], sales.Columns["note"]);
        Assert.Equal("int64", ArrowSchemas.Describe(sales.Schema.GetFieldByName("code").DataType));

        var q = Single(Path.Combine(_c.Output, "_quarantine", "sales"));
        Assert.Equal([1L, 1L], q.Columns["_job_id"]);
        Assert.Equal([input, input], q.Columns["_source"]);
        Assert.Equal([1L, 3L], q.Columns["_row"]);
        Assert.Equal(["code", "code"], q.Columns["_column"]);
        Assert.Equal(["type", "type"], q.Columns["_reason"]);
        Assert.Equal("\"X-12\" (utf8) is not an int64 for column 'code'", q.Columns["_message"][0]);
        Assert.Equal(["{\"id\":\"2\",\"code\":\"X-12\",\"note\":\"b\"}", "{\"id\":\"4\",\"code\":\"Y-9\",\"note\":\"d\"}"], q.Columns["_raw"]);

        Assert.Matches(@"1\s+COMPLETED\s+0\s+0\s+2\s+messy 1\.0", _c.Ok("jobs").Stdout);
        Assert.Contains("quarantine: 2 row(s) (casparian quarantine show 1)", _c.Ok("job", "show", "1").Stdout);
        Assert.Matches(@"1\s+messy 1\.0\s+sales\s+2\s+type=2\s+" + System.Text.RegularExpressions.Regex.Escape(input), _c.Ok("quarantine", "ls").Stdout);
        Assert.Equal("no quarantined rows\n", _c.Ok("quarantine", "ls", "--topic", "other").Stdout);
        var show = _c.Ok("quarantine", "show", "1").Stdout;
        Assert.Contains("2 quarantined row(s)", show);
        Assert.Contains("{\"id\":\"4\",\"code\":\"Y-9\",\"note\":\"d\"}", show);
        var json = _c.Ok("quarantine", "show", "1", "--json").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, json.Length);
        Assert.Contains("\"raw\":{\"id\":\"2\",\"code\":\"X-12\",\"note\":\"b\"}", json[0]);

        // Version 1.1 strips the letters: replay queues the source under it, and its commit supersedes the quarantine.
        _c.Ok("parser", "register", WriteParser("1.1", Declared("discard_row"), fixedCodes: true));
        Assert.StartsWith("queued 1 source(s) with quarantined rows for messy 1.1 (job 2)", _c.Ok("quarantine", "replay", "--parser", "messy").Stdout);
        _c.WaitForJobs(2, Patience);
        Assert.Equal("COMPLETED", _c.Jobs()[1].State);
        Assert.Equal("no quarantined rows\n", _c.Ok("quarantine", "ls").Stdout);
        Assert.Empty(Directory.GetFiles(Path.Combine(_c.Output, "_quarantine", "sales"), "*.parquet"));
        sales = Single(Path.Combine(_c.Output, "sales"));
        Assert.Equal([1L, 2L, 3L, 4L, 5L], sales.Columns["id"]);
        Assert.Equal([12L, 12L, 7L, 9L, 30L], sales.Columns["code"]);
        Assert.Equal([2L, 2L, 2L, 2L, 2L], sales.Columns["_job_id"]);
        Assert.StartsWith("no current job with quarantined rows matches", _c.Ok("quarantine", "replay", "1").Stdout);
    }

    [Fact]
    public void Contract_Freeze_FailsTheJobWithTheCountAndFirstViolations_AndWritesNothing()
    {
        string parser = WriteParser("1.0", Declared("freeze"));
        string input = WriteInput("messy.csv", MessyCsv);
        string output = _c.File("out");
        var r = Run(parser, input, output);
        Assert.Equal(3, r.ExitCode);
        Assert.Contains("topic 'sales' has contract freeze and a table broke its schema in 2 value(s), first row 1: \"X-12\" (utf8) is not an int64 for column 'code'; row 3: \"Y-9\"", r.Stderr);
        Assert.Empty(Directory.Exists(output) ? Directory.GetFiles(output, "*", SearchOption.AllDirectories) : []);
    }

    [Fact]
    public void Contract_DiscardValue_NullsTheCodes_AndQuarantinesThem()
    {
        string parser = WriteParser("1.0", Declared("discard_value", code: "int64?"));
        string input = WriteInput("messy.csv", MessyCsv);
        string output = _c.File("out");
        var r = Run(parser, input, output);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Matches(@"messy\.csv\s+sales\s+5\s+2\s+out/sales/messy\.parquet", r.Stdout);

        var sales = Single(Path.Combine(output, "sales"));
        Assert.Equal([1L, 2L, 3L, 4L, 5L], sales.Columns["id"]);
        Assert.Equal([12L, null, 7L, null, 30L], sales.Columns["code"]);
        var q = Single(Path.Combine(output, "_quarantine", "sales"));
        Assert.Equal([1L, 3L], q.Columns["_row"]);
        Assert.Equal(["code", "code"], q.Columns["_column"]);
        Assert.Equal(["type", "type"], q.Columns["_reason"]);
        Assert.Equal(["{\"id\":\"2\",\"code\":\"X-12\",\"note\":\"b\"}", "{\"id\":\"4\",\"code\":\"Y-9\",\"note\":\"d\"}"], q.Columns["_raw"]);

        // A rerun whose rows all pass removes the quarantine file of that name: what is there is current.
        File.WriteAllText(input, "id,code,note\n1,12,a\n");
        r = Run(parser, input, output);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Empty(Directory.GetFiles(Path.Combine(output, "_quarantine", "sales"), "*.parquet"));
    }

    [Fact]
    public void Contract_ThresholdBreach_FailsTheJob()
    {
        string parser = WriteParser("1.0", Declared("discard_row", extra: ", \"max_quarantine\": 0.2"));
        string input = WriteInput("messy.csv", MessyCsv);
        string output = _c.File("out");
        var r = Run(parser, input, output);
        Assert.Equal(3, r.ExitCode);
        Assert.Contains("topic 'sales' quarantined 2 of 5 rows (type:2), more than its max_quarantine of 0.2", r.Stderr);
        Assert.Empty(Directory.GetFiles(output, "*.parquet", SearchOption.AllDirectories));

        // The per-job row cap is a setting too.
        File.WriteAllText(_c.File("casparian.toml"), "max_quarantine_rows = 1\n");
        r = _c.Cli("run", WriteParser("1.1", Declared("discard_row")), input, "--output", output);
        Assert.Equal(3, r.ExitCode);
        Assert.Contains("2 rows quarantined (last in topic 'sales'), over the cap of 1 per job (max_quarantine_rows)", r.Stderr);
    }

    [Theory]
    // A type outside the list.
    [InlineData("""{"sales": {"schema": {"id": "int32"}}}""", "column 'id' has unknown type 'int32'; types are int64, float64")]
    // A key a topic does not take.
    [InlineData("""{"sales": {"schema": {"id": "int64"}, "contrat": "freeze"}}""", "topic 'sales': unknown key 'contrat'")]
    // A mode that is not one of the four.
    [InlineData("""{"sales": {"schema": {"id": "int64"}, "contract": "strict"}}""", "contract 'strict' is not one of evolve, freeze, discard_row, discard_value")]
    // A decimal beyond 38 digits.
    [InlineData("""{"sales": {"schema": {"x": "decimal(40,2)"}}}""", "column 'x' has unknown type 'decimal(40,2)'")]
    // A fraction above 1.
    [InlineData("""{"sales": {"schema": {"id": "int64"}, "max_quarantine": 5}}""", "max_quarantine 5 is not a fraction from 0 to 1")]
    // Enforcement needs something to enforce.
    [InlineData("""{"sales": {"contract": "freeze"}}""", "contract 'freeze' needs a \"schema\" to enforce")]
    public void Contract_Register_RefusesABadDeclaration_InOneLine(string topics, string expected)
    {
        var r = _c.Cli("parser", "register", WriteParser("1.0", topics));
        Assert.Equal(3, r.ExitCode);
        var lines = r.Stderr.Trim().Split('\n');
        Assert.Single(lines);
        Assert.Contains(expected, lines[0]);
        Assert.Contains("parser.py:7: TOPICS:", lines[0]);
    }

    [Fact]
    public void Contract_DriftUnderEvolve_FailsTheSecondJob_NamingTheColumnAndBothTypes()
    {
        // No schema: codes become int64 when a file's are all digits, else text; the topic is evolve.
        string dir = _c.File("drift");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "parser.py"), """
            import csv

            name = "drift"
            version = "1.0"


            def parse(path):
                with open(path, newline="") as f:
                    rows = list(csv.DictReader(f))
                if all(r["code"].isdigit() for r in rows):
                    for r in rows:
                        r["code"] = int(r["code"])
                yield Output("sales", rows)

            """);
        _c.Ok("parser", "register", dir);
        _c.StartSentinel();
        _c.StartWorker("w1");
        _c.Ok("job", "add", "--parser", "drift", WriteInput("a.csv", "id,code\n1,12\n2,7\n"));
        _c.WaitForJobs(1, Patience);
        Assert.Equal("COMPLETED", _c.Jobs()[0].State);
        Assert.Matches(@"topic sales: schema version 1 \(since job 1, drift,", _c.Ok("topic", "show", "sales").Stdout);

        _c.Ok("job", "add", "--parser", "drift", WriteInput("b.csv", MessyCsv));
        _c.WaitForJobs(2, Patience);
        var second = _c.Jobs()[1];
        Assert.Equal("FAILED", second.State);
        Assert.Contains("topic 'sales' column 'code' is utf8 in this job but int64 in the topic's current schema (version 1)", second.Error);
        Assert.Single(Directory.GetFiles(Path.Combine(_c.Output, "sales"), "*.parquet"));
        var show = _c.Ok("topic", "show", "sales").Stdout;
        Assert.Contains("v1", show);
        Assert.DoesNotContain("v2", show);
    }
}
