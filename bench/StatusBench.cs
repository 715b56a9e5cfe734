// The status page's cost (issue 17): SentinelBench's run with the listener off, and with it on and
// scraped every second (GET /metrics and GET /api/status), as Prometheus and the dashboard would.
// Target: the two under 5% apart.
using System.ComponentModel;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[Description("SentinelBench's 20,000 jobs per invocation (times per job), with the status page off, or on and scraped every " +
             "second (/metrics and /api/status) by a client thread. The listener's cost is the gap between the two rows of a fleet.")]
public class StatusBench : SentinelBench
{
    [Params("off", "scraped")]
    public string Status { get; set; } = "off";

    private StatusServer? _server;
    private Thread? _scraper;
    private readonly ManualResetEventSlim _stopScraping = new();
    private int _scrapes;
    private string? _scrapeError;

    private protected override void Started(Sentinel sentinel, string db)
    {
        if (Status == "off") return;
        _server = new StatusServer(new StatusServerOptions
        {
            Listen = "127.0.0.1:0",
            Insecure = false,
            Store = Defaults.Store(db),
            JobLogsDir = null,
            UrlFile = null,
            Log = RoleLog.None,
        }, sentinel.Metrics);
        string url = _server.Url;
        _scraper = new Thread(() => Scrape(url)) { Name = "scraper", IsBackground = true };
        _scraper.Start();
    }

    private void Scrape(string url)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        do
        {
            try
            {
                string metrics = http.GetStringAsync(url + "metrics").GetAwaiter().GetResult();
                string status = http.GetStringAsync(url + "api/status").GetAwaiter().GetResult();
                if (!metrics.Contains("casparian_jobs_dispatched_total ", StringComparison.Ordinal) || !status.Contains("\"counts\"", StringComparison.Ordinal))
                    _scrapeError ??= "a scrape came back without the expected figures";
                Interlocked.Increment(ref _scrapes);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
                _scrapeError ??= e.Message;
            }
        }
        while (!_stopScraping.Wait(TimeSpan.FromSeconds(1)));
    }

    private protected override void Stopping()
    {
        if (_server is null) return;
        _stopScraping.Set();
        _scraper!.Join();
        _server.Dispose();
        // Checked after the run: the page answered every scrape with real figures.
        if (_scrapeError is not null || _scrapes == 0) throw new InvalidOperationException($"the status page failed while scraped ({_scrapes} scrape(s)): {_scrapeError}");
    }
}
