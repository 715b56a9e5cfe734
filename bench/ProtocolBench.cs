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

    private readonly byte[] _headers = Enumerable.Range(0, Headers)
        .SelectMany(i => new Header(OpCode.Dispatch, 0x123456789ABCDEF0 + (ulong)i, 0x12345678).ToArray()).ToArray();
    private readonly byte[] _buffers = new byte[Headers * Header.Size];

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
        if (!_buffers.AsSpan(0, Header.Size).SequenceEqual(Convert.FromHexString("04020000123456789ABCDEF012345678")))
            throw new InvalidOperationException("header pack no longer matches the SPEC §2.1 test vector");
        if (!_buffers.AsSpan().SequenceEqual(_headers)) throw new InvalidOperationException("header pack and the reference headers differ");
        if (HeaderUnpack() != unchecked(0x123456789ABCDEF0UL * Headers + Headers * (Headers - 1) / 2)) throw new InvalidOperationException("header unpack lost a job id");
        if (!Payload.Encode((Dispatch)DispatchDecode(), ProtocolJson.Default.Dispatch).AsSpan().SequenceEqual(DispatchJson))
            throw new InvalidOperationException("DISPATCH JSON does not round-trip");
        if (!ReceiptEncode().AsSpan().SequenceEqual(ReceiptJson) || ((JobReceipt)ReceiptDecode()).Metrics["rows"] != 100_000)
            throw new InvalidOperationException("CONCLUDE JSON does not round-trip");
    }

    // One header takes about as long as BenchmarkDotNet's own call overhead, which it subtracts; a pass
    // over 16 headers per invocation keeps the measurement well above that floor (time is per header).
    private const int Headers = 16;

    [Benchmark(OperationsPerInvoke = Headers)]
    [Target("< 10 ns, 0 B; ≥ 20x Python struct")]
    [Python("struct.pack('!BBHQI', 4, 2, 0, 0x123456789ABCDEF0, 0x12345678)")]
    public void HeaderPack()
    {
        for (int i = 0; i < Headers; i++)
            new Header(OpCode.Dispatch, 0x123456789ABCDEF0 + (ulong)i, 0x12345678).Write(_buffers.AsSpan(i * Header.Size, Header.Size));
    }

    [Benchmark(OperationsPerInvoke = Headers)]
    [Target("< 10 ns, 0 B; ≥ 20x Python struct")]
    [Python("struct.unpack('!BBHQI', h)")]
    public ulong HeaderUnpack()
    {
        ulong sum = 0;
        for (int i = 0; i < Headers; i++) sum += Header.Read(_headers.AsSpan(i * Header.Size, Header.Size)).JobId;
        return sum;
    }

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
