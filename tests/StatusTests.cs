// The status page through the native binary (issue 17): /metrics scraped during a real `start` run
// and checked by promtool, the JSON API, `casparian status`, the loopback rule, and the dashboard in
// Debian's headless Chromium (tests/browser/dashboard.mjs, driven through playwright-core).
using System.Globalization;
using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Casparian.Tests;

public sealed partial class StatusTests(ITestOutputHelper output) : IDisposable
{
    private readonly Cluster _c = new();
    private static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(10) };

    public void Dispose() => _c.Dispose();

    /// <summary>
    /// A parser that logs a line, waits for the file STATUS_GATE names to exist (when set), sleeps
    /// STATUS_SLEEP seconds, and fails with a ValueError on a file saying "boom".
    /// </summary>
    private string RegisterParser()
    {
        string dir = _c.File("status_csv");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "parser.py"), """
            import os
            import time

            name = "status_csv"
            version = "1.0"


            def parse(path):
                print(f"status-test parsing {os.path.basename(path)}")
                with open(path) as f:
                    text = f.read()
                gate = os.environ.get("STATUS_GATE")
                while gate and not os.path.exists(gate):
                    time.sleep(0.02)
                time.sleep(float(os.environ.get("STATUS_SLEEP") or 0))
                if "boom" in text:
                    raise ValueError(f"boom in {os.path.basename(path)}")
                return {"n": [1, 2, 3], "text": [text, text, text]}

            """);
        _c.Ok("parser", "register", dir);
        return dir;
    }

    /// <summary>Queues <paramref name="good"/> files and one failing one (the last, z-boom.csv); returns the failing job's id.</summary>
    private long Queue(int good)
    {
        Directory.CreateDirectory(_c.Inputs);
        for (int i = 0; i < good; i++) File.WriteAllText(Path.Combine(_c.Inputs, $"f{i:D4}.csv"), $"file {i}\n");
        File.WriteAllText(Path.Combine(_c.Inputs, "z-boom.csv"), "boom\n");
        _c.Ok("job", "add", "--parser", "status_csv", _c.Inputs);
        return _c.Jobs().Single(j => j.Input.EndsWith("z-boom.csv", StringComparison.Ordinal)).Id;
    }

    private Daemon Start(string sleep, string? gate = null) =>
        _c.Spawn("start", ["start", "--slots", "2", "--heartbeat-interval", "0.2s"],
            env: new Dictionary<string, string?> { ["STATUS_SLEEP"] = sleep, ["STATUS_GATE"] = gate });

    [GeneratedRegex(@"status page (http://127\.0\.0\.1:\d+/)")]
    private static partial Regex StatusLine();

    private string UrlOf(Daemon start) =>
        Eventually.Value(() => StatusLine().Match(start.Stderr) is { Success: true } m ? m.Groups[1].Value : start.HasExited ? throw new XunitException(start.ToString()) : null,
            TimeSpan.FromSeconds(30), "the status page's URL in start's banner", () => start.ToString());

    private static string Get(string url)
    {
        using var response = Http.GetAsync(url).GetAwaiter().GetResult();
        string body = response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"GET {url}: {(int)response.StatusCode} {body}");
        return body;
    }

    /// <summary>The value of one sample line (name with its labels exactly as exported), or null when absent.</summary>
    internal static double? Sample(string exposition, string series)
    {
        foreach (var line in exposition.Split('\n'))
            if (line.StartsWith(series + " ", StringComparison.Ordinal))
                return double.Parse(line[(series.Length + 1)..].Trim(), CultureInfo.InvariantCulture);
        return null;
    }

    internal static ProcessResult Promtool(string exposition) =>
        Proc.Run("promtool", ["check", "metrics"], TimeSpan.FromSeconds(30), stdin: exposition);

    [Fact]
    public void Status_Metrics_CountersMoveAsJobsCompleteDuringARealRunAndPassPromtool()
    {
        RegisterParser();
        long failedId = Queue(good: 12);
        // The jobs wait for the gate, opened after the first scrape: on a loaded machine the whole run
        // once finished before the status page's URL was read, and the counter was only ever seen at 12.
        string gate = _c.File("status-gate");
        var start = Start("0.3", gate: gate);
        string url = UrlOf(start);

        // Scrape while the run goes on: the success counter climbs through intermediate values to 12.
        var seen = new List<double>();
        var ages = new List<double?>();
        string last = "";
        Eventually.True(() =>
        {
            if (seen.Count == 1) File.WriteAllText(gate, "");
            last = Get(url + "metrics");
            seen.Add(Sample(last, "casparian_jobs_concluded_total{status=\"success\"}") ?? -1);
            if (Sample(last, "casparian_jobs{state=\"queued\"}") > 0) ages.Add(Sample(last, "casparian_queue_oldest_age_seconds"));
            return seen[^1] == 12 && Sample(last, "casparian_jobs_concluded_total{status=\"failed\"}") == 1;
        }, TimeSpan.FromSeconds(120), "12 successes and 1 failure in /metrics", () => last + start, every: TimeSpan.FromMilliseconds(100));
        Assert.True(seen[0] == 0, $"no job can conclude before the gate opens; saw {string.Join(", ", seen)}");
        Assert.True(seen.Distinct().Count(v => v >= 0) >= 3, $"the counter should move during the run; saw {string.Join(", ", seen)}");
        for (int i = 1; i < seen.Count; i++) Assert.True(seen[i] >= seen[i - 1], $"a counter went down: {string.Join(", ", seen)}");
        // While jobs wait, the oldest one's age is reported (they were queued before start).
        Assert.NotEmpty(ages);
        Assert.All(ages, a => Assert.True(a > 0, $"queue age {a}"));

        // Guest start times reach the sentinel in HEARTBEATs (every 0.2 s here): one per job.
        Eventually.True(() =>
        {
            last = Get(url + "metrics");
            return (Sample(last, "casparian_guest_start_seconds_count{kind=\"warm\"}") ?? 0) + (Sample(last, "casparian_guest_start_seconds_count{kind=\"cold\"}") ?? 0) == 13;
        }, TimeSpan.FromSeconds(30), "13 guest starts reported by the worker's heartbeats", () => last);

        Assert.Equal(13, Sample(last, "casparian_jobs_dispatched_total"));
        Assert.Equal(13, Sample(last, "casparian_job_duration_seconds_count"));
        Assert.Equal(12, Sample(last, "casparian_jobs{state=\"completed\"}"));
        Assert.Equal(1, Sample(last, "casparian_jobs{state=\"failed\"}"));
        Assert.Equal(0, Sample(last, "casparian_jobs{state=\"queued\"}"));
        Assert.Equal(36, Sample(last, "casparian_output_rows_total{topic=\"output\"}"));
        Assert.True(Sample(last, "casparian_output_bytes_total{topic=\"output\"}") > 0, last);
        Assert.Equal(0, Sample(last, "casparian_output_quarantined_rows_total{topic=\"output\"}"));
        Assert.Equal(0, Sample(last, "casparian_jobs_retried_total"));
        Assert.Equal(1, Sample(last, "casparian_workers"));
        Assert.Matches(@"casparian_worker_slots\{worker=""[^""]+""\} 2\n", last);
        Assert.True(Sample(last, "casparian_store_step_duration_seconds_count") > 0, last);
        Assert.Equal(0, Sample(last, "casparian_messages_dropped_total{reason=\"malformed\"}"));
        Assert.Equal(0, Sample(last, "casparian_queue_oldest_age_seconds"));
        Assert.Contains("# TYPE casparian_jobs_dispatched_total counter", last);
        Assert.Contains("# TYPE casparian_job_duration_seconds histogram", last);

        var lint = Promtool(last);
        Assert.True(lint.ExitCode == 0 && lint.Stdout.Trim().Length == 0 && lint.Stderr.Trim().Length == 0, $"promtool check metrics:\n{lint}\n{last}");

        // The JSON API.
        using (var status = JsonDocument.Parse(Get(url + "api/status")))
        {
            var root = status.RootElement;
            Assert.Equal(12, root.GetProperty("counts").GetProperty("COMPLETED").GetInt64());
            Assert.Equal(1, root.GetProperty("counts").GetProperty("FAILED").GetInt64());
            var worker = Assert.Single(root.GetProperty("workers").EnumerateArray());
            Assert.Equal(2, worker.GetProperty("slots").GetInt32());
            var failure = Assert.Single(root.GetProperty("recent_failures").EnumerateArray());
            Assert.Equal(failedId, failure.GetProperty("id").GetInt64());
            Assert.Equal($"parser status_csv@1.0 on {Path.Combine(_c.Inputs, "z-boom.csv")}: ValueError: boom in z-boom.csv", failure.GetProperty("error").GetString());
            Assert.Equal(36, Assert.Single(root.GetProperty("topics").EnumerateArray()).GetProperty("rows").GetInt64());
            Assert.Equal(12, root.GetProperty("rates").GetProperty("completed").GetInt64());
        }
        using (var failed = JsonDocument.Parse(Get(url + "api/jobs?state=failed")))
            Assert.Equal(failedId, Assert.Single(failed.RootElement.EnumerateArray()).GetProperty("id").GetInt64());
        using (var detail = JsonDocument.Parse(Get(url + $"api/jobs/{failedId}")))
        {
            Assert.Contains("status-test parsing z-boom.csv", detail.RootElement.GetProperty("log_tail").GetString());
            Assert.Contains("ValueError: boom in z-boom.csv", detail.RootElement.GetProperty("error").GetString());
        }
        Assert.Contains("<title>Casparian</title>", Get(url));

        // The terminal summary finds the running start through HOME/status.url. The worker table is
        // published at most twice a second, so the last job's freed slot may take that long to show.
        var cli = _c.Ok("status");
        _c.WaitUntil("the status to show the worker idle", TimeSpan.FromSeconds(10),
            () => (cli = _c.Ok("status")).Stdout.Contains($"sentinel at {url}: 1 worker(s), 0/2 slot(s) busy;", StringComparison.Ordinal));
        Assert.Contains("jobs: 0 queued, 0 running, 12 completed, 1 failed, 0 cancelled\n", cli.Stdout);
        Assert.Contains($"sentinel at {url}: 1 worker(s), 0/2 slot(s) busy;", cli.Stdout);
        Assert.Contains($"  job {failedId}: parser status_csv@1.0 on {Path.Combine(_c.Inputs, "z-boom.csv")}: ValueError: boom in z-boom.csv\n", cli.Stdout);
        Assert.Contains("  topic output: 36 rows,", cli.Stdout);

        start.Signal(Posix.SigInt);
        Assert.Equal(0, start.WaitForExit(TimeSpan.FromSeconds(60)));
        Assert.False(File.Exists(Path.Combine(_c.Home, "status.url")), "status.url should go with the server");
        var after = _c.Ok("status");
        Assert.Contains("sentinel: no status page known", after.Stdout);
    }

    [Fact]
    public void Status_Http_ANonLoopbackAddressIsRefusedUnlessOptedIn()
    {
        int port = Cluster.FreePort();
        var refused = _c.Cli("sentinel", "--bind", _c.Address, "--http", $"0.0.0.0:{port}");
        Assert.True(refused.ExitCode == 2, refused.ToString());
        Assert.Equal($"error: http address 0.0.0.0:{port} is not loopback, and the status page has no authentication; bind 127.0.0.1, " +
                     "or set http_insecure = true (--http-insecure true) to serve it to the network anyway", refused.Stderr.Trim().Split('\n')[^1]);

        var sentinel = _c.Spawn("sentinel", ["sentinel", "--bind", _c.Address, "--http", $"0.0.0.0:{port}", "--http-insecure", "true"]);
        string metrics = Eventually.Value(() =>
        {
            if (sentinel.HasExited) throw new XunitException(sentinel.ToString());
            try { return Get($"http://127.0.0.1:{port}/metrics"); }
            catch (HttpRequestException) { return null; }
        }, TimeSpan.FromSeconds(30), "the opted-in status page to answer", () => sentinel.ToString());
        Assert.Equal(0, Sample(metrics, "casparian_workers"));
        Assert.Equal(0, Sample(metrics, "casparian_jobs_dispatched_total"));

        // Read-only: anything but GET or HEAD is refused.
        using var post = Http.PostAsync($"http://127.0.0.1:{port}/api/status", new StringContent("")).GetAwaiter().GetResult();
        Assert.Equal(HttpStatusCode.MethodNotAllowed, post.StatusCode);
    }

    [Fact]
    public void Status_Watch_RedrawsUntilInterrupted()
    {
        var watch = _c.Spawn("status", ["status", "--watch"]);
        string frame = $"no job store at {_c.Db} yet\nsentinel: no status page known";
        _c.WaitUntil("two frames of status --watch", TimeSpan.FromSeconds(30),
            () => watch.Stdout.Split(frame).Length >= 3 || watch.HasExited);
        Assert.False(watch.HasExited, watch.ToString());
        watch.Signal(Posix.SigInt);
        Assert.Equal(0, watch.WaitForExit(TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public void Dashboard_HeadlessChromium_SeesTheRunOf200JobsItsFailureAndTheFailedJobsLogTail()
    {
        RegisterParser();
        long failedId = Queue(good: 200);
        var start = Start("0");
        string url = UrlOf(start);

        string browser = Path.Combine(Repo.Root, "tests", "browser");
        Assert.True(Directory.Exists(Path.Combine(browser, "node_modules", "playwright-core")),
            $"playwright-core is not installed in {browser}: run 'npm ci' there (./build.sh test does)");
        string shots = Path.Combine(Repo.Root, "tests", "bin", "browser-output");
        Directory.CreateDirectory(shots);
        foreach (var old in Directory.GetFiles(shots, "*.png")) File.Delete(old);
        var r = Proc.Run("node", [Path.Combine(browser, "dashboard.mjs"), url, shots, "200", failedId.ToString(CultureInfo.InvariantCulture),
            "ValueError: boom in z-boom.csv", "status-test parsing z-boom.csv"], TimeSpan.FromMinutes(5), browser);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, $"{r}\nscreenshots in {shots}\n{start}");
        foreach (var png in new[] { "dashboard.png", "job-detail.png" })
        {
            byte[] head = File.ReadAllBytes(Path.Combine(shots, png))[..8];
            Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }, head);
        }
        start.Signal(Posix.SigInt);
        start.WaitForExit(TimeSpan.FromSeconds(60));
    }
}
