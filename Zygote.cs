// A warm guest's fork server, worker side: one `python zygote.py` per (interpreter, parser, shim)
// that imported the parser once and forks a child per job (shim/zygote.py has the control wire).
// The worker listens on a Unix socket in a private directory (0700) and the zygote connects once,
// as a guest does on the bridge; the socket file is removed as soon as it has. Closing the link
// makes the zygote kill its children and exit, so disposing this (or the worker dying) leaves
// nothing behind.
using System.Buffers;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Casparian;

/// <summary>A job's child forked by a zygote: its pid (it leads its own process group) and its exit code.</summary>
internal sealed record WarmChild(int Pid, Task<int> Exited);

/// <summary>The zygote died or broke its protocol; the job in flight is retried on a cold guest.</summary>
internal sealed class ZygoteLostException(string message) : Exception(message);

/// <summary>
/// What identifies one zygote: everything that decides the state it forks from. <see cref="Stamp"/>
/// is the parser's files' last change, so an edited parser (in `run`, where it runs in place) gets a
/// new zygote rather than the module imported before the edit.
/// </summary>
internal readonly record struct ZygoteKey(string Interpreter, string ShimPath, GuestParserKind Kind, string Parser, string? ParserName, long Stamp)
{
    public static ZygoteKey For(GuestRequest request) =>
        new(request.Interpreter, request.ShimPath, request.Parser.Kind, request.Parser.Value, request.ParserName, StampOf(request.Parser.Value));

    private static long StampOf(string path)
    {
        try
        {
            if (File.Exists(path)) return File.GetLastWriteTimeUtc(path).Ticks ^ new FileInfo(path).Length;
            if (!Directory.Exists(path)) return 0;
            long stamp = 0;
            foreach (var f in new DirectoryInfo(path).EnumerateFiles("*.py")) stamp = unchecked(stamp + (f.LastWriteTimeUtc.Ticks ^ f.Length));
            return stamp;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
    }
}

internal sealed class Zygote : IDisposable
{
    private const int MaxLine = 1 << 20;
    private static readonly TimeSpan ExitGrace = TimeSpan.FromSeconds(2);

    private readonly Process _process;
    private readonly Socket _control;
    private readonly string _directory;
    private readonly Lock _gate = new();
    private readonly Dictionary<long, (TaskCompletionSource<int> Pid, TaskCompletionSource<int> Exit)> _pending = [];
    private readonly Task _reader;
    private long _nextId;
    private string? _lost;
    private int _disposed;

    public ZygoteKey Key { get; }
    public int Pid => _process.Id;
    public bool Alive => _lost is null && Volatile.Read(ref _disposed) == 0;
    /// <summary>Jobs forked and not yet reaped.</summary>
    public int InFlight { get { lock (_gate) return _pending.Count; } }

    private readonly LineReader _lines;

    private Zygote(ZygoteKey key, Process process, Socket control, LineReader lines, string directory)
    {
        Key = key;
        _lines = lines;
        _process = process;
        _control = control;
        _directory = directory;
        _reader = Task.Run(ReadLoopAsync);
    }

    /// <summary>
    /// Starts a zygote and waits until it has imported the parser. Returns the zygote, or the reason
    /// this parser must run cold (WARM = False, a thread started at import, an import that failed:
    /// the cold guest then reports that failure as it always does).
    /// </summary>
    public static async Task<(Zygote? Zygote, string? Cold)> StartAsync(ZygoteKey key, string zygoteScript, string? socketRoot,
        TimeSpan startTimeout, Action<string> log, CancellationToken cancel)
    {
        string directory = PrivateDirectory(socketRoot);
        string socketPath = Path.Combine(directory, "z.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        Process? process = null;
        try
        {
            listener.Bind(new UnixDomainSocketEndPoint(socketPath));
            listener.Listen(1);
            var psi = new ProcessStartInfo(key.Interpreter)
            {
                UseShellExecute = false,
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            psi.ArgumentList.Add(zygoteScript);
            psi.ArgumentList.Add(socketPath);
            psi.ArgumentList.Add(key.Kind == GuestParserKind.Archive ? "--parser-archive" : "--parser-path");
            psi.ArgumentList.Add(key.Parser);
            psi.Environment.Remove("BRIDGE_PLUGIN_CODE");
            if (key.ParserName is { } name) psi.Environment["BRIDGE_PARSER_NAME"] = name;
            process = Process.Start(psi) ?? throw new InvalidOperationException("Process.Start returned null");
            process.StandardInput.Close();
            // What the parser prints at import time (once, in the zygote) goes to the worker's log.
            _ = PumpAsync(process.StandardOutput, log);
            _ = PumpAsync(process.StandardError, log);

            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancel);
            timeout.CancelAfter(startTimeout);
            Task<Socket> accept = listener.AcceptAsync(timeout.Token).AsTask();
            Task exited = process.WaitForExitAsync(timeout.Token);
            await Task.WhenAny(accept, exited).ConfigureAwait(false);
            if (!accept.IsCompleted) await Task.WhenAny(accept, Task.Delay(ExitGrace, cancel)).ConfigureAwait(false);
            if (!accept.IsCompletedSuccessfully)
                return (null, process.HasExited ? $"its fork server exited with code {process.ExitCode} before connecting" : "its fork server did not connect in time");
            Socket control = await accept.ConfigureAwait(false);
            File.Delete(socketPath);
            var lines = new LineReader(control);
            string? first = await lines.ReadAsync(timeout.Token).ConfigureAwait(false);
            using (var doc = first is null ? null : JsonDocument.Parse(first))
            {
                if (doc?.RootElement.TryGetProperty("ready", out _) == true)
                {
                    var zygote = new Zygote(key, process, control, lines, directory);
                    process = null;
                    return (zygote, null);
                }
                control.Dispose();
                return (null, doc?.RootElement.TryGetProperty("cold", out var why) == true ? why.GetString() : "its fork server closed the link before it was ready");
            }
        }
        catch (Exception e) when (e is IOException or SocketException or JsonException or OperationCanceledException
                                      or System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            if (cancel.IsCancellationRequested) throw;
            return (null, $"its fork server could not start: {e.Message}");
        }
        finally
        {
            if (process is not null)
            {
                Kill(process);
                process.Dispose();
                TryDelete(directory);
            }
        }
    }

    /// <summary>Forks a child for one job. Throws <see cref="ZygoteLostException"/> when the zygote is gone or does not answer.</summary>
    public async Task<WarmChild> ForkAsync(IReadOnlyDictionary<string, string?> environment, string? workingDirectory,
        IReadOnlyList<string> argv, TimeSpan timeout, CancellationToken cancel)
    {
        var pid = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var exit = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        long id;
        lock (_gate)
        {
            if (_lost is { } why) throw new ZygoteLostException(why);
            id = ++_nextId;
            _pending[id] = (pid, exit);
        }
        byte[] line = Request(id, environment, workingDirectory, argv);
        try
        {
            lock (_gate) _control.Send(line);
            return new WarmChild(await pid.Task.WaitAsync(timeout, cancel).ConfigureAwait(false), exit.Task);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or TimeoutException)
        {
            Lose($"its fork server did not take the job: {e.Message}");
            throw new ZygoteLostException(_lost!);
        }
        catch (OperationCanceledException)
        {
            // Cancelled while forking: the child may exist already; the zygote is in an unknown state.
            Lose("a fork was cancelled while in flight");
            throw;
        }
    }

    private static byte[] Request(long id, IReadOnlyDictionary<string, string?> environment, string? workingDirectory, IReadOnlyList<string> argv)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteNumber("id", id);
            w.WriteStartObject("env");
            foreach (var (k, v) in environment)
                if (v is null) w.WriteNull(k); else w.WriteString(k, v);
            w.WriteEndObject();
            if (workingDirectory is { Length: > 0 }) w.WriteString("cwd", workingDirectory); else w.WriteNull("cwd");
            w.WriteStartArray("argv");
            foreach (string a in argv) w.WriteStringValue(a);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        var bytes = new byte[buffer.WrittenCount + 1];
        buffer.WrittenSpan.CopyTo(bytes);
        bytes[^1] = (byte)'\n';
        return bytes;
    }

    private async Task ReadLoopAsync()
    {
        try
        {
            while (await _lines.ReadAsync(CancellationToken.None).ConfigureAwait(false) is { } text)
            {
                using var doc = JsonDocument.Parse(text);
                JsonElement root = doc.RootElement;
                long id = root.GetProperty("id").GetInt64();
                lock (_gate)
                {
                    if (!_pending.TryGetValue(id, out var job)) continue;
                    if (root.TryGetProperty("pid", out var pid)) job.Pid.TrySetResult(pid.GetInt32());
                    else if (root.TryGetProperty("error", out var error))
                    {
                        job.Pid.TrySetException(new ZygoteLostException(error.GetString() ?? "fork failed"));
                        _pending.Remove(id);
                    }
                    else if (root.TryGetProperty("exit", out var exit))
                    {
                        job.Exit.TrySetResult(exit.GetInt32());
                        _pending.Remove(id);
                    }
                }
            }
            Lose(_process.HasExited ? $"its fork server exited with code {_process.ExitCode}" : "its fork server closed the link");
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or JsonException
                                      or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            Lose($"its fork server broke the link: {e.Message}");
        }
    }

    /// <summary>Marks the zygote dead: every job waiting on it learns so, and it is killed.</summary>
    private void Lose(string why)
    {
        List<(TaskCompletionSource<int>, TaskCompletionSource<int>)> jobs;
        lock (_gate)
        {
            _lost ??= why;
            jobs = [.. _pending.Values];
            _pending.Clear();
        }
        var lost = new ZygoteLostException(_lost);
        foreach (var (pid, exit) in jobs)
        {
            pid.TrySetException(lost);
            exit.TrySetException(lost);
        }
        Kill(_process);
    }

    /// <summary>Reads '\n'-terminated lines from a socket through a small buffer; lines are short JSON objects.</summary>
    private sealed class LineReader(Socket socket)
    {
        private readonly byte[] _buffer = new byte[4096];
        private readonly List<byte> _line = new(256);
        private int _start, _end;

        /// <summary>The next line, or null at end of stream.</summary>
        public async Task<string?> ReadAsync(CancellationToken cancel)
        {
            _line.Clear();
            while (true)
            {
                if (_start == _end)
                {
                    _start = 0;
                    _end = await socket.ReceiveAsync(_buffer, SocketFlags.None, cancel).ConfigureAwait(false);
                    if (_end == 0) return null;
                }
                int newline = Array.IndexOf(_buffer, (byte)'\n', _start, _end - _start);
                int stop = newline < 0 ? _end : newline;
                if (_line.Count + (stop - _start) > MaxLine) throw new IOException($"a control line longer than {MaxLine} bytes");
                _line.AddRange(_buffer.AsSpan(_start, stop - _start));
                _start = newline < 0 ? _end : newline + 1;
                if (newline >= 0) return Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_line));
            }
        }
    }

    private static async Task PumpAsync(StreamReader reader, Action<string> log)
    {
        try
        {
            while (await reader.ReadLineAsync().ConfigureAwait(false) is { } text)
                log(text.Length > Bridge.MaxLogBytes ? text[..Bridge.MaxLogBytes] : text);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
        }
    }

    private static string PrivateDirectory(string? root)
    {
        // sun_path holds 107 bytes: a long root falls back to the temp directory, as the bridge does.
        if (root is not null && Encoding.UTF8.GetByteCount(Path.GetFullPath(root)) > 64) root = null;
        string dir;
        if (root is null) dir = Directory.CreateTempSubdirectory("casparian-zygote-").FullName;
        else
        {
            Directory.CreateDirectory(root);
            dir = Path.Combine(root, "zygote-" + Guid.NewGuid().ToString("N")[..12]);
            if (OperatingSystem.IsWindows()) Directory.CreateDirectory(dir);
            else Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return dir;
    }

    private static void Kill(Process process)
    {
        try
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
        }
    }

    private static void TryDelete(string directory)
    {
        try { Directory.Delete(directory, recursive: true); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }

    /// <summary>Closes the link (the zygote then kills its children and exits), then makes sure it is gone.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        try { _control.Shutdown(SocketShutdown.Both); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        _control.Dispose();
        if (!_process.WaitForExit(ExitGrace)) Kill(_process);
        _process.WaitForExit(ExitGrace);
        _reader.Wait(ExitGrace);
        _process.Dispose();
        TryDelete(_directory);
    }
}
