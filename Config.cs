// Layered settings, and the only place a default is written: every setting has one key, and its
// value comes from the first of
//   1. the command-line flag          --heartbeat-timeout 30
//   2. the environment                CASPARIAN_HEARTBEAT_TIMEOUT=30
//   3. the config file                heartbeat_timeout = 30
//      (--config FILE, else ./casparian.toml, else $CASPARIAN_HOME/casparian.toml)
//   4. the built-in default
// `casparian config` prints the effective value of each setting and where it came from. State under
// HOME that is not a setting of its own (shim, native library, parser bundles, logs, the worker id)
// is named here too. The config file itself is read by Config.File.cs; the option records are filled
// from these settings in Commands.Options.cs.
using System.Globalization;
using System.Text;

namespace Casparian;

internal enum SettingSource { Default, File, Environment, Flag }

/// <summary>
/// One setting. <see cref="Key"/> is the config-file key; the flag is <c>--key-with-dashes</c> and
/// the environment variable <c>CASPARIAN_KEY</c>. <see cref="Parse"/> turns text (or a config-file
/// array, for lists) into the typed value or returns an error phrased as "expected …".
/// </summary>
internal abstract class Setting(string key, string? metavar, string help)
{
    public string Key { get; } = key;
    /// <summary>Null for a switch: the flag alone means true.</summary>
    public string? Metavar { get; } = metavar;
    public string Help { get; } = help;
    /// <summary>Set only where the issue or the earlier system fixed another name (--token, CASPARIAN_TOKEN).</summary>
    public string FlagName { get; init; } = "--" + key.Replace('_', '-');
    public string EnvName { get; init; } = "CASPARIAN_" + key.ToUpperInvariant();
    public Flag Flag => new(FlagName, Metavar, Help);

    public abstract bool TryParse(ConfigValue raw, string home, out object? value, out string expected);
    public abstract object DefaultValue(Config config);
    public abstract string Format(object? value);
}

internal sealed class Setting<T>(string key, string? metavar, string help,
    Func<ConfigValue, string, (bool Ok, T Value, string Expected)> parse, Func<Config, T> fallback, Func<T, string>? format = null)
    : Setting(key, metavar, help)
{
    public override bool TryParse(ConfigValue raw, string home, out object? value, out string expected)
    {
        var (ok, v, exp) = parse(raw, home);
        value = v;
        expected = exp;
        return ok;
    }

    public override object DefaultValue(Config config) => fallback(config)!;

    public override string Format(object? value) => value is T t ? (format?.Invoke(t) ?? t.ToString() ?? "") : "";
}

internal readonly record struct Resolved(object Value, SettingSource Source, string Where);

internal sealed class Config
{
    // ---- the settings ------------------------------------------------------------------------

    public static readonly Setting<string> Home = new("home", "DIR", "state directory: store, environments, shim, logs, output",
        Parsers.Dir, _ => Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".casparian"));
    public static readonly Setting<string> Db = new("db", "PATH", "job store: an SQLite file, or postgresql://USER[:PASS]@HOST[:PORT]/DB shared by several sentinels",
        Parsers.Store, c => Path.Combine(c.HomeDir, "casparian.db"));
    public static readonly Setting<string> Bind = new("bind", "ADDR", "address the sentinel binds (tcp://HOST:PORT; PORT may be *)",
        Parsers.Address, _ => "tcp://127.0.0.1:5555");
    public static readonly Setting<string> Connect = new("connect", "ADDR", "sentinel address a worker connects to; several, ','-separated, are tried in turn (failover)",
        Parsers.AddressList, _ => "tcp://127.0.0.1:5555");
    public static readonly Setting<string> Output = new("output", "DIR", "root directory for Parquet output, or s3://BUCKET/PREFIX",
        Parsers.OutputRoot, c => Path.Combine(c.HomeDir, "output"));
    public static readonly Setting<IReadOnlyList<string>> AllowedRoots = new("allowed_roots", "DIRS",
        "absolute directories a sink's file:// uri may point into (':'-separated; TOML array)",
        Parsers.DirList, _ => [], v => string.Join(":", v));
    public static readonly Setting<bool> Lineage = new("lineage", "BOOL", "add _job_id and _file_version_id columns to every table",
        Parsers.Bool, _ => true, v => v ? "true" : "false");
    public static readonly Setting<string> Venvs = new("venvs", "DIR", "directory of content-addressed Python environments",
        Parsers.Dir, c => Path.Combine(c.HomeDir, "venvs"));
    public static readonly Setting<long> VenvBudget = new("venv_budget", "SIZE", "evict least-recently-used environments above this size (e.g. 10GB)",
        Parsers.Size, _ => 10L << 30, Parsers.FormatSize);
    public static readonly Setting<string> Wheelhouse = new("wheelhouse", "DIR", "local wheels for offline environment builds (pip --find-links)",
        Parsers.OptionalDir, _ => "");
    public static readonly Setting<string> Python = new("python", "CMD", "interpreter for parsers without an environment (a name on PATH or a path)",
        Parsers.Text, _ => "python3");
    public static readonly Setting<int> Slots = new("slots", "N", "jobs a worker runs at once",
        Parsers.Int(1, 1024), _ => Environment.ProcessorCount);
    public static readonly Setting<string> WorkerId = new("worker_id", "ID", "worker id (default: generated once and kept under HOME/worker)",
        Parsers.Text, _ => "");
    public static readonly Setting<TimeSpan> HeartbeatInterval = new("heartbeat_interval", "SECONDS", "how often a worker sends HEARTBEAT",
        Parsers.Duration, _ => TimeSpan.FromSeconds(5), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> HeartbeatTimeout = new("heartbeat_timeout", "SECONDS", "a worker silent this long is dropped and its jobs requeued",
        Parsers.Duration, _ => TimeSpan.FromSeconds(60), Parsers.FormatDuration);
    public static readonly Setting<int> RetryLimit = new("retry_limit", "N", "transient failures retried before a job is FAILED",
        Parsers.Int(0, 100), _ => 3);
    public static readonly Setting<TimeSpan> RetryBackoff = new("retry_backoff", "SECONDS", "first retry delay; doubles with each retry",
        Parsers.Duration, _ => TimeSpan.FromSeconds(2), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> RetryBackoffMax = new("retry_backoff_max", "SECONDS", "longest delay between retries",
        Parsers.Duration, _ => TimeSpan.FromMinutes(5), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> LockTimeout = new("lock_timeout", "SECONDS", "how long a store operation waits for another process's lock before it fails as busy",
        Parsers.Duration, _ => TimeSpan.FromSeconds(10), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> LeaseTtl = new("lease_ttl", "SECONDS", "a sentinel on a shared (PostgreSQL) store that has not renewed its lease this long is dead to the others, which take over its jobs",
        Parsers.Duration, _ => TimeSpan.FromSeconds(10), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> PollInterval = new("poll_interval", "SECONDS", "how often the sentinel asks the store for new jobs and cancellations",
        Parsers.Duration, _ => TimeSpan.FromMilliseconds(200), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> GatherWindow = new("gather_window", "SECONDS", "on a shared (PostgreSQL) store: how long a sentinel gathers more conclusions, while jobs are out, before the store round trip they share (0: none)",
        Parsers.DurationUpTo(TimeSpan.FromMilliseconds(100)), _ => TimeSpan.FromMilliseconds(1), Parsers.FormatDuration);
    public static readonly Setting<IReadOnlyList<string>> Capabilities = new("capabilities", "NAMES", "parsers a worker runs (','-separated; TOML array; * is any)",
        Parsers.NameList, _ => ["*"], v => string.Join(",", v));
    public static readonly Setting<TimeSpan> JobTimeout = new("job_timeout", "SECONDS", "total time a job may run before it is killed",
        Parsers.Duration, _ => TimeSpan.FromHours(1), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> DeadlineGrace = new("deadline_grace", "SECONDS", "the sentinel aborts a job still running job_timeout plus this long after dispatch, and requeues it if the worker does not answer within as long again",
        Parsers.Duration, _ => TimeSpan.FromSeconds(30), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> ConnectTimeout = new("connect_timeout", "SECONDS", "time for a parser process to connect back",
        Parsers.Duration, _ => TimeSpan.FromSeconds(30), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> IdleTimeout = new("idle_timeout", "SECONDS", "time a parser may stay silent before it is killed",
        Parsers.Duration, _ => TimeSpan.FromSeconds(60), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> ShutdownGrace = new("shutdown_grace", "SECONDS", "on SIGTERM, time running jobs get to finish before they are aborted",
        Parsers.Duration, _ => TimeSpan.FromSeconds(30), Parsers.FormatDuration);
    public static readonly Setting<long> LogLimit = new("log_limit", "SIZE", "per-job parser log cap (e.g. 10MB)",
        Parsers.Size, _ => 10L << 20, Parsers.FormatSize);
    public static readonly Setting<long> MessageLimit = new("message_limit", "SIZE", "largest table message a parser may send (a larger table must come in parts)",
        Parsers.SizeUpTo(1L << 30), _ => 100L << 20, Parsers.FormatSize);
    public static readonly Setting<TimeSpan> BuildTimeout = new("build_timeout", "SECONDS", "time one environment build may take before it is killed",
        Parsers.Duration, _ => TimeSpan.FromMinutes(15), Parsers.FormatDuration);
    public static readonly Setting<int> RowGroupRows = new("row_group_rows", "N", "most rows in one Parquet row group",
        Parsers.Int(1, int.MaxValue), _ => 1 << 20);
    public static readonly Setting<long> RowGroupSize = new("row_group_size", "SIZE", "most Arrow data in one Parquet row group: bounds the writer's memory per topic",
        Parsers.SizeUpTo(1L << 30), _ => 16L << 20, Parsers.FormatSize);
    public static readonly Setting<ParquetSharp.Compression> Compression = new("compression", "CODEC",
        "Parquet compression of topics that set none of their own: " + ParquetCodecs.Names + " (BENCHMARKS.md has the measurement behind the default)",
        Parsers.Codec, _ => ParquetSharp.Compression.Snappy, ParquetCodecs.Name);
    public static readonly Setting<string> S3Endpoint = new("s3_endpoint", "URL", "S3-compatible endpoint for s3:// sinks (http://HOST:PORT); empty: AWS S3 in s3_region",
        Parsers.Text, _ => "");
    public static readonly Setting<string> S3Region = new("s3_region", "REGION", "region s3:// requests are signed for",
        Parsers.Text, _ => "us-east-1");
    public static readonly Setting<bool> S3PathStyle = new("s3_path_style", "BOOL", "address buckets as ENDPOINT/BUCKET (most self-hosted S3 servers need it)",
        Parsers.Bool, _ => false, v => v ? "true" : "false");
    public static readonly Setting<long> S3MultipartThreshold = new("s3_multipart_threshold", "SIZE", "files above this size go to S3 as a multipart upload",
        Parsers.SizeUpTo(5L << 30), _ => 64L << 20, Parsers.FormatSize);
    public static readonly Setting<long> S3PartSize = new("s3_part_size", "SIZE", "size of one part of a multipart upload (5MB to 5GB)",
        Parsers.SizeBetween(5L << 20, 5L << 30), _ => 32L << 20, Parsers.FormatSize);
    public static readonly Setting<int> S3PartsInFlight = new("s3_parts_in_flight", "N", "parts of one multipart upload sent at once",
        Parsers.Int(1, 64), _ => 4);
    public static readonly Setting<long> MaxQuarantineRows = new("max_quarantine_rows", "N", "most rows one job may send to quarantine (all topics) before it fails",
        Parsers.Long(0, long.MaxValue), _ => 10_000);
    public static readonly Setting<double> MaxQuarantine = new("max_quarantine", "FRACTION", "fraction of a topic's rows a job may quarantine before it fails, unless the topic sets its own",
        Parsers.Fraction, _ => 0.5, v => v.ToString(CultureInfo.InvariantCulture));
    public static readonly Setting<int> WarmGuests = new("warm_guests", "N", "most warm parser processes (fork servers) a worker keeps; 0 starts every job cold",
        Parsers.Int(0, 256), _ => 8);
    public static readonly Setting<TimeSpan> WarmIdle = new("warm_idle", "SECONDS", "a warm parser process unused this long is stopped",
        Parsers.Duration, _ => TimeSpan.FromMinutes(10), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> SettleInterval = new("settle_interval", "SECONDS", "a new or changed file in a source is queued once its size and mtime have not changed for this long",
        Parsers.Duration, _ => TimeSpan.FromSeconds(2), Parsers.FormatDuration);
    public static readonly Setting<TimeSpan> RescanInterval = new("rescan_interval", "SECONDS", "every source is rescanned this often, whatever its file-change events say",
        Parsers.Duration, _ => TimeSpan.FromSeconds(30), Parsers.FormatDuration);
    public static readonly Setting<int> ScanFileLimit = new("scan_file_limit", "N", "most files one scan of a source takes; the rest wait, with a warning",
        Parsers.Int(1, 100_000_000), _ => 1_000_000);

    public static readonly Setting<bool> Insecure = new("insecure", null, "allow a plaintext tcp:// link (no CURVE); for debugging on a trusted network only",
        Parsers.Bool, _ => false, v => v ? "true" : "false");
    public static readonly Setting<string> SentinelKey = new("sentinel_key", "Z85", "the sentinel's CURVE public key, as `casparian keys` prints it (default: HOME/keys/sentinel.public when present)",
        Parsers.CurveKey, c => SentinelKeys.ReadPublicKey(c.KeysDir) ?? "");
    public static readonly Setting<string> JoinToken = new("join_token", "TOKEN", "the sentinel's join token, as `casparian keys` prints it (default: HOME/keys/join.token when present)",
        Parsers.Text, c => SentinelKeys.ReadJoinToken(c.KeysDir) ?? "", Parsers.Hidden) { FlagName = "--token", EnvName = "CASPARIAN_TOKEN" };
    public static readonly Setting<long> LinkLimit = new("link_message_limit", "SIZE", "largest message on the sentinel-worker link (a DISPATCH with its parser bundle, a DEPLOY); a peer sending more is disconnected",
        Parsers.SizeUpTo(1L << 30), _ => 64L << 20, Parsers.FormatSize);
    public static readonly Setting<string> Http = new("http", "HOST:PORT",
        "serve /metrics, /api and the dashboard here (port 0: a free one; off: none). sentinel: off unless set; start: " + StartHttp + " unless set",
        Parsers.HttpAddress, _ => "off");
    public static readonly Setting<bool> HttpInsecure = new("http_insecure", "BOOL", "allow a non-loopback http address (the status page has no authentication)",
        Parsers.Bool, _ => false, v => v ? "true" : "false");

    /// <summary>Where `start` serves its status page when <see cref="Http"/> is not set: loopback, a free port.</summary>
    public const string StartHttp = "127.0.0.1:0";

    public static readonly Setting[] All =
    [
        Home, Db, Bind, Connect, Output, AllowedRoots, Lineage, Venvs, VenvBudget, Wheelhouse, Python, Slots, WorkerId,
        HeartbeatInterval, HeartbeatTimeout, RetryLimit, RetryBackoff, RetryBackoffMax, LockTimeout, LeaseTtl, PollInterval, GatherWindow, Capabilities, JobTimeout,
        DeadlineGrace, ConnectTimeout, IdleTimeout, ShutdownGrace, LogLimit, MessageLimit, BuildTimeout, RowGroupRows, RowGroupSize, Compression,
        Insecure, SentinelKey, JoinToken, LinkLimit, Http, HttpInsecure,
        WarmGuests, WarmIdle, MaxQuarantineRows, MaxQuarantine,
        SettleInterval, RescanInterval, ScanFileLimit,
        S3Endpoint, S3Region, S3PathStyle, S3MultipartThreshold, S3PartSize, S3PartsInFlight,
    ];

    /// <summary>
    /// Table names a later layer owns in the config file ([topics.NAME], [[sources]], [[rules]] when
    /// they come): ConfigFile accepts them and <see cref="TablesOf"/> hands their contents to the owner.
    /// Any other table in the file is an error.
    /// </summary>
    public static readonly string[] Tables = [Topics.ConfigTable, Sources.SourcesTable, Sources.RulesTable];

    public static readonly Flag ConfigFlag = new("--config", "FILE", "config file (default ./casparian.toml, else HOME/casparian.toml)");

    /// <summary>The flags of a command that reads <paramref name="settings"/>: theirs plus --config and --home.</summary>
    public static Flag[] Flags(params Setting[] settings) =>
        [.. settings.Where(s => s != Home).Select(s => s.Flag), Home.Flag, ConfigFlag];

    // ---- resolution --------------------------------------------------------------------------

    private readonly Dictionary<string, Resolved> _values = new(StringComparer.Ordinal);
    private readonly Args? _args;
    private readonly IReadOnlyDictionary<string, string?> _env;
    private readonly ConfigFile? _file;
    private readonly string _workingDirectory;

    public string HomeDir { get; }

    // State under HOME that is not a setting of its own.
    /// <summary>The guest shim, written out of the binary on first use: {ShimDir}/{version}-{hash}/.</summary>
    public string ShimDir => Path.Combine(HomeDir, "shim");
    /// <summary>ParquetSharp's native library, written out of the AOT binary on first use: {LibDir}/{sha256[..16]}/ParquetSharpNative.so.</summary>
    public string LibDir => Path.Combine(HomeDir, "lib");
    /// <summary>Extracted parser bundles by source hash: {ParsersDir}/{source_hash}/.</summary>
    public string ParsersDir => Path.Combine(HomeDir, "parsers");
    /// <summary>Per-job guest logs, and `start`'s log.</summary>
    public string LogsDir => Path.Combine(HomeDir, "logs");
    /// <summary>The address of the status page a running `start` or `sentinel --http` serves (`casparian status` reads it).</summary>
    public string StatusUrlFile => Path.Combine(HomeDir, "status.url");
    /// <summary>Parquet files bound for s3:// sinks, written here before their upload, one directory per destination prefix.</summary>
    public string StagingDir => Path.Combine(HomeDir, "staging");
    /// <summary>The worker's persistent id.</summary>
    public string WorkerDir => Path.Combine(HomeDir, "worker");
    /// <summary>The sentinel's CURVE key pair and its tokens (Keys.cs).</summary>
    public string KeysDir => Path.Combine(HomeDir, "keys");

    /// <summary>The config file that was read, if any.</summary>
    public string? FilePath => _file?.Path;

    private Config(Args? args, IReadOnlyDictionary<string, string?> env, ConfigFile? file, string workingDirectory)
    {
        _args = args;
        _env = env;
        _file = file;
        _workingDirectory = workingDirectory;
        HomeDir = "";
        HomeDir = (string)Resolve(Home).Value;
    }

    /// <summary>Every setting at its default, with state under <paramref name="home"/>: no flags, no environment, no file (tests build options from it).</summary>
    public static Config Defaults(string home) =>
        new(null, new Dictionary<string, string?> { [Home.EnvName] = home }, null, home);

    /// <summary>Resolves settings for a command from its flags, the process environment and the config file.</summary>
    public static Config Load(Args args) => Load(args, ReadEnvironment(), Directory.GetCurrentDirectory());

    public static Config Load(Args? args, IReadOnlyDictionary<string, string?> env, string workingDirectory)
    {
        string? explicitFile = args?.Get(ConfigFlag.Name);
        ConfigFile? file;
        if (explicitFile is not null)
        {
            string full = Path.GetFullPath(explicitFile, workingDirectory);
            if (!File.Exists(full)) throw ConfigThrow.File_Missing(full);
            file = ConfigFile.Read(full, Tables);
        }
        else
        {
            string local = Path.Combine(workingDirectory, "casparian.toml");
            file = File.Exists(local) ? ConfigFile.Read(local, Tables) : null;
            if (file is null)
            {
                // The home directory can itself come from a flag or the environment, but not from the file inside it.
                var probe = new Config(args, env, null, workingDirectory);
                string inHome = Path.Combine(probe.HomeDir, "casparian.toml");
                if (File.Exists(inHome)) file = ConfigFile.Read(inHome, Tables);
            }
        }
        var config = new Config(args, env, file, workingDirectory);
        // Every key is validated up front, so a typo or bad value in any layer fails before work starts.
        foreach (var s in All) config.Resolve(s);
        return config;
    }

    private static Dictionary<string, string?> ReadEnvironment()
    {
        var env = new Dictionary<string, string?>(StringComparer.Ordinal);
        foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables())
            if (e.Key is string k && k.StartsWith("CASPARIAN_", StringComparison.Ordinal)) env[k] = e.Value as string;
        return env;
    }

    public T Get<T>(Setting<T> setting) => (T)Resolve(setting).Value;

    /// <summary>The config file's tables under the registered name <paramref name="root"/>, in file order.</summary>
    public IEnumerable<ConfigTable> TablesOf(string root) => _file?.Tables.Where(t => t.Root == root) ?? [];

    public Resolved Describe(Setting setting) => Resolve(setting);

    private Resolved Resolve(Setting s)
    {
        if (_values.TryGetValue(s.Key, out var done)) return done;
        // Relative paths are relative to where they were written: the working directory for flags and
        // the environment, the file's folder for the config file.
        Resolved r;
        if (_args?.Get(s.FlagName) is { } flagText)
            r = Parse(s, new ConfigValue(flagText), _workingDirectory, SettingSource.Flag, s.FlagName, $"flag {s.FlagName}");
        else if (s.Metavar is null && _args?.Has(s.FlagName) == true)
            r = Parse(s, new ConfigValue("true"), _workingDirectory, SettingSource.Flag, s.FlagName, $"flag {s.FlagName}");
        else if (_env.TryGetValue(s.EnvName, out var envText) && envText is { Length: > 0 })
            r = Parse(s, new ConfigValue(envText), _workingDirectory, SettingSource.Environment, s.EnvName, $"environment variable {s.EnvName}");
        else if (_file is not null && _file.Values.TryGetValue(s.Key, out var entry))
            r = Parse(s, entry.Value, Path.GetDirectoryName(_file.Path)!, SettingSource.File, $"{_file.Path}:{entry.Line}", $"key '{s.Key}' in {_file.Path} line {entry.Line}");
        else
            r = new Resolved(s.DefaultValue(this), SettingSource.Default, "default");
        _values[s.Key] = r;
        return r;
    }

    private static Resolved Parse(Setting s, ConfigValue raw, string baseDir, SettingSource source, string where, string what)
    {
        if (!s.TryParse(raw, baseDir, out var value, out var expected)) throw ConfigThrow.Value_Bad(raw, what, expected, source == SettingSource.Flag);
        return new Resolved(value!, source, where);
    }

    // ---- `casparian config` ------------------------------------------------------------------

    public string Render()
    {
        var sb = new StringBuilder();
        sb.Append("# config file: ").AppendLine(_file?.Path ?? "none (looked for --config, ./casparian.toml, HOME/casparian.toml)");
        int width = All.Max(s => s.Key.Length);
        foreach (var s in All)
        {
            var r = Resolve(s);
            string value = s.Format(r.Value);
            string shown = r.Value is IReadOnlyList<string> || value.Length > 0 ? TomlQuote(value, r.Value) : "\"\"";
            sb.Append(s.Key.PadRight(width)).Append(" = ").Append(shown.PadRight(36)).Append(" # ").AppendLine(r.Where);
        }
        return sb.ToString();
    }

    // Bare where TOML allows (booleans, plain numbers), quoted otherwise: "10GB" and "30s" are strings.
    private static string TomlQuote(string text, object value) => value switch
    {
        IReadOnlyList<string> list => "[" + string.Join(", ", list.Select(Quoted)) + "]",
        _ when text is "true" or "false" || long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _) => text,
        _ => Quoted(text),
    };

    private static string Quoted(string text) => "\"" + text.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\"";
}

/// <summary>Value parsers shared by the settings; each returns (ok, value, what was expected).</summary>
internal static class Parsers
{
    public static (bool, string, string) Text(ConfigValue raw, string baseDir) =>
        raw.Items is null && raw.Text is { } t ? (true, t, "") : (false, "", "a string");

    public static (bool, string, string) Dir(ConfigValue raw, string baseDir) => PathValue(raw, baseDir, "a directory path");

    public static (bool, string, string) File(ConfigValue raw, string baseDir) => PathValue(raw, baseDir, "a file path");

    /// <summary>A store: a URL (scheme://…) as given, else a file path.</summary>
    public static (bool, string, string) Store(ConfigValue raw, string baseDir) =>
        raw.Items is null && raw.Text is { } t && t.Contains("://", StringComparison.Ordinal) ? (true, t, "") : PathValue(raw, baseDir, "a file path");

    /// <summary>The output root: an s3://BUCKET/PREFIX uri as given, else a directory path.</summary>
    public static (bool, string, string) OutputRoot(ConfigValue raw, string baseDir)
    {
        if (raw.Items is null && raw.Text is { } t && S3Location.IsS3(t))
            return S3Location.TryParse(t, out string why) is not null ? (true, t.TrimEnd('/'), "") : (false, "", $"s3://BUCKET/PREFIX ({why})");
        return PathValue(raw, baseDir, "a directory path or s3://BUCKET/PREFIX");
    }

    public static (bool, string, string) OptionalDir(ConfigValue raw, string baseDir) =>
        raw.Items is null && raw.Text is "" ? (true, "", "") : PathValue(raw, baseDir, "a directory path");

    private static (bool, string, string) PathValue(ConfigValue raw, string baseDir, string expected)
    {
        if (raw.Items is not null || string.IsNullOrWhiteSpace(raw.Text) || raw.Text.Contains('\0')) return (false, "", expected);
        return (true, ExpandPath(raw.Text, baseDir), "");
    }

    /// <summary>~ expands to the user's home; a relative path is relative to where it was written (cwd, or the config file's folder).</summary>
    public static string ExpandPath(string text, string baseDir)
    {
        if (text == "~" || text.StartsWith("~/", StringComparison.Ordinal))
            text = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile) + text[1..];
        return Path.GetFullPath(text, Path.IsPathRooted(text) ? "/" : (baseDir.Length > 0 ? baseDir : Directory.GetCurrentDirectory()));
    }

    public static (bool, IReadOnlyList<string>, string) DirList(ConfigValue raw, string baseDir)
    {
        const string Expected = "absolute directory paths (':'-separated, or a TOML array of strings)";
        IEnumerable<string> items = raw.Items ?? (raw.Text ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var list = new List<string>();
        foreach (var item in items)
        {
            if (!Path.IsPathRooted(item) && !item.StartsWith('~')) return (false, [], Expected);
            list.Add(ExpandPath(item, baseDir));
        }
        return (true, list, "");
    }

    public static (bool, IReadOnlyList<string>, string) NameList(ConfigValue raw, string baseDir)
    {
        IEnumerable<string> items = raw.Items ?? (raw.Text ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var list = items.ToList();
        return list.Count > 0 && list.TrueForAll(n => n == "*" || ParserBundle.ValidName().IsMatch(n))
            ? (true, list, "")
            : (false, [], "parser names (','-separated, or a TOML array of strings), or *");
    }

    /// <summary>How `casparian config` shows a secret: whether it is set, never its value.</summary>
    public static string Hidden(string value) => value.Length == 0 ? "" : "(set, hidden)";

    public static (bool, string, string) CurveKey(ConfigValue raw, string baseDir) =>
        raw.Items is null && raw.Text is { } t && (t.Length == 0 || CurveKeys.TryDecode(t, out _))
            ? (true, t, "")
            : (false, "", $"a Z85 CURVE public key ({CurveKeys.Z85Length} characters, as `casparian keys` prints it)");

    /// <summary>
    /// tcp:// only. NetMQ's ipc:// is a loopback TCP port any local user can reach, so it is refused
    /// rather than trusted; `start` links its own worker over inproc://, which nothing else can join.
    /// </summary>
    public static (bool, string, string) Address(ConfigValue raw, string baseDir)
    {
        const string Expected = "tcp://HOST:PORT (ipc:// is refused: NetMQ implements it as a loopback TCP port any local user can join; " +
            "use tcp://, which is encrypted and authenticated, or `casparian start` for one process)";
        if (raw.Items is not null || raw.Text is not { } t) return (false, "", Expected);
        if (t.StartsWith("tcp://", StringComparison.Ordinal))
        {
            int colon = t.LastIndexOf(':');
            if (colon > 6 && (t[(colon + 1)..] == "*" || ushort.TryParse(t[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out _)))
                return (true, t, "");
        }
        return (false, "", Expected);
    }

    /// <summary>One or more tcp:// addresses, ','-separated (a worker's sentinel list), each as <see cref="Address"/>.</summary>
    public static (bool, string, string) AddressList(ConfigValue raw, string baseDir)
    {
        if (raw.Items is { } items) raw = new ConfigValue(string.Join(",", items), null);
        if (raw.Text is not { } t) return Address(raw, baseDir);
        foreach (var one in t.Split(',', StringSplitOptions.TrimEntries))
            if (Address(new ConfigValue(one, null), baseDir) is (false, _, var expected)) return (false, "", expected + "; several are ','-separated");
        return (true, string.Join(",", t.Split(',', StringSplitOptions.TrimEntries)), "");
    }

    /// <summary>HOST:PORT for the status page, or "" / off for none.</summary>
    public static (bool, string, string) HttpAddress(ConfigValue raw, string baseDir)
    {
        const string Expected = "HOST:PORT (e.g. 127.0.0.1:8080), or off";
        if (raw.Items is not null || raw.Text is not { } t) return (false, "", Expected);
        t = t.Trim();
        if (t is "" or "off") return (true, "off", "");
        int colon = t.LastIndexOf(':');
        return colon > 0 && ushort.TryParse(t.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out _) ? (true, t, "") : (false, "", Expected);
    }

    public static (bool, ParquetSharp.Compression, string) Codec(ConfigValue raw, string baseDir) =>
        raw.Items is null && ParquetCodecs.TryParse(raw.Text, out var codec) ? (true, codec, "") : (false, default, ParquetCodecs.Names);

    public static (bool, bool, string) Bool(ConfigValue raw, string baseDir) => raw.Text?.ToLowerInvariant() switch
    {
        "true" or "1" or "yes" or "on" => (true, true, ""),
        "false" or "0" or "no" or "off" => (true, false, ""),
        _ => (false, false, "true or false"),
    };

    public static Func<ConfigValue, string, (bool, long, string)> Long(long min, long max) => (raw, _) =>
        raw.Items is null && long.TryParse(raw.Text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v) && v >= min && v <= max
            ? (true, v, "")
            : (false, 0, $"an integer from {min} to {max}");

    public static (bool, double, string) Fraction(ConfigValue raw, string baseDir) =>
        raw.Items is null && double.TryParse(raw.Text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v >= 0 && v <= 1
            ? (true, v, "")
            : (false, 0, "a fraction from 0 to 1 (0.5 is half)");

    public static Func<ConfigValue, string, (bool, int, string)> Int(int min, int max) => (raw, _) =>
        raw.Items is null && int.TryParse(raw.Text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int v) && v >= min && v <= max
            ? (true, v, "")
            : (false, 0, $"an integer from {min} to {max}");

    /// <summary>Seconds as a number ("30", "0.5"), or with a unit: 500ms, 30s, 5m, 2h.</summary>
    public static (bool, TimeSpan, string) Duration(ConfigValue raw, string baseDir) =>
        Seconds(raw) is { } v && v > 0 && v <= 365 * 86400
            ? (true, TimeSpan.FromSeconds(v), "")
            : (false, default, "a positive duration: seconds (30, 0.5) or with a unit (500ms, 30s, 5m, 2h)");

    /// <summary>A duration from 0 (off) to <paramref name="max"/>, written as <see cref="Duration"/> takes it.</summary>
    public static Func<ConfigValue, string, (bool, TimeSpan, string)> DurationUpTo(TimeSpan max) => (raw, _) =>
        Seconds(raw) is { } v && v >= 0 && v <= max.TotalSeconds
            ? (true, TimeSpan.FromSeconds(v), "")
            : (false, default, $"a duration from 0 (off) to {FormatDuration(max)}: seconds (0.002) or with a unit (2ms)");

    private static double? Seconds(ConfigValue raw)
    {
        if (raw.Items is not null || raw.Text is not { } t) return null;
        t = t.Trim().ToLowerInvariant();
        (string number, double scale) = t switch
        {
            _ when t.EndsWith("ms", StringComparison.Ordinal) => (t[..^2], 0.001),
            _ when t.EndsWith('s') => (t[..^1], 1),
            _ when t.EndsWith('m') => (t[..^1], 60),
            _ when t.EndsWith('h') => (t[..^1], 3600),
            _ => (t, 1),
        };
        return double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && !double.IsNaN(v) && !double.IsInfinity(v * scale) ? v * scale : null;
    }

    public static string FormatDuration(TimeSpan t) =>
        t.TotalSeconds >= 1 && t.TotalSeconds == Math.Floor(t.TotalSeconds)
            ? t.TotalSeconds.ToString(CultureInfo.InvariantCulture) + "s"
            : t.TotalMilliseconds.ToString(CultureInfo.InvariantCulture) + "ms";

    /// <summary>Bytes as a number, or with a unit: 500KB, 10MB, 2GB, 1TB (powers of 1024).</summary>
    public static (bool, long, string) Size(ConfigValue raw, string baseDir)
    {
        const string Expected = "a size in bytes, or with a unit (500KB, 10MB, 2GB)";
        if (raw.Items is not null || raw.Text is not { } t) return (false, 0, Expected);
        t = t.Trim().ToUpperInvariant();
        if (t.EndsWith("IB", StringComparison.Ordinal)) t = t[..^2] + "B";
        (string number, long scale) = t switch
        {
            _ when t.EndsWith("KB", StringComparison.Ordinal) => (t[..^2], 1L << 10),
            _ when t.EndsWith("MB", StringComparison.Ordinal) => (t[..^2], 1L << 20),
            _ when t.EndsWith("GB", StringComparison.Ordinal) => (t[..^2], 1L << 30),
            _ when t.EndsWith("TB", StringComparison.Ordinal) => (t[..^2], 1L << 40),
            _ when t.EndsWith('B') => (t[..^1], 1),
            _ => (t, 1),
        };
        if (!double.TryParse(number.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !(v >= 0) || v * scale > long.MaxValue / 2)
            return (false, 0, Expected);
        return (true, (long)(v * scale), "");
    }

    public static Func<ConfigValue, string, (bool, long, string)> SizeUpTo(long max) => (raw, baseDir) =>
        Size(raw, baseDir) is (true, var v, _) && v >= 1 && v <= max ? (true, v, "") : (false, 0, $"a size from 1 byte to {FormatSize(max)} (e.g. 100MB)");

    public static Func<ConfigValue, string, (bool, long, string)> SizeBetween(long min, long max) => (raw, baseDir) =>
        Size(raw, baseDir) is (true, var v, _) && v >= min && v <= max ? (true, v, "") : (false, 0, $"a size from {FormatSize(min)} to {FormatSize(max)}");

    public static string FormatSize(long bytes) => bytes switch
    {
        _ when bytes >= 1L << 30 && bytes % (1L << 30) == 0 => $"{bytes >> 30}GB",
        _ when bytes >= 1L << 20 && bytes % (1L << 20) == 0 => $"{bytes >> 20}MB",
        _ when bytes >= 1L << 10 && bytes % (1L << 10) == 0 => $"{bytes >> 10}KB",
        _ => bytes.ToString(CultureInfo.InvariantCulture),
    };
}

internal static class ConfigThrow
{
    public static InputException File_Missing(string path) =>
        new($"config file {path} does not exist (given by --config)");
    public static InputException File_Unreadable(string path, Exception e) =>
        new($"cannot read config file {path}: {e.Message}", e);
    public static InputException File_Syntax(string path, int line, string message) =>
        new($"config file {path} line {line}: {message}");
    public static InputException File_UnknownKey(string path, int line, string key) =>
        new($"config file {path} line {line}: unknown key '{key}'{(ConfigFile.Suggest(key) is { } near ? $" (did you mean '{near}'?)" : "")}; " +
            $"known keys: {string.Join(", ", Config.All.Select(s => s.Key))}");
    public static InputException File_SetTwice(string path, int line, string key) =>
        new($"config file {path} line {line}: key '{key}' is set twice");
    public static InputException File_BadValue(string path, int line, string key, string message) =>
        new($"config file {path} line {line}: bad value for '{key}': {message}");
    public static InputException File_Unquoted(string path, int line, string key, string value) =>
        new($"config file {path} line {line}: bad value for '{key}': '{value}' is not a TOML value (strings need quotes)");
    public static InputException File_UnknownTable(string path, int line, string name, bool array, IReadOnlyCollection<string> known) =>
        new($"config file {path} line {line}: tables such as {(array ? $"[[{name}]]" : $"[{name}]")} are not used; write settings as top-level keys (see 'casparian config')" +
            (known.Count == 0 ? "" : $"; known tables: {string.Join(", ", known)}"));

    /// <summary>A value no setting parser accepts: a usage error when it came from a flag, bad input otherwise.</summary>
    public static CasparianException Value_Bad(ConfigValue raw, string what, string expected, bool flag)
    {
        string message = $"bad value {(raw.Items is null && raw.Table is null ? $"'{raw.Text}'" : raw.ToString())} for {what}: expected {expected}";
        return flag ? new UsageException(message) : new InputException(message);
    }
}
