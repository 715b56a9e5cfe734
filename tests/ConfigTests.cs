using Xunit;

namespace Casparian.Tests;

public sealed class ConfigTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private static Args Flags(params string[] argv) => Args.Parse("config", "config", Config.Flags([.. Config.All]), argv);

    private static Dictionary<string, string?> Env(params (string Key, string Value)[] vars) =>
        vars.ToDictionary(v => v.Key, v => (string?)v.Value);

    private string WriteToml(string text, string name = "casparian.toml")
    {
        string path = _dir.File(name);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Config_Precedence_FlagOverEnvOverFileOverDefault()
    {
        WriteToml("slots = 3\nretry_limit = 7\nheartbeat_timeout = 45\n");
        var env = Env(("CASPARIAN_SLOTS", "5"), ("CASPARIAN_RETRY_LIMIT", "9"));
        var c = Config.Load(Flags("--slots", "2"), env, _dir.Path);

        Assert.Equal(2, c.Get(Config.Slots));
        Assert.Equal(SettingSource.Flag, c.Describe(Config.Slots).Source);
        Assert.Equal(9, c.Get(Config.RetryLimit));
        Assert.Equal(SettingSource.Environment, c.Describe(Config.RetryLimit).Source);
        Assert.Equal(TimeSpan.FromSeconds(45), c.Get(Config.HeartbeatTimeout));
        Assert.Equal(SettingSource.File, c.Describe(Config.HeartbeatTimeout).Source);
        Assert.Equal($"{_dir.File("casparian.toml")}:3", c.Describe(Config.HeartbeatTimeout).Where);
        Assert.Equal(TimeSpan.FromSeconds(30), c.Get(Config.ConnectTimeout));
        Assert.Equal(SettingSource.Default, c.Describe(Config.ConnectTimeout).Source);
    }

    [Fact]
    public void Config_HomeDefaults_FollowHome()
    {
        string home = Path.Combine(_dir.Path, "h");
        var c = Config.Load(Flags(), Env(("CASPARIAN_HOME", home)), _dir.Path);
        Assert.Equal(home, c.HomeDir);
        Assert.Equal(Path.Combine(home, "casparian.db"), c.Get(Config.Db));
        Assert.Equal(Path.Combine(home, "output"), c.Get(Config.Output));
        Assert.Equal(Path.Combine(home, "venvs"), c.Get(Config.Venvs));
    }

    [Fact]
    public void Config_File_FoundInHomeWhenNotInWorkingDirectory()
    {
        string home = Path.Combine(_dir.Path, "h");
        Directory.CreateDirectory(home);
        File.WriteAllText(Path.Combine(home, "casparian.toml"), "slots = 11\n");
        string cwd = Path.Combine(_dir.Path, "elsewhere");
        Directory.CreateDirectory(cwd);
        var c = Config.Load(Flags(), Env(("CASPARIAN_HOME", home)), cwd);
        Assert.Equal(11, c.Get(Config.Slots));
        Assert.Equal(Path.Combine(home, "casparian.toml"), c.FilePath);
    }

    [Fact]
    public void Config_ExplicitFile_WinsOverWorkingDirectoryFile()
    {
        WriteToml("slots = 3\n");
        string other = WriteToml("slots = 4\n", "other.toml");
        Assert.Equal(4, Config.Load(Flags("--config", other), Env(), _dir.Path).Get(Config.Slots));
    }

    [Fact]
    public void Config_RelativePaths_ResolveAgainstWhereTheyWereWritten()
    {
        string sub = Path.Combine(_dir.Path, "conf");
        Directory.CreateDirectory(sub);
        string file = Path.Combine(sub, "c.toml");
        File.WriteAllText(file, "output = \"out\"\nvenvs = '~/v'\n");
        var c = Config.Load(Flags("--config", file, "--db", "x.db"), Env(), _dir.Path);
        Assert.Equal(Path.Combine(sub, "out"), c.Get(Config.Output));
        Assert.Equal(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), "v"), c.Get(Config.Venvs));
        Assert.Equal(Path.Combine(_dir.Path, "x.db"), c.Get(Config.Db));
    }

    [Fact]
    public void Config_Values_ParseUnitsListsAndBooleans()
    {
        WriteToml("""
            # every kind of value
            venv_budget = "2GB"        # size with a unit
            log_limit = 1_048_576
            job_timeout = "5m"
            idle_timeout = 0.5
            lineage = false
            allowed_roots = ["/data/a", "/data/b"]
            bind = "tcp://0.0.0.0:7000"
            insecure = true
            """);
        var c = Config.Load(Flags(), Env(), _dir.Path);
        Assert.Equal(2L << 30, c.Get(Config.VenvBudget));
        Assert.Equal(1L << 20, c.Get(Config.LogLimit));
        Assert.Equal(TimeSpan.FromMinutes(5), c.Get(Config.JobTimeout));
        Assert.Equal(TimeSpan.FromMilliseconds(500), c.Get(Config.IdleTimeout));
        Assert.False(c.Get(Config.Lineage));
        Assert.Equal(["/data/a", "/data/b"], c.Get(Config.AllowedRoots));
        Assert.Equal("tcp://0.0.0.0:7000", c.Get(Config.Bind));
        Assert.True(c.Get(Config.Insecure));
    }

    public static TheoryData<string, string> BadFiles => new()
    {
        // A typo in a key: named, with the closest known key suggested.
        { "slot = 4\n", "line 1: unknown key 'slot' (did you mean 'slots'?)" },
        // A value of the wrong kind.
        { "\nslots = \"four\"\n", "bad value 'four' for key 'slots' in {file} line 2: expected an integer from 1 to 1024" },
        // Out of range.
        { "slots = 0\n", "bad value '0' for key 'slots' in {file} line 1: expected an integer from 1 to 1024" },
        // A bare word where a string needs quotes.
        { "bind = tcp://x:1\n", "line 1: bad value for 'bind': 'tcp://x:1' is not a TOML value (strings need quotes)" },
        // An address without a scheme.
        { "bind = \"localhost:5555\"\n", "expected tcp://HOST:PORT" },
        // ipc:// under NetMQ is a loopback TCP port any local user can join: refused, saying so.
        { "bind = \"ipc:///tmp/c.sock\"\n", "ipc:// is refused: NetMQ implements it as a loopback TCP port any local user can join" },
        // A sentinel key that is not 40 Z85 characters.
        { "sentinel_key = \"abc\"\n", "expected a Z85 CURVE public key (40 characters" },
        // A TOML table: settings are flat.
        { "[worker]\nslots = 2\n", "line 1: tables such as [worker] are not used" },
        // The same key twice.
        { "slots = 1\nslots = 2\n", "line 2: key 'slots' is set twice" },
        // A compression codec Parquet output does not know (issue 12).
        { "compression = \"brotli2\"\n", "bad value 'brotli2' for key 'compression' in {file} line 1: expected none, snappy, zstd, lz4 or gzip" },
        // A duration that is not one.
        { "job_timeout = \"soon\"\n", "expected a positive duration" },
        // A gather window past its cap: a sentinel's turn must not wait long (0 turns it off).
        { "gather_window = \"1s\"\n", "bad value '1s' for key 'gather_window' in {file} line 1: expected a duration from 0 (off) to 100ms" },
        // An unterminated string (Tomlyn's message, on the key's line).
        { "python = \"python3\n", "line 1: bad value for 'python': Invalid newline in a string" },
        // A table as a setting's value.
        { "\nslots = {n = 1}\n", "bad value {n = 1} for key 'slots' in {file} line 2: expected an integer" },
        // A date, which no setting takes.
        { "job_timeout = 1979-05-27\n", "line 1: bad value for 'job_timeout': dates and times are not setting values" },
        // An array of arrays.
        { "allowed_roots = [[\"/a\"]]\n", "line 1: bad value for 'allowed_roots': an array may hold strings, numbers and booleans only" },
        // A dotted key at the top level is not a setting.
        { "worker.slots = 2\n", "line 1: unknown key 'worker.slots'" },
        // An array of tables nobody registered.
        { "[[inputs]]\npath = \"/x\"\n", "line 1: tables such as [[inputs]] are not used" },
    };

    [Theory]
    [MemberData(nameof(BadFiles))]
    public void Config_BadFile_NamesFileKeyAndCause(string toml, string expected)
    {
        string file = WriteToml(toml);
        var e = Assert.Throws<InputException>(() => Config.Load(Flags(), Env(), _dir.Path));
        Assert.Contains(expected.Replace("{file}", file), e.Message);
        Assert.Contains(file, e.Message);
        Assert.Equal(ExitCode.BadInput, e.Code);
    }

    [Fact]
    public void Config_File_MultiLineArraysEscapesAndFullTomlSyntax()
    {
        // TOML 1.1 that the old hand-written subset refused: a multi-line array with a trailing comma
        // and comments, \U and \u escapes, a multi-line string, hex and underscored integers.
        WriteToml(""""
            allowed_roots = [
                "/data/a",   # the first
                '/data/b',
            ]
            python = "/opt/py\U0001F600/bin/py\u00e9"
            worker_id = """
            w1"""
            slots = 0x10
            log_limit = 2_097_152
            """");
        var c = Config.Load(Flags(), Env(), _dir.Path);
        Assert.Equal(["/data/a", "/data/b"], c.Get(Config.AllowedRoots));
        Assert.Equal("/opt/py\U0001F600/bin/py\u00e9", c.Get(Config.Python));
        Assert.Equal("w1", c.Get(Config.WorkerId));
        Assert.Equal(16, c.Get(Config.Slots));
        Assert.Equal(2L << 20, c.Get(Config.LogLimit));
        Assert.Equal($"{_dir.File("casparian.toml")}:5", c.Describe(Config.Python).Where);
    }

    [Fact]
    public void ConfigFile_RegisteredTables_AreHandedToTheirOwnerInFileOrder()
    {
        string file = WriteToml("""
            slots = 2
            [topics.sales]
            sink = "parquet://sales"
            schema = {id = "int64", amount = "float64?"}
            [[sources]]
            path = "/in/a"
            [[sources]]
            path = "/in/b"
            tags.kind = "csv"
            """);
        var read = ConfigFile.Read(file, ["topics", "sources"]);
        Assert.Equal(("2", 1), (read.Values["slots"].Value.Text, read.Values["slots"].Line));
        Assert.Equal([("topics.sales", 2, false), ("sources", 5, true), ("sources", 7, true)],
            read.Tables.Select(t => (t.Name, t.Line, t.ArrayItem)));
        var sales = read.Tables[0];
        Assert.Equal("topics", sales.Root);
        Assert.Equal(("sink", "parquet://sales", 3), (sales.Entries[0].Key, sales.Entries[0].Value.Text, sales.Entries[0].Line));
        Assert.Equal([("id", "int64"), ("amount", "float64?")], sales.Entries[1].Value.Table!.Select(e => (e.Key, e.Value.Text)));
        Assert.Equal([("path", "/in/b"), ("tags.kind", "csv")], read.Tables[2].Entries.Select(e => (e.Key, e.Value.Text)));

        // The same file where only "topics" is registered: [[sources]] is an error naming it.
        var e = Assert.Throws<InputException>(() => ConfigFile.Read(file, ["topics"]));
        Assert.Equal($"config file {file} line 5: tables such as [[sources]] are not used; write settings as top-level keys (see 'casparian config'); known tables: topics", e.Message);
    }

    [Fact]
    public void Config_LinkSecurity_TokenHiddenAndInsecureIsASwitch()
    {
        string home = _dir.File("home");
        string token = new('7', 64);
        var c = Config.Load(Flags("--insecure"), Env(("CASPARIAN_HOME", home), ("CASPARIAN_TOKEN", token)), _dir.Path);
        Assert.True(c.Get(Config.Insecure));
        Assert.Equal(token, c.Get(Config.JoinToken));
        string rendered = c.Render();
        Assert.DoesNotContain(token, rendered);
        Assert.Contains("(set, hidden)", rendered);
        // --insecure leaves the worker without CURVE; the token still goes in IDENTIFY.
        var worker = Commands.WorkerOptions(c, "w", RoleLog.None);
        Assert.Equal((null, token), (worker.SentinelKey, worker.JoinToken));

        // A worker on the sentinel's home finds its public key and token there.
        var keys = SentinelKeys.LoadOrCreate(Path.Combine(home, "keys"));
        var local = Commands.WorkerOptions(Config.Load(Flags(), Env(("CASPARIAN_HOME", home)), _dir.Path), "w", RoleLog.None);
        Assert.Equal((keys.PublicKey, keys.JoinToken), (local.SentinelKey, local.JoinToken));
    }

    [Fact]
    public void Config_Options_CarryTheSettingsIntoEveryRole()
    {
        // The shell's mapping (Commands.Options.cs) is the only place option records are filled.
        WriteToml("retry_backoff_max = \"90s\"\nmessage_limit = \"8MB\"\nrow_group_rows = 1000\ncapabilities = [\"csv\", \"json\"]\nlink_message_limit = \"2MB\"\n");
        var c = Config.Load(Flags("--lock-timeout", "3s", "--poll-interval", "50ms", "--gather-window", "0", "--db", "postgresql://h/db"),
            Env(("CASPARIAN_BUILD_TIMEOUT", "2m"), ("CASPARIAN_HOME", _dir.File("home"))), _dir.Path);
        var sentinel = Commands.SentinelOptions(c, RoleLog.None, keys: null);
        Assert.Equal(2 << 20, sentinel.MessageLimit);
        Assert.Equal(2 << 20, Commands.WorkerOptions(c, "w", RoleLog.None).MessageLimit);
        Assert.Equal((TimeSpan.FromSeconds(90), TimeSpan.FromSeconds(3), "postgresql://h/db"),
            (sentinel.Store.RetryBackoffMax, sentinel.Store.LockTimeout, sentinel.Store.Db));
        Assert.Equal(TimeSpan.FromMilliseconds(50), sentinel.PollInterval);
        Assert.Equal(TimeSpan.Zero, sentinel.GatherWindow);
        Assert.Equal(8 << 20, Commands.BridgeOptions(c).MaxMessageBytes);
        Assert.Equal(1000, Commands.OutputOptions(c).RowGroupRows);
        Assert.Equal(["csv", "json"], Commands.WorkerOptions(c, "w", RoleLog.None).Capabilities);
        Assert.Equal(TimeSpan.FromMinutes(2), Commands.VenvOptions(c).BuildTimeout);
        Assert.Equal(Path.Combine(_dir.File("home"), "venvs"), Commands.VenvOptions(c).Root);
    }

    [Fact]
    public void Config_BadEnvironmentValue_NamesTheVariable()
    {
        var e = Assert.Throws<InputException>(() => Config.Load(Flags(), Env(("CASPARIAN_HEARTBEAT_TIMEOUT", "-3")), _dir.Path));
        Assert.StartsWith("bad value '-3' for environment variable CASPARIAN_HEARTBEAT_TIMEOUT: expected a positive duration", e.Message);
    }

    [Fact]
    public void Config_BadFlagValue_IsAUsageError()
    {
        var e = Assert.Throws<UsageException>(() => Config.Load(Flags("--venv-budget", "lots"), Env(), _dir.Path));
        Assert.StartsWith("bad value 'lots' for flag --venv-budget: expected a size", e.Message);
    }

    [Fact]
    public void Config_MissingExplicitFile_IsBadInput()
    {
        var e = Assert.Throws<InputException>(() => Config.Load(Flags("--config", "nope.toml"), Env(), _dir.Path));
        Assert.Equal($"config file {_dir.File("nope.toml")} does not exist (given by --config)", e.Message);
    }

    [Fact]
    public void Config_Render_RoundTripsThroughTheFileParser()
    {
        // What `casparian config` prints is itself a valid config file with the same values.
        WriteToml("allowed_roots = [\"/srv/data\"]\nlineage = false\nvenv_budget = \"3GB\"\n");
        var first = Config.Load(Flags(), Env(), _dir.Path);
        string rendered = first.Render();
        string copy = WriteToml(rendered, "rendered.toml");
        var second = Config.Load(Flags("--config", copy), Env(), _dir.Path);
        foreach (var s in Config.All)
            Assert.Equal(s.Format(first.Describe(s).Value), s.Format(second.Describe(s).Value));
    }

    [Fact]
    public void Config_Command_PrintsEffectiveValuesAndSources()
    {
        string home = Path.Combine(_dir.Path, "home");
        WriteToml("retry_limit = 6\n");
        var r = Proc.Run(Repo.Binary, ["config", "--slots", "3"], workingDirectory: _dir.Path,
            environment: new Dictionary<string, string?> { ["CASPARIAN_HOME"] = home, ["CASPARIAN_HEARTBEAT_TIMEOUT"] = "90s" });
        Assert.True(r.ExitCode == 0, r.ToString());
        string[] lines = r.Stdout.Split('\n');
        Assert.Contains(lines, l => l.StartsWith("slots ") && l.Contains("= 3 ") && l.EndsWith("# --slots"));
        Assert.Contains(lines, l => l.StartsWith("heartbeat_timeout ") && l.Contains("\"90s\"") && l.EndsWith("# CASPARIAN_HEARTBEAT_TIMEOUT"));
        Assert.Contains(lines, l => l.StartsWith("retry_limit ") && l.Contains("= 6 ") && l.EndsWith($"# {_dir.File("casparian.toml")}:1"));
        Assert.Contains(lines, l => l.StartsWith("db ") && l.Contains(Path.Combine(home, "casparian.db")) && l.EndsWith("# default"));
    }

    [Fact]
    public void Config_Command_TypoInFileExits3WithOneLine()
    {
        WriteToml("heartbeat_timout = 5\n");
        var r = Proc.Run(Repo.Binary, ["config"], workingDirectory: _dir.Path,
            environment: new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _dir.File("home") });
        Assert.Equal(3, r.ExitCode);
        Assert.Equal($"error: config file {_dir.File("casparian.toml")} line 1: unknown key 'heartbeat_timout' (did you mean 'heartbeat_timeout'?); known keys: "
            + string.Join(", ", Config.All.Select(s => s.Key)), r.Stderr.TrimEnd());
    }
}
