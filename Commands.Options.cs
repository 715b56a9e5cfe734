// Settings → option records. Config holds every default; the option records have none of their own,
// so this file is the one place they are filled. Tests build options the same way: apply these to
// Config.Defaults(home) and change what they test with `with { … }`.
namespace Casparian;

internal static partial class Commands
{
    public static StoreOptions StoreOptions(Config c, bool create) => new()
    {
        Db = c.Get(Config.Db),
        RetryLimit = c.Get(Config.RetryLimit),
        RetryBackoff = c.Get(Config.RetryBackoff),
        RetryBackoffMax = c.Get(Config.RetryBackoffMax),
        LockTimeout = c.Get(Config.LockTimeout),
        Clock = TimeProvider.System,
        Create = create,
    };

    /// <summary><paramref name="keys"/>: the home's keys (SentinelKeys.LoadOrCreate), null only for an inproc:// bind.</summary>
    public static SentinelOptions SentinelOptions(Config c, RoleLog log, SentinelKeys? keys) => new()
    {
        Bind = c.Get(Config.Bind),
        Keys = keys,
        Insecure = c.Get(Config.Insecure),
        MessageLimit = c.Get(Config.LinkLimit),
        Store = StoreOptions(c, create: true),
        HeartbeatTimeout = c.Get(Config.HeartbeatTimeout),
        LeaseTtl = c.Get(Config.LeaseTtl),
        JobTimeout = c.Get(Config.JobTimeout),
        PollInterval = c.Get(Config.PollInterval),
        GatherWindow = c.Get(Config.GatherWindow),
        DeadlineGrace = c.Get(Config.DeadlineGrace),
        Topics = Casparian.Topics.FromConfig(c.TablesOf(Casparian.Topics.ConfigTable)),
        Log = log,
    };

    /// <summary>How sources are watched; <paramref name="extra"/> are sources that are not in the config file (`start --watch`).</summary>
    public static WatchSettings WatchSettings(Config c, SourceSet? extra = null)
    {
        var declared = SourceSet.FromConfig(c);
        return new()
        {
            Scan = ScanSettings(c),
            Rescan = c.Get(Config.RescanInterval),
            Declared = extra is null ? declared : new SourceSet([.. declared.Sources, .. extra.Sources], [.. declared.Rules, .. extra.Rules]),
        };
    }

    public static ScanSettings ScanSettings(Config c) => new()
    {
        Settle = c.Get(Config.SettleInterval),
        FileLimit = c.Get(Config.ScanFileLimit),
    };

    public static WorkerOptions WorkerOptions(Config c, string workerId, RoleLog log) => new()
    {
        Connect = c.Get(Config.Connect),
        SentinelKey = c.Get(Config.Insecure) || c.Get(Config.SentinelKey) is not { Length: > 0 } key ? null : key,
        JoinToken = c.Get(Config.JoinToken) is { Length: > 0 } token ? token : null,
        MessageLimit = c.Get(Config.LinkLimit),
        WorkerId = workerId,
        Slots = c.Get(Config.Slots),
        HeartbeatInterval = c.Get(Config.HeartbeatInterval),
        ShutdownGrace = c.Get(Config.ShutdownGrace),
        Capabilities = c.Get(Config.Capabilities),
        Log = log,
    };

    /// <summary>The configured worker id, else the one kept under HOME/worker (created on first use).</summary>
    public static string WorkerId(Config c) =>
        c.Get(Config.WorkerId) is { Length: > 0 } id ? id : WorkerIdentity.LoadOrCreate(c.WorkerDir);

    public static OutputOptions OutputOptions(Config c) => new()
    {
        Root = c.Get(Config.Output),
        AllowedRoots = c.Get(Config.AllowedRoots),
        Lineage = c.Get(Config.Lineage),
        RowGroupRows = c.Get(Config.RowGroupRows),
        RowGroupBytes = c.Get(Config.RowGroupSize),
        Compression = c.Get(Config.Compression),
        MaxQuarantineRows = c.Get(Config.MaxQuarantineRows),
        MaxQuarantine = c.Get(Config.MaxQuarantine),
        Staging = c.StagingDir,
        S3 = S3Settings(c),
    };

    public static S3Settings S3Settings(Config c) => new()
    {
        Endpoint = c.Get(Config.S3Endpoint),
        Region = c.Get(Config.S3Region),
        PathStyle = c.Get(Config.S3PathStyle),
        MultipartThreshold = c.Get(Config.S3MultipartThreshold),
        PartSize = c.Get(Config.S3PartSize),
        PartsInFlight = c.Get(Config.S3PartsInFlight),
    };

    public static BridgeOptions BridgeOptions(Config c) => new()
    {
        ConnectTimeout = c.Get(Config.ConnectTimeout),
        IdleTimeout = c.Get(Config.IdleTimeout),
        MaxMessageBytes = checked((int)c.Get(Config.MessageLimit)),
    };

    public static WarmOptions WarmOptions(Config c) => new()
    {
        MaxZygotes = c.Get(Config.WarmGuests),
        IdleTimeout = c.Get(Config.WarmIdle),
        StartTimeout = c.Get(Config.ConnectTimeout),
    };

    public static VenvOptions VenvOptions(Config c) => new()
    {
        Root = c.Get(Config.Venvs),
        BasePython = c.Get(Config.Python),
        Wheelhouse = c.Get(Config.Wheelhouse) is { Length: > 0 } w ? w : null,
        Uv = Python.FindOnPath("uv", Environment.GetEnvironmentVariable("PATH")),
        MaxBytes = c.Get(Config.VenvBudget),
        BuildTimeout = c.Get(Config.BuildTimeout),
    };

    /// <summary>
    /// What a worker's jobs need; extracts the shim under HOME on first use, and installs and loads
    /// ParquetSharp's native library (the jobs write Parquet) before any job can reach ParquetSharp.
    /// </summary>
    public static JobExecutorOptions ExecutorOptions(Config c)
    {
        NativeParquet.Ensure(c.LibDir);
        return new()
        {
            Output = OutputOptions(c),
            Bridge = BridgeOptions(c),
            ShimPath = Shim.Ensure(c.ShimDir),
            ParsersDir = c.ParsersDir,
            LogsDir = c.LogsDir,
            LogLimit = c.Get(Config.LogLimit),
            DefaultTimeout = c.Get(Config.JobTimeout),
        };
    }
}
