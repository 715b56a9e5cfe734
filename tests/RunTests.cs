// `casparian run` through the native binary: what a parser author sees.
using Xunit;

namespace Casparian.Tests;

public sealed class RunTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private ProcessResult Run(params string[] args) => RunWith(null, args);

    private ProcessResult RunWith(Dictionary<string, string?>? env, params string[] args)
    {
        var environment = new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _dir.File("home"), ["VIRTUAL_ENV"] = null };
        if (env is not null) foreach (var (k, v) in env) environment[k] = v;
        return Proc.Run(Repo.Binary, ["run", .. args], TimeSpan.FromMinutes(3), workingDirectory: _dir.Path, environment: environment);
    }

    private string Write(string name, string text)
    {
        string path = _dir.File(name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
        return path;
    }

    private const string CsvParser = """
        import csv
        name = "people"
        def parse(path):
            rows = list(csv.DictReader(open(path)))
            print(f"read {len(rows)} rows from {path}")
            return {"name": [r["name"] for r in rows], "age": [int(r["age"]) for r in rows]}
        """;

    [Fact]
    public void Run_OneFile_ShowsParserOutputLiveAndWritesParquet()
    {
        Write("p.py", CsvParser);
        string input = Write("people.csv", "name,age\nAna,31\nBo,7\n");
        var r = Run("p.py", "people.csv");

        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains($"read 2 rows from {input}", r.Stdout);
        // The summary: file, topic, rows, output path, time.
        Assert.Matches(@"people\.csv\s+output\s+2\s+output/output/people\.parquet\s+\d+\.\d\d s", r.Stdout);
        Assert.Contains("1 of 1 file(s) succeeded", r.Stdout);
        var t = ParquetTable.Read(_dir.File("output/output/people.parquet"));
        Assert.Equal(["Ana", "Bo"], t.Columns["name"]);
        Assert.Equal([31L, 7L], t.Columns["age"]);
    }

    [Fact]
    public void Run_WhatIf_ListsFilesTopicsSinksAndInterpreter_AndRunsNothing()
    {
        Write("p.py", CsvParser.Replace("def parse(path):", "TOPICS = {\"people\": {\"sink\": \"parquet://crm/people\"}}\ndef parse(path):", StringComparison.Ordinal));
        Write("casparian.toml", "[topics.audit]\nmode = \"replace\"\n");
        string a = Write("in/a.csv", "name,age\nAna,31\n");
        string b = Write("in/sub/b.csv", "name,age\nBo,7\n");
        var r = Run("p.py", "in", "--whatif");

        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains($"parser people ({_dir.File("p.py")})", r.Stdout);
        Assert.Matches(@"(?m)^interpreter /\S+$", r.Stdout);
        Assert.Contains($"output under {_dir.File("output")}", r.Stdout);
        Assert.Contains($"2 file(s):\n  {a} -> {{topic}}/a.parquet\n  {b} -> {{topic}}/sub_b.parquet\n", r.Stdout);
        Assert.Matches(@"people +parquet://crm/people +append +parser", r.Stdout);
        Assert.Matches(@"audit +parquet://audit +replace +config \S+casparian.toml:1", r.Stdout);
        Assert.EndsWith("what if: nothing was run and nothing written\n", r.Stdout);
        Assert.False(Directory.Exists(_dir.File("output")));
        Assert.False(Directory.Exists(_dir.File("home/lib")), "--whatif installed the native Parquet library");
        Assert.DoesNotContain("read 1 rows", r.Stdout);
    }

    [Fact]
    public void Run_Folder_EveryFileRunsAndOneFailureFailsTheRun()
    {
        Write("p.py", CsvParser);
        Write("in/a.csv", "name,age\nAna,31\n");
        Write("in/b.csv", "name,age\nBo,seven\n");
        Write("in/c.csv", "name,age\nCy,40\nDi,41\n");
        var r = Run("p.py", "in", "--output", "out");

        Assert.Equal(1, r.ExitCode);
        Assert.Contains("2 of 3 file(s) succeeded", r.Stdout);
        Assert.Matches(@"in/b\.csv\s+FAILED", r.Stdout);
        Assert.Contains($"error: parser people on {_dir.File("in/b.csv")}: ", r.Stderr);
        Assert.Contains("invalid literal for int() with base 10: 'seven'", r.Stderr);
        Assert.Equal(["Ana"], ParquetTable.Read(_dir.File("out/output/a.parquet")).Columns["name"]);
        Assert.Equal(2, ParquetTable.Read(_dir.File("out/output/c.parquet")).Rows);
        Assert.False(File.Exists(_dir.File("out/output/b.parquet")));
        // Several files at once: each line of parser output names its file.
        Assert.Contains("[a.csv] read 1 rows", r.Stdout);
    }

    public static TheoryData<string, string> BadParsers => new()
    {
        // Python cannot compile it.
        { "def parse(path)\n    return {}\n", "syntax error" },
        // Neither parse() nor Handler.
        { "x = 1\n", "defines neither parse(path) nor class Handler" },
        // A return value that is not a table.
        { "def parse(path):\n    return 42\n", "int" },
        // Columns of unequal length.
        { "def parse(path):\n    return {'a': [1, 2], 'b': [1]}\n", "length" },
        // A topic name outside [a-z][a-z0-9_]*.
        { "from casparian import Output\ndef parse(path):\n    return Output('Bad-Topic', {'a': [1]})\n", "Bad-Topic" },
    };

    [Theory]
    [MemberData(nameof(BadParsers))]
    public void Run_BadParser_OneClearLinePerFileAndExit1(string source, string cause)
    {
        Write("bad.py", source);
        Write("x.csv", "a\n1\n");
        var r = Run("bad.py", "x.csv");
        Assert.Equal(1, r.ExitCode);
        string line = Assert.Single(r.Stderr.Split('\n'), l => l.StartsWith("error: "));
        Assert.StartsWith($"error: parser bad on {_dir.File("x.csv")}: ", line);
        Assert.Contains(cause, line, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void Run_MissingParserOrInput_IsBadInput()
    {
        Write("p.py", CsvParser);
        var noParser = Run("nope.py", "x.csv");
        Assert.Equal(3, noParser.ExitCode);
        Assert.Contains("nope.py", noParser.Stderr);
        var noInput = Run("p.py", "missing.csv");
        Assert.Equal(3, noInput.ExitCode);
        Assert.Equal($"error: input {_dir.File("missing.csv")} does not exist", noInput.Stderr.Trim());
        Assert.Equal(2, Run("p.py").ExitCode);
    }

    [Fact]
    public void Run_SchemaMismatch_IsTheUsersToFixAndExits3()
    {
        // Two tables for one topic whose column 'a' is int64, then utf8: the output refuses the second.
        Write("p.py", "def parse(path):\n    yield {'a': [1, 2]}\n    yield {'a': ['x']}\n");
        Write("x.csv", "\n");
        var r = Run("p.py", "x.csv");
        Assert.True(r.ExitCode == 3, r.ToString());
        string line = Assert.Single(r.Stderr.Split('\n'), l => l.StartsWith("error: "));
        Assert.StartsWith($"error: parser p on {_dir.File("x.csv")}: job 1: topic 'output' got a table whose schema differs", line);
        Assert.Contains("column 'a' is int64 in the topic but utf8 in this table", line);
        Assert.False(File.Exists(_dir.File("output/output/x.parquet")));
    }

    [Fact]
    public void Run_TopicFlag_WritesOnlyThatTopic()
    {
        Write("p.py", "from casparian import Output\ndef parse(path):\n    yield Output('keep', {'a': [1, 2]})\n    yield Output('skip', {'b': [3]})\n");
        Write("x.csv", "\n");
        var r = Run("p.py", "x.csv", "--topic", "keep");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(2, ParquetTable.Read(_dir.File("output/keep/x.parquet")).Rows);
        Assert.False(Directory.Exists(_dir.File("output/skip")));
        Assert.Matches(@"skip\s+1\s+\(not written: --topic\)", r.Stdout);
    }

    [Fact]
    public void Run_OneFile_PassesStdinThrough()
    {
        // What breakpoint() needs: the parser reads the terminal.
        Write("p.py", "def parse(path):\n    answer = input()\n    return {'answer': [answer]}\n");
        Write("x.csv", "\n");
        var r = Proc.Run(Repo.Binary, ["run", "p.py", "x.csv"], TimeSpan.FromMinutes(1), _dir.Path,
            new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _dir.File("home"), ["VIRTUAL_ENV"] = null }, stdin: "forty-two\n");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(["forty-two"], ParquetTable.Read(_dir.File("output/output/x.parquet")).Columns["answer"]);
    }

    [Fact]
    public void Run_Interpreter_VirtualEnvThenParserDotVenv()
    {
        // Two bare environments, each with a module saying which it is.
        string MakeVenv(string dir, string marker)
        {
            var r = Proc.Run(Guest.Python, ["-m", "venv", "--without-pip", dir], TimeSpan.FromMinutes(2));
            Assert.True(r.ExitCode == 0, r.ToString());
            string site = Directory.GetDirectories(Path.Combine(dir, "lib")).Single();
            File.WriteAllText(Path.Combine(site, "site-packages", "which_env.py"), $"NAME = '{marker}'\n");
            return dir;
        }
        Write("parser/parser.py", "import which_env\ndef parse(path):\n    return {'env': [which_env.NAME]}\n");
        MakeVenv(_dir.File("parser/.venv"), "dotvenv");
        string active = MakeVenv(_dir.File("active"), "virtualenv");
        Write("x.csv", "\n");

        var viaDotVenv = Run("parser", "x.csv", "--output", "a");
        Assert.True(viaDotVenv.ExitCode == 0, viaDotVenv.ToString());
        Assert.Equal(["dotvenv"], ParquetTable.Read(_dir.File("a/output/x.parquet")).Columns["env"]);

        var viaVirtualEnv = RunWith(new() { ["VIRTUAL_ENV"] = active }, "parser", "x.csv", "--output", "b");
        Assert.True(viaVirtualEnv.ExitCode == 0, viaVirtualEnv.ToString());
        Assert.Equal(["virtualenv"], ParquetTable.Read(_dir.File("b/output/x.parquet")).Columns["env"]);
    }

    [Theory]
    [InlineData("sales_csv", "sales", "sales", 15, "sales_rejects", 4)]
    [InlineData("app_logs", "logs", "events", 9, "log_errors", 2)]
    [InlineData("sensor_readings", "sensors", "readings", 8, "stations", 2)]
    public void Run_DemoParsers_ProduceTheirTables(string parser, string data, string topic, int rows, string second, int secondRows)
    {
        var r = Run(Path.Combine(Repo.Root, "demo", "parsers", parser), Path.Combine(Repo.Root, "demo", "data", data), "--output", "out");
        Assert.True(r.ExitCode == 0, r.ToString());
        long Total(string t) => Directory.GetFiles(_dir.File($"out/{t}"), "*.parquet").Sum(f => ParquetTable.Read(f).Rows);
        Assert.Equal(rows, Total(topic));
        Assert.Equal(secondRows, Total(second));
    }
}
