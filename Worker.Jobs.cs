// What one DISPATCH does, on the thread pool: parser (source or bundle) → environment → guest
// process → Parquet → receipt. Every failure becomes a receipt; nothing here throws to the loop.
//
// Receipt contract with the sentinel: FAILED with metrics["transient"] = 1 is worth retrying (guest
// exit code 2: TransientError, MemoryError, or a kill we did not send); any other FAILED is permanent.
using System.Diagnostics;
using System.Text;
using Apache.Arrow;

namespace Casparian;

internal sealed record JobExecutorOptions
{
    public required OutputOptions Output { get; init; }
    public required BridgeOptions Bridge { get; init; }
    /// <summary>bridge_shim.py, from Shim.Ensure.</summary>
    public required string ShimPath { get; init; }
    /// <summary>Where bundles are extracted, one directory per source hash, reused across jobs.</summary>
    public required string ParsersDir { get; init; }
    /// <summary>Per-job guest logs: {LogsDir}/job-{id}.log.</summary>
    public required string LogsDir { get; init; }
    public required long LogLimit { get; init; }
    /// <summary>Total time a job may run when DISPATCH does not say (timeout_seconds).</summary>
    public required TimeSpan DefaultTimeout { get; init; }
    /// <summary>Told of every receipt before it is sent (`start` keeps its session summary with it).</summary>
    public Action<ulong, Dispatch, JobReceipt>? Finished { get; init; }
}

internal sealed class JobExecutor(JobExecutorOptions options, EnvManager envs, WarmGuests? warm = null)
{
    public const string TransientMetric = "transient";
    /// <summary>The job's whole time on the worker, bundle to receipt.</summary>
    public const string DurationMetric = "duration_ms";

    /// <summary>Guest start times for the worker's HEARTBEAT (the job's start to its parser connecting).</summary>
    public WorkerFigureCollector Figures { get; } = new();

    public async Task<JobReceipt> RunAsync(ulong jobId, Dispatch dispatch, CancellationToken abort)
    {
        JobReceipt receipt = await ExecuteAsync(jobId, dispatch, abort).ConfigureAwait(false);
        options.Finished?.Invoke(jobId, dispatch, receipt);
        return receipt;
    }

    private async Task<JobReceipt> ExecuteAsync(ulong jobId, Dispatch dispatch, CancellationToken abort)
    {
        var clock = Stopwatch.StartNew();
        try
        {
            GuestParser parser = ParserFor(dispatch);
            // A routing rule's prefix (issue 19) renames every topic the guest writes; the sinks come named by the final names.
            string prefix = dispatch.TopicPrefix ?? "";
            if (!Sources.IsValidTopicPrefix(prefix)) throw WorkerThrow.Dispatch_BadTopicPrefix(dispatch.PluginName, prefix);
            // Sinks are checked first: cheap, and a bad one should not wait for an environment build.
            // The lineage column _source_hash carries the hash taken when the job was queued; the receipt
            // reports the hash of the bytes actually parsed (below), which the store records as the version.
            var source = new OutputSource(dispatch.PluginName, dispatch.ParserVersion, dispatch.FilePath, dispatch.ContentHash ?? "");
            var output = new JobOutput(options.Output, jobId, source, dispatch.Sinks) { NewestWins = true };
            output.ExpectSchemas(dispatch.TopicSchemas);
            using var outputs = new DisposeLast(() => output.Dispose());
            using EnvLease env = await envs.AcquireAsync(dispatch.EnvHash, dispatch.LockfileContent, abort).ConfigureAwait(false);
            using var log = new JobLog(Path.Combine(options.LogsDir, $"job-{jobId}.log"), options.LogLimit);
            // Hashed while the guest reads it; the receipt names the content parsed, not the content queued.
            var input = InputSnapshot.Take(dispatch.FilePath);
            using var hashCancel = CancellationTokenSource.CreateLinkedTokenSource(abort);
            Task<string> hashing = input.HashAsync(hashCancel.Token);
            var request = new GuestRequest
            {
                Interpreter = env.InterpreterPath,
                ShimPath = options.ShimPath,
                Parser = parser,
                FilePath = dispatch.FilePath,
                JobId = jobId,
                FileVersionId = dispatch.FileVersionId,
                ParserName = dispatch.ParserVersion is { } v ? $"{dispatch.PluginName}@{v}" : dispatch.PluginName,
                Timeout = dispatch.TimeoutSeconds is > 0 and var s ? TimeSpan.FromSeconds(s) : options.DefaultTimeout,
                Options = options.Bridge,
                Warm = warm,
            };
            var sink = new OutputSink(output, log, prefix);
            TimeSpan launchedAt = clock.Elapsed;
            GuestResult result = await Bridge.RunAsync(request, sink, abort).ConfigureAwait(false);
            if (result.WarmLost)
            {
                // The zygote died under the job: what it wrote is dropped and the job runs once more, cold.
                log.Write(GuestLogLevel.Warning, "casparian: the warm guest's fork server died during the job; running it again on a cold guest");
                output.Dispose();
                output = new JobOutput(options.Output, jobId, source, dispatch.Sinks) { NewestWins = true };
                output.ExpectSchemas(dispatch.TopicSchemas);
                sink = new OutputSink(output, log, prefix);
                launchedAt = clock.Elapsed;
                result = await Bridge.RunAsync(request with { Warm = null }, sink, abort).ConfigureAwait(false);
            }
            if (result.ConnectedAfter is { } connected) Figures.GuestStarted(launchedAt + connected, cold: !result.Warm);
            string? parsedHash = null;
            if (result.Outcome == GuestOutcome.Success)
            {
                parsedHash = await hashing.ConfigureAwait(false);
                if (!await input.UnchangedAsync(parsedHash, abort).ConfigureAwait(false))
                    return new JobReceipt
                    {
                        Status = ReceiptStatus.Failed,
                        ErrorMessage = $"input {dispatch.FilePath} changed while it was parsed; nothing was committed, and the retry parses it again",
                        Metrics = new() { [TransientMetric] = 1, [DurationMetric] = clock.ElapsedMilliseconds },
                    };
            }
            else
            {
                await hashCancel.CancelAsync().ConfigureAwait(false);
                try { await hashing.ConfigureAwait(false); }
                catch (Exception e) when (e is OperationCanceledException or IOException or UnauthorizedAccessException) { }
            }
            var metrics = new Dictionary<string, long>
            {
                ["tables"] = result.Tables,
                ["log_lines"] = result.LogLines,
                ["guest_ms"] = (long)result.Duration.TotalMilliseconds,
            };
            if (result.ExitCode is { } code) metrics["exit_code"] = code;
            if (result.Warm) metrics["warm"] = 1;

            switch (result.Outcome)
            {
                case GuestOutcome.Success:
                    OutputResult written = output.Commit(dispatch.Supersedes);
                    foreach (var (k, value) in written.Metrics()) metrics[k] = value;
                    metrics[DurationMetric] = clock.ElapsedMilliseconds;
                    return new JobReceipt { Status = ReceiptStatus.Success, Metrics = metrics, Artifacts = written.ReceiptArtifacts(), ContentHash = parsedHash };
                case GuestOutcome.Aborted:
                    return new JobReceipt { Status = ReceiptStatus.Aborted, Metrics = metrics, ErrorMessage = result.ErrorMessage ?? "aborted" };
                case GuestOutcome.Transient:
                    metrics[TransientMetric] = 1;
                    return Failed(result, metrics);
                case GuestOutcome.Failed when DiskFull.Is(sink.Failure):
                    // The output's disk filled up under the writer: retried with backoff once space is back.
                    metrics[TransientMetric] = 1;
                    return Failed(result, metrics);
                default:
                    return Failed(result, metrics);
            }
        }
        catch (OperationCanceledException) when (abort.IsCancellationRequested)
        {
            return new JobReceipt { Status = ReceiptStatus.Aborted, ErrorMessage = "aborted before the parser started" };
        }
        catch (Exception e) when (DiskFull.Is(e))
        {
            // Committing (or the job log) hit a full disk: transient, retried with backoff.
            return new JobReceipt
            {
                Status = ReceiptStatus.Failed,
                ErrorMessage = $"disk full on the worker: {e.Message}",
                Metrics = new() { [TransientMetric] = 1, [DurationMetric] = clock.ElapsedMilliseconds },
            };
        }
        catch (S3Exception e)
        {
            // The bucket refused or could not be reached (credentials, endpoint, network): nothing was
            // committed for the topic that failed, and the job is retried with backoff (Output.S3.cs).
            return new JobReceipt
            {
                Status = ReceiptStatus.Failed,
                ErrorMessage = e.Message,
                Metrics = new() { [TransientMetric] = 1, [DurationMetric] = clock.ElapsedMilliseconds },
            };
        }
        catch (CasparianException e)
        {
            // A bad sink, schema mismatch, unusable bundle or failed environment build: retrying will not fix it.
            return new JobReceipt { Status = ReceiptStatus.Failed, ErrorMessage = e.Message, Metrics = new() { [DurationMetric] = clock.ElapsedMilliseconds } };
        }
        catch (IOException e)
        {
            // The disk (output, logs, bundle cache) failed under us: another attempt may well succeed.
            return new JobReceipt
            {
                Status = ReceiptStatus.Failed,
                ErrorMessage = $"I/O error on the worker: {e.Message}",
                Metrics = new() { [TransientMetric] = 1, [DurationMetric] = clock.ElapsedMilliseconds },
            };
        }
    }

    private static JobReceipt Failed(GuestResult result, Dictionary<string, long> metrics)
    {
        string message = result.ErrorMessage ?? $"parser failed ({result.Outcome})";
        if (result.Traceback is { Length: > 0 } tb) message += "\n" + tb;
        return new JobReceipt { Status = ReceiptStatus.Failed, Metrics = metrics, ErrorMessage = message };
    }

    private GuestParser ParserFor(Dispatch dispatch)
    {
        if (dispatch.ParserArchive is not { } encoded) return GuestParser.Source(dispatch.SourceCode);
        byte[] archive;
        try
        {
            archive = Convert.FromBase64String(encoded);
        }
        catch (FormatException)
        {
            throw WorkerThrow.Dispatch_BadArchive(dispatch.PluginName);
        }
        // Extracted once per source hash and reused by every later job of the same bundle.
        ExtractedBundle bundle = ParserBundle.Extract(archive, options.ParsersDir);
        return GuestParser.Path(bundle.EntryPath);
    }

    /// <summary>Streams the guest's tables into the job's Parquet files and its log lines into the job log.</summary>
    private sealed class OutputSink(JobOutput output, JobLog log, string prefix) : IGuestSink
    {
        /// <summary>What a write threw, kept so a full disk can be told from a bad table.</summary>
        public Exception? Failure { get; private set; }

        public void Table(string topic, RecordBatch batch)
        {
            try
            {
                // The prefixed name is checked as any topic is (JobOutput: at most Bridge.MaxTopicLength characters).
                using (batch) output.Write(prefix.Length == 0 ? topic : prefix + topic, batch);
            }
            catch (Exception e)
            {
                Failure ??= e;
                throw;
            }
        }

        public void Log(GuestLogLevel level, string text) => log.Write(level, text);
    }
}

/// <summary>
/// A job's guest log, capped at a size: past the cap lines are counted, not written, and the count
/// is noted at the end, so a parser printing gigabytes cannot fill the disk.
/// </summary>
internal sealed class JobLog : IDisposable
{
    private readonly StreamWriter _writer;
    private readonly long _limit;
    private long _written;
    private long _dropped;

    public JobLog(string path, long limit)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        _writer = new StreamWriter(path, append: false, new UTF8Encoding(false), bufferSize: 64 << 10);
        _limit = limit;
    }

    public void Write(GuestLogLevel level, string text)
    {
        if (_written >= _limit)
        {
            _dropped++;
            return;
        }
        string line = $"{DateTime.Now:HH:mm:ss.fff} {LevelName(level)} {text}\n";
        _written += Encoding.UTF8.GetByteCount(line);
        _writer.Write(line);
    }

    public static string LevelName(GuestLogLevel level) => level switch
    {
        GuestLogLevel.Stdout => "stdout ",
        GuestLogLevel.Stderr => "stderr ",
        GuestLogLevel.Debug => "debug  ",
        GuestLogLevel.Info => "info   ",
        GuestLogLevel.Warning => "warning",
        GuestLogLevel.Error => "error  ",
        _ => "?      ",
    };

    public void Dispose()
    {
        if (_dropped > 0) _writer.Write($"[log capped at {_limit} bytes; {_dropped} more line(s) not written]\n");
        _writer.Dispose();
    }
}

/// <summary>
/// What a worker needs besides its socket: environments and the job executor. `worker` owns one;
/// `start` shares one among its workers.
/// </summary>
internal sealed class WorkerHost : IDisposable
{
    public required EnvManager Envs { get; init; }
    public required JobExecutor Executor { get; init; }

    /// <summary>The zygotes of this host's warm guests.</summary>
    public required WarmGuests Warm { get; init; }

    public static WorkerHost Create(VenvOptions venvs, JobExecutorOptions executor, WarmOptions warm, Action<string> log)
    {
        var envs = new EnvManager(venvs);
        var zygotes = new WarmGuests(warm, log);
        envs.Evicted += zygotes.EvictUnder;
        return new WorkerHost { Envs = envs, Warm = zygotes, Executor = new JobExecutor(executor, envs, zygotes) };
    }

    /// <summary>PREPARE_ENV: build (or find) the environment and say where its interpreter is.</summary>
    public async Task<EnvReady> PrepareEnv(PrepareEnv request, CancellationToken cancel)
    {
        using var lease = await Envs.AcquireAsync(request.EnvHash, request.LockfileContent, cancel).ConfigureAwait(false);
        return new EnvReady { EnvHash = request.EnvHash, InterpreterPath = lease.InterpreterPath, Cached = lease.Cached };
    }

    public void Dispose()
    {
        Warm.Dispose();
        Envs.Dispose();
    }
}

/// <summary>Runs an action at the end of a using scope (for a resource the scope may replace).</summary>
internal sealed class DisposeLast(Action dispose) : IDisposable
{
    public void Dispose() => dispose();
}
