using System.Text;
using System.Text.Json.Serialization.Metadata;
using NetMQ;
using NetMQ.Sockets;
using Xunit;

namespace Casparian.Tests;

public sealed class ProtocolTests
{
    // ---- header (SPEC §2.1) -------------------------------------------------------------------

    [Fact]
    public void Header_Write_MatchesSpecTestVector()
    {
        Span<byte> bytes = stackalloc byte[Header.Size];
        new Header(OpCode.Dispatch, 0x123456789ABCDEF0, 0x12345678).Write(bytes);
        Assert.Equal(Convert.FromHexString("04020000123456789ABCDEF012345678"), bytes.ToArray());
    }

    [Fact]
    public void Header_Read_MatchesSpecTestVector()
    {
        var h = Header.Read(Convert.FromHexString("04020000123456789ABCDEF012345678"));
        Assert.Equal(new Header(OpCode.Dispatch, 0x123456789ABCDEF0, 0x12345678), h);
    }

    [Theory]
    [InlineData((byte)OpCode.Identify, 0ul, 0u)]
    [InlineData((byte)OpCode.Conclude, ulong.MaxValue, uint.MaxValue)]
    [InlineData((byte)OpCode.Ack, 1ul, 17u)]
    public void Header_RoundTrip_PreservesEveryField(byte opValue, ulong jobId, uint length)
    {
        var op = (OpCode)opValue;
        var bytes = new Header(op, jobId, length).ToArray();
        Assert.Equal(Header.Size, bytes.Length);
        Assert.True(Header.TryRead(bytes, out var back));
        Assert.Equal(new Header(op, jobId, length), back);
    }

    [Fact]
    public void Header_Read_IgnoresReservedBytesAndTrailingBytes()
    {
        // RESERVED = 0xFFFF and four bytes past the header: both ignored.
        var bytes = Convert.FromHexString("0405FFFF00000000000000070000000AAABBCCDD");
        Assert.Equal(new Header(OpCode.Conclude, 7, 10), Header.Read(bytes));
    }

    [Fact]
    public void Header_TryRead_ReturnsFalseWhenBytesAreMissing()
    {
        Assert.False(Header.TryRead(new byte[Header.Size - 1], out _));
    }

    [Fact]
    public void Header_Write_DoesNotAllocate()
    {
        var header = new Header(OpCode.Heartbeat, 42, 99);
        var buffer = new byte[Header.Size];
        header.Write(buffer);
        Header.Read(buffer);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++)
        {
            header.Write(buffer);
            _ = Header.Read(buffer);
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void OpCode_Values_AreFixedBySpec()
    {
        var expected = new (OpCode Op, byte Value, string Name)[]
        {
            (OpCode.Unknown, 0, "UNKNOWN"), (OpCode.Identify, 1, "IDENTIFY"), (OpCode.Dispatch, 2, "DISPATCH"),
            (OpCode.Abort, 3, "ABORT"), (OpCode.Heartbeat, 4, "HEARTBEAT"), (OpCode.Conclude, 5, "CONCLUDE"),
            (OpCode.Err, 6, "ERR"), (OpCode.Reload, 7, "RELOAD"), (OpCode.PrepareEnv, 8, "PREPARE_ENV"),
            (OpCode.EnvReady, 9, "ENV_READY"), (OpCode.Deploy, 10, "DEPLOY"), (OpCode.Ack, 11, "ACK"),
        };
        Assert.Equal(expected.Length, Enum.GetValues<OpCode>().Length);
        foreach (var (op, value, name) in expected)
        {
            Assert.Equal(value, (byte)op);
            Assert.Equal(name, op.ToWireName());
            var bytes = new Header(op, 0, 0).ToArray();
            Assert.Equal(value, bytes[1]);
            Assert.Equal(op, Header.Read(bytes).Op);
        }
    }

    public static TheoryData<string, Type, string> MalformedHeaders => new()
    {
        // No bytes at all.
        { "", typeof(HeaderTooShortException), "header too short: expected 16 bytes, got 0" },
        // One byte short of a header.
        { "040200001234567812345678123456", typeof(HeaderTooShortException), "header too short: expected 16 bytes, got 15" },
        // Protocol version 3, from an older peer.
        { "03020000123456789ABCDEF012345678", typeof(VersionMismatchException), "version mismatch: expected 4, got 3" },
        // Version 0: not a Casparian header at all.
        { "00000000000000000000000000000000", typeof(VersionMismatchException), "version mismatch: expected 4, got 0" },
        // Opcode 12, one past ACK.
        { "040C0000000000000000000100000000", typeof(InvalidOpCodeException), "invalid opcode: expected 0..11, got 12" },
        // Opcode 255.
        { "04FF0000000000000000000100000000", typeof(InvalidOpCodeException), "invalid opcode: expected 0..11, got 255" },
    };

    [Theory]
    [MemberData(nameof(MalformedHeaders))]
    public void Header_Read_RejectsMalformedInput(string hex, Type exceptionType, string message)
    {
        var e = Assert.Throws(exceptionType, () => Header.Read(Convert.FromHexString(hex)));
        Assert.Equal(message, e.Message);
        Assert.IsAssignableFrom<ProtocolException>(e);
    }

    // ---- payloads (SPEC §2.4): golden JSON -----------------------------------------------------

    private static void AssertGolden<T>(T value, JsonTypeInfo<T> info, OpCode op, string golden) where T : class
    {
        byte[] bytes = Payload.Encode(value, info);
        Assert.Equal(golden, Encoding.UTF8.GetString(bytes));
        // Round trip: decode the golden text and write it again, byte for byte.
        T back = Payload.Decode(op, Encoding.UTF8.GetBytes(golden), info);
        Assert.Equal(golden, Encoding.UTF8.GetString(Payload.Encode(back, info)));
    }

    [Fact]
    public void Identify_Json_IsGolden()
    {
        AssertGolden(new Identify { Capabilities = ["csv_parser", "*"], WorkerId = "w-1", Slots = 4 }, ProtocolJson.Default.Identify, OpCode.Identify,
            """{"capabilities":["csv_parser","*"],"worker_id":"w-1","slots":4}""");
        AssertGolden(new Identify { Capabilities = ["*"] }, ProtocolJson.Default.Identify, OpCode.Identify,
            """{"capabilities":["*"]}""");
    }

    [Fact]
    public void Dispatch_Json_IsGolden()
    {
        var full = new Dispatch
        {
            PluginName = "sales",
            FilePath = "/data/a.csv",
            Sinks = [new SinkConfig { Topic = "output", Uri = "parquet://output", Mode = SinkMode.Replace, SchemaDef = "{}" }],
            FileVersionId = 9_007_199_254_740_993, // past 2^53: must survive as an exact int64
            EnvHash = "system",
            SourceCode = "def parse(path):\n    return {\"a\": [1]}\n",
            ArtifactHash = "ab",
            ParserArchive = "UEsDBA==",
            LockfileContent = "",
            ParserVersion = "1.2.0",
            TimeoutSeconds = 300,
        };
        AssertGolden(full, ProtocolJson.Default.Dispatch, OpCode.Dispatch,
            """{"plugin_name":"sales","file_path":"/data/a.csv","sinks":[{"topic":"output","uri":"parquet://output","mode":"replace","schema_def":"{}"}],"file_version_id":9007199254740993,"env_hash":"system","source_code":"def parse(path):\n    return {\u0022a\u0022: [1]}\n","artifact_hash":"ab","parser_archive":"UEsDBA==","lockfile_content":"","parser_version":"1.2.0","timeout_seconds":300}""");

        var minimal = new Dispatch { PluginName = "p", FilePath = "f", FileVersionId = 1, EnvHash = "system", SourceCode = "" };
        AssertGolden(minimal, ProtocolJson.Default.Dispatch, OpCode.Dispatch,
            """{"plugin_name":"p","file_path":"f","sinks":[],"file_version_id":1,"env_hash":"system","source_code":""}""");
    }

    [Fact]
    public void SinkConfig_Mode_DefaultsToAppendAndIsAlwaysWritten()
    {
        var sink = Payload.Decode(OpCode.Dispatch, """{"topic":"t","uri":"parquet://t"}"""u8, ProtocolJson.Default.SinkConfig);
        Assert.Equal(SinkMode.Append, sink.Mode);
        AssertGolden(sink, ProtocolJson.Default.SinkConfig, OpCode.Dispatch, """{"topic":"t","uri":"parquet://t","mode":"append"}""");
        AssertGolden(sink with { Mode = SinkMode.Error }, ProtocolJson.Default.SinkConfig, OpCode.Dispatch, """{"topic":"t","uri":"parquet://t","mode":"error"}""");
    }

    [Fact]
    public void JobReceipt_Json_IsGolden()
    {
        var success = new JobReceipt
        {
            Status = ReceiptStatus.Success,
            Metrics = new() { ["rows"] = 1000, ["bytes"] = 4096 },
            Artifacts = [new() { ["topic"] = "output", ["uri"] = "file:///out/output/1.parquet" }],
        };
        AssertGolden(success, ProtocolJson.Default.JobReceipt, OpCode.Conclude,
            """{"status":"SUCCESS","metrics":{"rows":1000,"bytes":4096},"artifacts":[{"topic":"output","uri":"file:///out/output/1.parquet"}]}""");
        // metrics and artifacts are written even when empty; error_message only when set.
        AssertGolden(new JobReceipt { Status = ReceiptStatus.Failed, ErrorMessage = "ValueError: bad row 3" }, ProtocolJson.Default.JobReceipt, OpCode.Conclude,
            """{"status":"FAILED","metrics":{},"artifacts":[],"error_message":"ValueError: bad row 3"}""");
        AssertGolden(new JobReceipt { Status = ReceiptStatus.Rejected }, ProtocolJson.Default.JobReceipt, OpCode.Conclude,
            """{"status":"REJECTED","metrics":{},"artifacts":[]}""");
        AssertGolden(new JobReceipt { Status = ReceiptStatus.Aborted }, ProtocolJson.Default.JobReceipt, OpCode.Conclude,
            """{"status":"ABORTED","metrics":{},"artifacts":[]}""");
    }

    [Fact]
    public void JobReceipt_MissingOrNullCollections_ReadAsEmpty()
    {
        var r = Payload.Decode(OpCode.Conclude, """{"status":"SUCCESS","metrics":null}"""u8, ProtocolJson.Default.JobReceipt);
        Assert.Empty(r.Metrics);
        Assert.Empty(r.Artifacts);
    }

    [Fact]
    public void Heartbeat_Json_IsGolden()
    {
        AssertGolden(new Heartbeat { Status = WorkerStatus.Idle }, ProtocolJson.Default.Heartbeat, OpCode.Heartbeat,
            """{"status":"IDLE"}""");
        // active_job_count is left out when 0 and active_job_ids when empty.
        AssertGolden(new Heartbeat { Status = WorkerStatus.Idle, ActiveJobCount = 0, ActiveJobIds = [] }, ProtocolJson.Default.Heartbeat, OpCode.Heartbeat,
            """{"status":"IDLE"}""");
        AssertGolden(new Heartbeat { Status = WorkerStatus.Busy, CurrentJobId = 7, ActiveJobCount = 2, ActiveJobIds = [7, 8] }, ProtocolJson.Default.Heartbeat, OpCode.Heartbeat,
            """{"status":"BUSY","current_job_id":7,"active_job_count":2,"active_job_ids":[7,8]}""");
    }

    [Fact]
    public void Heartbeat_OldPeerShape_Parses()
    {
        // The back-compat case of SPEC §2.4: an older worker's heartbeat.
        var h = Payload.Decode(OpCode.Heartbeat, """{"status":"ALIVE","current_job_id":123}"""u8, ProtocolJson.Default.Heartbeat);
        Assert.Equal(WorkerStatus.Alive, h.Status);
        Assert.Equal(123, h.CurrentJobId);
        Assert.Equal(0, h.ActiveJobCount);
        Assert.Null(h.ActiveJobIds);
    }

    [Fact]
    public void Err_Json_IsGolden()
    {
        AssertGolden(new ErrorPayload { Message = "boom" }, ProtocolJson.Default.ErrorPayload, OpCode.Err, """{"message":"boom"}""");
        AssertGolden(new ErrorPayload { Message = "boom", Traceback = "Traceback (most recent call last):\n" }, ProtocolJson.Default.ErrorPayload, OpCode.Err,
            """{"message":"boom","traceback":"Traceback (most recent call last):\n"}""");
    }

    [Fact]
    public void PrepareEnv_And_EnvReady_Json_AreGolden()
    {
        AssertGolden(new PrepareEnv { EnvHash = "e1", LockfileContent = "x==1\n" }, ProtocolJson.Default.PrepareEnv, OpCode.PrepareEnv,
            """{"env_hash":"e1","lockfile_content":"x==1\n"}""");
        AssertGolden(new PrepareEnv { EnvHash = "e1", LockfileContent = "", PythonVersion = "3.11" }, ProtocolJson.Default.PrepareEnv, OpCode.PrepareEnv,
            """{"env_hash":"e1","lockfile_content":"","python_version":"3.11"}""");
        AssertGolden(new EnvReady { EnvHash = "e1", InterpreterPath = "/v/e1/bin/python", Cached = false }, ProtocolJson.Default.EnvReady, OpCode.EnvReady,
            """{"env_hash":"e1","interpreter_path":"/v/e1/bin/python","cached":false}""");
    }

    [Fact]
    public void Deploy_And_Ack_Json_AreGolden()
    {
        var deploy = new Deploy
        {
            PluginName = "sales", Version = "1.0.0", SourceCode = "x", LockfileContent = "",
            EnvHash = Hashes.Sha256Hex(""), ArtifactHash = Hashes.ArtifactHash("x", ""), Signature = "sig", PublisherName = "ann",
        };
        AssertGolden(deploy, ProtocolJson.Default.Deploy, OpCode.Deploy,
            """{"plugin_name":"sales","version":"1.0.0","source_code":"x","lockfile_content":"","env_hash":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","artifact_hash":"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","signature":"sig","publisher_name":"ann"}""");
        AssertGolden(deploy with { PublisherEmail = "a@x", AzureOid = "oid", SystemRequirements = ["glibc"] }, ProtocolJson.Default.Deploy, OpCode.Deploy,
            """{"plugin_name":"sales","version":"1.0.0","source_code":"x","lockfile_content":"","env_hash":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","artifact_hash":"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","signature":"sig","publisher_name":"ann","publisher_email":"a@x","azure_oid":"oid","system_requirements":["glibc"]}""");
        AssertGolden(new Ack { Success = true, Message = "stored", PluginId = 3 }, ProtocolJson.Default.Ack, OpCode.Ack,
            """{"success":true,"message":"stored","plugin_id":3}""");
        AssertGolden(new Ack { Success = false, Message = "artifact_hash mismatch" }, ProtocolJson.Default.Ack, OpCode.Ack,
            """{"success":false,"message":"artifact_hash mismatch"}""");
    }

    [Fact]
    public void Payload_UnknownFields_AreIgnored()
    {
        var id = Payload.Decode(OpCode.Identify, """{"future":{"x":[1,2]},"capabilities":["a"],"worker_id":null,"zzz":1}"""u8, ProtocolJson.Default.Identify);
        Assert.Equal(["a"], id.Capabilities);
        Assert.Null(id.WorkerId);
    }

    [Fact]
    public void Hashes_Sha256_MatchesSpecKnownValue()
    {
        Assert.Equal("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9", Hashes.Sha256Hex("hello world"));
        // artifact_hash is sha256 of the concatenation: "hello " + "world".
        Assert.Equal(Hashes.Sha256Hex("hello world"), Hashes.ArtifactHash("hello ", "world"));
    }

    public static TheoryData<byte, string, string> MalformedPayloads => new()
    {
        // Nothing at all where a DISPATCH object is required.
        { (byte)OpCode.Dispatch, "", "bad DISPATCH payload: empty payload, expected a JSON object" },
        // The JSON literal null.
        { (byte)OpCode.Conclude, "null", "bad CONCLUDE payload: JSON null, expected an object" },
        // Truncated object.
        { (byte)OpCode.Heartbeat, "{\"status\":", "bad HEARTBEAT payload: " },
        // A status value outside the enumeration.
        { (byte)OpCode.Conclude, "{\"status\":\"DONE\"}", "bad CONCLUDE payload: " },
        // A required field (file_path) missing.
        { (byte)OpCode.Dispatch, "{\"plugin_name\":\"p\",\"file_version_id\":1,\"env_hash\":\"system\",\"source_code\":\"\"}", "bad DISPATCH payload: " },
        // Wrong type: file_version_id as a string.
        { (byte)OpCode.Dispatch, "{\"plugin_name\":\"p\",\"file_path\":\"f\",\"file_version_id\":\"1\",\"env_hash\":\"system\",\"source_code\":\"\"}", "bad DISPATCH payload: " },
        // An array where an object belongs.
        { (byte)OpCode.Identify, "[1,2]", "bad IDENTIFY payload: " },
        // Not JSON: plain text.
        { (byte)OpCode.Err, "boom", "bad ERR payload: " },
    };

    [Theory]
    [MemberData(nameof(MalformedPayloads))]
    public void Payload_Decode_RejectsMalformedJson(byte opValue, string json, string messagePrefix)
    {
        var op = (OpCode)opValue;
        var bytes = Encoding.UTF8.GetBytes(json);
        var e = Assert.Throws<PayloadJsonException>(() => op switch
        {
            OpCode.Dispatch => (object)Payload.Decode(op, bytes, ProtocolJson.Default.Dispatch),
            OpCode.Conclude => Payload.Decode(op, bytes, ProtocolJson.Default.JobReceipt),
            OpCode.Heartbeat => Payload.Decode(op, bytes, ProtocolJson.Default.Heartbeat),
            OpCode.Identify => Payload.Decode(op, bytes, ProtocolJson.Default.Identify),
            OpCode.Err => Payload.Decode(op, bytes, ProtocolJson.Default.ErrorPayload),
            _ => throw new ArgumentOutOfRangeException(nameof(op)),
        });
        Assert.StartsWith(messagePrefix, e.Message);
        Assert.Equal(op, e.Op);
        if (json.Length > 0 && json != "null") Assert.True(e.Message.Length > messagePrefix.Length, "the JSON error says where it went wrong");
    }

    [Fact]
    public void Payload_Decode_RejectsInvalidUtf8()
    {
        byte[] bytes = [.. "{\"message\":\""u8, 0xC3, 0x28, .. "\"}"u8]; // 0xC3 0x28 is not UTF-8
        Assert.Throws<PayloadJsonException>(() => Payload.Decode(OpCode.Err, bytes, ProtocolJson.Default.ErrorPayload));
    }

    // ---- framing (SPEC §2.3) -------------------------------------------------------------------

    private static NetMQMessage Frames(params byte[][] frames)
    {
        var m = new NetMQMessage();
        foreach (var f in frames) m.Append(f);
        return m;
    }

    [Fact]
    public void Wire_DealerFrames_RoundTrip()
    {
        byte[] payload = Payload.Encode(new Heartbeat { Status = WorkerStatus.Idle }, ProtocolJson.Default.Heartbeat);
        var m = Frames(new Header(OpCode.Heartbeat, 5, (uint)payload.Length).ToArray(), payload);
        Assert.Equal(2, m.FrameCount);
        var back = Wire.FromDealerFrames(m);
        Assert.Equal(new Header(OpCode.Heartbeat, 5, (uint)payload.Length), back.Header);
        Assert.Equal(payload, back.Payload);
        Assert.Null(back.Identity);
        Assert.Equal(WorkerStatus.Idle, back.Decode(ProtocolJson.Default.Heartbeat).Status);
    }

    [Fact]
    public void Wire_RouterFrames_RoundTrip_WithEmptyPayload()
    {
        var m = Frames([0, 1, 2], new Header(OpCode.Abort, 77, 0).ToArray(), []);
        Assert.Equal(3, m.FrameCount);
        var back = Wire.FromRouterFrames(m);
        Assert.Equal(new Header(OpCode.Abort, 77, 0), back.Header);
        Assert.Empty(back.Payload);
        Assert.Equal([0, 1, 2], back.Identity);
    }

    [Fact]
    public void Wire_DealerFrames_RejectWrongFrameCounts()
    {
        var header = new Header(OpCode.Heartbeat, 0, 0).ToArray();
        // One frame: the payload frame is missing.
        var one = Assert.Throws<FrameCountException>(() => Wire.FromDealerFrames(Frames(header)));
        Assert.Equal("wrong frame count: expected 2 frames [header, payload], got 1", one.Message);
        // Three frames: an empty delimiter, as a REQ socket would add.
        var three = Assert.Throws<FrameCountException>(() => Wire.FromDealerFrames(Frames([], header, [])));
        Assert.Equal("wrong frame count: expected 2 frames [header, payload], got 3", three.Message);
    }

    [Fact]
    public void Wire_RouterFrames_RejectWrongFrameCounts()
    {
        var header = new Header(OpCode.Heartbeat, 0, 0).ToArray();
        // A peer that sent only the header.
        var e = Assert.Throws<FrameCountException>(() => Wire.FromRouterFrames(Frames([9], header)));
        Assert.Equal("wrong frame count: expected 3 frames [identity, header, payload], got 2", e.Message);
        // Four frames: a stray extra payload.
        Assert.Throws<FrameCountException>(() => Wire.FromRouterFrames(Frames([9], header, [], [])));
    }

    [Theory]
    // Declared longer than the payload frame.
    [InlineData(5u, 4)]
    // Declared empty, but a payload came.
    [InlineData(0u, 3)]
    // Declared one byte, none came.
    [InlineData(1u, 0)]
    public void Wire_RejectsPayloadLengthMismatch(uint declared, int actual)
    {
        var m = Frames(new Header(OpCode.Err, 1, declared).ToArray(), new byte[actual]);
        var e = Assert.Throws<PayloadLengthMismatchException>(() => Wire.FromDealerFrames(m));
        Assert.Equal($"payload length mismatch: header says {declared} bytes, payload frame has {actual}", e.Message);
    }

    [Fact]
    public void Wire_RejectsBadHeaderFrame()
    {
        Assert.Throws<HeaderTooShortException>(() => Wire.FromDealerFrames(Frames([4, 4, 0], [])));
        Assert.Throws<VersionMismatchException>(() => Wire.FromDealerFrames(Frames(new byte[16], [])));
    }

    [Fact]
    public void Wire_OverRealSockets_DealerToRouterAndBack()
    {
        using var router = new RouterSocket();
        using var dealer = new DealerSocket();
        int port = router.BindRandomPort("tcp://127.0.0.1");
        dealer.Connect($"tcp://127.0.0.1:{port}");

        Wire.Send(dealer, OpCode.Identify, 0, new Identify { Capabilities = ["*"], WorkerId = "w" }, ProtocolJson.Default.Identify);
        var atRouter = Wire.FromRouterFrames(router.ReceiveMultipartMessage());
        Assert.Equal(OpCode.Identify, atRouter.Op);
        Assert.Equal("w", atRouter.Decode(ProtocolJson.Default.Identify).WorkerId);

        Wire.Send(router, atRouter.Identity!, OpCode.Abort, 12, []);
        NetMQMessage? reply = null;
        Assert.True(dealer.TryReceiveMultipartMessage(TimeSpan.FromSeconds(5), ref reply));
        var atDealer = Wire.FromDealerFrames(reply!);
        Assert.Equal(new Header(OpCode.Abort, 12, 0), atDealer.Header);
    }
}
