// Output layer (SPEC §7): Arrow record batches → one Parquet file through JobOutput, with the worker's
// defaults (Snappy, buffered row groups, fsync + rename on commit). Batches of 65,536 rows, as a guest
// streams them. No Python pairing: the machine has no pyarrow; the earlier system's numbers for 1M rows
// (SPEC §9) are printed beside ours instead.
//   dotnet run -c Release --project bench -- --filter '*OutputBench*' --job short
using System.Globalization;
using Apache.Arrow;
using Apache.Arrow.Types;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace Casparian.Bench;

[MemoryDiagnoser]
[Config(typeof(OutputBenchConfig))]
public class OutputBench
{
    private const int Rows = 1 << 20;
    private const int BatchRows = 1 << 16;

    /// <summary>Column bytes and rows each benchmark writes per operation, for the throughput columns.</summary>
    internal static readonly Dictionary<string, (long Bytes, long Rows)> Work = new()
    {
        [nameof(Numeric1M)] = (Rows * 4L * 8, Rows),
        [nameof(Mixed1M)] = (MixedBytes, Rows),
        [nameof(Mixed1MLineage)] = (MixedBytes, Rows),
        [nameof(Stream2GB)] = (StreamBatches * (long)BatchRows * 4 * 8, StreamBatches * (long)BatchRows),
    };

    // int64 + float64 + bool (bits) + timestamp, plus the strings' offsets and about 11 bytes of text each.
    private const long MixedBytes = Rows * (8L + 8 + 8) + Rows / 8 + Rows * (4L + 11);
    private const int StreamBatches = 1024; // 1024 × 65,536 rows × 32 bytes = 2 GiB

    private RecordBatch[] _numeric = [];
    private RecordBatch[] _mixed = [];
    private string _root = "";

    private long _baselineRssMb;

    [GlobalSetup(Targets = [nameof(Numeric1M), nameof(Mixed1M), nameof(Mixed1MLineage)])]
    public void Setup()
    {
        _root = Directory.CreateTempSubdirectory("casparian-bench-output-").FullName;
        var rng = new Random(42);
        _numeric = Enumerable.Range(0, Rows / BatchRows).Select(b => Numeric(rng, b * BatchRows)).ToArray();
        _mixed = Enumerable.Range(0, Rows / BatchRows).Select(b => Mixed(rng, b * BatchRows)).ToArray();
    }

    /// <summary>Only the numeric batches (32 MiB), so the process's peak RSS is the writer's doing plus that.</summary>
    [GlobalSetup(Target = nameof(Stream2GB))]
    public void SetupStream()
    {
        _root = Directory.CreateTempSubdirectory("casparian-bench-output-").FullName;
        var rng = new Random(42);
        _numeric = Enumerable.Range(0, Rows / BatchRows).Select(b => Numeric(rng, b * BatchRows)).ToArray();
        GC.Collect();
        _baselineRssMb = RssMb("VmRSS:");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var b in _numeric.Concat(_mixed)) b.Dispose();
        Directory.Delete(_root, recursive: true);
        // BenchmarkDotNet runs each benchmark in its own process, so this is that benchmark's peak.
        if (_baselineRssMb > 0)
            Console.WriteLine($"// Stream2GB: peak RSS (VmHWM) {RssMb("VmHWM:")} MB; RSS after setup (runtime, BenchmarkDotNet, 32 MiB of batches) {_baselineRssMb} MB");
    }

    /// <summary>1M rows × 4 numeric columns (2 int64, 2 float64) = 32 MiB of column data.</summary>
    [Benchmark]
    public long Numeric1M() => WriteAll(_numeric, lineage: false);

    /// <summary>1M rows × int64, float64, utf8, bool, timestamp[us, UTC].</summary>
    [Benchmark]
    public long Mixed1M() => WriteAll(_mixed, lineage: false);

    /// <summary>The same with the lineage columns the worker adds by default.</summary>
    [Benchmark]
    public long Mixed1MLineage() => WriteAll(_mixed, lineage: true);

    /// <summary>2 GiB of numeric Arrow data through one job: the flat-memory check (peak RSS printed at cleanup).</summary>
    [Benchmark]
    public long Stream2GB()
    {
        using var job = new JobOutput(new OutputOptions { Root = _root, Lineage = true }, 1, 1, []);
        for (int i = 0; i < StreamBatches; i++) job.Write("stream", _numeric[i % _numeric.Length]);
        return job.Commit().Bytes;
    }

    private long WriteAll(RecordBatch[] batches, bool lineage)
    {
        using var job = new JobOutput(new OutputOptions { Root = _root, Lineage = lineage }, 1, 1, []);
        foreach (var b in batches) job.Write("output", b);
        return job.Commit().Bytes;
    }

    private static RecordBatch Numeric(Random rng, int start)
    {
        var id = new Int64Array.Builder();
        var count = new Int64Array.Builder();
        var price = new DoubleArray.Builder();
        var ratio = new DoubleArray.Builder();
        for (int i = 0; i < BatchRows; i++)
        {
            id.Append(start + i);
            count.Append(rng.NextInt64(0, 1_000_000_000));
            price.Append(Math.Round(rng.NextDouble() * 10_000, 2));
            ratio.Append(rng.NextDouble());
        }
        var schema = new Schema([new("id", Int64Type.Default, true), new("count", Int64Type.Default, true), new("price", DoubleType.Default, true), new("ratio", DoubleType.Default, true)], null);
        return new RecordBatch(schema, [id.Build(), count.Build(), price.Build(), ratio.Build()], BatchRows);
    }

    private static RecordBatch Mixed(Random rng, int start)
    {
        var type = new TimestampType(Apache.Arrow.Types.TimeUnit.Microsecond, "UTC");
        var id = new Int64Array.Builder();
        var amount = new DoubleArray.Builder();
        var name = new StringArray.Builder();
        var flag = new BooleanArray.Builder();
        var at = new TimestampArray.Builder(type);
        var epoch = new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
        for (int i = 0; i < BatchRows; i++)
        {
            id.Append(start + i);
            amount.Append(Math.Round(rng.NextDouble() * 1000, 2));
            name.Append("item-" + rng.Next(100_000).ToString("D6", CultureInfo.InvariantCulture));
            flag.Append(rng.Next(2) == 1);
            at.Append(epoch.AddTicks((start + i) * 10_000L + rng.Next(10_000)));
        }
        var schema = new Schema([new("id", Int64Type.Default, true), new("amount", DoubleType.Default, true), new("name", StringType.Default, true), new("flag", BooleanType.Default, true), new("at", type, true)], null);
        return new RecordBatch(schema, [id.Build(), amount.Build(), name.Build(), flag.Build(), at.Build()], BatchRows);
    }

    private static long RssMb(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key, StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024;
        return -1;
    }
}

/// <summary>Adds MB/s of column data, rows/s, and the earlier system's reference for 1M rows.</summary>
public sealed class OutputBenchConfig : ManualConfig
{
    public OutputBenchConfig()
    {
        AddColumn(new ThroughputColumn("MB/s", "column data written per second (MiB of Arrow buffers)", w => w.Bytes / (1024.0 * 1024)));
        AddColumn(new ThroughputColumn("Mrows/s", "rows written per second (millions)", w => w.Rows / 1e6));
        AddColumn(new ReferenceColumn());
    }

    private sealed class ThroughputColumn(string name, string legend, Func<(long Bytes, long Rows), double> amount) : IColumn
    {
        public string Id => "Output" + name;
        public string ColumnName => name;
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => legend;
        public bool IsAvailable(Summary summary) => true;
        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
        {
            var stats = summary[benchmarkCase]?.ResultStatistics;
            if (stats is null || !OutputBench.Work.TryGetValue(benchmarkCase.Descriptor.WorkloadMethod.Name, out var work)) return "-";
            return (amount(work) / (stats.Mean / 1e9)).ToString("0.0", CultureInfo.InvariantCulture);
        }
    }

    private sealed class ReferenceColumn : IColumn
    {
        public string Id => "OutputReference";
        public string ColumnName => "earlier system (1M rows)";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 1;
        public bool IsNumeric => false;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "SPEC §9: Parquet write of 1M rows in the earlier system's workers";
        public bool IsAvailable(Summary summary) => true;
        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) =>
            benchmarkCase.Descriptor.WorkloadMethod.Name.StartsWith("Mixed1M", StringComparison.Ordinal) ? "Rust ~0.8 s, Python ~2.5 s" : "-";
    }
}
