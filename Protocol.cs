// Control protocol v4 (SPEC §2): header, opcodes, JSON payloads and ZeroMQ framing. Bit-compatible
// with the earlier Python/Rust system, so every byte layout and field name here is fixed.
using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using NetMQ;

namespace Casparian;

internal enum OpCode : byte
{
    Unknown = 0,
    Identify = 1,
    Dispatch = 2,
    Abort = 3,
    Heartbeat = 4,
    Conclude = 5,
    Err = 6,
    Reload = 7,
    PrepareEnv = 8,
    EnvReady = 9,
    Deploy = 10,
    Ack = 11,
}

// byte  0      1      2..3       4..11        12..15
//      [VER ] [OP  ] [RESERVED] [JOB_ID u64] [PAYLOAD_LEN u32]     all big-endian (struct "!BBHQI")
// RESERVED is written 0 and ignored on read; bytes past 16 are ignored.
internal readonly record struct Header(OpCode Op, ulong JobId, uint PayloadLength)
{
    public const int Size = 16;
    public const byte Version = 4;
    public const byte MaxOpCode = (byte)OpCode.Ack;

    public void Write(Span<byte> destination)
    {
        // One bounds check up front; the writes below then cannot fail.
        Span<byte> d = destination[..Size];
        d[0] = Version;
        d[1] = (byte)Op;
        BinaryPrimitives.WriteUInt16BigEndian(d[2..], 0);
        BinaryPrimitives.WriteUInt64BigEndian(d[4..], JobId);
        BinaryPrimitives.WriteUInt32BigEndian(d[12..], PayloadLength);
    }

    public byte[] ToArray()
    {
        var bytes = new byte[Size];
        Write(bytes);
        return bytes;
    }

    /// <summary>False when fewer than <see cref="Size"/> bytes are there; throws on a bad version or opcode.</summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out Header header)
    {
        if (source.Length < Size)
        {
            header = default;
            return false;
        }
        if (source[0] != Version) throw ProtocolThrow.Header_VersionMismatch(source[0]);
        if (source[1] > MaxOpCode) throw ProtocolThrow.Header_InvalidOpCode(source[1]);
        header = new Header(
            (OpCode)source[1],
            BinaryPrimitives.ReadUInt64BigEndian(source[4..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[12..]));
        return true;
    }

    /// <summary>A header frame is complete by definition, so a short one is malformed rather than partial.</summary>
    public static Header Read(ReadOnlySpan<byte> frame)
    {
        if (!TryRead(frame, out var header)) throw ProtocolThrow.Header_TooShort(frame.Length);
        return header;
    }
}

// ---------------------------------------------------------------------------------------------
// Errors. Each malformed input of SPEC §2.1/§2.3 has its own type, and every message says what was
// expected and what arrived. Roles catch ProtocolException, count it and drop the message.

internal abstract class ProtocolException(string message, Exception? inner = null) : Exception(message, inner);

internal sealed class HeaderTooShortException(int actual)
    : ProtocolException($"header too short: expected {Header.Size} bytes, got {actual}")
{
    public int Actual { get; } = actual;
}

internal sealed class VersionMismatchException(byte actual)
    : ProtocolException($"version mismatch: expected {Header.Version}, got {actual}")
{
    public byte Actual { get; } = actual;
}

internal sealed class InvalidOpCodeException(byte actual)
    : ProtocolException($"invalid opcode: expected 0..{Header.MaxOpCode}, got {actual}")
{
    public byte Actual { get; } = actual;
}

internal sealed class PayloadLengthMismatchException(uint declared, int actual)
    : ProtocolException($"payload length mismatch: header says {declared} bytes, payload frame has {actual}")
{
    public uint Declared { get; } = declared;
    public int Actual { get; } = actual;
}

internal sealed class FrameCountException(int expected, int actual, string shape)
    : ProtocolException($"wrong frame count: expected {expected} frames {shape}, got {actual}")
{
    public int Expected { get; } = expected;
    public int Actual { get; } = actual;
}

internal sealed class PayloadJsonException(OpCode op, string detail, Exception? inner = null)
    : ProtocolException($"bad {op.ToWireName()} payload: {detail}", inner)
{
    public OpCode Op { get; } = op;
}

internal static class ProtocolThrow
{
    public static HeaderTooShortException Header_TooShort(int actual) => new(actual);
    public static VersionMismatchException Header_VersionMismatch(byte actual) => new(actual);
    public static InvalidOpCodeException Header_InvalidOpCode(byte actual) => new(actual);
    public static PayloadLengthMismatchException Frame_LengthMismatch(uint declared, int actual) => new(declared, actual);
    public static FrameCountException Frame_Count(int expected, int actual, string shape) => new(expected, actual, shape);
    public static PayloadJsonException Payload_Empty(OpCode op) => new(op, "empty payload, expected a JSON object");
    public static PayloadJsonException Payload_Null(OpCode op) => new(op, "JSON null, expected an object");
    // System.Text.Json's message already names the JSON path and position ("... Path: $.status | LineNumber: 0 ...").
    public static PayloadJsonException Payload_Json(OpCode op, JsonException e) => new(op, e.Message, e);
}

internal static class OpCodeNames
{
    public static string ToWireName(this OpCode op) => op switch
    {
        OpCode.Unknown => "UNKNOWN",
        OpCode.Identify => "IDENTIFY",
        OpCode.Dispatch => "DISPATCH",
        OpCode.Abort => "ABORT",
        OpCode.Heartbeat => "HEARTBEAT",
        OpCode.Conclude => "CONCLUDE",
        OpCode.Err => "ERR",
        OpCode.Reload => "RELOAD",
        OpCode.PrepareEnv => "PREPARE_ENV",
        OpCode.EnvReady => "ENV_READY",
        OpCode.Deploy => "DEPLOY",
        OpCode.Ack => "ACK",
        _ => $"OP{(byte)op}",
    };
}

// ---------------------------------------------------------------------------------------------
// Payloads (SPEC §2.4). Property order is wire order. Optional fields are nullable and left out
// when null (ProtocolJson's DefaultIgnoreCondition); required ones use `required`, so a payload
// missing them is rejected as malformed rather than half-filled.

internal sealed record Identify
{
    [JsonPropertyName("capabilities")] public required List<string> Capabilities { get; init; }
    [JsonPropertyName("worker_id")] public string? WorkerId { get; init; }
    /// <summary>Our extension: concurrent jobs the worker accepts (the sentinel assumes 4 when missing).</summary>
    [JsonPropertyName("slots")] public int? Slots { get; init; }
    /// <summary>Our extension: the sentinel's join token, the worker's proof (only ever sent inside CURVE or inproc).</summary>
    [JsonPropertyName("auth_token")] public string? AuthToken { get; init; }
}

[JsonConverter(typeof(JsonStringEnumConverter<SinkMode>))]
internal enum SinkMode
{
    [JsonStringEnumMemberName("append")] Append,
    [JsonStringEnumMemberName("replace")] Replace,
    [JsonStringEnumMemberName("error")] Error,
}

internal sealed record SinkConfig
{
    [JsonPropertyName("topic")] public required string Topic { get; init; }
    [JsonPropertyName("uri")] public required string Uri { get; init; }
    [JsonPropertyName("mode")] public SinkMode Mode { get; init; } = SinkMode.Append;
    [JsonPropertyName("schema_def")] public string? SchemaDef { get; init; }
    /// <summary>Extension: the topic's Parquet codec by name (Output.Codec.cs); null: the worker's <c>compression</c> setting.</summary>
    [JsonPropertyName("compression")] public string? Compression { get; init; }
}

internal sealed record Dispatch
{
    [JsonPropertyName("plugin_name")] public required string PluginName { get; init; }
    [JsonPropertyName("file_path")] public required string FilePath { get; init; }
    [JsonPropertyName("sinks")] public List<SinkConfig> Sinks { get; init => field = value ?? []; } = [];
    [JsonPropertyName("file_version_id")] public required long FileVersionId { get; init; }
    [JsonPropertyName("env_hash")] public required string EnvHash { get; init; }
    [JsonPropertyName("source_code")] public required string SourceCode { get; init; }
    [JsonPropertyName("artifact_hash")] public string? ArtifactHash { get; init; }
    // Extensions (old peers ignore them).
    [JsonPropertyName("parser_archive")] public string? ParserArchive { get; init; }
    [JsonPropertyName("lockfile_content")] public string? LockfileContent { get; init; }
    [JsonPropertyName("parser_version")] public string? ParserVersion { get; init; }
    [JsonPropertyName("timeout_seconds")] public int? TimeoutSeconds { get; init; }
    /// <summary>The queued content's SHA-256 (hex): the lineage column _source_hash.</summary>
    [JsonPropertyName("content_hash")] public string? ContentHash { get; init; }
    /// <summary>File uris of this parser's current output for this source: removed once this job's output is in place.</summary>
    [JsonPropertyName("supersedes")] public List<string>? Supersedes { get; init; }
    /// <summary>The schema registry's current schema of each topic this parser has written (issue 14): the job fails on a change readers cannot union.</summary>
    [JsonPropertyName("topic_schemas")] public List<TopicSchemaDef>? TopicSchemas { get; init; }
    /// <summary>The routing rule's topic prefix (issue 19): every topic the parser writes lands as prefix + topic; missing or "" none. <c>sinks</c> are named by the prefixed names.</summary>
    [JsonPropertyName("topic_prefix")] public string? TopicPrefix { get; init; }
}

[JsonConverter(typeof(JsonStringEnumConverter<ReceiptStatus>))]
internal enum ReceiptStatus
{
    [JsonStringEnumMemberName("SUCCESS")] Success,
    [JsonStringEnumMemberName("FAILED")] Failed,
    [JsonStringEnumMemberName("REJECTED")] Rejected,
    [JsonStringEnumMemberName("ABORTED")] Aborted,
}

/// <summary>CONCLUDE payload. <c>metrics</c> and <c>artifacts</c> are always written, possibly empty.</summary>
internal sealed record JobReceipt
{
    [JsonPropertyName("status")] public required ReceiptStatus Status { get; init; }
    [JsonPropertyName("metrics")] public Dictionary<string, long> Metrics { get; init => field = value ?? []; } = [];
    [JsonPropertyName("artifacts")] public List<Dictionary<string, string>> Artifacts { get; init => field = value ?? []; } = [];
    [JsonPropertyName("error_message")] public string? ErrorMessage { get; init; }
    /// <summary>Our extension: hex SHA-256 of the input bytes the parser read (the store records it, not the hash taken at queue time).</summary>
    [JsonPropertyName("content_hash")] public string? ContentHash { get; init; }
}

[JsonConverter(typeof(JsonStringEnumConverter<WorkerStatus>))]
internal enum WorkerStatus
{
    [JsonStringEnumMemberName("IDLE")] Idle,
    [JsonStringEnumMemberName("BUSY")] Busy,
    [JsonStringEnumMemberName("ALIVE")] Alive,
}

internal sealed record Heartbeat
{
    [JsonPropertyName("status")] public required WorkerStatus Status { get; init; }
    [JsonPropertyName("current_job_id")] public long? CurrentJobId { get; init; }

    [JsonPropertyName("active_job_count")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int ActiveJobCount { get; init; }

    /// <summary>Left out of the JSON when empty: an empty list reads back as null.</summary>
    [JsonPropertyName("active_job_ids")]
    public List<long>? ActiveJobIds { get; init => field = value is { Count: > 0 } ? value : null; }

    /// <summary>Our extension: the worker's own figures since its previous heartbeat (docs/protocol.md).</summary>
    [JsonPropertyName("figures")] public WorkerFigures? Figures { get; init; }
}

/// <summary>
/// A worker's figures that no receipt carries, gathered since its previous HEARTBEAT: the start time
/// of each guest in seconds, cold when the job had to build its environment, warm otherwise. Each
/// list holds at most <see cref="MaxObservations"/> values (the rest are dropped by the worker).
/// </summary>
internal sealed record WorkerFigures
{
    public const int MaxObservations = 1024;

    [JsonPropertyName("guest_start_cold")] public List<double>? GuestStartCold { get; init; }
    [JsonPropertyName("guest_start_warm")] public List<double>? GuestStartWarm { get; init; }
}

internal sealed record ErrorPayload
{
    [JsonPropertyName("message")] public required string Message { get; init; }
    [JsonPropertyName("traceback")] public string? Traceback { get; init; }
}

internal sealed record PrepareEnv
{
    [JsonPropertyName("env_hash")] public required string EnvHash { get; init; }
    [JsonPropertyName("lockfile_content")] public required string LockfileContent { get; init; }
    [JsonPropertyName("python_version")] public string? PythonVersion { get; init; }
}

internal sealed record EnvReady
{
    [JsonPropertyName("env_hash")] public required string EnvHash { get; init; }
    [JsonPropertyName("interpreter_path")] public required string InterpreterPath { get; init; }
    [JsonPropertyName("cached")] public required bool Cached { get; init; }
}

internal sealed record Deploy
{
    [JsonPropertyName("plugin_name")] public required string PluginName { get; init; }
    [JsonPropertyName("version")] public required string Version { get; init; }
    [JsonPropertyName("source_code")] public required string SourceCode { get; init; }
    [JsonPropertyName("lockfile_content")] public required string LockfileContent { get; init; }
    /// <summary>sha256 hex of <see cref="LockfileContent"/>.</summary>
    [JsonPropertyName("env_hash")] public required string EnvHash { get; init; }
    /// <summary>sha256 hex of the source bytes followed by the lockfile bytes.</summary>
    [JsonPropertyName("artifact_hash")] public required string ArtifactHash { get; init; }
    [JsonPropertyName("signature")] public required string Signature { get; init; }
    [JsonPropertyName("publisher_name")] public required string PublisherName { get; init; }
    [JsonPropertyName("publisher_email")] public string? PublisherEmail { get; init; }
    [JsonPropertyName("azure_oid")] public string? AzureOid { get; init; }
    [JsonPropertyName("system_requirements")] public List<string>? SystemRequirements { get; init; }
    /// <summary>Our extension: the sentinel's admin token; a DEPLOY without it stores nothing.</summary>
    [JsonPropertyName("auth_token")] public string? AuthToken { get; init; }
}

/// <summary>ACK payload (the earlier system's DeployResponse).</summary>
internal sealed record Ack
{
    [JsonPropertyName("success")] public required bool Success { get; init; }
    [JsonPropertyName("message")] public required string Message { get; init; }
    [JsonPropertyName("plugin_id")] public long? PluginId { get; init; }
}

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(Identify))]
[JsonSerializable(typeof(Dispatch))]
[JsonSerializable(typeof(SinkConfig))]
[JsonSerializable(typeof(JobReceipt))]
[JsonSerializable(typeof(Heartbeat))]
[JsonSerializable(typeof(ErrorPayload))]
[JsonSerializable(typeof(PrepareEnv))]
[JsonSerializable(typeof(EnvReady))]
[JsonSerializable(typeof(Deploy))]
[JsonSerializable(typeof(Ack))]
internal sealed partial class ProtocolJson : JsonSerializerContext;

internal static class Payload
{
    public static byte[] Encode<T>(T value, JsonTypeInfo<T> info) => JsonSerializer.SerializeToUtf8Bytes(value, info);

    /// <summary>Decodes a payload of <paramref name="op"/>; any JSON problem becomes a <see cref="PayloadJsonException"/>.</summary>
    public static T Decode<T>(OpCode op, ReadOnlySpan<byte> json, JsonTypeInfo<T> info) where T : class
    {
        if (json.IsEmpty) throw ProtocolThrow.Payload_Empty(op);
        T? value;
        try
        {
            value = JsonSerializer.Deserialize(json, info);
        }
        catch (JsonException e)
        {
            throw ProtocolThrow.Payload_Json(op, e);
        }
        return value ?? throw ProtocolThrow.Payload_Null(op);
    }
}

internal static class Hashes
{
    /// <summary>env_hash of a parser without a lockfile: the worker's own Python (SPEC §2.4, §5).</summary>
    public const string SystemEnv = "system";

    /// <summary>The first 12 hex digits, as messages and tables show a hash.</summary>
    public static string Short(string hash) => hash.Length > 12 ? hash[..12] : hash;

    public static string Sha256Hex(ReadOnlySpan<byte> data) => Convert.ToHexStringLower(SHA256.HashData(data));

    public static string Sha256Hex(string text) => Sha256Hex(System.Text.Encoding.UTF8.GetBytes(text));

    /// <summary>DEPLOY's artifact_hash: sha256 over the source bytes followed by the lockfile bytes.</summary>
    public static string ArtifactHash(string sourceCode, string lockfileContent)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        h.AppendData(System.Text.Encoding.UTF8.GetBytes(sourceCode));
        h.AppendData(System.Text.Encoding.UTF8.GetBytes(lockfileContent));
        return Convert.ToHexStringLower(h.GetHashAndReset());
    }
}

// ---------------------------------------------------------------------------------------------
// Framing (SPEC §2.3). A DEALER sends [header, payload]; the ROUTER sees [identity, header, payload]
// and answers with the same shape. No empty delimiter frame.

/// <summary>One decoded control message. <see cref="Identity"/> is set only on the ROUTER side.</summary>
internal readonly record struct WireMessage(Header Header, byte[] Payload, byte[]? Identity = null)
{
    public OpCode Op => Header.Op;
    public ulong JobId => Header.JobId;

    public T Decode<T>(JsonTypeInfo<T> info) where T : class => Casparian.Payload.Decode(Header.Op, Payload, info);
}

internal static class Wire
{
    public const string DealerShape = "[header, payload]";
    public const string RouterShape = "[identity, header, payload]";

    /// <summary>Parses what a DEALER receives (or sends): exactly [header, payload].</summary>
    public static WireMessage FromDealerFrames(NetMQMessage message)
    {
        if (message.FrameCount != 2) throw ProtocolThrow.Frame_Count(2, message.FrameCount, DealerShape);
        return Parse(message[0], message[1], identity: null);
    }

    /// <summary>Parses what a ROUTER receives: exactly [identity, header, payload].</summary>
    public static WireMessage FromRouterFrames(NetMQMessage message)
    {
        if (message.FrameCount != 3) throw ProtocolThrow.Frame_Count(3, message.FrameCount, RouterShape);
        return Parse(message[1], message[2], message[0].ToByteArray());
    }

    public static WireMessage Parse(NetMQFrame header, NetMQFrame payload, byte[]? identity)
    {
        var h = Header.Read(header.Buffer.AsSpan(0, header.MessageSize));
        if (h.PayloadLength != (uint)payload.MessageSize) throw ProtocolThrow.Frame_LengthMismatch(h.PayloadLength, payload.MessageSize);
        byte[] body = payload.Buffer.Length == payload.MessageSize ? payload.Buffer : payload.ToByteArray();
        return new WireMessage(h, body, identity);
    }

    /// <summary>Sends [header, payload] from a DEALER.</summary>
    public static void Send(IOutgoingSocket socket, OpCode op, ulong jobId, byte[] payload) =>
        socket.SendMoreFrame(new Header(op, jobId, (uint)payload.Length).ToArray()).SendFrame(payload);

    /// <summary>Sends [identity, header, payload] from a ROUTER.</summary>
    public static void Send(IOutgoingSocket socket, byte[] identity, OpCode op, ulong jobId, byte[] payload) =>
        socket.SendMoreFrame(identity).SendMoreFrame(new Header(op, jobId, (uint)payload.Length).ToArray()).SendFrame(payload);

    public static void Send<T>(IOutgoingSocket socket, OpCode op, ulong jobId, T payload, JsonTypeInfo<T> info) =>
        Send(socket, op, jobId, Payload.Encode(payload, info));

    public static void Send<T>(IOutgoingSocket socket, byte[] identity, OpCode op, ulong jobId, T payload, JsonTypeInfo<T> info) =>
        Send(socket, identity, op, jobId, Payload.Encode(payload, info));
}
