// Schema contracts (issue 14): what enforcing a declared schema costs on top of writing. 1M mixed rows
// (int64, float64, utf8, bool, timestamp[us, UTC], and a `code` column of integer strings, as a CSV
// parser sends them) in batches of 65,536, through JobOutput:
//   NoContract1M    the batches written as they come (code stays utf8): the baseline
//   Contract1M      the same batches under discard_row with every column declared; code: int64, so
//                   each code is parsed (the common case: a cast, no violations)
//   Quarantine10Pct every tenth code is "X-n": 10% of rows go to quarantine with their reason and raw JSON
//   dotnet run -c Release --project bench -- --filter '*ContractBench*'
using System.Globalization;
using Apache.Arrow;
using Apache.Arrow.Types;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[System.ComponentModel.Description("1M mixed rows (6 columns, one of integer strings) → Parquet through JobOutput, without a contract, under discard_row with every column declared, and with 10% of rows quarantined.")]
public class ContractBench
{
    private const int Rows = 1 << 20;
    private const int BatchRows = 1 << 16;

    private const string SchemaDef =
        """{"columns":[{"name":"id","type":"int64","nullable":false},{"name":"amount","type":"float64","nullable":true},""" +
        """{"name":"name","type":"string","nullable":true},{"name":"flag","type":"bool","nullable":true},""" +
        """{"name":"at","type":"timestamp","nullable":true},{"name":"code","type":"int64","nullable":false}],"contract":"discard_row","max_quarantine":0.5}""";

    private RecordBatch[] _clean = [];
    private RecordBatch[] _dirty = [];
    private string _root = "";

    [GlobalSetup]
    public void Setup()
    {
        _root = Directory.CreateTempSubdirectory("casparian-bench-contract-").FullName;
        var rng = new Random(42);
        _clean = Enumerable.Range(0, Rows / BatchRows).Select(b => Batch(rng, b * BatchRows, dirtyEvery: 0)).ToArray();
        _dirty = Enumerable.Range(0, Rows / BatchRows).Select(b => Batch(rng, b * BatchRows, dirtyEvery: 10)).ToArray();
        // Checked before every run, so --check proves the benchmarked writes keep and quarantine the right rows.
        Check(Write(_clean, contract: true), Rows, 0);
        Check(Write(_dirty, contract: true), Rows - Rows / 10 - 1, Rows / 10 + 1);
    }

    private void Check(OutputResult result, long kept, long quarantined)
    {
        var a = result.Artifacts.Single();
        if (a.Rows != kept || a.Quarantined != quarantined)
            throw new InvalidOperationException($"kept {a.Rows} and quarantined {a.Quarantined} rows, expected {kept} and {quarantined}");
        using var reader = new ParquetSharp.ParquetFileReader(Path.Combine(_root, "sales", "job-1.parquet"));
        if (reader.FileMetaData.NumRows != kept) throw new InvalidOperationException($"the file holds {reader.FileMetaData.NumRows} rows, expected {kept}");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var b in _clean.Concat(_dirty)) b.Dispose();
        Directory.Delete(_root, recursive: true);
    }

    [Benchmark(Baseline = true)]
    [Throughput(Rows)]
    public long NoContract1M() => Write(_clean, contract: false).Bytes;

    [Benchmark]
    [Throughput(Rows)]
    [Target("< 10% over NoContract1M")]
    public long Contract1M() => Write(_clean, contract: true).Bytes;

    [Benchmark]
    [Throughput(Rows)]
    public long Quarantine10Pct() => Write(_dirty, contract: true).Bytes;

    private OutputResult Write(RecordBatch[] batches, bool contract)
    {
        var options = Defaults.Output(_root) with { Lineage = true, MaxQuarantineRows = Rows };
        SinkConfig[] sinks = contract ? [new SinkConfig { Topic = "sales", Uri = "parquet://sales", SchemaDef = SchemaDef }] : [];
        using var job = new JobOutput(options, 1, null, sinks);
        foreach (var b in batches) job.Write("sales", b);
        return job.Commit();
    }

    /// <summary>A batch of mixed rows; with <paramref name="dirtyEvery"/> &gt; 0, every such row's code is "X-n" (not an integer).</summary>
    private static RecordBatch Batch(Random rng, int start, int dirtyEvery)
    {
        var type = new TimestampType(Apache.Arrow.Types.TimeUnit.Microsecond, "UTC");
        var id = new Int64Array.Builder();
        var amount = new DoubleArray.Builder();
        var name = new StringArray.Builder();
        var flag = new BooleanArray.Builder();
        var at = new TimestampArray.Builder(type);
        var code = new StringArray.Builder();
        var epoch = new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
        for (int i = 0; i < BatchRows; i++)
        {
            int row = start + i;
            id.Append(row);
            amount.Append(Math.Round(rng.NextDouble() * 1000, 2));
            name.Append("item-" + rng.Next(100_000).ToString("D6", CultureInfo.InvariantCulture));
            flag.Append(rng.Next(2) == 1);
            at.Append(epoch.AddTicks(row * 10_000L + rng.Next(10_000)));
            int n = rng.Next(1_000_000);
            code.Append(dirtyEvery > 0 && row % dirtyEvery == 0 ? $"X-{n}" : n.ToString(CultureInfo.InvariantCulture));
        }
        var schema = new Schema([new("id", Int64Type.Default, true), new("amount", DoubleType.Default, true), new("name", StringType.Default, true),
            new("flag", BooleanType.Default, true), new("at", type, true), new("code", StringType.Default, true)], null);
        return new RecordBatch(schema, [id.Build(), amount.Build(), name.Build(), flag.Build(), at.Build(), code.Build()], BatchRows);
    }
}
