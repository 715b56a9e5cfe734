// One guest run: private socket directory, process, connection, frame loop, and the cleanup that
// leaves no process and no socket behind. The frame loop is the only reader of the socket; the two
// pipe pumps (guest stdout/stderr outside the log frames) run beside it, and one lock orders every
// sink call.
using System.Buffers;
using System.Buffers.Binary;
using System.ComponentModel;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using Apache.Arrow;
using Apache.Arrow.Ipc;
using Apache.Arrow.Memory;

namespace Casparian;

internal static partial class Bridge
{
    private sealed class GuestRun(GuestRequest request, IGuestSink sink)
    {
        private const int PipeTailChars = 4096;
        private const UnixFileMode PrivateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
        private static readonly TimeSpan ExitGrace = TimeSpan.FromSeconds(1);
        private static readonly TimeSpan ReapTimeout = TimeSpan.FromSeconds(5);

        private readonly BridgeOptions _options = request.Options;
        private readonly Lock _gate = new();
        private readonly long _started = Stopwatch.GetTimestamp();
        private readonly StringBuilder _stderrTail = new();

        // Cancelled by abort, the total timeout, or a pump whose sink call threw.
        private CancellationTokenSource? _job;
        private readonly CancellationTokenSource _stop = new();
        // Armed for the length of each socket read: the idle timeout.
        private readonly CancellationTokenSource _idle = new();
        private CancellationTokenSource? _read;

        private string? _directory;
        private Socket? _listener;
        private Socket? _connection;
        private Stream? _stream;
        private Process? _process;
        // A warm guest: a child forked by a zygote instead of _process (WarmGuests.cs, Zygote.cs).
        private WarmLease? _lease;
        private WarmChild? _child;
        private bool _warmLost;
        private Task[] _pumps = [];
        private bool _closed;
        private bool _killedByUs;
        private int? _exitCode;

        // How the run ended, one field per kind; Result() ranks them. The first of each kind wins.
        private string? _setupError;
        private string? _timeout;
        private string? _sinkError;
        private string? _protocolError;
        private string? _errorMessage;
        private string? _traceback;
        private bool _totalTimedOut;
        private bool _missingEnd;

        private long _tables, _batches, _rows, _bytes, _logLines;
        private TimeSpan? _connectedAfter;

        public async Task ExecuteAsync(CancellationToken abort)
        {
            _job = CancellationTokenSource.CreateLinkedTokenSource(abort, _stop.Token);
            if (request.Timeout is { } limit) _job.CancelAfter(limit);
            _read = CancellationTokenSource.CreateLinkedTokenSource(_job.Token, _idle.Token);
            CancellationToken job = _job.Token;
            try
            {
                if (!Prepare() || !await StartAsync(job).ConfigureAwait(false)) return;
                if (!await ConnectAsync(job).ConfigureAwait(false)) return;
                _connectedAfter = Stopwatch.GetElapsedTime(_started);
                await ReadFramesAsync().ConfigureAwait(false);
                await WaitForExitAsync(job).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (job.IsCancellationRequested || _idle.IsCancellationRequested)
            {
                if (!job.IsCancellationRequested)
                    _timeout ??= $"guest sent nothing for {Seconds(_options.IdleTimeout)}; killed it";
                else if (!abort.IsCancellationRequested && !_stop.IsCancellationRequested)
                    _totalTimedOut = true;
            }
            catch (BridgeProtocolException e)
            {
                _protocolError ??= e.Message;
                // A guest that died mid-message explains itself by its exit code and stderr.
                await WaitForExitAsync(ExitGrace).ConfigureAwait(false);
            }
            catch (SinkException e)
            {
                lock (_gate) _sinkError ??= e.Message;
            }
            catch (IOException e) when (e.InnerException is SocketException)
            {
                _protocolError ??= $"reading from the guest failed: {e.InnerException.Message}";
                await WaitForExitAsync(ExitGrace).ConfigureAwait(false);
            }
        }

        // ---------------------------------------------------------------------------------------
        // Setup.

        private bool Prepare()
        {
            try
            {
                string? root = _options.SocketRoot;
                // sun_path holds 107 bytes; the directory name adds about 30 and the socket name 7.
                if (root is not null && Encoding.UTF8.GetByteCount(Path.GetFullPath(root)) > 64) root = null;
                if (root is not null)
                {
                    Directory.CreateDirectory(root);
                    _directory = Path.Combine(root, "bridge-" + Guid.NewGuid().ToString("N")[..12]);
                    if (OperatingSystem.IsWindows()) Directory.CreateDirectory(_directory);
                    else Directory.CreateDirectory(_directory, PrivateMode);
                }
                else
                {
                    _directory = Directory.CreateTempSubdirectory("casparian-bridge-").FullName;
                }
                // Created 0700 already; set it explicitly anyway so no umask or platform default can widen it.
                if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(_directory, PrivateMode);
                string socketPath = Path.Combine(_directory, "s.sock");
                _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                _listener.Bind(new UnixDomainSocketEndPoint(socketPath));
                _listener.Listen(1);
                return true;
            }
            catch (Exception e) when (e is IOException or SocketException or UnauthorizedAccessException)
            {
                _setupError = $"cannot create the bridge socket for job {request.JobId} in {_options.SocketRoot ?? Path.GetTempPath()}: {e.Message}";
                return false;
            }
        }

        private string SocketPath => Path.Combine(_directory!, "s.sock");

        /// <summary>The shim's arguments and environment: the same for a cold guest and a warm child.</summary>
        private (List<string> Argv, Dictionary<string, string?> Env) Invocation()
        {
            var argv = new List<string>();
            var env = new Dictionary<string, string?>(StringComparer.Ordinal) { ["BRIDGE_PLUGIN_CODE"] = null };
            switch (request.Parser.Kind)
            {
                case GuestParserKind.Source:
                    string code = Convert.ToBase64String(Encoding.UTF8.GetBytes(request.Parser.Value));
                    if (code.Length <= MaxCodeVariable)
                    {
                        env["BRIDGE_PLUGIN_CODE"] = code;
                        break;
                    }
                    string file = Path.Combine(_directory!, "parser.py");
                    File.WriteAllText(file, request.Parser.Value);
                    argv.Add("--parser-path");
                    argv.Add(file);
                    break;
                case GuestParserKind.Path:
                    argv.Add("--parser-path");
                    argv.Add(request.Parser.Value);
                    break;
                case GuestParserKind.Archive:
                    argv.Add("--parser-archive");
                    argv.Add(request.Parser.Value);
                    break;
            }
            env["BRIDGE_SOCKET"] = SocketPath;
            env["BRIDGE_FILE_PATH"] = request.FilePath;
            env["BRIDGE_JOB_ID"] = request.JobId.ToString(System.Globalization.CultureInfo.InvariantCulture);
            env["BRIDGE_FILE_VERSION_ID"] = request.FileVersionId.ToString(System.Globalization.CultureInfo.InvariantCulture);
            env["BRIDGE_MAX_MESSAGE_BYTES"] = _options.MaxMessageBytes.ToString(System.Globalization.CultureInfo.InvariantCulture);
            env["BRIDGE_PARSER_NAME"] = request.ParserName;
            env["BRIDGE_INTERACTIVE"] = request.SharesGroup ? "1" : null;
            if (request.Environment is { } extra)
                foreach (var (k, v) in extra) env[k] = v;
            return (argv, env);
        }

        private async Task<bool> StartAsync(CancellationToken job)
        {
            var (argv, env) = Invocation();
            // Dev mode keeps its terminal, and a source parser has no file to import ahead: both run cold.
            if (request.Warm is { Enabled: true } warm && !request.Interactive && request.Parser.Kind != GuestParserKind.Source)
            {
                var key = ZygoteKey.For(request);
                string script = Path.Combine(Path.GetDirectoryName(request.ShimPath)!, Shim.ZygoteFile);
                if (await warm.AcquireAsync(key, script, job).ConfigureAwait(false) is { } lease)
                {
                    _lease = lease;
                    try
                    {
                        _child = await lease.Zygote.ForkAsync(env, request.WorkingDirectory, argv, _options.ConnectTimeout, job).ConfigureAwait(false);
                        return true;
                    }
                    catch (ZygoteLostException)
                    {
                        // Nothing ran yet: this job simply goes cold.
                        warm.Release(lease);
                        _lease = null;
                    }
                }
            }
            return Start(argv, env);
        }

        private bool Start(List<string> argv, Dictionary<string, string?> environment)
        {
            var psi = new ProcessStartInfo(request.Interpreter)
            {
                UseShellExecute = false,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = !request.Interactive,
                WorkingDirectory = request.WorkingDirectory ?? "",
            };
            psi.ArgumentList.Add(request.ShimPath);
            foreach (string a in argv) psi.ArgumentList.Add(a);
            var env = psi.Environment;
            foreach (var (k, v) in environment)
                if (v is null) env.Remove(k); else env[k] = v;

            try
            {
                _process = Process.Start(psi) ?? throw new InvalidOperationException("Process.Start returned null");
            }
            catch (Exception e) when (e is Win32Exception or InvalidOperationException or IOException)
            {
                _setupError = $"cannot start the guest interpreter {request.Interpreter} for job {request.JobId}: {e.Message}";
                return false;
            }
            if (!request.Interactive) _process.StandardInput.Close();
            _pumps =
            [
                Task.Run(() => PumpAsync(_process.StandardOutput.BaseStream, GuestLogLevel.Stdout)),
                Task.Run(() => PumpAsync(_process.StandardError.BaseStream, GuestLogLevel.Stderr)),
            ];
            return true;
        }

        // ---------------------------------------------------------------------------------------
        // The guest process, cold (our child) or warm (the zygote's child, reaped by the zygote).

        private int GuestPid => _child?.Pid ?? _process!.Id;

        private bool GuestExited => _child is { } c ? c.Exited.IsCompleted : _process!.HasExited;

        /// <summary>Completes when the guest has exited and <see cref="_exitCode"/> is set (null if its zygote died).</summary>
        private async Task ExitedAsync(CancellationToken cancel)
        {
            if (_child is { } child)
            {
                try
                {
                    _exitCode = await child.Exited.WaitAsync(cancel).ConfigureAwait(false);
                }
                catch (ZygoteLostException)
                {
                    _warmLost = true;
                }
                return;
            }
            await _process!.WaitForExitAsync(cancel).ConfigureAwait(false);
            _exitCode = _process.ExitCode;
        }

        private async Task<bool> ConnectAsync(CancellationToken job)
        {
            using var connect = CancellationTokenSource.CreateLinkedTokenSource(job);
            connect.CancelAfter(_options.ConnectTimeout);
            Task<Socket> accept = _listener!.AcceptAsync(connect.Token).AsTask();
            Task exited = ExitedAsync(connect.Token);
            await Task.WhenAny(accept, exited).ConfigureAwait(false);
            // An exit seen first does not mean the guest never connected: one that connected, wrote
            // everything and exited is still in the backlog (the accept completes at once), or already
            // taken from it by the pending accept whose completion has not run yet (a busy thread pool
            // delays it). Only an accept still empty-handed after a grace period means it never connected.
            if (!accept.IsCompleted && exited.IsCompletedSuccessfully)
                await Task.WhenAny(accept, Task.Delay(ExitGrace, job)).ConfigureAwait(false);
            if (!accept.IsCompleted && exited.IsCompletedSuccessfully)
            {
                connect.Cancel();
                _setupError = _warmLost ? "the warm guest's fork server died before the guest connected"
                    : $"guest exited with code {_exitCode} before connecting to the bridge{StderrTail()}";
                return false;
            }
            try
            {
                _connection = await accept.ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!job.IsCancellationRequested)
            {
                _timeout ??= $"guest did not connect to the bridge within {Seconds(_options.ConnectTimeout)}; killed it{StderrTail()}";
                return false;
            }
            catch (SocketException e)
            {
                _setupError = $"accepting the guest's connection failed: {e.Message}";
                return false;
            }
            // Nobody else may connect: the listener and its socket file go now.
            _listener.Dispose();
            _listener = null;
            File.Delete(SocketPath);
            _stream = new BufferedStream(new NetworkStream(_connection, ownsSocket: true), 1 << 16);
            return true;
        }

        // ---------------------------------------------------------------------------------------
        // Frames.

        private async Task ReadFramesAsync()
        {
            var head = new byte[9];
            var allocator = new FrameAllocator();
            while (true)
            {
                int got = await ReadAtLeastAsync(head.AsMemory(0, 4), allowEof: true).ConfigureAwait(false);
                if (got == 0)
                {
                    // Without its end-of-stream frame the guest may have died half-way (os._exit, a
                    // crash after some tables): the output may be partial, so even an exit 0 is a
                    // failure (Result) and nothing is committed.
                    _missingEnd = true;
                    return;
                }
                uint n = BinaryPrimitives.ReadUInt32BigEndian(head);
                switch (n)
                {
                    case EndFrame:
                        return;
                    case ErrorFrame:
                    {
                        await ReadAtLeastAsync(head.AsMemory(0, 4)).ConfigureAwait(false);
                        uint length = BinaryPrimitives.ReadUInt32BigEndian(head);
                        if (length > MaxErrorBytes) throw BridgeThrow.Frame_TooLarge("an error frame", length, MaxErrorBytes);
                        string text = await ReadTextAsync((int)length, "an error frame").ConfigureAwait(false);
                        OnErrorFrame(text);
                        break;
                    }
                    case LogFrame:
                    {
                        await ReadAtLeastAsync(head.AsMemory(0, 5)).ConfigureAwait(false);
                        byte level = head[0];
                        uint length = BinaryPrimitives.ReadUInt32BigEndian(head.AsSpan(1));
                        if (level > (byte)GuestLogLevel.Error) throw BridgeThrow.Log_BadLevel(level);
                        if (length > MaxLogBytes) throw BridgeThrow.Frame_TooLarge("a log frame", length, MaxLogBytes);
                        string text = await ReadTextAsync((int)length, "a log frame").ConfigureAwait(false);
                        Log((GuestLogLevel)level, text);
                        break;
                    }
                    case >= FirstReservedFrame:
                        throw BridgeThrow.Frame_Reserved(n);
                    default:
                        if (n > (uint)_options.MaxMessageBytes) throw BridgeThrow.Frame_TooLarge("a table message", n, _options.MaxMessageBytes);
                        await ReadTableAsync((int)n, allocator).ConfigureAwait(false);
                        break;
                }
            }
        }

        private void OnErrorFrame(string text)
        {
            if (_errorMessage is not null) return;
            int newline = text.IndexOf('\n');
            _errorMessage = (newline < 0 ? text : text[..newline]).TrimEnd('\r');
            string rest = newline < 0 ? "" : text[(newline + 1)..].Trim('\n', '\r');
            _traceback = rest.Length == 0 ? null : rest;
        }

        private async Task ReadTableAsync(int length, FrameAllocator allocator)
        {
            long table = ++_tables;
            var body = new FrameStream(this, length);
            allocator.Frame = body;
            try
            {
                using var reader = new ArrowStreamReader(body, allocator, leaveOpen: true);
                string? topic = null;
                long batches = 0;
                while (true)
                {
                    RecordBatch? batch;
                    try
                    {
                        batch = await reader.ReadNextRecordBatchAsync(_read!.Token).ConfigureAwait(false);
                    }
                    catch (Exception e) when (e is not (OperationCanceledException or BridgeProtocolException or IOException))
                    {
                        throw BridgeThrow.Arrow_Malformed(table, e);
                    }
                    if (batch is null) break;
                    topic ??= TopicOf(batch.Schema);
                    batches++;
                    Deliver(topic, batch);
                }
                if (batches == 0)
                {
                    Schema schema = reader.Schema ?? throw BridgeThrow.Arrow_NoSchema(table);
                    Deliver(TopicOf(schema), EmptyBatch(schema));
                }
            }
            finally
            {
                allocator.Frame = null;
            }
            if (body.Remaining > 0) throw BridgeThrow.Arrow_TrailingBytes(table, body.Remaining);
        }

        private static string TopicOf(Schema schema)
        {
            string topic = schema.Metadata is { } meta && meta.TryGetValue(TopicKey, out var t) ? t : DefaultTopic;
            return IsValidTopic(topic) ? topic : throw BridgeThrow.Arrow_BadTopic(topic);
        }

        private void Deliver(string topic, RecordBatch batch)
        {
            _batches++;
            _rows += batch.Length;
            try
            {
                lock (_gate) sink.Table(topic, batch);
            }
            catch (Exception e)
            {
                throw new SinkException(e);
            }
        }

        private void Log(GuestLogLevel level, string text)
        {
            lock (_gate)
            {
                if (_closed) return;
                _logLines++;
                sink.Log(level, text);
            }
        }

        private async Task<string> ReadTextAsync(int length, string what)
        {
            if (length == 0) return "";
            byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
            try
            {
                int got = await ReadAtLeastAsync(buffer.AsMemory(0, length), allowEof: true).ConfigureAwait(false);
                if (got < length) throw BridgeThrow.Frame_Truncated(what, got, length);
                return Encoding.UTF8.GetString(buffer, 0, length);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        /// <summary>Fills <paramref name="buffer"/>; returns fewer bytes only at EOF when <paramref name="allowEof"/>,
        /// and then only 0 bytes count as a clean end (anything between is a truncated frame).</summary>
        private async Task<int> ReadAtLeastAsync(Memory<byte> buffer, bool allowEof = false)
        {
            int total = 0;
            while (total < buffer.Length)
            {
                int n = await ReadSomeAsync(buffer[total..]).ConfigureAwait(false);
                if (n == 0)
                {
                    if (allowEof && total == 0) return 0;
                    if (allowEof && buffer.Length > 4) return total;
                    throw BridgeThrow.Frame_Truncated("a frame header", total, buffer.Length);
                }
                total += n;
            }
            return total;
        }

        internal async ValueTask<int> ReadSomeAsync(Memory<byte> buffer)
        {
            _idle.CancelAfter(_options.IdleTimeout);
            int n = await _stream!.ReadAsync(buffer, _read!.Token).ConfigureAwait(false);
            _idle.CancelAfter(Timeout.InfiniteTimeSpan);
            _bytes += n;
            return n;
        }

        // ---------------------------------------------------------------------------------------
        // Pipes: whatever reaches the guest's real stdout/stderr (output before the shim connects,
        // C-level writes, child processes) becomes log lines, read as it comes so the guest never
        // blocks on a full pipe.

        private async Task PumpAsync(Stream pipe, GuestLogLevel level)
        {
            var decoder = Encoding.UTF8.GetDecoder();
            byte[] bytes = new byte[8192];
            char[] chars = new char[Encoding.UTF8.GetMaxCharCount(bytes.Length)];
            var line = new StringBuilder();
            try
            {
                int n;
                while ((n = await pipe.ReadAsync(bytes).ConfigureAwait(false)) > 0)
                {
                    int count = decoder.GetChars(bytes, 0, n, chars, 0);
                    for (int i = 0; i < count; i++)
                    {
                        char c = chars[i];
                        if (c == '\n' || line.Length >= MaxLogBytes)
                        {
                            EmitPipeLine(level, line);
                            if (c == '\n') continue;
                        }
                        line.Append(c);
                    }
                }
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException)
            {
            }
            catch (Exception e)
            {
                // The sink threw: the job stops, as it does when Table() throws.
                lock (_gate) _sinkError ??= e.Message;
                _stop.Cancel();
                return;
            }
            if (line.Length > 0) EmitPipeLine(level, line);
        }

        private void EmitPipeLine(GuestLogLevel level, StringBuilder line)
        {
            if (line.Length > 0 && line[^1] == '\r') line.Length--;
            string text = line.ToString();
            line.Clear();
            if (level == GuestLogLevel.Stderr)
                lock (_stderrTail)
                {
                    _stderrTail.Append(text).Append('\n');
                    if (_stderrTail.Length > PipeTailChars) _stderrTail.Remove(0, _stderrTail.Length - PipeTailChars);
                }
            Log(level, text);
        }

        private string StderrTail()
        {
            lock (_stderrTail)
            {
                string tail = _stderrTail.ToString().Trim();
                return tail.Length == 0 ? "" : ": " + tail.ReplaceLineEndings(" | ");
            }
        }

        // ---------------------------------------------------------------------------------------
        // Exit and cleanup.

        private async Task WaitForExitAsync(CancellationToken job)
        {
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(job);
            wait.CancelAfter(_options.IdleTimeout);
            try
            {
                await ExitedAsync(wait.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!job.IsCancellationRequested)
            {
                _timeout ??= $"guest did not exit within {Seconds(_options.IdleTimeout)} after its end of stream; killed it";
            }
        }

        private async Task WaitForExitAsync(TimeSpan limit)
        {
            if (_process is null && _child is null) return;
            using var wait = new CancellationTokenSource(limit);
            try
            {
                await ExitedAsync(wait.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }

        public async Task CleanupAsync()
        {
            if (_process is not null || _child is not null)
            {
                int pid = GuestPid;
                bool exited = GuestExited;
                if (!exited) _killedByUs = true;
                // The group first: it holds what the parser spawned even after the guest itself is gone.
                if (!request.SharesGroup) KillGroup(pid);
                if (!exited && _process is { } p)
                {
                    try { p.Kill(entireProcessTree: true); }
                    catch (Exception e) when (e is InvalidOperationException or Win32Exception) { }
                }
                else if (!exited) SysKill(pid, SigKill);
                await WaitForExitAsync(ReapTimeout).ConfigureAwait(false);
                if (!request.SharesGroup) KillGroup(pid);
                // The pipes reach EOF once every holder is dead; a daemon that escaped the group keeps
                // them open, so the wait is bounded and later output is dropped (_closed).
                await Task.WhenAny(Task.WhenAll(_pumps), Task.Delay(TimeSpan.FromSeconds(2))).ConfigureAwait(false);
            }
            lock (_gate) _closed = true;
            _stream?.Dispose();
            _connection?.Dispose();
            _listener?.Dispose();
            if (_directory is not null)
            {
                try { Directory.Delete(_directory, recursive: true); }
                catch (DirectoryNotFoundException) { }
            }
            _process?.Dispose();
            if (_lease is { } lease) request.Warm!.Release(lease);
            _read?.Dispose();
            _job?.Dispose();
            _idle.Dispose();
            _stop.Dispose();
        }

        public GuestResult Result(CancellationToken abort)
        {
            int? exit = _exitCode;
            // SIGKILL that we did not send: most likely the kernel's out-of-memory killer.
            bool oomKilled = exit == 128 + SigKill && !_killedByUs;
            bool transientExit = exit == 2 || oomKilled;
            string? sinkError;
            lock (_gate) sinkError = _sinkError;
            (GuestOutcome outcome, string? message, string? traceback) = true switch
            {
                _ when abort.IsCancellationRequested => (GuestOutcome.Aborted, $"job {request.JobId} was aborted; the guest was killed", null),
                _ when _totalTimedOut => (GuestOutcome.TimedOut, $"job {request.JobId} exceeded its time limit of {Seconds(request.Timeout!.Value)}; the guest was killed", null),
                _ when _warmLost => (GuestOutcome.Transient, $"the warm guest's fork server died during job {request.JobId}", null),
                _ when _setupError is not null => (GuestOutcome.Failed, _setupError, null),
                _ when _timeout is not null => (GuestOutcome.TimedOut, _timeout, null),
                _ when sinkError is not null => (GuestOutcome.Failed, sinkError, null),
                _ when _errorMessage is not null => (transientExit ? GuestOutcome.Transient : GuestOutcome.Failed, _errorMessage, _traceback),
                _ when _protocolError is not null => (transientExit ? GuestOutcome.Transient : GuestOutcome.Failed,
                    exit is { } code and not 0 ? $"{_protocolError} (guest exit code {code}{StderrTail()})" : _protocolError, null),
                _ when exit == 0 && _missingEnd => (GuestOutcome.Failed, BridgeThrow.Frame_NoEnd().Message, null),
                _ when exit == 0 => (GuestOutcome.Success, null, null),
                _ when oomKilled => (GuestOutcome.Transient, $"guest was killed by SIGKILL, most likely out of memory{StderrTail()}", null),
                _ when exit == 2 => (GuestOutcome.Transient, $"guest exited with code 2 (transient failure){StderrTail()}", null),
                _ => (GuestOutcome.Failed, $"guest exited with code {exit?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "?"} without an error message{StderrTail()}", null),
            };
            return new GuestResult
            {
                Outcome = outcome,
                ErrorMessage = message,
                Traceback = traceback,
                ExitCode = exit,
                Tables = _tables,
                Batches = _batches,
                Rows = _rows,
                Bytes = _bytes,
                LogLines = _logLines,
                Duration = Stopwatch.GetElapsedTime(_started),
                ConnectedAfter = _connectedAfter,
                Warm = _child is not null,
                WarmLost = _warmLost,
            };
        }

        private static string Seconds(TimeSpan t) => $"{t.TotalSeconds:0.###} s";

        // -------------------------------------------------------------------------------------------
        // The Arrow reader sees one table frame as a stream of exactly its N bytes, read straight from
        // the socket; and allocates bodies through FrameAllocator, which refuses a body larger than
        // what the frame has left (garbage must not make us allocate gigabytes).

        private sealed class FrameStream(GuestRun run, int length) : Stream
        {
            private readonly int _length = length;

            public int Remaining { get; private set; } = length;

            public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
            {
                if (Remaining == 0 || buffer.IsEmpty) return 0;
                int n = await run.ReadSomeAsync(buffer[..Math.Min(buffer.Length, Remaining)]).ConfigureAwait(false);
                if (n == 0) throw BridgeThrow.Frame_Truncated("a table message", _length - Remaining, _length);
                Remaining -= n;
                return n;
            }

            public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
                ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

            // The reader is only driven through its async API; a synchronous read would bypass the idle timeout.
            public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

            public override bool CanRead => true;
            public override bool CanSeek => false;
            public override bool CanWrite => false;
            public override long Length => throw new NotSupportedException();
            public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
            public override void Flush() { }
            public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
            public override void SetLength(long value) => throw new NotSupportedException();
            public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        }

        /// <summary>
        /// Batch bodies come from a pool rather than Arrow's NativeMemoryAllocator, which zero-fills
        /// each body and reports it as GC memory pressure (forcing Gen2 collections at every few
        /// batches); the reader overwrites every byte anyway. A body returns to the pool when the
        /// sink disposes its batch. The pool keeps at most 4 bodies per power-of-two size up to 32 MiB
        /// (the shim's batch size target), shared by all jobs; larger bodies are plain arrays.
        /// </summary>
        private sealed class FrameAllocator : MemoryAllocator
        {
            private static readonly ArrayPool<byte> Bodies = ArrayPool<byte>.Create(maxArrayLength: 32 << 20, maxArraysPerBucket: 4);

            public FrameStream? Frame { get; set; }

            protected override IMemoryOwner<byte> AllocateInternal(int length, out int bytesAllocated)
            {
                if (Frame is { } f && length > f.Remaining) throw BridgeThrow.Arrow_BodyTooLarge(length, f.Remaining);
                bytesAllocated = length;
                return new PooledBody(Bodies.Rent(length), length);
            }

            private sealed class PooledBody(byte[] array, int length) : IMemoryOwner<byte>
            {
                private byte[]? _array = array;

                public Memory<byte> Memory => _array is { } a ? a.AsMemory(0, length) : throw new ObjectDisposedException(nameof(PooledBody));

                public void Dispose()
                {
                    if (Interlocked.Exchange(ref _array, null) is { } a) Bodies.Return(a);
                }
            }
        }

        private sealed class SinkException(Exception inner) : Exception(inner.Message, inner);
    }
}
