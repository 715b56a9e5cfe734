// The sentinel's figures (issue 17): System.Diagnostics.Metrics instruments on one Meter per sentinel,
// recorded by the sentinel thread (one call per event, from Sentinel.Status.cs), and exported in the
// Prometheus text format by prometheus-net (PrometheusExport below). Jobs by state and the age of the
// oldest queued job come from the store and are observed by the status server at scrape time
// (StatusServer.cs); everything else is counted here as it happens.
//
// Exported names follow Prometheus conventions: the instrument "casparian.jobs.dispatched" becomes
// casparian_jobs_dispatched_total (counters get _total), and an instrument whose unit is "s" gets
// _seconds (casparian_job_duration_seconds). docs/observability.md lists every metric.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Globalization;
using Prometheus;

namespace Casparian;

/// <summary>A live worker as the status page and the gauges show it (a snapshot, safe to share).</summary>
internal readonly record struct WorkerView(string Id, int Slots, int Busy, long LastSeenMs, IReadOnlyList<string> Capabilities);

/// <summary>Rows written and quarantined for one topic since the sentinel started.</summary>
internal sealed class TopicTotals
{
    public long Rows;
    public long Bytes;
    public long Quarantined;
}

internal sealed class SentinelMetrics : IDisposable
{
    public const string MeterName = "casparian";

    /// <summary>Receipt artifact key for rows a topic sent to quarantine (issue 14 fills it; 0 until then).</summary>
    public const string QuarantinedArtifact = "quarantined_rows";

    /// <summary>Bounds the dispatch-time table if jobs vanish without a conclusion (a lost worker's are dispatched again under the same id).</summary>
    private const int MaxTracked = 1_000_000;
    /// <summary>Guest start figures taken from one heartbeat, at most (a worker sends fewer; see Protocol.cs).</summary>
    public const int MaxFiguresPerBeat = WorkerFigures.MaxObservations;

    private readonly Meter _meter = new(MeterName);
    private readonly Counter<long> _dispatched;
    private readonly Counter<long> _concluded;
    private readonly Counter<long> _retried;
    private readonly Counter<long> _requeued;
    private readonly Counter<long> _dropped;
    private readonly Counter<long> _rows;
    private readonly Counter<long> _bytes;
    private readonly Counter<long> _quarantined;
    private readonly Histogram<double> _jobDuration;
    private readonly Histogram<double> _guestStart;
    private readonly Histogram<double> _storeStep;

    // Sentinel thread only: when each in-flight job was dispatched (Stopwatch ticks).
    private readonly Dictionary<long, long> _dispatchedAt = [];

    private WorkerView[] _workers = [];
    private long _nextWorkerPublish;
    private long _completed, _failed;

    public SentinelMetrics()
    {
        _dispatched = _meter.CreateCounter<long>("casparian.jobs.dispatched", description: "Jobs sent to a worker in a DISPATCH.");
        _concluded = _meter.CreateCounter<long>("casparian.jobs.concluded", description: "Conclusions the store applied, by the worker's status (success, failed, aborted, rejected).");
        _retried = _meter.CreateCounter<long>("casparian.jobs.retried", description: "Failed or aborted jobs put back in the queue to be retried (transient failures).");
        _requeued = _meter.CreateCounter<long>("casparian.jobs.requeued", description: "Jobs taken back from a lost worker (reason worker_lost) or found stale after a restart (reason stale).");
        _dropped = _meter.CreateCounter<long>("casparian.messages.dropped", description: "Messages the sentinel dropped: malformed, from an unknown peer, or a conclusion for a job no longer running there (late).");
        _rows = _meter.CreateCounter<long>("casparian.output.rows", description: "Rows written to Parquet by completed jobs, per topic.");
        _bytes = _meter.CreateCounter<long>("casparian.output.bytes", description: "Parquet bytes written by completed jobs, per topic.");
        _quarantined = _meter.CreateCounter<long>("casparian.output.quarantined_rows", description: "Rows sent to quarantine by completed jobs, per topic.");
        _jobDuration = _meter.CreateHistogram<double>("casparian.job.duration", unit: "s", description: "Time from DISPATCH to the conclusion's arrival at the sentinel.");
        _guestStart = _meter.CreateHistogram<double>("casparian.guest.start", unit: "s", description: "Time from a job's start on a worker to its parser process connecting; cold when the environment was built for it, warm otherwise.");
        _storeStep = _meter.CreateHistogram<double>("casparian.store.step_duration", unit: "s", description: "Duration of the sentinel's store step (one transaction per turn).");
        _meter.CreateObservableGauge("casparian.workers", () => Volatile.Read(ref _workers).Length, description: "Workers alive (identified and not timed out).");
        _meter.CreateObservableGauge("casparian.worker.slots", ObserveSlots, description: "Job slots a worker offers.");
        _meter.CreateObservableGauge("casparian.worker.slots_busy", ObserveBusy, description: "Job slots running a job.");
    }

    private PrometheusExport? _export;

    /// <summary>The exporter, started on first use (by the status server): measurements before it are not seen.</summary>
    public PrometheusExport Export()
    {
        lock (_meter)
        {
            if (_export is not null) return _export;
            _export = new PrometheusExport(_meter, Buckets);
        }
        // Known label values start at zero, so a rate() has a series before the first event.
        foreach (var s in new[] { "success", "failed", "aborted", "rejected" }) _concluded.Add(0, Tag("status", s));
        foreach (var r in new[] { "worker_lost", "stale" }) _requeued.Add(0, Tag("reason", r));
        foreach (var r in new[] { "malformed", "unknown_peer", "late" }) _dropped.Add(0, Tag("reason", r));
        _dispatched.Add(0);
        _retried.Add(0);
        return _export;
    }

    public Meter Meter => _meter;

    /// <summary>Jobs completed and failed for good since start (for the status page's rates).</summary>
    public long Completed => Interlocked.Read(ref _completed);
    public long Failed => Interlocked.Read(ref _failed);

    /// <summary>The workers as last published by the sentinel thread.</summary>
    public WorkerView[] Workers => Volatile.Read(ref _workers);

    /// <summary>Per topic; written by the sentinel thread, read by the status server.</summary>
    public ConcurrentDictionary<string, TopicTotals> Topics { get; } = new(StringComparer.Ordinal);

    // ---- events (sentinel thread) --------------------------------------------------------------

    public void Dispatched(long jobId)
    {
        if (_dispatchedAt.Count >= MaxTracked) _dispatchedAt.Clear();
        _dispatchedAt[jobId] = Stopwatch.GetTimestamp();
        _dispatched.Add(1);
    }

    /// <summary>A conclusion the store decided on: <paramref name="applied"/> false means it was ignored as late.</summary>
    public void Concluded(long jobId, JobReceipt receipt, bool applied, JobState? after)
    {
        if (_dispatchedAt.Remove(jobId, out long at)) _jobDuration.Record(Stopwatch.GetElapsedTime(at).TotalSeconds);
        if (!applied)
        {
            if (receipt.Status != ReceiptStatus.Aborted) _dropped.Add(1, Tag("reason", "late"));
            return;
        }
        _concluded.Add(1, Tag("status", receipt.Status switch
        {
            ReceiptStatus.Success => "success",
            ReceiptStatus.Failed => "failed",
            ReceiptStatus.Rejected => "rejected",
            _ => "aborted",
        }));
        if (receipt.Status == ReceiptStatus.Success)
        {
            Interlocked.Increment(ref _completed);
            Output(receipt.Artifacts);
        }
        else if (after == JobState.Queued && receipt.Status != ReceiptStatus.Rejected) _retried.Add(1);
        else if (after == JobState.Failed) Interlocked.Increment(ref _failed);
    }

    /// <summary>Jobs failed without a dispatch (their parser is not registered).</summary>
    public void FailedUndispatched(int count) => Interlocked.Add(ref _failed, count);

    public void Requeued(RequeueResult result, string reason)
    {
        if (result.Requeued > 0) _requeued.Add(result.Requeued, Tag("reason", reason));
        if (result.Failed > 0) Interlocked.Add(ref _failed, result.Failed);
    }

    public void Dropped(string reason) => _dropped.Add(1, Tag("reason", reason));

    public void StoreStep(TimeSpan elapsed) => _storeStep.Record(elapsed.TotalSeconds);

    /// <summary>A worker's HEARTBEAT figures: guest start times since its previous heartbeat.</summary>
    public void Figures(WorkerFigures figures)
    {
        Record(figures.GuestStartCold, "cold");
        Record(figures.GuestStartWarm, "warm");

        void Record(List<double>? seconds, string kind)
        {
            if (seconds is null) return;
            var tag = Tag("kind", kind);
            foreach (double s in seconds.Take(MaxFiguresPerBeat))
                if (double.IsFinite(s) && s >= 0) _guestStart.Record(s, tag);
        }
    }

    /// <summary>Whether the worker table should be published again (at most twice a second).</summary>
    public bool WorkersDue(long nowMs) => nowMs >= _nextWorkerPublish;

    public void PublishWorkers(long nowMs, WorkerView[] workers)
    {
        _nextWorkerPublish = nowMs + 500;
        Volatile.Write(ref _workers, workers);
    }

    private void Output(IReadOnlyList<Dictionary<string, string>> artifacts)
    {
        foreach (var a in artifacts)
        {
            string topic = a.GetValueOrDefault("topic") is { Length: > 0 } t ? t : "?";
            long rows = Number(a, "rows"), bytes = Number(a, "bytes"), quarantined = Number(a, QuarantinedArtifact);
            var tag = Tag("topic", topic);
            _rows.Add(rows, tag);
            _bytes.Add(bytes, tag);
            _quarantined.Add(quarantined, tag);
            var totals = Topics.GetOrAdd(topic, _ => new TopicTotals());
            Interlocked.Add(ref totals.Rows, rows);
            Interlocked.Add(ref totals.Bytes, bytes);
            Interlocked.Add(ref totals.Quarantined, quarantined);
        }
    }

    private static long Number(Dictionary<string, string> artifact, string key) =>
        long.TryParse(artifact.GetValueOrDefault(key), NumberStyles.None, CultureInfo.InvariantCulture, out long n) ? n : 0;

    private IEnumerable<Measurement<int>> ObserveSlots() =>
        Volatile.Read(ref _workers).Select(w => new Measurement<int>(w.Slots, Tag("worker", w.Id)));

    private IEnumerable<Measurement<int>> ObserveBusy() =>
        Volatile.Read(ref _workers).Select(w => new Measurement<int>(w.Busy, Tag("worker", w.Id)));

    private static KeyValuePair<string, object?> Tag(string key, string value) => new(key, value);

    /// <summary>Histogram buckets, in seconds, by instrument: each spans the range its figure lives in.</summary>
    public static double[] Buckets(Instrument instrument) => instrument.Name switch
    {
        "casparian.store.step_duration" => [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
        "casparian.guest.start" => [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
        _ => [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600],
    };

    public void Dispose()
    {
        _export?.Dispose();
        _meter.Dispose();
    }
}

/// <summary>
/// Exports one Meter's instruments in the Prometheus text format through prometheus-net. prometheus-net's
/// own MeterAdapter turns every .NET counter into a Prometheus gauge on purpose (a Meter counter may be
/// re-created and so go down), which breaks the _total convention and `promtool check metrics`; this
/// listener maps each instrument to the matching prometheus-net type instead (Counter to counter,
/// Histogram to histogram, ObservableGauge to gauge), and prometheus-net writes the exposition format.
/// </summary>
internal sealed class PrometheusExport : IDisposable
{
    private readonly CollectorRegistry _registry = Prometheus.Metrics.NewCustomRegistry();
    private readonly IMetricFactory _factory;
    private readonly MeterListener _listener = new();
    private readonly Func<Instrument, double[]> _buckets;

    public PrometheusExport(Meter meter, Func<Instrument, double[]> buckets)
    {
        _buckets = buckets;
        _factory = Prometheus.Metrics.WithCustomRegistry(_registry);
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter == meter) listener.EnableMeasurementEvents(instrument, new Series(instrument));
        };
        _listener.SetMeasurementEventCallback<int>((i, v, tags, state) => Record((Series)state!, v, tags));
        _listener.SetMeasurementEventCallback<long>((i, v, tags, state) => Record((Series)state!, v, tags));
        _listener.SetMeasurementEventCallback<double>((i, v, tags, state) => Record((Series)state!, v, tags));
        _listener.Start();
        _registry.AddBeforeCollectCallback(() =>
        {
            // Gauges observed at scrape time report only the series that exist now (a worker gone is gone).
            foreach (var g in _gauges) g.Clear();
            _listener.RecordObservableInstruments();
        });
    }

    private readonly ConcurrentBag<GaugeSeries> _gauges = [];

    /// <summary>Runs <paramref name="beforeCollect"/> before each scrape (the status server refreshes its store figures).</summary>
    public void BeforeCollect(Action beforeCollect) => _registry.AddBeforeCollectCallback(beforeCollect);

    public Task WriteAsync(Stream destination, CancellationToken cancel) => _registry.CollectAndExportAsTextAsync(destination, cancel);

    public void Dispose() => _listener.Dispose();

    /// <summary>The Prometheus name of an instrument: dots to underscores, unit and counter suffixes added.</summary>
    public static string PrometheusName(Instrument instrument)
    {
        string name = instrument.Name.Replace('.', '_');
        if (instrument.Unit == "s" && !name.EndsWith("_seconds", StringComparison.Ordinal)) name += "_seconds";
        if (IsCounter(instrument)) name += "_total";
        return name;
    }

    private static bool IsCounter(Instrument i) => i is Counter<long> or Counter<int> or Counter<double>;

    private void Record(Series series, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        // The first measurement fixes the label names (every call site of an instrument passes the same keys).
        if (series.Metric is null)
        {
            lock (series)
                series.Metric ??= Create(series.Instrument, tags);
        }
        series.Metric.Record(value, tags);
    }

    private SeriesMetric Create(Instrument instrument, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        string[] labels = new string[tags.Length];
        for (int i = 0; i < tags.Length; i++) labels[i] = tags[i].Key;
        string name = PrometheusName(instrument);
        string help = instrument.Description ?? instrument.Name;
        switch (instrument)
        {
            case Histogram<double> or Histogram<long>:
                return new HistogramSeries(_factory.CreateHistogram(name, help, labels, new HistogramConfiguration { Buckets = _buckets(instrument) }), labels);
            case Counter<long> or Counter<int> or Counter<double>:
                return new CounterSeries(_factory.CreateCounter(name, help, labels), labels);
            default:
                var gauge = new GaugeSeries(_factory.CreateGauge(name, help, labels), labels);
                _gauges.Add(gauge);
                return gauge;
        }
    }

    private sealed class Series(Instrument instrument)
    {
        public Instrument Instrument { get; } = instrument;
        public SeriesMetric? Metric;
    }

    private abstract class SeriesMetric(string[] labels)
    {
        protected string[] Labels { get; } = labels;

        public abstract void Record(double value, ReadOnlySpan<KeyValuePair<string, object?>> tags);

        /// <summary>Label values in the order the metric was created with.</summary>
        protected string[] Values(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var values = new string[Labels.Length];
            for (int i = 0; i < Labels.Length; i++)
            {
                values[i] = "";
                foreach (var t in tags)
                    if (t.Key == Labels[i]) { values[i] = t.Value?.ToString() ?? ""; break; }
            }
            return values;
        }
    }

    private sealed class CounterSeries(Counter counter, string[] labels) : SeriesMetric(labels)
    {
        public override void Record(double value, ReadOnlySpan<KeyValuePair<string, object?>> tags) =>
            (Labels.Length == 0 ? (ICounter)counter : counter.WithLabels(Values(tags))).Inc(Math.Max(0, value));
    }

    private sealed class HistogramSeries(Histogram histogram, string[] labels) : SeriesMetric(labels)
    {
        public override void Record(double value, ReadOnlySpan<KeyValuePair<string, object?>> tags) =>
            (Labels.Length == 0 ? (IHistogram)histogram : histogram.WithLabels(Values(tags))).Observe(value);
    }

    private sealed class GaugeSeries(Gauge gauge, string[] labels) : SeriesMetric(labels)
    {
        public override void Record(double value, ReadOnlySpan<KeyValuePair<string, object?>> tags) =>
            (Labels.Length == 0 ? (IGauge)gauge : gauge.WithLabels(Values(tags))).Set(value);

        /// <summary>Drops every labelled series; the next observation brings back those that still exist.</summary>
        public void Clear()
        {
            if (Labels.Length == 0) return;
            foreach (var values in gauge.GetAllLabelValues().ToList()) gauge.RemoveLabelled(values);
        }
    }
}

/// <summary>
/// A worker's figures between two heartbeats (thread-safe): jobs add to it on the thread pool, the
/// worker's loop takes them for each HEARTBEAT. Past <see cref="WorkerFigures.MaxObservations"/> per
/// kind, further values wait for the next heartbeat's turn by being dropped (a bounded message).
/// </summary>
internal sealed class WorkerFigureCollector
{
    private readonly Lock _gate = new();
    private List<double> _cold = [];
    private List<double> _warm = [];

    public void GuestStarted(TimeSpan startTime, bool cold)
    {
        lock (_gate)
        {
            var list = cold ? _cold : _warm;
            if (list.Count < WorkerFigures.MaxObservations) list.Add(Math.Round(startTime.TotalSeconds, 6));
        }
    }

    /// <summary>What was gathered since the last call, or null when nothing was.</summary>
    public WorkerFigures? Take()
    {
        lock (_gate)
        {
            if (_cold.Count == 0 && _warm.Count == 0) return null;
            var figures = new WorkerFigures { GuestStartCold = _cold.Count > 0 ? _cold : null, GuestStartWarm = _warm.Count > 0 ? _warm : null };
            _cold = [];
            _warm = [];
            return figures;
        }
    }
}
