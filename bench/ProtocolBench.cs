// Protocol layer (SPEC §2): header pack/unpack and payload JSON, against Python struct and json.
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[MemoryDiagnoser]
public class ProtocolBench
{
    private static readonly Dispatch DispatchValue = new()
    {
        PluginName = "sales_csv",
        FilePath = "/data/incoming/2026/11/sales-000123.csv",
        Sinks = [new SinkConfig { Topic = "output", Uri = "parquet://output" }],
        FileVersionId = 123_456,
        EnvHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        SourceCode = "import csv\n\ndef parse(path):\n    with open(path) as f:\n        return list(csv.DictReader(f))\n",
        ArtifactHash = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
    };

    private static readonly JobReceipt ReceiptValue = new()
    {
        Status = ReceiptStatus.Success,
        Metrics = new() { ["rows"] = 100_000, ["bytes"] = 4_194_304, ["batches"] = 2, ["duration_ms"] = 812 },
        Artifacts = [new() { ["topic"] = "output", ["uri"] = "file:///out/output/job-123456.parquet" }],
    };

    private static readonly byte[] DispatchJson = Payload.Encode(DispatchValue, ProtocolJson.Default.Dispatch);
    private static readonly byte[] ReceiptJson = Payload.Encode(ReceiptValue, ProtocolJson.Default.JobReceipt);

    private readonly byte[] _header = new Header(OpCode.Dispatch, 0x123456789ABCDEF0, 0x12345678).ToArray();
    private readonly byte[] _buffer = new byte[Header.Size];

    /// <summary>Python setup shared by this suite's pairings: the same header bytes and JSON payloads.</summary>
    public static string PythonSetup =>
        "import struct, json\n" +
        $"h = {Parity.BytesLiteral(new Header(OpCode.Dispatch, 0x123456789ABCDEF0, 0x12345678).ToArray())}\n" +
        $"dj = {Parity.BytesLiteral(DispatchJson)}\n" +
        $"rj = {Parity.BytesLiteral(ReceiptJson)}\n" +
        "d = json.loads(dj)\nr = json.loads(rj)\n";

    /// <summary>Checked before every run, so --check proves the benchmarked code still gives the right answers.</summary>
    [GlobalSetup]
    public void Verify()
    {
        HeaderPack();
        if (!_buffer.AsSpan().SequenceEqual(Convert.FromHexString("04020000123456789ABCDEF012345678")))
            throw new InvalidOperationException("header pack no longer matches the SPEC §2.1 test vector");
        if (HeaderUnpack() != 0x123456789ABCDEF0) throw new InvalidOperationException("header unpack lost the job id");
        if (!Payload.Encode((Dispatch)DispatchDecode(), ProtocolJson.Default.Dispatch).AsSpan().SequenceEqual(DispatchJson))
            throw new InvalidOperationException("DISPATCH JSON does not round-trip");
        if (!ReceiptEncode().AsSpan().SequenceEqual(ReceiptJson) || ((JobReceipt)ReceiptDecode()).Metrics["rows"] != 100_000)
            throw new InvalidOperationException("CONCLUDE JSON does not round-trip");
    }

    [Benchmark]
    [Target("< 10 ns, 0 B; ≥ 20x Python struct")]
    [Python("struct.pack('!BBHQI', 4, 2, 0, 0x123456789ABCDEF0, 0x12345678)")]
    public void HeaderPack() => new Header(OpCode.Dispatch, 0x123456789ABCDEF0, 0x12345678).Write(_buffer);

    [Benchmark]
    [Target("< 10 ns, 0 B; ≥ 20x Python struct")]
    [Python("struct.unpack('!BBHQI', h)")]
    public ulong HeaderUnpack() => Header.Read(_header).JobId;

    [Benchmark]
    [Python("json.dumps(d).encode()")]
    public byte[] DispatchEncode() => Payload.Encode(DispatchValue, ProtocolJson.Default.Dispatch);

    [Benchmark]
    [Python("json.loads(dj)")]
    public object DispatchDecode() => Payload.Decode(OpCode.Dispatch, DispatchJson, ProtocolJson.Default.Dispatch);

    [Benchmark]
    [Python("json.dumps(r).encode()")]
    public byte[] ReceiptEncode() => Payload.Encode(ReceiptValue, ProtocolJson.Default.JobReceipt);

    [Benchmark]
    [Python("json.loads(rj)")]
    public object ReceiptDecode() => Payload.Decode(OpCode.Conclude, ReceiptJson, ProtocolJson.Default.JobReceipt);
}
