// Output layer (SPEC §7): Arrow record batches → one Parquet file through JobOutput, with the worker's
// defaults (Snappy, buffered row groups, fsync + rename on commit). Batches of 65,536 rows, as a guest
// streams them. No Python pairing: the machine has no pyarrow; the earlier system's time for 1M rows
// (SPEC §9) is the comparison instead.
//   dotnet run -c Release --project bench -- --filter '*OutputBench*'
using System.Globalization;
using Apache.Arrow;
using Apache.Arrow.Types;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[System.ComponentModel.Description("Arrow batches of 65,536 rows → one Parquet file per job through JobOutput (Snappy, fsync and rename on commit). Stream2GB prints the benchmark process's peak RSS.")]
public class OutputBench
{
    internal const int Rows = 1 << 20;
    internal const int BatchRows = 1 << 16;

    internal const long NumericBytes = Rows * 4L * 8;
    // int64 + float64 + timestamp + bool (bits), plus the strings' offsets and 11 bytes of text each.
    private const long MixedBytes = Rows * (8L + 8 + 8) + Rows / 8 + Rows * (4L + 11);
    private const int StreamBatches = 1024; // 1024 × 65,536 rows × 32 bytes = 2 GiB
    private const long StreamRows = StreamBatches * (long)BatchRows;

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
        // Checked before every run, so --check proves the benchmarked writes still produce the rows.
        foreach (var (bytes, file) in new[] { (Numeric1M(), "output"), (Mixed1MLineage(), "output") })
        {
            using var reader = new ParquetSharp.ParquetFileReader(Path.Combine(_root, file, "job-1.parquet"));
            if (reader.FileMetaData.NumRows != Rows || bytes <= 0) throw new InvalidOperationException($"wrote {reader.FileMetaData.NumRows} rows, expected {Rows}");
        }
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
    [Throughput(Rows, NumericBytes)]
    [Target("≥ 1 GB/s of numeric column data")]
    public long Numeric1M() => WriteAll(_numeric, lineage: false);

    /// <summary>1M rows × int64, float64, utf8, bool, timestamp[us, UTC].</summary>
    [Benchmark]
    [Throughput(Rows, MixedBytes)]
    [Target("≥ 2M rows/s")]
    [EarlierSystem(2.5, 0.8)]
    public long Mixed1M() => WriteAll(_mixed, lineage: false);

    /// <summary>The same with the lineage columns the worker adds by default.</summary>
    [Benchmark]
    [Throughput(Rows, MixedBytes)]
    [Target("≥ 2M rows/s")]
    public long Mixed1MLineage() => WriteAll(_mixed, lineage: true);

    /// <summary>2 GiB of numeric Arrow data through one job: the flat-memory check (peak RSS printed at cleanup).</summary>
    [Benchmark]
    [Throughput(StreamRows, StreamRows * 32)]
    [Target("peak RSS < 200 MB (printed at cleanup)")]
    public long Stream2GB()
    {
        using var job = new JobOutput(Defaults.Output(_root) with { Lineage = true }, 1, null, []);
        for (int i = 0; i < StreamBatches; i++) job.Write("stream", _numeric[i % _numeric.Length]);
        return job.Commit().Bytes;
    }

    private long WriteAll(RecordBatch[] batches, bool lineage)
    {
        using var job = new JobOutput(Defaults.Output(_root) with { Lineage = lineage }, 1, null, []);
        foreach (var b in batches) job.Write("output", b);
        return job.Commit().Bytes;
    }

    internal static RecordBatch Numeric(Random rng, int start)
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
