// `casparian start`'s engine: the local default. The sentinel and a worker in one process over
// inproc://, the store under CASPARIAN_HOME, watched folders queued as files appear, a progress line,
// and a summary of the Parquet files written. The shell (Commands.Roles.cs) reads the flags and
// settings, takes the home's lock, opens the store and hands over the option records.
//
// Sentinel and worker logs go to HOME/logs/casparian.log; the terminal gets the progress line,
// one line per failed job, and a summary of the Parquet files written.
using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Casparian;

/// <summary>What one `start` runs. The worker's Connect is replaced by the sentinel's bound endpoint.</summary>
internal sealed record StartOptions
{
    public required SentinelOptions Sentinel { get; init; }
    public required WorkerOptions Worker { get; init; }
    public required VenvOptions Venvs { get; init; }
    public required JobExecutorOptions Executor { get; init; }
    public required WarmOptions Warm { get; init; }
    /// <summary>Exit once nothing is queued or running (and every watched file is queued).</summary>
    public required bool Drain { get; init; }
    /// <summary>The log file the sentinel and worker write to (for the banner).</summary>
    public required string LogPath { get; init; }
    /// <summary>The status page (/metrics, /api, the dashboard); null for none.</summary>
    public required StatusServerOptions? Status { get; init; }
}

internal static class Start
{
    internal sealed record Finished(ulong JobId, string Input, JobReceipt Receipt);

    /// <summary>
    /// Serves until <paramref name="stop"/> fires (or, draining, until the queue is empty); returns the
    /// exit code. <paramref name="store"/> is the store the sentinel serves, read for progress.
    /// </summary>
    public static int Run(StartOptions options, IJobStore store, WatchSettings watchSettings, CancellationToken stop, TextWriter terminal)
    {
        var finished = new System.Collections.Concurrent.ConcurrentQueue<Finished>();
        var executor = options.Executor with { Finished = (id, dispatch, receipt) => finished.Enqueue(new Finished(id, dispatch.FilePath, receipt)) };
        using var host = WorkerHost.Create(options.Venvs, executor, options.Warm, options.Worker.Log.Info);
        using var sentinel = new Sentinel(options.Sentinel);
        sentinel.Start();
        using var status = options.Status is { } page ? new StatusServer(page, sentinel.Metrics) : null;
        using var worker = new Worker(options.Worker with { Connect = sentinel.Endpoint }, host.Executor.RunAsync, host.PrepareEnv, host.Executor.Figures);

        var progress = new Progress(terminal, interactive: !Console.IsErrorRedirected);
        using var stopSentinel = new CancellationTokenSource();
        using var stopWorker = new CancellationTokenSource();
        // A sentinel that stops on its own (a damaged store) ends the session with its error.
        Exception? sentinelFailure = null;
        var sentinelThread = new Thread(() =>
        {
            try { sentinel.Run(stopSentinel.Token); }
            catch (Exception e) { sentinelFailure = e; }
        }) { Name = "sentinel", IsBackground = true };
        var workerThread = new Thread(() => worker.Run(stopWorker.Token)) { Name = "worker", IsBackground = true };
        sentinelThread.Start();
        workerThread.Start();

        string outputRoot = options.Executor.Output.Root;
        terminal.WriteLine($"casparian {Program.Version}: store {store.Location}, {options.Worker.Slots} slot(s), output under {outputRoot}");
        terminal.WriteLine($"  sentinel on {sentinel.Endpoint}; logs in {options.LogPath}");
        if (status is not null) terminal.WriteLine($"  status page {status.Url} (metrics at {status.Url}metrics)");
        // Sources (issue 19): the store's, the config file's and --watch's, passed on this thread.
        using var watch = new SourceWatch(store, watchSettings, TimeProvider.System);
        var firstPass = watch.Poll();
        foreach (var source in watch.Sources)
        {
            var rules = watch.Set.RulesOf(source.Name);
            terminal.WriteLine(source.Origin == "--watch" && rules is [{ } only]
                ? $"  watching {source.Name["--watch ".Length..]} for parser {only.ParserName} {only.ParserVersion}"
                : $"  watching source {source.Name} ({source.Dir}{(source.Recursive ? ", recursive" : "")}): {rules.Count} rule(s)");
        }
        foreach (var line in firstPass) progress.Message(line);

        var clock = Stopwatch.StartNew();
        var session = new List<Finished>();
        while (!stop.IsCancellationRequested && Volatile.Read(ref sentinelFailure) is null)
        {
            foreach (var line in watch.Poll()) progress.Message(line);
            while (finished.TryDequeue(out var f))
            {
                session.Add(f);
                if (f.Receipt.Status == ReceiptStatus.Failed) progress.Message(FailureLine(f));
            }
            var counts = store.Counts();
            progress.Update(counts, session);
            if (options.Drain && counts.GetValueOrDefault(JobState.Queued) == 0 && counts.GetValueOrDefault(JobState.Running) == 0
                && watch.Idle && worker.ActiveJobs == 0)
                break;
            stop.WaitHandle.WaitOne(ProgressEveryMs);
        }

        if (stop.IsCancellationRequested) progress.Message("stopping: running jobs finish or are aborted (send the signal again to exit at once)");
        // The worker stops first, so its last CONCLUDEs reach a sentinel that is still listening.
        stopWorker.Cancel();
        workerThread.Join();
        stopSentinel.Cancel();
        sentinelThread.Join();
        if (sentinelFailure is not null)
        {
            progress.Done();
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(sentinelFailure);
        }
        while (finished.TryDequeue(out var f)) session.Add(f);
        progress.Done();
        Console.Out.Write(Summary(session, store.Counts(), outputRoot, clock.Elapsed));
        // Stopped by a signal: a server stopped as asked (0), or a drain that did not finish (130, as --help says).
        if (stop.IsCancellationRequested) return options.Drain ? (int)ExitCode.Interrupted : 0;
        return session.Any(f => f.Receipt.Status == ReceiptStatus.Failed) ? (int)ExitCode.Failed : 0;
    }

    private const int ProgressEveryMs = 250;

    /// <summary>
    /// An inproc:// name: the sentinel and the worker share NetMQ's context in this process, and no other
    /// process can connect (NetMQ's ipc:// would be a loopback TCP port any local user could join).
    /// </summary>
    internal static string LocalEndpoint() => $"inproc://casparian-start-{Guid.NewGuid():N}";

    private static string FailureLine(Finished f)
    {
        string error = Text.FirstLine(f.Receipt.ErrorMessage ?? "failed");
        bool transient = f.Receipt.Metrics.GetValueOrDefault(JobExecutor.TransientMetric) == 1;
        return $"job {f.JobId} failed{(transient ? " (transient; retried while retries remain)" : "")}: {f.Input}: {error}";
    }

    internal static string Summary(IReadOnlyList<Finished> session, Dictionary<JobState, long> counts, string outputRoot, TimeSpan elapsed)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        var done = session.Where(f => f.Receipt.Status == ReceiptStatus.Success).ToList();
        var files = done.SelectMany(f => f.Receipt.Artifacts)
            .Select(a => (Topic: a.GetValueOrDefault("topic", "?"), Path: Uri.TryCreate(a.GetValueOrDefault("uri", ""), UriKind.Absolute, out var u) && u.IsFile ? u.LocalPath : a.GetValueOrDefault("uri", ""),
                Rows: long.TryParse(a.GetValueOrDefault("rows"), NumberStyles.None, inv, out long r) ? r : 0))
            .OrderBy(a => a.Topic, StringComparer.Ordinal).ThenBy(a => a.Path, StringComparer.Ordinal)
            .ToList();
        sb.Append(inv, $"{done.Count} job(s) completed, {session.Count(f => f.Receipt.Status == ReceiptStatus.Failed)} failed in this session ({elapsed.TotalSeconds:0.0} s); ");
        sb.Append(inv, $"store: {counts.GetValueOrDefault(JobState.Queued)} queued, {counts.GetValueOrDefault(JobState.Running)} running, {counts.GetValueOrDefault(JobState.Completed)} completed, {counts.GetValueOrDefault(JobState.Failed)} failed\n");
        if (files.Count == 0) return sb.ToString();
        sb.Append(inv, $"Parquet written under {outputRoot}:\n");
        const int MaxListed = 40;
        int width = Math.Min(80, files.Max(f => Text.Rel(f.Path, outputRoot).Length));
        foreach (var f in files.Take(MaxListed))
            sb.Append("  ").Append(Text.Rel(f.Path, outputRoot).PadRight(width)).Append(inv, $"  {f.Rows,10:N0} rows\n");
        if (files.Count > MaxListed) sb.Append(inv, $"  … and {files.Count - MaxListed} more file(s)\n");
        foreach (var topic in files.GroupBy(f => f.Topic))
            sb.Append(inv, $"  {topic.Key}: {topic.Count()} file(s), {topic.Sum(f => f.Rows):N0} rows\n");
        return sb.ToString();
    }

    /// <summary>One `start` per home: the store, the worker id and the log are the home's (HOME/start.lock, HOME/start.pid).</summary>
    internal static PidLock LockHome(string home) =>
        PidLock.Acquire(Path.Combine(home, "start.lock"), Path.Combine(home, "start.pid"), owner => CliThrow.Unavailable_StartRunning(home, owner));

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
