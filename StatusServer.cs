// The read-only HTTP listener of `sentinel --http` and `start` (issue 17): /metrics (Prometheus text,
// PrometheusExport in Metrics.cs), /api/status, /api/jobs?state=…, /api/jobs/ID (with the log tail)
// and / (the dashboard, dashboard/index.html embedded in the binary). System.Net.HttpListener: it is
// in the base library, builds into the NativeAOT binary without ASP.NET's weight, and is plenty for a
// status page scraped every few seconds.
//
// Security: nothing here changes state or hands out work or code; job input paths, errors and log
// tails are shown, which is why the listener binds loopback unless told otherwise, and a non-loopback
// address needs the explicit http_insecure opt-in (there is no authentication on this page).
// The server has its own store connection, used under one lock (a store connection is single-threaded).
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Casparian;

internal sealed record StatusServerOptions
{
    /// <summary>HOST:PORT to listen on; PORT 0 picks a free one (see <see cref="StatusServer.Url"/>).</summary>
    public required string Listen { get; init; }
    /// <summary>Allows a non-loopback HOST (the page has no authentication).</summary>
    public required bool Insecure { get; init; }
    /// <summary>The store the sentinel serves, opened again read-side by the server.</summary>
    public required StoreOptions Store { get; init; }
    /// <summary>Where job-{id}.log files are (a local worker's logs); null when the logs live on other hosts.</summary>
    public required string? JobLogsDir { get; init; }
    /// <summary>Holds <see cref="StatusServer.Url"/> while the server serves (`casparian status` reads it); null for none.</summary>
    public required string? UrlFile { get; init; }
    public required RoleLog Log { get; init; }
}

internal sealed class StatusServer : IDisposable
{
    /// <summary>Sampling period of the jobs/s series, and how many samples it keeps (10 minutes).</summary>
    public const int SampleEveryMs = 5000;
    private const int Samples = 121;
    private const int LogTailBytes = 16 << 10;
    private const int MaxJobsListed = 500;
    private const int RecentFailures = 10;

    private readonly StatusServerOptions _options;
    private readonly SentinelMetrics _metrics;
    private readonly PrometheusExport _export;
    private readonly IJobStore _store;
    private readonly Lock _storeGate = new();
    private readonly HttpListener _listener;
    private readonly Thread _loop;
    private readonly Timer _sampler;
    private readonly (long T, long Completed, long Failed)[] _samples = new (long, long, long)[Samples];
    private int _sampleCount;
    private readonly long _startedAt = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

    // Store figures for the gauges, refreshed before each scrape.
    private Dictionary<JobState, long> _counts = [];
    private double? _oldestQueuedSeconds;

    public StatusServer(StatusServerOptions options, SentinelMetrics metrics)
    {
        _options = options;
        _metrics = metrics;
        var (host, port) = ParseListen(options.Listen, options.Insecure);
        _store = JobStores.Open(options.Store);
        try
        {
            (_listener, Url) = Listen(host, port);
        }
        catch
        {
            _store.Dispose();
            throw;
        }
        _export = metrics.Export();
        var meter = metrics.Meter;
        meter.CreateObservableGauge("casparian.jobs", ObserveJobs, description: "Jobs in the store by state.");
        meter.CreateObservableGauge("casparian.queue.oldest_age", () => _oldestQueuedSeconds ?? 0,
            unit: "s", description: "How long the oldest QUEUED job has been queued (0 when the queue is empty).");
        _export.BeforeCollect(RefreshStore);
        Sample(null);
        _sampler = new Timer(Sample, null, SampleEveryMs, SampleEveryMs);
        _loop = new Thread(Serve) { Name = "status-http", IsBackground = true };
        _loop.Start();
        options.Log.Info($"status page on {Url} (/metrics, /api/status)");
        if (options.UrlFile is { } file)
        {
            try
            {
                File.WriteAllText(file, Url + "\n");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                options.Log.Warn($"cannot record the status page's address in {file}: {e.Message}");
            }
        }
    }

    /// <summary>The base URL, ending in '/', with the real port.</summary>
    public string Url { get; }

    // ---- listening -----------------------------------------------------------------------------

    /// <summary>HOST:PORT, checked: a loopback host unless <paramref name="insecure"/>.</summary>
    internal static (string Host, int Port) ParseListen(string listen, bool insecure)
    {
        int colon = listen.LastIndexOf(':');
        if (colon <= 0 || !ushort.TryParse(listen.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out ushort port))
            throw StatusThrow.Listen_Bad(listen);
        string host = listen[..colon].Trim('[', ']');
        if (!IsLoopback(host) && !insecure) throw StatusThrow.Listen_NotLoopback(listen);
        return (host, port);
    }

    internal static bool IsLoopback(string host) =>
        host == "localhost" || (IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip));

    private static (HttpListener, string) Listen(string host, int port)
    {
        // HttpListener has no port 0: ask the kernel for a free port, then take it (retrying if another process wins the race).
        for (int attempt = 0; ; attempt++)
        {
            int p = port != 0 ? port : FreePort(host);
            string shown = host is "0.0.0.0" or "::" or "*" or "+" ? "+" : host.Contains(':') ? $"[{host}]" : host;
            var listener = new HttpListener();
            listener.Prefixes.Add($"http://{shown}:{p}/");
            // A browser may say localhost for 127.0.0.1; the Host header must match a prefix.
            if (shown is "127.0.0.1") listener.Prefixes.Add($"http://localhost:{p}/");
            try
            {
                listener.Start();
                string url = $"http://{(shown == "+" ? "127.0.0.1" : shown)}:{p}/";
                return (listener, url);
            }
            catch (HttpListenerException e)
            {
                ((IDisposable)listener).Dispose();
                if (port == 0 && attempt < 5) continue;
                throw StatusThrow.Listen_Failed($"{host}:{p}", e);
            }
        }
    }

    private static int FreePort(string host)
    {
        var address = IPAddress.TryParse(host, out var ip) ? ip : IPAddress.Loopback;
        if (host is "0.0.0.0" or "*" or "+") address = IPAddress.Any;
        using var probe = new TcpListener(address, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    private void Serve()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = _listener.GetContext();
            }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                return;
            }
            ThreadPool.QueueUserWorkItem(static state => state.Server.Handle(state.Context), (Server: this, Context: context), preferLocal: false);
        }
    }

    private void Handle(HttpListenerContext context)
    {
        var response = context.Response;
        try
        {
            response.Headers["Cache-Control"] = "no-store";
            response.Headers["X-Content-Type-Options"] = "nosniff";
            var request = context.Request;
            if (request.HttpMethod is not ("GET" or "HEAD"))
            {
                response.Headers["Allow"] = "GET, HEAD";
                Text(response, 405, "read-only: GET or HEAD\n");
                return;
            }
            string path = request.Url?.AbsolutePath ?? "/";
            switch (path)
            {
                case "/" or "/index.html":
                    Dashboard(response);
                    break;
                case "/metrics":
                    Metrics(response);
                    break;
                case "/api/status":
                    Json(response, 200, Status(), StatusJson.Default.StatusReport);
                    break;
                case "/api/jobs":
                    Jobs(response, request.QueryString["state"], request.QueryString["limit"]);
                    break;
                case var p when p.StartsWith("/api/jobs/", StringComparison.Ordinal):
                    Job(response, p["/api/jobs/".Length..]);
                    break;
                default:
                    Text(response, 404, $"no page {path}; try /, /metrics, /api/status, /api/jobs\n");
                    break;
            }
        }
        catch (StoreException e)
        {
            TryAnswer(response, 503, $"store unavailable: {e.Message}\n");
        }
        catch (Exception e) when (e is HttpListenerException or IOException or ObjectDisposedException)
        {
            // The client went away.
        }
        catch (Exception e)
        {
            _options.Log.Limited("http", $"status page request failed: {e}");
            TryAnswer(response, 500, "internal error\n");
        }
        finally
        {
            try { response.Close(); }
            catch (Exception e) when (e is HttpListenerException or IOException or ObjectDisposedException or InvalidOperationException) { }
        }
    }

    private static void TryAnswer(HttpListenerResponse response, int code, string text)
    {
        try { Text(response, code, text); }
        catch (Exception e) when (e is HttpListenerException or IOException or ObjectDisposedException or InvalidOperationException) { }
    }

    // ---- pages ---------------------------------------------------------------------------------

    private static readonly byte[] DashboardPage = LoadDashboard();

    private static byte[] LoadDashboard()
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("dashboard/index.html")
            ?? throw new InvalidOperationException("the dashboard is missing from the binary (embedded resource dashboard/index.html)");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }

    private static void Dashboard(HttpListenerResponse response)
    {
        response.Headers["Content-Security-Policy"] = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:";
        Bytes(response, 200, "text/html; charset=utf-8", DashboardPage);
    }

    private void Metrics(HttpListenerResponse response)
    {
        using var body = new MemoryStream();
        _export.WriteAsync(body, CancellationToken.None).GetAwaiter().GetResult();
        Bytes(response, 200, "text/plain; version=0.0.4; charset=utf-8", body.ToArray());
    }

    private void RefreshStore()
    {
        lock (_storeGate)
        {
            _counts = _store.Counts();
            _oldestQueuedSeconds = _store.OldestQueuedAt() is { } at ? Math.Max(0, (_options.Store.Clock.GetUtcNow() - at).TotalSeconds) : null;
        }
    }

    private IEnumerable<Measurement<long>> ObserveJobs()
    {
        var counts = _counts;
        foreach (var s in JobStates.All)
            yield return new Measurement<long>(counts.GetValueOrDefault(s), new KeyValuePair<string, object?>("state", s.Name().ToLowerInvariant()));
    }

    internal StatusReport Status()
    {
        RefreshStore();
        List<JobRecord> failures;
        lock (_storeGate) failures = _store.List(JobState.Failed, RecentFailures);
        failures.Reverse();
        long now = _options.Store.Clock.GetUtcNow().ToUnixTimeMilliseconds();
        return new StatusReport
        {
            Version = Program.Version,
            Now = now,
            StartedAt = _startedAt,
            Counts = JobStates.All.ToDictionary(s => s.Name(), s => _counts.GetValueOrDefault(s)),
            OldestQueuedSeconds = _oldestQueuedSeconds,
            Workers = [.. _metrics.Workers.Select(w => new WorkerReport
            {
                Id = w.Id, Slots = w.Slots, Busy = w.Busy, Capabilities = [.. w.Capabilities],
                LastHeartbeatSecondsAgo = Math.Max(0, (now - w.LastSeenMs) / 1000.0),
            })],
            Rates = Rates(),
            RecentFailures = [.. failures.Select(Summary)],
            Topics = [.. _metrics.Topics.OrderBy(t => t.Key, StringComparer.Ordinal).Select(t => new TopicReport
            {
                Topic = t.Key, Rows = Interlocked.Read(ref t.Value.Rows), Bytes = Interlocked.Read(ref t.Value.Bytes),
                Quarantined = Interlocked.Read(ref t.Value.Quarantined),
            })],
        };
    }

    private void Jobs(HttpListenerResponse response, string? stateText, string? limitText)
    {
        JobState? state = null;
        if (stateText is { Length: > 0 })
        {
            if (!JobStates.TryParse(stateText, out var s)) { Text(response, 400, $"unknown state '{stateText}'; one of {string.Join(", ", JobStates.All.Select(x => x.Name()))}\n"); return; }
            state = s;
        }
        int limit = 100;
        if (limitText is { Length: > 0 } && (!int.TryParse(limitText, NumberStyles.None, CultureInfo.InvariantCulture, out limit) || limit < 1))
        {
            Text(response, 400, $"bad limit '{limitText}': a positive integer\n");
            return;
        }
        List<JobRecord> jobs;
        lock (_storeGate) jobs = _store.List(state, Math.Min(limit, MaxJobsListed));
        jobs.Reverse();
        Json(response, 200, [.. jobs.Select(Summary)], StatusJson.Default.ListJobSummary);
    }

    private void Job(HttpListenerResponse response, string idText)
    {
        if (!long.TryParse(idText, NumberStyles.None, CultureInfo.InvariantCulture, out long id) || id <= 0)
        {
            Text(response, 400, $"bad job id '{idText}'\n");
            return;
        }
        JobRecord? job;
        lock (_storeGate) job = _store.Get(id);
        if (job is null)
        {
            Text(response, 404, $"no job {id}\n");
            return;
        }
        string? logPath = _options.JobLogsDir is { } dir ? Path.Combine(dir, $"job-{id}.log") : null;
        Json(response, 200, new JobDetail
        {
            Job = Summary(job),
            Error = job.Error,
            Metrics = job.MetricsJson,
            Artifacts = job.ArtifactsJson,
            LogPath = logPath,
            LogTail = logPath is null ? null : LogTail(logPath),
        }, StatusJson.Default.JobDetail);
    }

    /// <summary>The last <see cref="LogTailBytes"/> of a job's log, from a line start; null when there is none.</summary>
    internal static string? LogTail(string path)
    {
        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            long start = Math.Max(0, file.Length - LogTailBytes);
            file.Position = start;
            var buffer = new byte[file.Length - start];
            file.ReadExactly(buffer);
            string text = Encoding.UTF8.GetString(buffer);
            if (start > 0 && text.IndexOf('\n') is >= 0 and var nl) text = text[(nl + 1)..];
            return text;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    internal static JobSummary Summary(JobRecord j) => new()
    {
        Id = j.Id,
        Parser = $"{j.ParserName}@{j.ParserVersion}",
        Input = j.InputPath,
        State = j.State.Name(),
        Worker = j.Worker,
        RetryCount = j.RetryCount,
        CreatedAt = j.CreatedAt.ToUnixTimeMilliseconds(),
        FinishedAt = j.FinishedAt?.ToUnixTimeMilliseconds(),
        Error = j.Error is { Length: > 0 } e ? global::Casparian.Text.FirstLine(e) : null,
    };

    // ---- rates ---------------------------------------------------------------------------------

    private void Sample(object? _)
    {
        long now = Environment.TickCount64;
        lock (_samples)
        {
            if (_sampleCount == Samples) Array.Copy(_samples, 1, _samples, 0, Samples - 1);
            else _sampleCount++;
            _samples[_sampleCount - 1] = (now, _metrics.Completed, _metrics.Failed);
        }
    }

    /// <summary>Jobs/s per sampling period over the last minutes, oldest first, and over the last minute.</summary>
    private RateReport Rates()
    {
        (long T, long Completed, long Failed)[] s;
        lock (_samples) s = _samples[.._sampleCount];
        var points = new List<RatePoint>();
        for (int i = 1; i < s.Length; i++)
        {
            double seconds = Math.Max(0.001, (s[i].T - s[i - 1].T) / 1000.0);
            points.Add(new RatePoint
            {
                SecondsAgo = (Environment.TickCount64 - s[i].T) / 1000.0,
                Completed = Math.Round((s[i].Completed - s[i - 1].Completed) / seconds, 3),
                Failed = Math.Round((s[i].Failed - s[i - 1].Failed) / seconds, 3),
            });
        }
        // The last minute, counted up to now rather than to the last sample.
        long now = Environment.TickCount64;
        var from = s.FirstOrDefault(x => now - x.T <= 60_000 + SampleEveryMs);
        double window = from.T == 0 ? 0 : (now - from.T) / 1000.0;
        double perSecond = window < 1 ? 0 : (_metrics.Completed - from.Completed) / window;
        return new RateReport { PeriodSeconds = SampleEveryMs / 1000, Points = points, CompletedPerSecond = Math.Round(perSecond, 3), Completed = _metrics.Completed, Failed = _metrics.Failed };
    }

    // ---- responses -----------------------------------------------------------------------------

    private static void Json<T>(HttpListenerResponse response, int code, T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type) =>
        Bytes(response, code, "application/json; charset=utf-8", JsonSerializer.SerializeToUtf8Bytes(value, type));

    private static void Text(HttpListenerResponse response, int code, string text) =>
        Bytes(response, code, "text/plain; charset=utf-8", Encoding.UTF8.GetBytes(text));

    private static void Bytes(HttpListenerResponse response, int code, string contentType, byte[] body)
    {
        response.StatusCode = code;
        response.ContentType = contentType;
        response.ContentLength64 = body.Length;
        response.OutputStream.Write(body);
    }

    public void Dispose()
    {
        try
        {
            // Only ours: a later role may have written its own address meanwhile.
            if (_options.UrlFile is { } file && File.Exists(file) && File.ReadAllText(file).Trim() == Url) File.Delete(file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        _sampler.Dispose();
        _listener.Stop();
        _listener.Close();
        _loop.Join(TimeSpan.FromSeconds(5));
        lock (_storeGate) _store.Dispose();
    }
}

// ---- the JSON the API serves (docs/observability.md) ---------------------------------------------

internal sealed record StatusReport
{
    public required string Version { get; init; }
    /// <summary>Unix milliseconds, the sentinel's clock.</summary>
    public required long Now { get; init; }
    public required long StartedAt { get; init; }
    public required Dictionary<string, long> Counts { get; init; }
    public double? OldestQueuedSeconds { get; init; }
    public required List<WorkerReport> Workers { get; init; }
    public required RateReport Rates { get; init; }
    public required List<JobSummary> RecentFailures { get; init; }
    public required List<TopicReport> Topics { get; init; }
}

internal sealed record WorkerReport
{
    public required string Id { get; init; }
    public required int Slots { get; init; }
    public required int Busy { get; init; }
    public required double LastHeartbeatSecondsAgo { get; init; }
    public required List<string> Capabilities { get; init; }
}

internal sealed record RateReport
{
    public required int PeriodSeconds { get; init; }
    public required List<RatePoint> Points { get; init; }
    public required double CompletedPerSecond { get; init; }
    public required long Completed { get; init; }
    public required long Failed { get; init; }
}

internal sealed record RatePoint
{
    public required double SecondsAgo { get; init; }
    public required double Completed { get; init; }
    public required double Failed { get; init; }
}

internal sealed record TopicReport
{
    public required string Topic { get; init; }
    public required long Rows { get; init; }
    public required long Bytes { get; init; }
    public required long Quarantined { get; init; }
}

internal sealed record JobSummary
{
    public required long Id { get; init; }
    public required string Parser { get; init; }
    public required string Input { get; init; }
    public required string State { get; init; }
    public string? Worker { get; init; }
    public required int RetryCount { get; init; }
    public required long CreatedAt { get; init; }
    public long? FinishedAt { get; init; }
    /// <summary>The error's first line.</summary>
    public string? Error { get; init; }
}

internal sealed record JobDetail
{
    public required JobSummary Job { get; init; }
    public string? Error { get; init; }
    /// <summary>The receipt's metrics and artifacts as stored (JSON text).</summary>
    public string? Metrics { get; init; }
    public string? Artifacts { get; init; }
    public string? LogPath { get; init; }
    public string? LogTail { get; init; }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(StatusReport))]
[JsonSerializable(typeof(List<JobSummary>))]
[JsonSerializable(typeof(JobDetail))]
internal sealed partial class StatusJson : JsonSerializerContext;

internal static class StatusThrow
{
    public static UsageException Listen_Bad(string listen) =>
        new($"bad http address '{listen}': expected HOST:PORT (e.g. 127.0.0.1:8080; port 0 picks a free one)");
    public static UsageException Listen_NotLoopback(string listen) =>
        new($"http address {listen} is not loopback, and the status page has no authentication; bind 127.0.0.1, or set http_insecure = true (--http-insecure true) to serve it to the network anyway");
    public static UnavailableException Listen_Failed(string listen, Exception e) =>
        new($"cannot serve the status page on {listen}: {e.Message}; pick another port with --http", e);
}
