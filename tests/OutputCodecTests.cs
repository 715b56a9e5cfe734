// Parquet compression per topic (issue 12): the `compression` setting is every topic's default, a
// topic's own "compression" (TOPICS, [topics.NAME], DISPATCH sinks) wins; each codec's file reads back
// value by value and its footer names the codec; a name no codec has is one clear line wherever it is written.
using Apache.Arrow;
using ParquetSharp;
using Xunit;

namespace Casparian.Tests;

public sealed class OutputCodecTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private string Root => _dir.File("out");

    private static readonly long?[] Ints = [0, 1, -1, long.MinValue, long.MaxValue, null, 42, 42];
    private static readonly double?[] Doubles = [1.5, double.NaN, -0.0, null, 1e300, 2.25, 2.25, 0.1];
    private static readonly string?[] Strings = ["plain", "", "é 😀 中文", null, "ascii", "last", "last", "x\ny"];

    private static RecordBatch Sample()
    {
        var i = new Int64Array.Builder();
        var d = new DoubleArray.Builder();
        var s = new StringArray.Builder();
        for (int r = 0; r < Ints.Length; r++)
        {
            if (Ints[r] is { } x) i.Append(x); else i.AppendNull();
            if (Doubles[r] is { } y) d.Append(y); else d.AppendNull();
            if (Strings[r] is { } z) s.Append(z); else s.AppendNull();
        }
        var schema = new Schema([new("i", Apache.Arrow.Types.Int64Type.Default, true), new("d", Apache.Arrow.Types.DoubleType.Default, true),
            new("s", Apache.Arrow.Types.StringType.Default, true)], null);
        return new RecordBatch(schema, [i.Build(), d.Build(), s.Build()], Ints.Length);
    }

    private string WriteTopic(string topic, string? codec, OutputOptions options)
    {
        var sinks = codec is null ? new List<SinkConfig>() : [new SinkConfig { Topic = topic, Uri = "parquet://" + topic, Compression = codec }];
        using var job = new JobOutput(options, 7, source: null, sinks);
        using (var batch = Sample()) job.Write(topic, batch);
        job.Commit();
        return Path.Combine(Root, topic, "job-7.parquet");
    }

    private static void AssertValuesAndCodec(string path, Compression expected)
    {
        using var reader = new ParquetFileReader(path);
        using var group = reader.RowGroup(0);
        for (int c = 0; c < 3; c++) Assert.Equal(expected, group.MetaData.GetColumnChunkMetaData(c).Compression);
        int n = checked((int)group.MetaData.NumRows);
        Assert.Equal(Ints, group.Column(0).LogicalReader<long?>().ReadAll(n));
        Assert.Equal(Doubles.Select(v => v is { } x ? BitConverter.DoubleToInt64Bits(x) : (long?)null),
            group.Column(1).LogicalReader<double?>().ReadAll(n).Select(v => v is { } x ? BitConverter.DoubleToInt64Bits(x) : (long?)null));
        Assert.Equal(Strings, group.Column(2).LogicalReader<string?>().ReadAll(n));
    }

    [Theory]
    [InlineData("none", Compression.Uncompressed)]
    [InlineData("snappy", Compression.Snappy)]
    [InlineData("zstd", Compression.Zstd)]
    [InlineData("lz4", Compression.Lz4)]
    [InlineData("gzip", Compression.Gzip)]
    [InlineData("ZSTD", Compression.Zstd)]
    public void OutputCodec_TopicCodec_ReadsBackValueByValue_AndTheFooterNamesIt(string name, Compression codec)
    {
        // The worker's default is another codec, so the topic's own must be what took effect.
        var options = Defaults.Output(Root) with { Lineage = false, Compression = codec == Compression.Snappy ? Compression.Zstd : Compression.Snappy };
        AssertValuesAndCodec(WriteTopic("sales", name, options), codec);
    }

    [Fact]
    public void OutputCodec_TopicWithoutCodec_TakesTheSetting_WhoseDefaultIsConfigs()
    {
        var settings = Defaults.Output(Root) with { Lineage = false };
        Assert.Equal(Config.Compression.DefaultValue(Config.Defaults(_dir.Path)), settings.Compression);
        AssertValuesAndCodec(WriteTopic("plain", null, settings), settings.Compression);
        AssertValuesAndCodec(WriteTopic("other", null, settings with { Compression = Compression.Lz4 }), Compression.Lz4);
    }

    [Fact]
    public void OutputCodec_BadName_IsOneLine_InDispatchTopicsAndConfig()
    {
        var e = Assert.Throws<OutputException>(() => WriteTopic("sales", "brotli2", Defaults.Output(Root)));
        Assert.Equal("job 7: topic 'sales': compression 'brotli2' is not none, snappy, zstd, lz4 or gzip", e.Message);
        Assert.False(Directory.Exists(Root));

        var c = Assert.Throws<InputException>(() => Topics.FromConfig([new ConfigTable("c.toml", "topics.sales", 1, false, [new ConfigEntry("compression", new ConfigValue("fast"), 2)])]));
        Assert.Equal("c.toml:2: [topics.sales] compression 'fast' is not none, snappy, zstd, lz4 or gzip", c.Message);
        Assert.DoesNotContain('\n', c.Message);
    }

    [Fact]
    public void OutputCodec_TopicAndConfig_ConfigWins_AndTheNameTravelsThroughTheStoredJson()
    {
        var declared = Topics.Read("TOPICS = {\"sales\": {\"compression\": \"LZ4\"}, \"audit\": {\"mode\": \"append\"}}\n", "p.py");
        var config = Topics.FromConfig([new ConfigTable("c.toml", "topics.audit", 1, false, [new ConfigEntry("compression", new ConfigValue("none"), 2)])]);
        var stored = Topics.FromJson(Topics.ToJson(declared), "parser");
        var sinks = Topics.Effective(stored, config);
        Assert.Equal([("sales", "lz4"), ("audit", "none")], sinks.Select(s => (s.Topic, s.Compression)));
        // And over the wire: DISPATCH's sinks carry it.
        var wire = System.Text.Json.JsonSerializer.Serialize(sinks[0], ProtocolJson.Default.SinkConfig);
        Assert.Contains("\"compression\":\"lz4\"", wire);
    }
}
