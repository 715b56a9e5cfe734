// Parquet settings for numeric data (issue 12): OutputBench.Numeric1M's 1M rows × 4 numeric columns
// (2 int64, 2 float64; 32 MiB) through JobOutput with each compression codec and two row-group sizes,
// and the same file with dictionary encoding forced on for every column (the writer's own rule turns
// it off for near-unique columns, which both float columns here are). The default codec is the
// `compression` setting's (Config.cs); BENCHMARKS.md states the choice from these numbers.
//   dotnet run -c Release --project bench -- --filter '*OutputCodecBench*'
using Apache.Arrow;
using BenchmarkDotNet.Attributes;
using ParquetSharp;
using ParquetSharp.Arrow;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[System.ComponentModel.Description("1M rows × 4 numeric columns (32 MiB) → one Parquet file: JobOutput with each codec (Codec) and row-group budget " +
                                   "(RowGroupMiB), and ParquetSharp's writer with dictionary encoding on for every column (DictionaryOn).")]
public class OutputCodecBench
{
    [Params("none", "snappy", "zstd", "lz4")]
    public string Codec { get; set; } = "snappy";

    [Params(16, 64)]
    public int RowGroupMiB { get; set; } = 16;

    private RecordBatch[] _numeric = [];
    private string _root = "";
    private Compression _codec;

    [GlobalSetup]
    public void Setup()
    {
        if (!ParquetCodecs.TryParse(Codec, out _codec)) throw new InvalidOperationException($"unknown codec {Codec}");
        _root = Directory.CreateTempSubdirectory("casparian-bench-codec-").FullName;
        var rng = new Random(42);
        _numeric = Enumerable.Range(0, OutputBench.Rows / OutputBench.BatchRows).Select(b => OutputBench.Numeric(rng, b * OutputBench.BatchRows)).ToArray();
        // Checked before the runs, so --check proves both paths write every row with the codec asked for.
        foreach (var path in new[] { Path.Combine(_root, "output", "job-1.parquet"), Path.Combine(_root, "dictionary.parquet") })
        {
            if (path.EndsWith("job-1.parquet", StringComparison.Ordinal)) Numeric1M(); else DictionaryOn();
            using var reader = new ParquetFileReader(path);
            using var group = reader.RowGroup(0);
            if (reader.FileMetaData.NumRows != OutputBench.Rows || group.MetaData.GetColumnChunkMetaData(2).Compression != _codec)
                throw new InvalidOperationException($"{path}: {reader.FileMetaData.NumRows} rows, {group.MetaData.GetColumnChunkMetaData(2).Compression}; expected {OutputBench.Rows}, {_codec}");
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var b in _numeric) b.Dispose();
        Directory.Delete(_root, recursive: true);
    }

    /// <summary>The worker's writer with this codec and row-group budget.</summary>
    [Benchmark]
    [Throughput(OutputBench.Rows, OutputBench.NumericBytes)]
    [Target("≥ 1 GB/s of numeric column data with the best setting (issue 12)")]
    public long Numeric1M()
    {
        var options = Defaults.Output(_root) with { Lineage = false, Compression = _codec, RowGroupBytes = (long)RowGroupMiB << 20 };
        using var job = new JobOutput(options, 1, null, []);
        foreach (var b in _numeric) job.Write("output", b);
        return job.Commit().Bytes;
    }

    /// <summary>The same batches with dictionary encoding on for every column (ParquetSharp's default), row groups of the same budget in rows.</summary>
    [Benchmark]
    [Throughput(OutputBench.Rows, OutputBench.NumericBytes)]
    public long DictionaryOn()
    {
        string path = Path.Combine(_root, "dictionary.parquet");
        using (var builder = new WriterPropertiesBuilder())
        {
            using var properties = builder.Compression(_codec).EnableDictionary().Build();
            using var arrow = new ArrowWriterPropertiesBuilder().StoreSchema().Build();
            using var writer = new FileWriter(path, _numeric[0].Schema, properties, arrow);
            long groupRows = ((long)RowGroupMiB << 20) / 32;
            long inGroup = 0;
            foreach (var b in _numeric)
            {
                if (inGroup == 0 || inGroup + b.Length > groupRows) { writer.NewBufferedRowGroup(); inGroup = 0; }
                writer.WriteBufferedRecordBatch(b);
                inGroup += b.Length;
            }
            writer.Close();
        }
        return new FileInfo(path).Length;
    }
}
