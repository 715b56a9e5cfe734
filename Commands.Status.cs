// `casparian status`: the queue at a glance in the terminal, from the store and, when it answers, the
// sentinel's /api/status (workers, rates, rows per topic); `--watch` redraws it every 2 s. A running
// `start` or `sentinel --http` records its status page's address in HOME/status.url for it.
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Casparian;

internal static partial class Commands
{
    private static readonly Flag StatusWatchFlag = new("--watch", null, "redraw every 2 s until Ctrl-C");
    private static readonly Flag StatusUrlFlag = new("--url", "URL", "the sentinel's status page (default: the http setting, else the one `start` or `sentinel --http` recorded under HOME)");

    private static readonly Command StatusCommand = new("status", "queue counts, workers, rates and recent failures at a glance",
        "status [--watch] [--url URL] [--db PATH]",
        [StatusWatchFlag, StatusUrlFlag, .. Config.Flags(Config.Db, Config.Http)],
        args =>
        {
            args.RequirePositionals(0, 0);
            var config = Config.Load(args);
            var storeOptions = StoreOptions(config, create: false);
            string? url = args.Get(StatusUrlFlag.Name) ?? StatusUrl(config);
            if (!args.Has(StatusWatchFlag.Name))
            {
                Console.Out.Write(StatusText(storeOptions, url));
                return 0;
            }
            using var signal = new ShutdownSignal();
            bool terminal = !Console.IsOutputRedirected;
            while (!signal.Token.IsCancellationRequested)
            {
                string text = StatusText(storeOptions, url);
                // Home, redraw, clear what the previous frame left below.
                Console.Out.Write(terminal ? "\x1b[H" + text.Replace("\n", "\x1b[K\n") + "\x1b[J" : text + "\n");
                Console.Out.Flush();
                signal.Token.WaitHandle.WaitOne(2000);
            }
            return 0;
        });

    /// <summary>Where a sentinel serves: an explicit http setting (not port 0), else HOME/status.url.</summary>
    private static string? StatusUrl(Config config)
    {
        string http = config.Get(Config.Http);
        if (http != "off" && !http.EndsWith(":0", StringComparison.Ordinal))
        {
            string host = http[..http.LastIndexOf(':')];
            if (host is "0.0.0.0" or "::" or "[::]" or "*" or "+") http = "127.0.0.1" + http[http.LastIndexOf(':')..];
            return $"http://{http}/";
        }
        try
        {
            return File.Exists(config.StatusUrlFile) ? File.ReadAllText(config.StatusUrlFile).Trim() : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    internal static string StatusText(StoreOptions storeOptions, string? url)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        if (!JobStores.Exists(storeOptions)) sb.Append(inv, $"no job store at {storeOptions.Db} yet\n");
        else
        {
            using var store = JobStores.Open(storeOptions);
            var counts = store.Counts();
            var oldest = store.OldestQueuedAt();
            sb.Append(inv, $"store {store.Location}\n");
            sb.Append(inv, $"jobs: {counts.GetValueOrDefault(JobState.Queued):N0} queued");
            if (oldest is { } at) sb.Append(" (oldest ").Append(Ago(DateTimeOffset.UtcNow - at)).Append(')');
            sb.Append(inv, $", {counts.GetValueOrDefault(JobState.Running):N0} running, {counts.GetValueOrDefault(JobState.Completed):N0} completed, ");
            sb.Append(inv, $"{counts.GetValueOrDefault(JobState.Failed):N0} failed, {counts.GetValueOrDefault(JobState.Cancelled):N0} cancelled\n");
            var failed = store.List(JobState.Failed, 5);
            if (failed.Count > 0)
            {
                sb.Append("recent failures:\n");
                for (int i = failed.Count - 1; i >= 0; i--)
                {
                    var j = failed[i];
                    string error = Text.FirstLine(j.Error ?? "failed");
                    // A worker's error names the parser and the file already; the store's own ones (a lost worker) do not.
                    if (error.Contains(j.InputPath, StringComparison.Ordinal)) sb.Append(inv, $"  job {j.Id}: {error}\n");
                    else sb.Append(inv, $"  job {j.Id} {j.ParserName} {j.ParserVersion} {j.InputPath}: {error}\n");
                }
            }
        }
        if (url is null)
        {
            sb.Append("sentinel: no status page known (start one with `casparian start`, or `casparian sentinel --http 127.0.0.1:PORT`)\n");
            return sb.ToString();
        }
        var report = FetchStatus(url, out string? why);
        if (report is null)
        {
            sb.Append(inv, $"sentinel at {url}: not reachable ({why})\n");
            return sb.ToString();
        }
        int slots = report.Workers.Sum(w => w.Slots), busy = report.Workers.Sum(w => w.Busy);
        sb.Append(inv, $"sentinel at {url}: {report.Workers.Count} worker(s), {busy}/{slots} slot(s) busy; ");
        sb.Append(inv, $"{report.Rates.CompletedPerSecond:0.##} jobs/s over the last minute; {report.Rates.Completed:N0} completed, {report.Rates.Failed:N0} failed since it started\n");
        foreach (var w in report.Workers)
            sb.Append(inv, $"  worker {w.Id}: {w.Busy}/{w.Slots} busy, last heartbeat {w.LastHeartbeatSecondsAgo:0.#} s ago\n");
        foreach (var t in report.Topics)
            sb.Append(inv, $"  topic {t.Topic}: {t.Rows:N0} rows, {t.Bytes:N0} bytes, {t.Quarantined:N0} quarantined\n");
        return sb.ToString();
    }

    private static string Ago(TimeSpan t) => t.TotalSeconds switch
    {
        < 0 => "just now",
        < 120 => string.Create(CultureInfo.InvariantCulture, $"{t.TotalSeconds:0.#} s"),
        < 7200 => string.Create(CultureInfo.InvariantCulture, $"{t.TotalMinutes:0} min"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{t.TotalHours:0.#} h"),
    };

    private static StatusReport? FetchStatus(string url, out string? why)
    {
        try
        {
            // Made here, not as a static: every command would pay for it at start-up.
            using var client = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
            using var response = client.GetAsync(new Uri(new Uri(url), "api/status")).GetAwaiter().GetResult();
            if (!response.IsSuccessStatusCode)
            {
                why = $"HTTP {(int)response.StatusCode}";
                return null;
            }
            why = null;
            return JsonSerializer.Deserialize(response.Content.ReadAsStream(), StatusJson.Default.StatusReport);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or JsonException or UriFormatException or IOException)
        {
            why = Text.FirstLine(e.Message);
            return null;
        }
    }

    /// <summary>The status page's options, or null when it is off. <paramref name="fallback"/>: the address when the http setting is not given (start's).</summary>
    internal static StatusServerOptions? StatusServerOptions(Config c, string? fallback, string? jobLogs, RoleLog log)
    {
        string listen = c.Describe(Config.Http).Source == SettingSource.Default && fallback is not null ? fallback : c.Get(Config.Http);
        if (listen == "off") return null;
        return new StatusServerOptions
        {
            Listen = listen,
            Insecure = c.Get(Config.HttpInsecure),
            Store = StoreOptions(c, create: true),
            JobLogsDir = jobLogs,
            UrlFile = c.StatusUrlFile,
            Log = log,
        };
    }
}
