// `casparian start`: the local default. The sentinel and a worker in one process over ipc://, the
// embedded store under CASPARIAN_HOME, folders watched for new files, and a progress line.
//
//   casparian start                                  serve the queue until stopped
//   casparian start --watch DIR --parser NAME        also queue files as they appear in DIR
//   casparian start --drain                          process what is queued, print the outputs, exit
//
// Sentinel and worker logs go to HOME/logs/casparian.log; the terminal gets the progress line,
// one line per failed job, and a summary of the Parquet files written.
using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Casparian;

internal static class Start
{
    private static readonly Flag WatchFlag = new("--watch", "DIR", "queue files as they appear in DIR, recursively (repeatable; needs --parser)");
    private static readonly Flag ParserFlag = new("--parser", "NAME[@VERSION]", "parser for the watched folders");
    private static readonly Flag DrainFlag = new("--drain", null, "exit once nothing is queued or running (and watched files are queued)");

    internal static readonly Command Command = new("start", "sentinel and worker in one process: the local default",
        "start [--watch DIR --parser NAME] [--drain] [--slots N]",
        [WatchFlag, ParserFlag, DrainFlag, .. Config.Flags(Config.Db, Config.Bind, Config.Output, Config.Slots, Config.WorkerId, Config.Venvs,
            Config.VenvBudget, Config.Wheelhouse, Config.Python, Config.AllowedRoots, Config.Lineage, Config.HeartbeatInterval,
            Config.HeartbeatTimeout, Config.RetryLimit, Config.RetryBackoff, Config.JobTimeout, Config.ConnectTimeout, Config.IdleTimeout,
            Config.ShutdownGrace, Config.LogLimit)],
        Run);

    internal sealed record Finished(ulong JobId, string Input, JobReceipt Receipt);

    private static int Run(Args args)
    {
        args.RequirePositionals(0, 0);
        var config = Config.Load(args);
        var watched = args.GetAll(WatchFlag.Name).Select(d => Path.GetFullPath(d)).ToList();
        string? parserSpec = args.Get(ParserFlag.Name);
        if (watched.Count > 0 && parserSpec is null) throw new UsageException("'casparian start --watch DIR' needs --parser NAME: the parser the new files are for");
        if (watched.Count == 0 && parserSpec is not null) throw new UsageException("'casparian start --parser NAME' applies to watched folders; add --watch DIR");
        foreach (var dir in watched)
            if (!Directory.Exists(dir)) throw new InputException($"watched folder {dir} does not exist; create it or fix --watch");
        bool drain = args.Has(DrainFlag.Name);
        string home = config.HomeDir;
        string db = config.Get(Config.Db);
        Directory.CreateDirectory(home);

        using var instance = HomeLock.Acquire(home);
        using var store = new SqliteJobStore(new StoreOptions { Path = db });
        FolderWatch? watch = null;
        if (parserSpec is not null)
        {
            var (name, version) = JobCommands.ParserSpec("start", ParserFlag, parserSpec);
            var parser = store.GetParser(name, version) ?? throw JobCommands.UnknownParser(store, db, name, version);
            watch = new FolderWatch(store, parser, watched);
        }

        string logPath = Path.Combine(home, "logs", "casparian.log");
        Directory.CreateDirectory(Path.GetDirectoryName(logPath)!);
        using var logFile = new StreamWriter(logPath, append: true, new UTF8Encoding(false)) { AutoFlush = true };
        var log = TextWriter.Synchronized(logFile);

        var finished = new System.Collections.Concurrent.ConcurrentQueue<Finished>();
        using var host = WorkerHost.Create(config, (id, dispatch, receipt) => finished.Enqueue(new Finished(id, dispatch.FilePath, receipt)));
        using var sentinel = new Sentinel(new SentinelOptions
        {
            Bind = config.Describe(Config.Bind).Source == SettingSource.Default ? LocalEndpoint(home) : config.Get(Config.Bind),
            DbPath = db,
            HeartbeatTimeout = config.Get(Config.HeartbeatTimeout),
            RetryLimit = config.Get(Config.RetryLimit),
            RetryBackoff = config.Get(Config.RetryBackoff),
            Log = log,
        });
        sentinel.Start();
        string workerId = config.Get(Config.WorkerId) is { Length: > 0 } id ? id : WorkerIdentity.LoadOrCreate(Path.Combine(home, "worker"));
        using var worker = new Worker(new WorkerOptions
        {
            Connect = sentinel.Endpoint,
            WorkerId = workerId,
            Slots = config.Get(Config.Slots),
            HeartbeatInterval = config.Get(Config.HeartbeatInterval),
            ShutdownGrace = config.Get(Config.ShutdownGrace),
        }, host.Executor.RunAsync, host.PrepareEnv, line => log.WriteLine($"{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ss.fffZ} worker {workerId}: {line}"));

        var progress = new Progress(Console.Error, interactive: !Console.IsErrorRedirected);
        using var signal = new ShutdownSignal(line => progress.Message(line));
        using var stopSentinel = new CancellationTokenSource();
        using var stopWorker = new CancellationTokenSource();
        var sentinelThread = new Thread(() => sentinel.Run(stopSentinel.Token)) { Name = "sentinel", IsBackground = true };
        var workerThread = new Thread(() => worker.Run(stopWorker.Token)) { Name = "worker", IsBackground = true };
        sentinelThread.Start();
        workerThread.Start();

        Console.Error.WriteLine($"casparian {Program.Version}: store {db}, {config.Get(Config.Slots)} slot(s), output under {config.Get(Config.Output)}");
        Console.Error.WriteLine($"  sentinel on {sentinel.Endpoint}; logs in {logPath}");
        foreach (var dir in watched) Console.Error.WriteLine($"  watching {dir} for parser {watch!.Parser.Name} {watch.Parser.Version}");

        var clock = Stopwatch.StartNew();
        var session = new List<Finished>();
        long nextScan = 0;
        while (!signal.Token.IsCancellationRequested)
        {
            if (watch is not null && clock.ElapsedMilliseconds >= nextScan)
            {
                foreach (var line in watch.Scan()) progress.Message(line);
                nextScan = clock.ElapsedMilliseconds + 1000;
            }
            while (finished.TryDequeue(out var f))
            {
                session.Add(f);
                if (f.Receipt.Status == ReceiptStatus.Failed) progress.Message(FailureLine(f));
            }
            var counts = store.Counts();
            progress.Update(counts, session);
            if (drain && counts.GetValueOrDefault(JobState.Queued) == 0 && counts.GetValueOrDefault(JobState.Running) == 0
                && (watch is null || watch.Idle) && worker.ActiveJobs == 0)
                break;
            signal.Token.WaitHandle.WaitOne(250);
        }

        // The worker stops first, so its last CONCLUDEs reach a sentinel that is still listening.
        stopWorker.Cancel();
        workerThread.Join();
        stopSentinel.Cancel();
        sentinelThread.Join();
        while (finished.TryDequeue(out var f)) session.Add(f);
        progress.Done();
        Console.Out.Write(Summary(session, store.Counts(), config.Get(Config.Output), clock.Elapsed));
        if (signal.Token.IsCancellationRequested && !drain) return 0;
        return session.Any(f => f.Receipt.Status == ReceiptStatus.Failed) ? (int)ExitCode.Failed : 0;
    }

    /// <summary>ipc://HOME/casparian.sock, or a short path in /tmp when HOME is too long for a Unix socket (107 bytes).</summary>
    internal static string LocalEndpoint(string home)
    {
        string path = Path.Combine(home, "casparian.sock");
        if (path.Length > 100) path = Path.Combine(Path.GetTempPath(), $"casparian-{Hashes.Sha256Hex(home)[..12]}.sock");
        return "ipc://" + path;
    }

    private static string FailureLine(Finished f)
    {
        string error = f.Receipt.ErrorMessage ?? "failed";
        int nl = error.IndexOf('\n');
        if (nl >= 0) error = error[..nl];
        bool transient = f.Receipt.Metrics.GetValueOrDefault(JobExecutor.TransientMetric) == 1;
        return $"job {f.JobId} failed{(transient ? " (transient; retried while retries remain)" : "")}: {f.Input}: {error}";
    }

    internal static string Summary(IReadOnlyList<Finished> session, Dictionary<JobState, long> counts, string outputRoot, TimeSpan elapsed)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        var done = session.Where(f => f.Receipt.Status == ReceiptStatus.Success).ToList();
        var files = done.SelectMany(f => f.Receipt.Artifacts)
            .Select(a => (Topic: a.GetValueOrDefault("topic", "?"), Path: Uri.TryCreate(a.GetValueOrDefault("uri", ""), UriKind.Absolute, out var u) ? u.LocalPath : a.GetValueOrDefault("uri", ""),
                Rows: long.TryParse(a.GetValueOrDefault("rows"), NumberStyles.None, inv, out long r) ? r : 0))
            .OrderBy(a => a.Topic, StringComparer.Ordinal).ThenBy(a => a.Path, StringComparer.Ordinal)
            .ToList();
        sb.Append(inv, $"{done.Count} job(s) completed, {session.Count(f => f.Receipt.Status == ReceiptStatus.Failed)} failed in this session ({elapsed.TotalSeconds:0.0} s); ");
        sb.Append(inv, $"store: {counts.GetValueOrDefault(JobState.Queued)} queued, {counts.GetValueOrDefault(JobState.Running)} running, {counts.GetValueOrDefault(JobState.Completed)} completed, {counts.GetValueOrDefault(JobState.Failed)} failed\n");
        if (files.Count == 0) return sb.ToString();
        sb.Append(inv, $"Parquet written under {outputRoot}:\n");
        const int MaxListed = 40;
        int width = Math.Min(80, files.Max(f => Rel(f.Path, outputRoot).Length));
        foreach (var f in files.Take(MaxListed))
            sb.Append("  ").Append(Rel(f.Path, outputRoot).PadRight(width)).Append(inv, $"  {f.Rows,10:N0} rows\n");
        if (files.Count > MaxListed) sb.Append(inv, $"  … and {files.Count - MaxListed} more file(s)\n");
        foreach (var topic in files.GroupBy(f => f.Topic))
            sb.Append(inv, $"  {topic.Key}: {topic.Count()} file(s), {topic.Sum(f => f.Rows):N0} rows\n");
        return sb.ToString();
    }

    private static string Rel(string path, string root)
    {
        string rel = Path.GetRelativePath(root, path);
        return rel.StartsWith("..", StringComparison.Ordinal) ? path : rel;
    }

    /// <summary>
    /// One `start` per home: the ipc socket, the worker id and the log are the home's. An advisory
    /// lock on HOME/start.lock, released by the kernel if the process dies. The holder's pid goes to
    /// HOME/start.pid, not into the lock file: .NET reads a file under a shared flock, which the
    /// holder's exclusive one refuses, so nobody else could read it there.
    /// </summary>
    private sealed class HomeLock(FileStream file) : IDisposable
    {
        public static HomeLock Acquire(string home)
        {
            string path = Path.Combine(home, "start.lock");
            string pidPath = Path.Combine(home, "start.pid");
            FileStream file;
            try
            {
                file = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException)
            {
                string owner = "";
                try { owner = $" (pid {File.ReadAllText(pidPath).Trim()})"; }
                catch (IOException) { }
                throw new UnavailableException($"another 'casparian start' is running on {home}{owner}; stop it first, or give this one its own CASPARIAN_HOME");
            }
            try
            {
                File.WriteAllText(pidPath, Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
            }
            catch
            {
                file.Dispose();
                throw;
            }
            return new HomeLock(file);
        }

        public void Dispose() => file.Dispose();
    }

    /// <summary>The progress line: rewritten in place on a terminal, printed when it changes (at most every 2 s) otherwise.</summary>
    private sealed class Progress(TextWriter output, bool interactive)
    {
        private string _last = "";
        private long _lastPrinted;
        private bool _lineOpen;

        public void Update(Dictionary<JobState, long> counts, IReadOnlyList<Finished> session)
        {
            long rows = session.Where(f => f.Receipt.Status == ReceiptStatus.Success).Sum(f => f.Receipt.Metrics.GetValueOrDefault("rows"));
            string line = string.Create(CultureInfo.InvariantCulture,
                $"jobs: {counts.GetValueOrDefault(JobState.Completed)} done, {counts.GetValueOrDefault(JobState.Running)} running, " +
                $"{counts.GetValueOrDefault(JobState.Queued)} queued, {counts.GetValueOrDefault(JobState.Failed)} failed; {rows:N0} rows written this session");
            if (line == _last) return;
            long now = Environment.TickCount64;
            if (!interactive && now - _lastPrinted < 2000 && _last.Length > 0) return;
            _last = line;
            _lastPrinted = now;
            if (interactive)
            {
                output.Write("\r\x1b[K" + line);
                _lineOpen = true;
            }
            else output.WriteLine(line);
            output.Flush();
        }

        public void Message(string text)
        {
            if (_lineOpen) output.Write("\r\x1b[K");
            output.WriteLine(text);
            if (_lineOpen) output.Write(_last);
            output.Flush();
        }

        public void Done()
        {
            if (_lineOpen) output.WriteLine();
            _lineOpen = false;
        }
    }
}

/// <summary>
/// Queues the files that appear in watched folders. A file is queued once its size and modification
/// time are the same on two scans a second apart (so half-written files wait), and only if no job
/// for this parser version and this content exists yet, in any state: restarting `start` or
/// touching a file does not queue it twice, and a file rewritten with new content is queued again.
/// </summary>
internal sealed class FolderWatch(IJobStore store, ParserRecord parser, IReadOnlyList<string> folders)
{
    private readonly Dictionary<string, (long Size, DateTime Modified)> _seen = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (long Size, DateTime Modified)> _pending = new(StringComparer.Ordinal);
    private static readonly EnumerationOptions Walk = new() { RecurseSubdirectories = true, IgnoreInaccessible = true };

    public ParserRecord Parser => parser;

    /// <summary>No file is waiting to settle.</summary>
    public bool Idle => _pending.Count == 0;

    /// <summary>One pass over the folders; returns lines worth telling the user.</summary>
    public List<string> Scan()
    {
        var messages = new List<string>();
        var ready = new List<(string Path, string Hash)>();
        foreach (string folder in folders)
        {
            IEnumerable<string> files;
            try
            {
                files = Directory.EnumerateFiles(folder, "*", Walk).ToList();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                messages.Add($"cannot read watched folder {folder}: {e.Message}");
                continue;
            }
            foreach (string file in files)
            {
                var info = new FileInfo(file);
                if (!info.Exists) continue;
                var state = (info.Length, info.LastWriteTimeUtc);
                if (_seen.TryGetValue(file, out var done) && done == state) continue;
                if (!_pending.TryGetValue(file, out var before) || before != state)
                {
                    _pending[file] = state;
                    continue;
                }
                _pending.Remove(file);
                _seen[file] = state;
                try
                {
                    ready.Add((file, JobCommands.HashFile(file)));
                }
                catch (InputException e)
                {
                    messages.Add($"skipping {file}: {e.Message}");
                }
            }
        }
        // A file deleted while it settled is forgotten.
        foreach (var gone in _pending.Keys.Where(f => !File.Exists(f)).ToList()) _pending.Remove(gone);
        if (ready.Count > 0)
        {
            var r = JobCommands.Queue(store, parser, ready, priority: 0, skip: hash => store.HasJob(parser.Name, parser.Version, hash));
            if (r.Queued > 0) messages.Add($"queued {r.Queued} new file(s) for {parser.Name} {parser.Version}" + (r.Skipped > 0 ? $" ({r.Skipped} already had a job)" : ""));
        }
        return messages;
    }
}
