// Bridge protocol (SPEC §3), worker side: runs one parser over one file in a guest Python process
// and hands every decoded table and log line to a sink as it arrives.
//
// The guest is `{interpreter} {shim} [--parser-path P | --parser-archive Z]` (shim/bridge_shim.py,
// extracted by Shim.Ensure) with BRIDGE_SOCKET, BRIDGE_FILE_PATH, BRIDGE_JOB_ID,
// BRIDGE_FILE_VERSION_ID and, for source parsers, BRIDGE_PLUGIN_CODE (base64). Our extensions:
// BRIDGE_PARSER_NAME (for messages), BRIDGE_MAX_MESSAGE_BYTES, BRIDGE_INTERACTIVE=1 (dev mode). A
// source too big for one environment variable (Linux caps each at 128 KiB) is written to the
// private socket directory and passed as --parser-path instead.
//
// The socket lives in a private directory (0700), removed with everything in it afterwards. The
// guest connects once and only writes; every frame starts with a big-endian u32 N:
//
//   N = 0            end of stream: required. A guest that closes the socket without it (even at a
//                    frame boundary, even exiting 0) has failed, and nothing it sent is committed.
//   N = 0xFFFFFFFF   error:  u32 length, UTF-8 text (≤ 1 MiB). First line: "parser P on FILE: cause";
//                    the lines after it, if any, are the Python traceback.
//   N = 0xFFFFFFFE   log:    u8 level (0 stdout, 1 stderr, 2 debug, 3 info, 4 warning, 5 error),
//                    u32 length, UTF-8 text (≤ 64 KiB): one line without its newline, or one
//                    logging record (which may span lines)
//   N = 0xFFFFFFFD, 0xFFFFFFFC, 0xFFFFFFFB   reserved (the earlier system's output start, output
//                    end, metrics JSON): rejected as malformed
//   otherwise        N bytes (≤ MaxMessageBytes, the message_limit setting) holding one complete Arrow IPC
//                    stream: schema, record batches, end-of-stream marker. One stream is one table;
//                    its topic is the schema's custom metadata "casparian.topic" ("output" when
//                    absent), and must match [a-z][a-z0-9_]*. A table larger than the limit comes
//                    as several streams for the same topic: the consumer appends them.
//
// Guest exit codes: 0 success, 1 permanent failure, 2 transient failure. The guest runs in a process
// group of its own (the shim calls setpgid), so killing the group also kills what the parser
// spawned; in interactive mode it stays in the terminal's group (so it may read the terminal) and
// only its process tree is killed.
using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Apache.Arrow;
using Apache.Arrow.Ipc;
using Apache.Arrow.Memory;
using Apache.Arrow.Types;

namespace Casparian;

internal enum GuestLogLevel : byte
{
    Stdout = 0,
    Stderr = 1,
    Debug = 2,
    Info = 3,
    Warning = 4,
    Error = 5,
}

internal enum GuestOutcome
{
    Success,
    /// <summary>Permanent: the parser raised, the guest sent garbage, the sink refused a table.</summary>
    Failed,
    /// <summary>Worth retrying: exit code 2 (TransientError, MemoryError) or killed by SIGKILL not sent by us.</summary>
    Transient,
    /// <summary>Connect, idle or total time limit; the guest was killed.</summary>
    TimedOut,
    /// <summary>The caller's token was cancelled; the guest was killed.</summary>
    Aborted,
}

internal enum GuestParserKind
{
    /// <summary>Python source text, sent as BRIDGE_PLUGIN_CODE.</summary>
    Source,
    /// <summary>A .py file or a parser directory (--parser-path).</summary>
    Path,
    /// <summary>A bundled parser ZIP (--parser-archive).</summary>
    Archive,
}

/// <summary>The parser the guest runs: one of SPEC §3's three forms.</summary>
internal readonly record struct GuestParser(GuestParserKind Kind, string Value)
{
    public static GuestParser Source(string code) => new(GuestParserKind.Source, code);
    public static GuestParser Path(string fileOrDirectory) => new(GuestParserKind.Path, fileOrDirectory);
    public static GuestParser Archive(string zip) => new(GuestParserKind.Archive, zip);
}

/// <summary>Limits and places that stay the same for every job of one worker or run.</summary>
internal sealed record BridgeOptions
{
    public required TimeSpan ConnectTimeout { get; init; }
    /// <summary>Longest silence from the guest while a frame is awaited, and longest wait for it to exit after its end of stream.</summary>
    public required TimeSpan IdleTimeout { get; init; }
    /// <summary>Largest table message (one Arrow IPC stream) the guest may send.</summary>
    public required int MaxMessageBytes { get; init; }
    /// <summary>Where the private socket directories go; null for the system temp directory. Unix socket
    /// paths are limited to 107 bytes, so a long root falls back to the temp directory.</summary>
    public string? SocketRoot { get; init; }
}

internal sealed record GuestRequest
{
    /// <summary>A real interpreter path (Python.ResolveReal or a venv's bin/python), never a shell shim.</summary>
    public required string Interpreter { get; init; }
    /// <summary>bridge_shim.py, from <see cref="Shim.Ensure"/>.</summary>
    public required string ShimPath { get; init; }
    public required GuestParser Parser { get; init; }
    public required string FilePath { get; init; }
    public ulong JobId { get; init; }
    public long FileVersionId { get; init; }
    /// <summary>How messages name the parser (BRIDGE_PARSER_NAME); the shim derives one when null.</summary>
    public string? ParserName { get; init; }
    /// <summary>Total time limit for the job; null for none.</summary>
    public TimeSpan? Timeout { get; init; }
    /// <summary>Dev mode: the guest inherits this process's stdin and terminal process group, so breakpoint() works.</summary>
    public bool Interactive { get; init; }
    /// <summary>
    /// With <see cref="Interactive"/>: whether the guest stays in our (the terminal's) process group,
    /// which only reading a terminal needs; null means yes. When it does, only its process tree can be
    /// killed, and a child that left the tree survives; otherwise its group is killed.
    /// </summary>
    public bool? TerminalGroup { get; init; }

    /// <summary>Whether the guest stays in our process group rather than leading its own.</summary>
    internal bool SharesGroup => Interactive && (TerminalGroup ?? true);
    public string? WorkingDirectory { get; init; }
    /// <summary>Extra environment for the guest (null value removes a variable).</summary>
    public IReadOnlyDictionary<string, string?>? Environment { get; init; }
    public required BridgeOptions Options { get; init; }
    /// <summary>Where warm guests come from; null (or disabled) runs every job on a cold guest.</summary>
    public WarmGuests? Warm { get; init; }
}

internal sealed record GuestResult
{
    public required GuestOutcome Outcome { get; init; }
    /// <summary>One line for a receipt or a terminal; null on success.</summary>
    public string? ErrorMessage { get; init; }
    /// <summary>The Python traceback, when the guest sent one.</summary>
    public string? Traceback { get; init; }
    /// <summary>The guest's exit code (128 + signal when killed); null if it never started.</summary>
    public int? ExitCode { get; init; }
    public long Tables { get; init; }
    public long Batches { get; init; }
    public long Rows { get; init; }
    /// <summary>Every byte read from the socket.</summary>
    public long Bytes { get; init; }
    public long LogLines { get; init; }
    public TimeSpan Duration { get; init; }
    /// <summary>From the guest's launch to its connecting back (its start time); null if it never connected.</summary>
    public TimeSpan? ConnectedAfter { get; init; }
    /// <summary>The guest was a child forked by a warm zygote.</summary>
    public bool Warm { get; init; }
    /// <summary>The zygote died under the job: run it again on a cold guest (<see cref="GuestOutcome.Transient"/>).</summary>
    public bool WarmLost { get; init; }

    public bool Succeeded => Outcome == GuestOutcome.Success;
}

/// <summary>
/// Receives what the guest produces, as it arrives. The bridge never calls a sink concurrently.
/// An interface because three parties implement it: the worker's Parquet writer, <c>run</c>'s
/// terminal, and tests.
/// </summary>
internal interface IGuestSink
{
    /// <summary>
    /// One decoded batch of <paramref name="topic"/>. The sink owns the batch and disposes it, also
    /// when it throws. Throwing fails the job: the bridge kills the guest and reports Failed with the
    /// exception's message (e.g. a schema that differs from the topic's earlier batches). A table of
    /// zero rows still arrives, as one empty batch carrying its schema.
    /// </summary>
    void Table(string topic, RecordBatch batch);

    /// <summary>A log line: print()/logging from the guest, or raw output on its stdout/stderr pipes.
    /// Capping is the sink's business; the bridge delivers everything.</summary>
    void Log(GuestLogLevel level, string text);
}

/// <summary>Malformed bridge traffic from the guest; the job fails with this message.</summary>
internal sealed class BridgeProtocolException(string message, Exception? inner = null) : Exception(message, inner);

internal static class BridgeThrow
{
    public static BridgeProtocolException Frame_Reserved(uint n) =>
        new($"guest sent reserved frame type 0x{n:X8}; this worker speaks the bridge protocol of SPEC §3 only (logs, errors, Arrow streams)");
    public static BridgeProtocolException Frame_TooLarge(string what, long length, long max) =>
        new($"guest sent {what} of {length} bytes; the limit is {max}");
    public static BridgeProtocolException Frame_Truncated(string what, long got, long expected) =>
        new($"guest closed the connection inside {what} ({got} of {expected} bytes)");
    public static BridgeProtocolException Frame_NoEnd() =>
        new("guest closed the bridge without an end-of-stream frame (it exited or crashed before finishing), so its output may be incomplete and none of it is kept");
    public static BridgeProtocolException Log_BadLevel(byte level) =>
        new($"guest sent a log frame with level {level}; expected 0..5");
    public static BridgeProtocolException Arrow_Malformed(long table, Exception e) =>
        new($"guest sent a malformed Arrow IPC stream (table {table}): {e.GetType().Name}: {e.Message}", e);
    public static BridgeProtocolException Arrow_BodyTooLarge(int length, int remaining) =>
        new($"guest's Arrow message declares a {length}-byte body but only {remaining} bytes of its frame remain");
    public static BridgeProtocolException Arrow_TrailingBytes(long table, int remaining) =>
        new($"guest sent {remaining} bytes after the end of Arrow stream (table {table})");
    public static BridgeProtocolException Arrow_NoSchema(long table) =>
        new($"guest sent an Arrow stream without a schema (table {table})");
    public static BridgeProtocolException Arrow_BadTopic(string topic) =>
        new($"guest sent a table for topic '{topic}'; topic names match [a-z][a-z0-9_]* (at most {Bridge.MaxTopicLength} characters)");
    public static BridgeProtocolException Arrow_EmptyUnsupported(IArrowType type) =>
        new($"guest sent a schema-only table with a column of type {type.Name}; send one empty batch instead");
}

internal static partial class Bridge
{
    /// <summary>Schema custom-metadata key carrying a table's topic.</summary>
    public const string TopicKey = "casparian.topic";
    public const string DefaultTopic = "output";
    public const uint EndFrame = 0;
    public const uint ErrorFrame = 0xFFFFFFFF;
    public const uint LogFrame = 0xFFFFFFFE;
    public const uint FirstReservedFrame = 0xFFFFFFFB;
    public const int MaxLogBytes = 64 << 10;
    public const int MaxErrorBytes = 1 << 20;
    /// <summary>Base64 sources longer than this go to a file rather than BRIDGE_PLUGIN_CODE.</summary>
    public const int MaxCodeVariable = 96 << 10;

    /// <summary>
    /// Runs the guest to completion and returns how it ended. Never throws for anything the guest,
    /// the interpreter or the sink does; cancelling <paramref name="abort"/> kills the guest's process
    /// tree and returns <see cref="GuestOutcome.Aborted"/>. When the task completes, no guest process
    /// and no socket file are left.
    /// </summary>
    public static async Task<GuestResult> RunAsync(GuestRequest request, IGuestSink sink, CancellationToken abort)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(sink);
        var run = new GuestRun(request, sink);
        try
        {
            await run.ExecuteAsync(abort).ConfigureAwait(false);
        }
        finally
        {
            await run.CleanupAsync().ConfigureAwait(false);
        }
        return run.Result(abort);
    }

    /// <summary>Longest topic name: a topic names a directory under the output root.</summary>
    public const int MaxTopicLength = 128;

    /// <summary>The one rule for topic names, here and in the output: [a-z][a-z0-9_]*, at most <see cref="MaxTopicLength"/> characters.</summary>
    public static bool IsValidTopic(string topic)
    {
        if (topic.Length is 0 or > MaxTopicLength || !char.IsAsciiLetterLower(topic[0])) return false;
        foreach (char c in topic)
            if (!(char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '_')) return false;
        return true;
    }

    /// <summary>Zero-length arrays for a schema: a table of no rows still reaches the sink with its columns.</summary>
    internal static RecordBatch EmptyBatch(Schema schema)
    {
        var arrays = new IArrowArray[schema.FieldsList.Count];
        for (int i = 0; i < arrays.Length; i++) arrays[i] = ArrowArrayFactory.BuildArray(EmptyData(schema.FieldsList[i].DataType));
        return new RecordBatch(schema, arrays, 0);
    }

    private static ArrayData EmptyData(IArrowType type) => type switch
    {
        NullType => new ArrayData(type, 0, 0, 0, []),
        StringType or BinaryType => new ArrayData(type, 0, 0, 0, [ArrowBuffer.Empty, new ArrowBuffer(new byte[4]), ArrowBuffer.Empty]),
        LargeStringType or LargeBinaryType => new ArrayData(type, 0, 0, 0, [ArrowBuffer.Empty, new ArrowBuffer(new byte[8]), ArrowBuffer.Empty]),
        ListType list => new ArrayData(type, 0, 0, 0, [ArrowBuffer.Empty, new ArrowBuffer(new byte[4])], [EmptyData(list.ValueDataType)]),
        StructType @struct => new ArrayData(type, 0, 0, 0, [ArrowBuffer.Empty], @struct.Fields.Select(f => EmptyData(f.DataType)).ToArray()),
        DictionaryType dictionary => new ArrayData(type, 0, 0, 0, [ArrowBuffer.Empty, ArrowBuffer.Empty], null, EmptyData(dictionary.ValueType)),
        FixedWidthType => new ArrayData(type, 0, 0, 0, [ArrowBuffer.Empty, ArrowBuffer.Empty]),
        _ => throw BridgeThrow.Arrow_EmptyUnsupported(type),
    };

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int SysKill(int pid, int signal);

    private const int SigKill = 9;

    /// <summary>SIGKILL to process group <paramref name="pgid"/>; false when there is no such group.</summary>
    internal static bool KillGroup(int pgid) => pgid > 1 && SysKill(-pgid, SigKill) == 0;
}
