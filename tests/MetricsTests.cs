// The metrics layer in process: the instruments' exported names and types (checked by promtool), the
// worker's heartbeat figures on the wire and into the guest start histogram, the loopback rule of the
// status page, and its log tail. The scrape of a real run is in StatusTests.cs.
using System.Text;
using Xunit;

namespace Casparian.Tests;

public sealed class MetricsTests
{
    private static string Scrape(SentinelMetrics metrics)
    {
        using var body = new MemoryStream();
        metrics.Export().WriteAsync(body, CancellationToken.None).GetAwaiter().GetResult();
        return Encoding.UTF8.GetString(body.ToArray());
    }

    private static JobReceipt Success(params (string Topic, long Rows, long Bytes, long? Quarantined)[] artifacts) => new()
    {
        Status = ReceiptStatus.Success,
        Artifacts = [.. artifacts.Select(a =>
        {
            var d = new Dictionary<string, string> { ["topic"] = a.Topic, ["uri"] = "file:///x", ["rows"] = a.Rows.ToString(), ["bytes"] = a.Bytes.ToString() };
            if (a.Quarantined is { } q) d[SentinelMetrics.QuarantinedArtifact] = q.ToString();
            return d;
        })],
    };

    [Fact]
    public void Metrics_Export_CountersHistogramsAndGaugesCarryPrometheusNamesAndPassPromtool()
    {
        using var metrics = new SentinelMetrics();
        string before = Scrape(metrics);
        // Known label values exist at zero before anything happens.
        Assert.Equal(0, StatusTests.Sample(before, "casparian_jobs_concluded_total{status=\"success\"}"));
        Assert.Equal(0, StatusTests.Sample(before, "casparian_jobs_requeued_total{reason=\"worker_lost\"}"));
        Assert.Equal(0, StatusTests.Sample(before, "casparian_jobs_dispatched_total"));

        metrics.Dispatched(1);
        metrics.Dispatched(2);
        metrics.Dispatched(3);
        metrics.Concluded(1, Success(("sales", 10, 900, null), ("refunds", 2, 300, 1)), applied: true, JobState.Completed);
        metrics.Concluded(2, new JobReceipt { Status = ReceiptStatus.Failed, ErrorMessage = "x" }, applied: true, JobState.Queued);
        metrics.Concluded(3, new JobReceipt { Status = ReceiptStatus.Success }, applied: false, null);
        metrics.Requeued(new RequeueResult(2, 1), "worker_lost");
        metrics.Dropped("malformed");
        metrics.StoreStep(TimeSpan.FromMilliseconds(3));
        metrics.Figures(new WorkerFigures { GuestStartCold = [1.5], GuestStartWarm = [0.04, 0.06] });
        metrics.PublishWorkers(0, [new WorkerView("w1", 4, 3, 0, ["*"]), new WorkerView("w2", 2, 0, 0, ["*"])]);
        string text = Scrape(metrics);

        Assert.Contains("# TYPE casparian_jobs_dispatched_total counter\n", text);
        Assert.Equal(3, StatusTests.Sample(text, "casparian_jobs_dispatched_total"));
        Assert.Equal(1, StatusTests.Sample(text, "casparian_jobs_concluded_total{status=\"success\"}"));
        Assert.Equal(1, StatusTests.Sample(text, "casparian_jobs_concluded_total{status=\"failed\"}"));
        Assert.Equal(1, StatusTests.Sample(text, "casparian_jobs_retried_total"));
        Assert.Equal(2, StatusTests.Sample(text, "casparian_jobs_requeued_total{reason=\"worker_lost\"}"));
        Assert.Equal(1, StatusTests.Sample(text, "casparian_messages_dropped_total{reason=\"late\"}"));
        Assert.Equal(1, StatusTests.Sample(text, "casparian_messages_dropped_total{reason=\"malformed\"}"));
        Assert.Equal(10, StatusTests.Sample(text, "casparian_output_rows_total{topic=\"sales\"}"));
        Assert.Equal(300, StatusTests.Sample(text, "casparian_output_bytes_total{topic=\"refunds\"}"));
        Assert.Equal(1, StatusTests.Sample(text, "casparian_output_quarantined_rows_total{topic=\"refunds\"}"));
        Assert.Equal(0, StatusTests.Sample(text, "casparian_output_quarantined_rows_total{topic=\"sales\"}"));
        Assert.Contains("# TYPE casparian_job_duration_seconds histogram\n", text);
        // Jobs 1 and 2 concluded with a dispatch time; job 3's late conclusion still ends its clock.
        Assert.Equal(3, StatusTests.Sample(text, "casparian_job_duration_seconds_count"));
        Assert.Equal(1, StatusTests.Sample(text, "casparian_guest_start_seconds_count{kind=\"cold\"}"));
        Assert.Equal(2, StatusTests.Sample(text, "casparian_guest_start_seconds_count{kind=\"warm\"}"));
        Assert.Equal(1, StatusTests.Sample(text, "casparian_guest_start_seconds_bucket{kind=\"warm\",le=\"0.05\"}"));
        Assert.Equal(1, StatusTests.Sample(text, "casparian_store_step_duration_seconds_count"));
        Assert.Equal(2, StatusTests.Sample(text, "casparian_workers"));
        Assert.Equal(4, StatusTests.Sample(text, "casparian_worker_slots{worker=\"w1\"}"));
        Assert.Equal(3, StatusTests.Sample(text, "casparian_worker_slots_busy{worker=\"w1\"}"));
        Assert.Equal(1, metrics.Completed);
        Assert.Equal(1, metrics.Failed); // the lost worker's job past its retry limit

        // A worker gone is gone from the gauges at the next scrape.
        metrics.PublishWorkers(1000, [new WorkerView("w2", 2, 1, 0, ["*"])]);
        string later = Scrape(metrics);
        Assert.Null(StatusTests.Sample(later, "casparian_worker_slots{worker=\"w1\"}"));
        Assert.Equal(1, StatusTests.Sample(later, "casparian_worker_slots_busy{worker=\"w2\"}"));

        var lint = StatusTests.Promtool(text);
        Assert.True(lint.ExitCode == 0 && lint.Stdout.Trim().Length == 0 && lint.Stderr.Trim().Length == 0, $"{lint}\n{text}");
    }

    [Fact]
    public void Protocol_Heartbeat_FiguresRoundTripAndStayOutOfTheJsonWhenAbsent()
    {
        var beat = new Heartbeat { Status = WorkerStatus.Idle, Figures = new WorkerFigures { GuestStartWarm = [0.25, 0.5] } };
        byte[] json = Payload.Encode(beat, ProtocolJson.Default.Heartbeat);
        Assert.Equal("""{"status":"IDLE","figures":{"guest_start_warm":[0.25,0.5]}}""", Encoding.UTF8.GetString(json));
        var back = Payload.Decode(OpCode.Heartbeat, json, ProtocolJson.Default.Heartbeat);
        Assert.Equal([0.25, 0.5], back.Figures!.GuestStartWarm!);
        Assert.Null(back.Figures.GuestStartCold);

        byte[] plain = Payload.Encode(new Heartbeat { Status = WorkerStatus.Idle }, ProtocolJson.Default.Heartbeat);
        Assert.Equal("""{"status":"IDLE"}""", Encoding.UTF8.GetString(plain));
    }

    [Fact]
    public void WorkerFigures_Take_ReturnsWhatWasGatheredOnceAndBoundsEachList()
    {
        var figures = new WorkerFigureCollector();
        Assert.Null(figures.Take());
        figures.GuestStarted(TimeSpan.FromMilliseconds(1500), cold: true);
        for (int i = 0; i < WorkerFigures.MaxObservations + 10; i++) figures.GuestStarted(TimeSpan.FromMilliseconds(40), cold: false);
        var taken = figures.Take()!;
        Assert.Equal([1.5], taken.GuestStartCold!);
        Assert.Equal(WorkerFigures.MaxObservations, taken.GuestStartWarm!.Count);
        Assert.Null(figures.Take());
    }

    [Theory]
    [InlineData("127.0.0.1:8080", false, true)]
    [InlineData("localhost:0", false, true)]
    [InlineData("[::1]:9000", false, true)]
    // Every interface: the page has no authentication, so only with the opt-in.
    [InlineData("0.0.0.0:8080", false, false)]
    [InlineData("0.0.0.0:8080", true, true)]
    // A routable address of this host.
    [InlineData("10.1.2.3:8080", false, false)]
    // A host name other than localhost is not known to be loopback.
    [InlineData("example.org:80", false, false)]
    public void StatusServer_ParseListen_AcceptsLoopbackAndOthersOnlyWhenInsecure(string listen, bool insecure, bool accepted)
    {
        if (accepted) StatusServer.ParseListen(listen, insecure);
        else Assert.StartsWith($"http address {listen} is not loopback", Assert.Throws<UsageException>(() => StatusServer.ParseListen(listen, insecure)).Message);
    }

    [Theory]
    // No port.
    [InlineData("127.0.0.1")]
    // Not a number.
    [InlineData("127.0.0.1:http")]
    // Past 65535.
    [InlineData("127.0.0.1:70000")]
    public void StatusServer_ParseListen_RefusesAnAddressWithoutAPort(string listen) =>
        Assert.StartsWith($"bad http address '{listen}'", Assert.Throws<UsageException>(() => StatusServer.ParseListen(listen, insecure: false)).Message);

    [Fact]
    public void StatusServer_LogTail_KeepsTheEndFromALineStart()
    {
        using var dir = new TempDir();
        string path = dir.File("job-1.log");
        var sb = new StringBuilder();
        for (int i = 0; i < 5000; i++) sb.Append("line ").Append(i).Append('\n');
        File.WriteAllText(path, sb.ToString());
        string tail = StatusServer.LogTail(path)!;
        Assert.EndsWith("line 4999\n", tail);
        Assert.StartsWith("line ", tail);
        Assert.True(tail.Length <= 16 << 10);
        Assert.Null(StatusServer.LogTail(dir.File("missing.log")));
    }
}
