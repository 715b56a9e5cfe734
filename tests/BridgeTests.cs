// The bridge's process and socket handling: limits, ABORT, chatty and hostile guests, cleanup.
// Guests are the real shim with small parsers, or small Python scripts standing in for the shim
// to send exactly the bytes a case needs.
using System.Diagnostics;
using Xunit;

namespace Casparian.Tests;

public sealed class BridgeTests
{
    private static readonly BridgeOptions Quick = Defaults.Bridge with { ConnectTimeout = TimeSpan.FromSeconds(30), IdleTimeout = TimeSpan.FromSeconds(30) };

    private static GuestRequest Request(TempDir dir, string parserSource, string? shim = null, BridgeOptions? options = null, TimeSpan? timeout = null, bool interactive = false)
    {
        File.WriteAllText(dir.File("p.py"), parserSource);
        if (!File.Exists(dir.File("input.txt"))) File.WriteAllText(dir.File("input.txt"), "x\n");
        return new GuestRequest
        {
            Interpreter = Guest.Python,
            ShimPath = shim ?? Guest.ShimPath,
            Parser = GuestParser.Path(dir.File("p.py")),
            FilePath = dir.File("input.txt"),
            JobId = 9,
            Timeout = timeout,
            Interactive = interactive,
            Environment = new Dictionary<string, string?> { ["PID_FILE"] = dir.File("pids") },
            Options = options ?? Quick,
        };
    }

    /// <summary>A stand-in for the shim: connects and sends what <paramref name="body"/> writes with send(bytes).</summary>
    private static string FakeShim(TempDir dir, string body)
    {
        string path = dir.File("fake_shim.py");
        File.WriteAllText(path, $$"""
            import os, socket, struct, sys, time
            sys.path.insert(0, {{Guest.PyLiteral(Path.GetDirectoryName(Guest.ShimPath)!)}})
            import arrow_ipc
            with open(os.environ["PID_FILE"], "w") as f:
                f.write(str(os.getpid()))
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(os.environ["BRIDGE_SOCKET"])
            send = sock.sendall
            def table(columns, topic="output"):
                cols, rows = arrow_ipc.columns_from_dict(columns)
                return b"".join(b"".join(bytes(c) for c in chunks) for _, chunks in arrow_ipc.column_messages(cols, rows, topic))

            """ + body + "\ntime.sleep(30)\n");
        return path;
    }

    private static Task<int[]> WaitForPids(string file, Task running)
    {
        bool Written() => File.Exists(file) && File.ReadAllText(file).Contains(' ');
        Eventually.True(() => running.IsCompleted || Written(), TimeSpan.FromSeconds(30), $"pids in {file}");
        return Written() ? Task.FromResult(Guest.ReadPids(file)) : throw new TimeoutException($"no pids in {file}; the guest finished first");
    }

    [Fact]
    public async Task Bridge_InfiniteLoop_TotalTimeoutKillsIt()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        var request = Request(dir, """
            import os
            def parse(path):
                with open(os.environ["PID_FILE"], "w") as f:
                    f.write("%d " % os.getpid())
                while True:
                    pass
            """, timeout: TimeSpan.FromSeconds(5)); // long enough for a loaded machine to reach parse() and write the pid

        var r = await Bridge.RunAsync(request, sink, CancellationToken.None);
        Assert.Equal(GuestOutcome.TimedOut, r.Outcome);
        Assert.Equal("job 9 exceeded its time limit of 5 s; the guest was killed", r.ErrorMessage);
        Assert.Empty(Guest.WaitGone(Guest.ReadPids(dir.File("pids")), TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public async Task Bridge_SilentGuest_IdleTimeoutKillsIt()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        var request = Request(dir, """
            import os, time
            def parse(path):
                with open(os.environ["PID_FILE"], "w") as f:
                    f.write("%d " % os.getpid())
                yield {"a": [1]}
                time.sleep(600)
            """, options: Quick with { IdleTimeout = TimeSpan.FromSeconds(1) });
        var r = await Bridge.RunAsync(request, sink, CancellationToken.None);
        Assert.Equal(GuestOutcome.TimedOut, r.Outcome);
        Assert.Equal("guest sent nothing for 1 s; killed it", r.ErrorMessage);
        Assert.Single(sink.Batches);
        Assert.Empty(Guest.WaitGone(Guest.ReadPids(dir.File("pids")), TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public async Task Bridge_Abort_KillsTheProcessTreeIncludingSpawnedChildWithin1s()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        using var abort = new CancellationTokenSource();
        var request = Request(dir, """
            import os, subprocess, time
            def parse(path):
                child = subprocess.Popen(["sleep", "600"])
                with open(os.environ["PID_FILE"], "w") as f:
                    f.write("%d %d" % (os.getpid(), child.pid))
                time.sleep(600)
            """);
        var running = Bridge.RunAsync(request, sink, abort.Token);
        int[] pids = await WaitForPids(dir.File("pids"), running);
        Assert.All(pids, pid => Assert.True(Guest.Alive(pid)));
        abort.Cancel();
        Assert.Empty(Guest.WaitGone(pids, TimeSpan.FromSeconds(1)));
        var r = await running.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(GuestOutcome.Aborted, r.Outcome);
        Assert.Equal("job 9 was aborted; the guest was killed", r.ErrorMessage);
    }

    [Fact]
    public async Task Bridge_ChildLeftRunningAfterSuccess_IsKilled()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        // The child inherits the guest's stdout/stderr pipes, so it also holds them open.
        var request = Request(dir, """
            import os, subprocess
            def parse(path):
                child = subprocess.Popen(["sleep", "600"])
                with open(os.environ["PID_FILE"], "w") as f:
                    f.write("%d %d" % (os.getpid(), child.pid))
                return {"a": [1]}
            """);
        var r = await Bridge.RunAsync(request, sink, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(r.Succeeded, Guest.Describe(r, sink));
        Assert.Empty(Guest.WaitGone(Guest.ReadPids(dir.File("pids")), TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public async Task Bridge_20MBOfOutput_NoHangAndEveryLineDelivered()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        var request = Request(dir, """
            import os, sys
            def parse(path):
                pad = "x" * 95
                for i in range(200_000):
                    print("%06d" % i, pad)
                # Straight to the descriptor, bypassing the log frames: 2 MB through the pipe.
                for i in range(20_000):
                    os.write(1, b"raw %05d %s\n" % (i, b"y" * 90))
                os.write(2, b"tail on stderr without newline")
                return {"done": [True]}
            """);
        var r = await Bridge.RunAsync(request, sink, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(120));
        Assert.True(r.Succeeded, r.ErrorMessage);
        var framed = sink.Lines(GuestLogLevel.Stdout).Where(l => !l.StartsWith("raw ", StringComparison.Ordinal)).ToList();
        Assert.Equal(200_000, framed.Count);
        Assert.Equal("000000 " + new string('x', 95), framed[0]);
        Assert.Equal("199999 " + new string('x', 95), framed[^1]);
        Assert.Equal(Enumerable.Range(0, 200_000).Select(i => i.ToString("D6", System.Globalization.CultureInfo.InvariantCulture)), framed.Select(l => l[..6]));
        var raw = sink.Lines(GuestLogLevel.Stdout).Where(l => l.StartsWith("raw ", StringComparison.Ordinal)).ToList();
        Assert.Equal(20_000, raw.Count);
        Assert.Equal("raw 19999 " + new string('y', 90), raw[^1]);
        Assert.Contains("tail on stderr without newline", sink.Lines(GuestLogLevel.Stderr));
        Assert.True(r.Bytes > 20_000_000, $"{r.Bytes} bytes");
    }

    [Fact]
    public async Task Bridge_SinkThrows_GuestKilledAndJobFailsWithTheSinksMessage()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink
        {
            Refuse = (topic, batch) => batch.Schema.GetFieldByName("i") is null ? null
                : ((Apache.Arrow.Int64Array)batch.Column(0)).GetValue(0) == 2 ? new InvalidOperationException($"topic '{topic}': schema differs from its first table") : null,
        };
        var request = Request(dir, """
            import os
            def parse(path):
                with open(os.environ["PID_FILE"], "w") as f:
                    f.write("%d " % os.getpid())
                i = 0
                while True:
                    yield {"i": [i]}
                    i += 1
            """);
        var r = await Bridge.RunAsync(request, sink, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(GuestOutcome.Failed, r.Outcome);
        Assert.Equal("topic 'output': schema differs from its first table", r.ErrorMessage);
        Assert.Equal(3, sink.Batches.Count);
        Assert.Empty(Guest.WaitGone(Guest.ReadPids(dir.File("pids")), TimeSpan.FromSeconds(1)));
    }

    public static TheoryData<string, string> Garbage => new()
    {
        // A length prefix far beyond the 100 MiB limit.
        { "send(b'\\x12\\x34\\x56\\x78' + os.urandom(64))", "guest sent a table message of 305419896 bytes; the limit is 104857600" },
        // A frame type the earlier system used (metrics JSON), reserved here.
        { "send(struct.pack('>II', 0xFFFFFFFB, 2) + b'{}')", "guest sent reserved frame type 0xFFFFFFFB; this worker speaks the bridge protocol of SPEC §3 only (logs, errors, Arrow streams)" },
        // A log level outside 0..5.
        { "send(struct.pack('>IBI', 0xFFFFFFFE, 9, 2) + b'hi')", "guest sent a log frame with level 9; expected 0..5" },
        // A log line longer than 64 KiB.
        { "send(struct.pack('>IBI', 0xFFFFFFFE, 0, 1 << 20))", "guest sent a log frame of 1048576 bytes; the limit is 65536" },
        // An error text longer than 1 MiB.
        { "send(struct.pack('>II', 0xFFFFFFFF, 2 << 20))", "guest sent an error frame of 2097152 bytes; the limit is 1048576" },
        // Half a frame header, then the connection closes.
        { "send(b'\\x00\\x00'); sock.close()", "guest closed the connection inside a frame header (2 of 4 bytes)" },
        // A table frame cut short.
        { "t = table({'a': [1]}); send(struct.pack('>I', len(t)) + t[:40]); sock.close()", "guest closed the connection inside a table message (40 of " },
        // Bytes that are not Arrow IPC at all.
        { "send(struct.pack('>I', 16) + b'A' * 16)", "guest sent a malformed Arrow IPC stream (table 1): " },
        // A record batch whose metadata claims a 1 GiB body inside a small frame.
        { "t = table({'a': [1]}); schema = t[:t.index(b'\\xff\\xff\\xff\\xff', 8)]; rb, _ = arrow_ipc._batch_message(1, [(1, 0)], [0, 8]); rb = arrow_ipc._message(3, arrow_ipc._T((0, 'q', 1)), 1 << 30); m = schema + rb + b'\\0' * 64; send(struct.pack('>I', len(m)) + m)", "guest's Arrow message declares a 1073741824-byte body but only 64 bytes of its frame remain" },
        // A topic that could escape an output directory.
        { "t = table({'a': [1]}, topic='../evil'); send(struct.pack('>I', len(t)) + t)", "guest sent a table for topic '../evil'; topic names match [a-z][a-z0-9_]*" },
        // Bytes left over after the Arrow end-of-stream marker.
        { "t = table({'a': [1]}) + b'junkjunk'; send(struct.pack('>I', len(t)) + t)", "guest sent 8 bytes after the end of Arrow stream (table 1)" },
    };

    [Theory]
    [MemberData(nameof(Garbage))]
    public async Task Bridge_GarbageFromGuest_CleanFailureAndGuestGone(string send, string message)
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        var request = Request(dir, "", shim: FakeShim(dir, send));
        var r = await Bridge.RunAsync(request, sink, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(r.Outcome == GuestOutcome.Failed, Guest.Describe(r, sink));
        Assert.StartsWith(message, r.ErrorMessage);
        Assert.Empty(Guest.WaitGone(Guest.ReadPids(dir.File("pids")), TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public async Task Bridge_GuestNeverConnects_ConnectTimeout()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        File.WriteAllText(dir.File("sleeper.py"), "import os, sys, time\nopen(os.environ['PID_FILE'], 'w').write(str(os.getpid()))\nprint('starting up', file=sys.stderr, flush=True)\ntime.sleep(600)\n");
        var request = Request(dir, "", shim: dir.File("sleeper.py"), options: Quick with { ConnectTimeout = TimeSpan.FromSeconds(4) });
        // 4 s: a loaded machine can take over a second to start an interpreter and print its first line.
        var r = await Bridge.RunAsync(request, sink, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(GuestOutcome.TimedOut, r.Outcome);
        Assert.Equal("guest did not connect to the bridge within 4 s; killed it: starting up", r.ErrorMessage);
        Assert.Empty(Guest.WaitGone(Guest.ReadPids(dir.File("pids")), TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public async Task Bridge_GuestExitsBeforeConnecting_FailedWithItsStderr()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        File.WriteAllText(dir.File("crash.py"), "import sys\nsys.stderr.write('Fatal: cannot import site\\nsecond line\\n')\nsys.exit(3)\n");
        var r = await Bridge.RunAsync(Request(dir, "", shim: dir.File("crash.py")), sink, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(GuestOutcome.Failed, r.Outcome);
        Assert.Equal(3, r.ExitCode);
        Assert.Equal("guest exited with code 3 before connecting to the bridge: Fatal: cannot import site | second line", r.ErrorMessage);
        Assert.Equal(["Fatal: cannot import site", "second line"], sink.Lines(GuestLogLevel.Stderr));
    }

    [Fact]
    public async Task Bridge_MissingInterpreter_Failed()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        var request = Request(dir, "def parse(path):\n    pass\n") with { Interpreter = dir.File("no-python") };
        var r = await Bridge.RunAsync(request, sink, CancellationToken.None);
        Assert.Equal(GuestOutcome.Failed, r.Outcome);
        Assert.StartsWith($"cannot start the guest interpreter {dir.File("no-python")} for job 9: ", r.ErrorMessage);
        Assert.Null(r.ExitCode);
    }

    [Fact]
    public async Task Bridge_KilledBySigkillItself_IsTransient()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        var request = Request(dir, "import os, signal\ndef parse(path):\n    yield {'a': [1]}\n    os.kill(os.getpid(), signal.SIGKILL)\n");
        var r = await Bridge.RunAsync(request, sink, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(GuestOutcome.Transient, r.Outcome);
        Assert.Equal(137, r.ExitCode);
        Assert.StartsWith("guest was killed by SIGKILL, most likely out of memory", r.ErrorMessage);
    }

    [Fact]
    public async Task Bridge_GuestHangingAfterItsEndOfStream_TimedOutAndKilled()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        // A non-daemon thread keeps the interpreter from exiting after the shim is done.
        var request = Request(dir, """
            import os, threading, time
            def parse(path):
                with open(os.environ["PID_FILE"], "w") as f:
                    f.write("%d " % os.getpid())
                threading.Thread(target=time.sleep, args=(600,)).start()
                return {"a": [1]}
            """, options: Quick with { IdleTimeout = TimeSpan.FromSeconds(1) });
        var r = await Bridge.RunAsync(request, sink, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(GuestOutcome.TimedOut, r.Outcome);
        Assert.Equal("guest did not exit within 1 s after its end of stream; killed it", r.ErrorMessage);
        Assert.Single(sink.Batches);
        Assert.Empty(Guest.WaitGone(Guest.ReadPids(dir.File("pids")), TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public async Task Bridge_SocketDirectory_IsPrivateAndRemovedAfterwards()
    {
        using var dir = new TempDir();
        string root = Directory.CreateDirectory(dir.File("sockets")).FullName;
        const string Parser = """
            import os, stat, time
            def parse(path):
                sock = os.environ["BRIDGE_SOCKET"]
                d = os.path.dirname(sock)
                for _ in range(1000):
                    if not os.path.exists(sock):
                        break
                    time.sleep(0.01)
                return {"mode": [oct(stat.S_IMODE(os.stat(d).st_mode))], "dir": [d], "socket_gone": [not os.path.exists(sock)]}
            """;
        foreach (string? socketRoot in new[] { root, null })
        {
            using var sink = new RecordingSink();
            var r = await Bridge.RunAsync(Request(dir, Parser, options: Quick with { SocketRoot = socketRoot }), sink, CancellationToken.None);
            Assert.True(r.Succeeded, Guest.Describe(r, sink));
            var c = sink.Columns();
            Assert.Equal("0o700", c["mode"][0]);
            string socketDir = (string)c["dir"][0]!;
            Assert.StartsWith(socketRoot ?? Path.GetTempPath(), socketDir);
            // The socket file is unlinked as soon as the guest is connected: nobody else can connect.
            Assert.Equal(true, c["socket_gone"][0]);
            Assert.False(Directory.Exists(socketDir));
        }
        Assert.Empty(Directory.GetFileSystemEntries(root));
    }

    [Fact]
    public async Task Bridge_Interactive_GuestStaysInTheTerminalsProcessGroup()
    {
        using var dir = new TempDir();
        const string Parser = "import os\ndef parse(path):\n    return {'leader': [os.getpgid(0) == os.getpid()]}\n";
        foreach (bool interactive in new[] { false, true })
        {
            using var sink = new RecordingSink();
            var r = await Bridge.RunAsync(Request(dir, Parser, interactive: interactive), sink, CancellationToken.None);
            Assert.True(r.Succeeded, Guest.Describe(r, sink));
            Assert.Equal(!interactive, sink.Columns()["leader"][0]);
        }
    }

    [Fact]
    public async Task Bridge_Result_CountsWhatArrived()
    {
        using var dir = new TempDir();
        using var sink = new RecordingSink();
        var sw = Stopwatch.StartNew();
        var r = await Bridge.RunAsync(Request(dir, "from casparian import Output\ndef parse(path):\n    print('hi')\n    yield {'a': list(range(70000))}\n    yield Output('b', {'x': [1, 2]})\n"), sink, CancellationToken.None);
        Assert.True(r.Succeeded, Guest.Describe(r, sink));
        Assert.Equal((2L, 3L, 70002L, 1L), (r.Tables, r.Batches, r.Rows, r.LogLines));
        Assert.Null(r.ErrorMessage);
        Assert.True(r.Duration > TimeSpan.Zero && r.Duration <= sw.Elapsed);
        Assert.True(r.Bytes > 70000 * 8);
    }
}

public sealed class BridgeParquetTests
{
    /// <summary>The Output layer writes bridge batches through ParquetSharp.Arrow (Arrow's C data
    /// interface): batches backed by the bridge's pooled bodies must export, and read back intact.</summary>
    [Fact]
    public async Task Bridge_Batches_WriteThroughParquetSharpArrowAndReadBack()
    {
        using var dir = new TempDir();
        string parquet = dir.File("out.parquet");
        ParquetSharp.Arrow.FileWriter? writer = null;
        var sink = new RecordingSink
        {
            OnTable = (_, batch) =>
            {
                writer ??= new ParquetSharp.Arrow.FileWriter(parquet, batch.Schema);
                writer.WriteRecordBatch(batch);
            },
        };
        using (sink)
        {
            var (r, _) = await Guest.RunAsync(dir, """
                from datetime import datetime
                def parse(path):
                    n = 100_000
                    return {"i": list(range(n)), "s": ["v%d" % i if i % 7 else None for i in range(n)], "t": [datetime(2024, 1, 1)] * n, "b": [i % 2 == 0 for i in range(n)]}
                """, sink: sink);
            Assert.True(r.Succeeded, Guest.Describe(r, sink));
            writer!.Close();
            writer.Dispose();
        }
        using var file = new ParquetSharp.Arrow.FileReader(parquet);
        using var batches = file.GetRecordBatchReader();
        long rows = 0;
        while (await batches.ReadNextRecordBatchAsync() is { } batch)
        {
            using (batch)
            {
                for (int i = 0; i < batch.Length; i++)
                {
                    long row = rows + i;
                    Assert.Equal(row, Arrow.Value(batch.Column(0), i));
                    Assert.Equal(row % 7 == 0 ? null : $"v{row}", Arrow.Value(batch.Column(1), i));
                }
                rows += batch.Length;
            }
        }
        Assert.Equal(100_000, rows);
    }
}
