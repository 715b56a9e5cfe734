// The long-running commands: `sentinel` and `worker` (one role each), `start` (both in one process,
// Start.cs) and `run` (dev mode, Run.cs). Each reads its flags and settings, builds the option
// records (Commands.Options.cs) and the log sinks, and hands over.
using System.Text;

namespace Casparian;

internal static partial class Commands
{
    // ---- sentinel ------------------------------------------------------------------------------

    private static readonly Flag QuietFlag = new("--quiet", null, "log warnings only");

    private static readonly Command SentinelCommand = new("sentinel", "control plane: job store, worker tracking, dispatch",
        "sentinel [--bind ADDR] [--db PATH] [--heartbeat-timeout S] [--retry-limit N] [--retry-backoff S] [--job-timeout S] [--insecure] [--quiet]",
        [.. Config.Flags(Config.Bind, Config.Db, Config.HeartbeatTimeout, Config.RetryLimit, Config.RetryBackoff, Config.RetryBackoffMax,
            Config.JobTimeout, Config.DeadlineGrace, Config.PollInterval, Config.GatherWindow, Config.LockTimeout, Config.LeaseTtl, Config.Insecure, Config.LinkLimit, Config.Http, Config.HttpInsecure,
            Config.SettleInterval, Config.RescanInterval, Config.ScanFileLimit), QuietFlag],
        args =>
        {
            args.RequirePositionals(0, 0);
            var config = Config.Load(args);
            var log = new RoleLog(Console.Error, "sentinel", args.Has(QuietFlag.Name), TimeProvider.System);
            using var signal = new ShutdownSignal(log.Info);
            var keys = SentinelKeys.LoadOrCreate(config.KeysDir);
            using var sentinel = new Sentinel(SentinelOptions(config, log, keys));
            sentinel.Start();
            if (keys.Created)
            {
                log.Info($"created the sentinel's keys under {keys.Dir}; a worker joins with:");
                log.Info("  " + JoinLine(config, keys));
            }
            else log.Info($"`casparian keys` prints the line a worker joins with (keys under {keys.Dir})");
            using var status = StatusServerOptions(config, fallback: null, jobLogs: null, log) is { } page ? new StatusServer(page, sentinel.Metrics) : null;
            // Sources (issue 19) are watched on a thread of their own, with their own store connection.
            var sources = SourceWatch.RunInBackground(StoreOptions(config, create: true), WatchSettings(config), log, signal.Token);
            sentinel.Run(signal.Token);
            sources.Join();
            return 0;
        });

    // ---- worker --------------------------------------------------------------------------------

    private static readonly Setting[] WorkerSettings =
    [
        Config.Output, Config.WorkerId, Config.Slots, Config.Capabilities, Config.Venvs, Config.VenvBudget, Config.Wheelhouse, Config.Python,
        Config.AllowedRoots, Config.Lineage, Config.HeartbeatInterval, Config.ShutdownGrace, Config.JobTimeout, Config.ConnectTimeout,
        Config.IdleTimeout, Config.LogLimit, Config.MessageLimit, Config.BuildTimeout, Config.RowGroupRows, Config.RowGroupSize, Config.LinkLimit,
        Config.WarmGuests, Config.WarmIdle,
        Config.S3Endpoint, Config.S3Region, Config.S3PathStyle, Config.S3MultipartThreshold, Config.S3PartSize, Config.S3PartsInFlight,
    ];

    private static readonly Command WorkerCommand = new("worker", "data plane: run parsers, write Parquet, report receipts",
        "worker --connect ADDR --sentinel-key Z85 --token TOKEN --output DIR [--worker-id ID] [--slots N] [--venvs DIR] [--insecure]",
        Config.Flags([Config.Connect, Config.SentinelKey, Config.JoinToken, Config.Insecure, .. WorkerSettings]),
        args =>
        {
            args.RequirePositionals(0, 0);
            var config = Config.Load(args);
            if (!config.Get(Config.Insecure) && config.Get(Config.SentinelKey).Length == 0) throw CliThrow.Usage_NoSentinelKey(config.Get(Config.Connect));
            string id = WorkerId(config);
            var log = new RoleLog(Console.Error, $"worker {id}", quiet: false, TimeProvider.System);
            using var host = WorkerHost.Create(VenvOptions(config), ExecutorOptions(config), WarmOptions(config), log.Info);
            using var worker = new Worker(WorkerOptions(config, id, log), host.Executor.RunAsync, host.PrepareEnv, host.Executor.Figures);
            using var signal = new ShutdownSignal(log.Info);
            log.Info($"output under {config.Get(Config.Output)}");
            if (config.Get(Config.Insecure)) log.Warn("plaintext link (--insecure): the sentinel is not authenticated and the join token travels in the clear");
            worker.Run(signal.Token);
            return 0;
        });

    // ---- start ---------------------------------------------------------------------------------

    /// <summary>The name of the session's source for `start --watch DIR`.</summary>
    internal static string WatchedName(string dir) => "--watch " + dir;

    private static readonly Flag WatchFlag = new("--watch", "DIR", "queue files as they appear in DIR, recursively (repeatable; needs --parser)");
    private static readonly Flag WatchParserFlag = new("--parser", "NAME[@VERSION]", "parser for the watched folders");
    private static readonly Flag DrainFlag = new("--drain", null, "exit once nothing is queued or running (and watched files are queued); stopped by a signal first, exit 130");

    private static readonly Command StartCommand = new("start", "sentinel and worker in one process: the local default",
        "start [--watch DIR --parser NAME] [--drain] [--slots N]",
        [WatchFlag, WatchParserFlag, DrainFlag, .. Config.Flags([Config.Db, Config.Bind, Config.Insecure, .. WorkerSettings, Config.HeartbeatTimeout,
            Config.RetryLimit, Config.RetryBackoff, Config.RetryBackoffMax, Config.DeadlineGrace, Config.PollInterval, Config.LockTimeout, Config.Http, Config.HttpInsecure,
            Config.SettleInterval, Config.RescanInterval, Config.ScanFileLimit])],
        args =>
        {
            args.RequirePositionals(0, 0);
            var config = Config.Load(args);
            var watched = args.GetAll(WatchFlag.Name).Select(d => Path.GetFullPath(d)).ToList();
            string? parserSpec = args.Get(WatchParserFlag.Name);
            if (watched.Count > 0 && parserSpec is null) throw CliThrow.Usage_WatchNeedsParser();
            if (watched.Count == 0 && parserSpec is not null) throw CliThrow.Usage_ParserNeedsWatch();
            foreach (var dir in watched)
                if (!Directory.Exists(dir)) throw CliThrow.Input_NoWatchedFolder(dir);
            string home = config.HomeDir;
            Directory.CreateDirectory(home);

            using var instance = Start.LockHome(home);
            using var store = JobStores.Open(StoreOptions(config, create: true));
            // --watch DIR --parser NAME is a source of its own for this session, with one rule taking every file.
            SourceSet? adHoc = null;
            if (parserSpec is not null)
            {
                var (name, version) = ParserSpec("start", WatchParserFlag, parserSpec);
                var parser = FindParser(store, name, version);
                var folders = watched.Select(d => new WatchSource(WatchedName(d), Sources.RealDir(d), Recursive: true, [], "--watch")).ToList();
                adHoc = new SourceSet(folders, [.. folders.Select(f => new RoutingRule(0, f.Name, "**/*", parser.Name, parser.Version, 0, "--watch"))]);
            }
            var watch = WatchSettings(config, adHoc);

            // Both roles log to one file; the terminal is the progress line's.
            string logPath = Path.Combine(config.LogsDir, "casparian.log");
            Directory.CreateDirectory(config.LogsDir);
            using var logFile = new StreamWriter(logPath, append: true, new UTF8Encoding(false)) { AutoFlush = true };
            var log = TextWriter.Synchronized(logFile);
            string workerId = WorkerId(config);
            // The link is inproc://, which no other process can join, unless a bind address is
            // configured: then outside workers may join too, and it is a tcp:// link with keys like a sentinel's.
            bool local = config.Describe(Config.Bind).Source == SettingSource.Default;
            var keys = local ? null : SentinelKeys.LoadOrCreate(config.KeysDir);
            var sentinel = SentinelOptions(config, new RoleLog(log, "sentinel", quiet: false, TimeProvider.System), keys);
            var worker = WorkerOptions(config, workerId, new RoleLog(log, $"worker {workerId}", quiet: false, TimeProvider.System));
            var options = new StartOptions
            {
                Sentinel = local ? sentinel with { Bind = Start.LocalEndpoint() } : sentinel,
                Worker = keys is null
                    ? worker with { SentinelKey = null, JoinToken = null }
                    : worker with { SentinelKey = config.Get(Config.Insecure) ? null : keys.PublicKey, JoinToken = keys.JoinToken },
                Venvs = VenvOptions(config),
                Executor = ExecutorOptions(config),
                Warm = WarmOptions(config),
                Drain = args.Has(DrainFlag.Name),
                LogPath = logPath,
                Status = StatusServerOptions(config, Config.StartHttp, config.LogsDir, sentinel.Log),
            };
            using var signal = new ShutdownSignal();
            return Start.Run(options, store, watch, signal.Token, Console.Error);
        });

    // ---- run -----------------------------------------------------------------------------------

    private static readonly Flag TopicFlag = new("--topic", "T", "write only this topic (repeatable); other tables are counted but not written");

    private static readonly Flag WhatIfFlag = new("--whatif", null, "list what would run (files, parser, topics, sinks, interpreter) and exit without running anything");

    private static readonly Command RunCommand = new("run", "dev mode: one parser over a file or folder, no store",
        "run PARSER INPUT [--output DIR] [--topic T] [--slots N] [--whatif]",
        [TopicFlag, WhatIfFlag, .. Config.Flags(Config.Output, Config.Slots, Config.Python, Config.Lineage, Config.JobTimeout, Config.ConnectTimeout,
            Config.IdleTimeout, Config.MessageLimit, Config.RowGroupRows, Config.RowGroupSize, Config.WarmGuests, Config.WarmIdle,
            Config.S3Endpoint, Config.S3Region, Config.S3PathStyle, Config.S3MultipartThreshold, Config.S3PartSize, Config.S3PartsInFlight)],
        args =>
        {
            var positionals = args.RequirePositionals(2, 2);
            var config = Config.Load(args);
            string parserPath = Path.GetFullPath(positionals[0]);
            string inputPath = Path.GetFullPath(positionals[1]);
            // The native library's check (hashing its 27 MB, ~40 ms) runs beside the interpreter's
            // resolution below (a process start, ~0.2 s through pyenv); awaited before any Parquet.
            // --whatif writes nothing, so it does not install the library either.
            bool whatIf = args.Has(WhatIfFlag.Name);
            Task native = whatIf ? Task.CompletedTask : Task.Run(() => NativeParquet.Ensure(config.LibDir));

            // Load validates the parser the way registration would (entry module, name, version) and
            // fails with one clear line; the guest then runs the files in place, so edits take effect at once.
            ParserBundle bundle = ParserBundle.Load(parserPath);
            var inputs = DevRun.Inputs(inputPath);
            string interpreter = DevRun.Interpreter(parserPath, config.Get(Config.Python));
            var declared = Topics.Read(bundle.EntrySource, Directory.Exists(parserPath) ? Path.Combine(parserPath, bundle.EntryModule ?? "") : parserPath);
            var overrides = Topics.FromConfig(config.TablesOf(Topics.ConfigTable));
            // Dev mode writes next to the user, not under HOME, unless told otherwise.
            var output = OutputOptions(config);
            if (config.Describe(Config.Output).Source == SettingSource.Default) output = output with { Root = Path.Combine(Directory.GetCurrentDirectory(), "output") };
            string inputRoot = Directory.Exists(inputPath) ? inputPath : Path.GetDirectoryName(inputPath)!;
            string parserName = bundle.Version == ParserBundle.DefaultVersion ? bundle.Name : $"{bundle.Name}@{bundle.Version}";
            var sinks = Topics.Effective(declared, overrides);
            if (whatIf)
            {
                Console.Out.Write(DevRun.WhatIf(parserName, parserPath, interpreter, inputs, inputRoot, output.Root, sinks,
                    [.. sinks.Select(s => Topics.OriginOf(s.Topic, declared, overrides))]));
                return 0;
            }
            native.GetAwaiter().GetResult();
            var options = new DevRunOptions
            {
                ParserPath = parserPath,
                ParserName = parserName,
                Inputs = inputs,
                InputRoot = inputRoot,
                Sinks = sinks,
                Interpreter = interpreter,
                ShimPath = Shim.Ensure(config.ShimDir),
                Output = output,
                Bridge = BridgeOptions(config),
                Timeout = config.Get(Config.JobTimeout),
                Topics = args.GetAll(TopicFlag.Name) is { Count: > 0 } t ? t.ToHashSet(StringComparer.Ordinal) : null,
                Slots = config.Get(Config.Slots),
                Warm = WarmOptions(config),
            };
            using var signal = new ShutdownSignal();
            return DevRun.Run(options, signal.Token);
        });
}
