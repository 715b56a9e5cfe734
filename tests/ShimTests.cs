// The guest shim (shim/*.py) through the real bridge with the real python3: every Arrow type the
// encoder writes, decoded by Apache.Arrow; both parser styles; topics; logs; errors; exit codes;
// every bad-input message; pandas via Debian's python3; extraction of the embedded shim.
using System.IO.Compression;
using Apache.Arrow;
using Apache.Arrow.Types;
using Xunit;

namespace Casparian.Tests;

public sealed class ShimTests
{
    private static async Task<(GuestResult, RecordingSink)> Ok(TempDir dir, string source, string? interpreter = null, BridgeOptions? options = null)
    {
        var (r, s) = await Guest.RunAsync(dir, source, interpreter: interpreter, options: options);
        Assert.True(r.Outcome == GuestOutcome.Success, Guest.Describe(r, s));
        Assert.Equal(0, r.ExitCode);
        return (r, s);
    }

    private static ArrowTypeId TypeOf(RecordingSink s, string column, string topic = "output") =>
        s.SchemaOf(topic).GetFieldByName(column).DataType.TypeId;

    [Fact]
    public async Task Shim_EveryType_RoundTripsWithNulls()
    {
        using var dir = new TempDir();
        var (r, s) = await Ok(dir, """
            from datetime import datetime, date
            def parse(path):
                return {
                    "i": [1, None, -3],
                    "f": [1.5, None, -0.25],
                    "b": [True, None, False],
                    "s": ["x", None, ""],
                    "bin": [b"\x00\xff", None, b""],
                    "ts": [datetime(2024, 1, 2, 3, 4, 5, 678901), None, datetime(1960, 5, 5)],
                    "d": [date(2024, 2, 29), None, date(1900, 1, 1)],
                    "n": [None, None, None],
                }
            """);
        using (s)
        {
            var c = s.Columns();
            Assert.Equal([1L, null, -3L], c["i"]);
            Assert.Equal([1.5, null, -0.25], c["f"]);
            Assert.Equal([true, null, false], c["b"]);
            Assert.Equal(["x", null, ""], c["s"]);
            Assert.Equal(new byte[] { 0, 255 }, (byte[])c["bin"][0]!);
            Assert.Null(c["bin"][1]);
            Assert.Empty((byte[])c["bin"][2]!);
            Assert.Equal([new DateTime(2024, 1, 2, 3, 4, 5).Ticks / 10 - DateTime.UnixEpoch.Ticks / 10 + 678901, null, (new DateTime(1960, 5, 5) - DateTime.UnixEpoch).Ticks / 10], c["ts"]);
            Assert.Equal([(int)(new DateTime(2024, 2, 29) - DateTime.UnixEpoch).TotalDays, null, (int)(new DateTime(1900, 1, 1) - DateTime.UnixEpoch).TotalDays], c["d"]);
            Assert.Equal([null, null, null], c["n"]);
            var schema = s.SchemaOf("output");
            Assert.Equal([ArrowTypeId.Int64, ArrowTypeId.Double, ArrowTypeId.Boolean, ArrowTypeId.String, ArrowTypeId.Binary, ArrowTypeId.Timestamp, ArrowTypeId.Date32, ArrowTypeId.Null],
                schema.FieldsList.Select(f => f.DataType.TypeId));
            var ts = (TimestampType)schema.GetFieldByName("ts").DataType;
            Assert.Equal(TimeUnit.Microsecond, ts.Unit);
            Assert.Null(ts.Timezone);
            Assert.All(schema.FieldsList, f => Assert.True(f.IsNullable));
            Assert.Equal("output", schema.Metadata[Bridge.TopicKey]);
            Assert.Equal(1, r.Tables);
            Assert.Equal(3, r.Rows);
        }
    }

    [Fact]
    public async Task Shim_Strings_EmptyUnicodeAndLoneSurrogate()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            def parse(path):
                return {"s": ["", "é", "日本語", "🦀 crab", None, "a\nb\x00c", "bad \ud800 half"], "ascii": ["a", "", "bc", None, "d", "e", "f"]}
            """);
        using (s)
        {
            var c = s.Columns();
            Assert.Equal(["", "é", "日本語", "🦀 crab", null, "a\nb\0c", "bad ? half"], c["s"]);
            Assert.Equal(["a", "", "bc", null, "d", "e", "f"], c["ascii"]);
        }
    }

    [Fact]
    public async Task Shim_Floats_NaNAndInfinityPreserved()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            def parse(path):
                return {"f": [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308, None]}
            """);
        using (s)
        {
            var f = s.Columns()["f"];
            Assert.True(double.IsNaN((double)f[0]!));
            Assert.Equal(double.PositiveInfinity, f[1]);
            Assert.Equal(double.NegativeInfinity, f[2]);
            Assert.True(double.IsNegative((double)f[3]!) && (double)f[3]! == 0);
            Assert.Equal(double.Epsilon, f[4]);
            Assert.Equal(double.MaxValue, f[5]);
            Assert.Null(f[6]);
        }
    }

    [Fact]
    public async Task Shim_Int64Limits_StayInt64_BeyondBecomeDecimal128()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            def parse(path):
                return {"limits": [-2**63, 2**63 - 1, 0, None], "above": [2**63, 1, None, 0], "below": [-2**63 - 1, 1, None, 0]}
            """);
        using (s)
        {
            var c = s.Columns();
            Assert.Equal(ArrowTypeId.Int64, TypeOf(s, "limits"));
            Assert.Equal([long.MinValue, long.MaxValue, 0L, null], c["limits"]);
            // Beyond int64: decimal128(38, 0), exact (issue 20; docs/types.md).
            Assert.Equal(ArrowTypeId.Decimal128, TypeOf(s, "above"));
            Assert.Equal(ArrowTypeId.Decimal128, TypeOf(s, "below"));
            Assert.Equal(["9223372036854775808", "1", null, "0"], c["above"]);
            Assert.Equal(["-9223372036854775809", "1", null, "0"], c["below"]);
        }
    }

    [Fact]
    public async Task Shim_MixedTypes_BecomeUtf8_BoolNeverInt()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            from decimal import Decimal
            class Weird:
                def __str__(self):
                    raise RuntimeError("no str")
                def __repr__(self):
                    return "Weird()"
            def parse(path):
                return {
                    "mixed": [1, "a", 2.5, None, True],
                    "bool_int": [True, 1, False, 0, None],
                    "bools": [True, False, None, True, False],
                    "ints": [1, 0, None, 5, 6],
                    "int_float": [1, 2.5, None, -3, 4],
                    "other": [Decimal("1.10"), [1, 2], {"k": 1}, Weird(), None],
                }
            """);
        using (s)
        {
            var c = s.Columns();
            Assert.Equal(["1", "a", "2.5", null, "True"], c["mixed"]);
            Assert.Equal(ArrowTypeId.String, TypeOf(s, "bool_int"));
            Assert.Equal(["True", "1", "False", "0", null], c["bool_int"]);
            Assert.Equal(ArrowTypeId.Boolean, TypeOf(s, "bools"));
            Assert.Equal(ArrowTypeId.Int64, TypeOf(s, "ints"));
            Assert.Equal(ArrowTypeId.Double, TypeOf(s, "int_float"));
            Assert.Equal([1.0, 2.5, null, -3.0, 4.0], c["int_float"]);
            // Text for a mix; a dict or list in it is JSON, not its repr.
            Assert.Equal(["1.10", "[1, 2]", "{\"k\": 1}", "Weird()", null], c["other"]);
        }
    }

    [Fact]
    public async Task Shim_Timestamps_AwareCarryTheirZone_NaiveHaveNone_MixedBecomeUtf8()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            from datetime import datetime, timezone, timedelta
            from zoneinfo import ZoneInfo
            paris = ZoneInfo("Europe/Paris")
            def parse(path):
                return {
                    "utc": [datetime(2024, 1, 1, 12, tzinfo=timezone.utc), None],
                    "paris": [datetime(2024, 7, 1, 12, tzinfo=paris), datetime(2024, 1, 1, 12, tzinfo=paris)],
                    "offset": [datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5, minutes=-30))), None],
                    "zones": [datetime(2024, 1, 1, 12, tzinfo=paris), datetime(2024, 1, 1, 12, tzinfo=timezone.utc)],
                    "mixed": [datetime(2024, 1, 1, 12, tzinfo=timezone.utc), datetime(2024, 1, 1, 12)],
                }
            """);
        using (s)
        {
            var c = s.Columns();
            var schema = s.SchemaOf();
            string? Tz(string n) => ((TimestampType)schema.GetFieldByName(n).DataType).Timezone;
            long Micros(DateTimeOffset t) => (t.UtcTicks - DateTime.UnixEpoch.Ticks) / 10;
            Assert.Equal("UTC", Tz("utc"));
            Assert.Equal([Micros(new DateTimeOffset(2024, 1, 1, 12, 0, 0, TimeSpan.Zero)), null], c["utc"]);
            Assert.Equal("Europe/Paris", Tz("paris"));
            Assert.Equal([Micros(new DateTimeOffset(2024, 7, 1, 10, 0, 0, TimeSpan.Zero)), Micros(new DateTimeOffset(2024, 1, 1, 11, 0, 0, TimeSpan.Zero))], c["paris"]);
            Assert.Equal("-05:30", Tz("offset"));
            Assert.Equal([Micros(new DateTimeOffset(2024, 1, 1, 17, 30, 0, TimeSpan.Zero)), null], c["offset"]);
            Assert.Equal("UTC", Tz("zones"));
            Assert.Equal(ArrowTypeId.String, TypeOf(s, "mixed"));
            Assert.Equal(["2024-01-01 12:00:00+00:00", "2024-01-01 12:00:00"], c["mixed"]);
        }
    }

    [Theory]
    // An unknown flag.
    [InlineData("--bogus", "unrecognized arguments: --bogus")]
    // A flag without its value.
    [InlineData("--parser-path", "argument --parser-path: expected one argument")]
    // Both ways of naming the parser at once.
    [InlineData("--parser-path a --parser-archive b", "argument --parser-archive: not allowed with argument --parser-path")]
    // A prefix of a flag: abbreviations are refused, so a later flag cannot change what an old one means.
    [InlineData("--parser-pa a", "unrecognized arguments: --parser-pa a")]
    public void Shim_BadArguments_ExitOnePermanentWithUsage(string args, string message)
    {
        // argparse would exit 2, which the worker reads as transient and retries.
        var r = Proc.Run(Guest.Python, [Guest.ShimPath, .. args.Split(' ')]);
        Assert.Equal(1, r.ExitCode);
        Assert.Equal($"casparian shim: {message}; usage: bridge_shim.py [--parser-path P | --parser-archive Z]", r.Stderr.Trim());
    }

    [Fact]
    public async Task Shim_EmptyTable_ArrivesAsOneEmptyBatchWithItsSchema()
    {
        using var dir = new TempDir();
        var (r, s) = await Ok(dir, """
            def parse(path):
                yield {"a": [], "b": []}
                yield []
                yield None
            """);
        using (s)
        {
            var (topic, batch) = Assert.Single(s.Batches);
            Assert.Equal("output", topic);
            Assert.Equal(0, batch.Length);
            Assert.Equal(["a", "b"], batch.Schema.FieldsList.Select(f => f.Name));
            Assert.Equal(1, r.Tables);
        }
    }

    [Fact]
    public async Task Shim_Generator_100kRows_ArriveInSeveralBatches()
    {
        using var dir = new TempDir();
        var (r, s) = await Ok(dir, """
            def parse(path):
                for i in range(100_000):
                    yield {"i": i, "s": "row %d" % i, "f": i / 2, "b": i % 3 == 0}
            """);
        using (s)
        {
            Assert.True(s.Batches.Count >= 2, $"{s.Batches.Count} batches");
            Assert.All(s.Batches, b => Assert.True(b.Batch.Length <= 65536));
            var c = s.Columns();
            Assert.Equal(100_000, c["i"].Count);
            Assert.Equal(Enumerable.Range(0, 100_000).Select(i => (object?)(long)i), c["i"]);
            Assert.Equal("row 99999", c["s"][^1]);
            Assert.Equal(49999.5, c["f"][^1]);
            Assert.Equal(true, c["b"][99999]);
            Assert.Equal(100_000, r.Rows);
        }
    }

    [Fact]
    public async Task Shim_BigTable_IsOneMessageOfSeveralBatches()
    {
        using var dir = new TempDir();
        var (r, s) = await Ok(dir, """
            def parse(path):
                return {"i": list(range(150_000)), "s": ["x" * (i % 7) for i in range(150_000)]}
            """);
        using (s)
        {
            Assert.Equal(1, r.Tables);
            Assert.Equal(3, r.Batches);
            Assert.Equal(150_000, s.Rows("output"));
            Assert.Equal("xxxxx", s.Columns()["s"][149_994]);
        }
    }

    [Fact]
    public async Task Shim_TableOverMessageLimit_SplitsIntoSeveralMessagesOfOneTopic()
    {
        using var dir = new TempDir();
        var (r, s) = await Ok(dir, """
            def parse(path):
                return {"s": ["%06d" % i + "y" * 100 for i in range(50_000)]}
            """, options: Defaults.Bridge with { MaxMessageBytes = 1 << 20 });
        using (s)
        {
            Assert.True(r.Tables > 4, $"{r.Tables} messages");
            Assert.All(s.Batches, b => Assert.Equal("output", b.Topic));
            var col = s.Columns()["s"];
            Assert.Equal(50_000, col.Count);
            Assert.Equal("049999" + new string('y', 100), col[^1]);
        }
    }

    [Fact]
    public async Task Shim_RowDicts_MissingKeysAreNullAndColumnsKeepFirstSeenOrder()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            def parse(path):
                return [{"a": 1, "b": "x"}, {"b": "y", "c": 2.5}, {"a": 3}]
            """);
        using (s)
        {
            var c = s.Columns();
            Assert.Equal(["a", "b", "c"], c.Keys);
            Assert.Equal([1L, null, 3L], c["a"]);
            Assert.Equal(["x", "y", null], c["b"]);
            Assert.Equal([null, 2.5, null], c["c"]);
        }
    }

    // A cold guest leaves the parser's result to the process's exit instead of freeing it row by row
    // after its end of stream; the rest of Python's exit still happens (atexit, threads joined).
    [Fact]
    public async Task Shim_ColdGuest_ResultIsNotFreedAtExit_AtexitAndThreadsStillRun()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            import atexit, os, threading, time
            MARKS = os.path.join(os.path.dirname(__file__), "marks.txt")

            def mark(text):
                with open(MARKS, "a") as f:
                    f.write(text + "\n")

            class Row(dict):
                def __del__(self):
                    mark("freed")

            def parse(path):
                atexit.register(mark, "atexit")
                threading.Thread(target=lambda: (time.sleep(0.2), mark("thread"))).start()
                return [Row(a=1), Row(a=2)]
            """);
        using (s) Assert.Equal([1L, 2L], s.Columns()["a"]);
        Assert.Equal(["thread", "atexit"], File.ReadAllLines(dir.File("marks.txt")));
    }

    [Fact]
    public async Task Shim_RowDicts_KeysInAnyOrderOrChangingPastTheFirstSlice_EachValueLandsInItsColumn()
    {
        // Past one slice of 4096 rows a row lacks a key, another has an extra one, and some rows of a
        // dict subclass whose __missing__ would invent a value if the shim looked a key up through it.
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            import collections
            from casparian import Output
            def parse(path):
                rows = [{"b": "t%d" % i, "a": i} if i % 2 else {"a": i, "b": "t%d" % i} for i in range(10000)]
                rows[9000] = {"a": 9000}
                rows[9500] = {"a": 9500, "b": "t9500", "c": 1.5}
                odd = collections.defaultdict(int, a=7)
                odd["c"] = 2.5
                subclassed = [collections.defaultdict(int, a=i, b="u%d" % i) for i in range(4999)] + [odd]
                one_key = [{"only": i % 3} for i in range(5000)]
                yield rows
                yield Output("subclassed", subclassed)
                yield Output("one_key", one_key)
                assert "b" not in odd, "the shim looked a missing key up through __missing__"
            """);
        using (s)
        {
            var c = s.Columns();
            Assert.Equal(["a", "b", "c"], c.Keys);
            Assert.Equal(Enumerable.Range(0, 10000).Select(i => (object?)(long)i), c["a"]);
            Assert.Equal(Enumerable.Range(0, 10000).Select(i => i == 9000 ? null : (object?)$"t{i}"), c["b"]);
            Assert.Equal(Enumerable.Range(0, 10000).Select(i => i == 9500 ? (object?)1.5 : null), c["c"]);
            var sub = s.Columns("subclassed");
            Assert.Equal(["a", "b", "c"], sub.Keys);
            Assert.Equal([(object?)"u4998", null], sub["b"].TakeLast(2));
            Assert.Equal([(object?)null, 2.5], sub["c"].TakeLast(2));
            Assert.Equal(Enumerable.Range(0, 5000).Select(i => (object?)(long)(i % 3)), s.Columns("one_key")["only"]);
        }
    }

    [Fact]
    public async Task Shim_MixedIntsAndCodes_EachValueKeepsItsOwnText_RepeatedOrNot()
    {
        // Enough repeats for the shim to convert each distinct value once, and a column of distinct
        // values that it converts one by one: the text must be the same either way.
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            def parse(path):
                return {
                    "codes": [None if i % 10 == 0 else i % 50 if i % 4 else "X-%d" % (i % 7) for i in range(20000)],
                    "look_alike": [1 if i % 2 else "1" for i in range(20000)],
                    "distinct": [i if i % 4 else "X-%d" % i for i in range(20000)],
                    "bool_int": [True if i % 2 else 1 for i in range(20000)],
                }
            """);
        using (s)
        {
            var c = s.Columns();
            Assert.Equal(Enumerable.Range(0, 20000).Select(i => i % 10 == 0 ? null : (object?)(i % 4 != 0 ? $"{i % 50}" : $"X-{i % 7}")), c["codes"]);
            Assert.All(c["look_alike"], v => Assert.Equal("1", v));
            Assert.Equal(Enumerable.Range(0, 20000).Select(i => (object?)(i % 4 != 0 ? $"{i}" : $"X-{i}")), c["distinct"]);
            Assert.Equal(Enumerable.Range(0, 20000).Select(i => (object?)(i % 2 != 0 ? "True" : "1")), c["bool_int"]);
        }
    }

    [Fact]
    public async Task Shim_Output_RoutesToSeveralTopics_ModuleTopicIsTheDefault()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            from casparian import Output
            TOPIC = "sales"
            def parse(path):
                yield {"v": [1]}
                yield Output("errors", [{"line": 3, "why": "bad date"}])
                yield Output("audit_2", {"n": [1, 2]})
                yield [Output("errors", [{"line": 9, "why": "empty"}]), {"v": [2]}]
            """);
        using (s)
        {
            Assert.Equal(["sales", "errors", "audit_2", "errors", "sales"], s.Batches.Select(b => b.Topic));
            Assert.Equal([1L, 2L], s.Columns("sales")["v"]);
            Assert.Equal([3L, 9L], s.Columns("errors")["line"]);
            Assert.Equal([1L, 2L], s.Columns("audit_2")["n"]);
        }
    }

    [Fact]
    public async Task Shim_OutputWithoutImport_AndParsersOwnOutputClass_Work()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            import collections
            def parse(path):
                yield Output("pre_seeded", {"a": [1]})
                Mine = collections.namedtuple("Output", "name data")
                yield Mine("own_class", {"a": [2]})
            """);
        using (s)
            Assert.Equal(["pre_seeded", "own_class"], s.Batches.Select(b => b.Topic));
    }

    [Fact]
    public async Task Shim_HandlerStyle_ConfigureRegisterPublishAndConsume()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            class Handler:
                def configure(self, ctx, config):
                    self.ctx = ctx
                    self.lines = ctx.register_topic("lines")
                    self.meta = ctx.register_topic("meta")
                def consume(self, event):
                    with open(event.path) as f:
                        rows = [{"text": line.rstrip("\n")} for line in f]
                    self.ctx.publish(self.lines, rows)
                    self.ctx.publish(self.meta, {"file_id": [event.file_id], "job_id": [self.ctx.job_id], "config": [str(self.ctx.file_path == event.path)]})
                    return {"returned": [True]}
            """);
        using (s)
        {
            Assert.Equal(["a,b", "1,2"], s.Columns("lines")["text"]);
            Assert.Equal([7L], s.Columns("meta")["file_id"]);
            Assert.Equal([42L], s.Columns("meta")["job_id"]);
            Assert.Equal(["True"], s.Columns("meta")["config"]);
            Assert.Equal([true], s.Columns("output")["returned"]);
        }
    }

    [Fact]
    public async Task Shim_HandlerStyle_ExecuteYieldingTables()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            TOPIC = "rows"
            class Handler:
                def execute(self, path):
                    yield {"n": [1, 2]}
                    yield {"n": [3]}
            """);
        using (s)
            Assert.Equal([1L, 2L, 3L], s.Columns("rows")["n"]);
    }

    [Fact]
    public async Task Shim_Logs_ArriveInOrderInterleavedWithTables()
    {
        using var dir = new TempDir();
        var (r, s) = await Ok(dir, """
            import logging, sys, warnings
            log = logging.getLogger("sales")
            def parse(path):
                print("start", 1)
                print("partial", end="")
                print(" line")
                yield {"a": [1]}
                logging.debug("hidden at the default INFO level")
                log.info("info %d", 2)
                log.warning("warn")
                sys.stderr.write("to stderr\n")
                logging.error("err")
                yield {"a": [2]}
                sys.stdout.buffer.write("bytes é\n".encode())
                print("multi\nline")
                print("x" * 70000)
            """);
        using (s)
        {
            Assert.Equal(
            [
                ("log:Stdout", "start 1"), ("log:Stdout", "partial line"), ("table", "output"),
                ("log:Info", "sales: info 2"), ("log:Warning", "sales: warn"), ("log:Stderr", "to stderr"), ("log:Error", "err"),
                ("table", "output"), ("log:Stdout", "bytes é"), ("log:Stdout", "multi"), ("log:Stdout", "line"),
            ], s.Events.Take(11));
            // A 70,000-character line exceeds a frame's 64 KiB and arrives in pieces.
            Assert.Equal(new string('x', 70000), string.Concat(s.Events.Skip(11).Select(e => e.Text)));
            Assert.Equal(s.Logs.Count, r.LogLines);
        }
    }

    [Fact]
    public async Task Shim_BasicConfigLevel_IsHonoured()
    {
        using var dir = new TempDir();
        var (_, s) = await Ok(dir, """
            import logging
            logging.basicConfig(level=logging.DEBUG, format="%(levelname)s|%(message)s")
            def parse(path):
                logging.debug("now visible")
            """);
        using (s)
            Assert.Equal([(GuestLogLevel.Debug, "DEBUG|now visible")], s.Logs);
    }

    [Fact]
    public async Task Shim_Exception_ErrorFrameWithTypeMessageAndParserTraceback_Exit1()
    {
        using var dir = new TempDir();
        var (r, s) = await Guest.RunAsync(dir, """
            def helper(n):
                raise ValueError("bad row %d" % n)
            def parse(path):
                print("before")
                yield {"a": [1]}
                helper(7)
            """);
        using (s)
        {
            Assert.Equal(GuestOutcome.Failed, r.Outcome);
            Assert.Equal(1, r.ExitCode);
            Assert.Equal($"parser p.py on {dir.File("input.txt")}: ValueError: bad row 7", r.ErrorMessage);
            Assert.NotNull(r.Traceback);
            Assert.StartsWith("Traceback (most recent call last):", r.Traceback);
            Assert.Contains("line 2, in helper", r.Traceback);
            Assert.Contains("raise ValueError(\"bad row %d\" % n)", r.Traceback);
            Assert.DoesNotContain("bridge_shim.py", r.Traceback);
            Assert.EndsWith("ValueError: bad row 7", r.Traceback);
            // What came before the failure still arrived, in order.
            Assert.Equal([("log:Stdout", "before"), ("table", "output")], s.Events);
        }
    }

    [Theory]
    // TransientError from the casparian module: a retry may succeed.
    [InlineData("from casparian import TransientError\ndef parse(path):\n    raise TransientError('db busy')\n", "Transient", 2, "TransientError: db busy")]
    // A parser's own class of the same name counts too.
    [InlineData("class TransientError(Exception):\n    pass\ndef parse(path):\n    raise TransientError('own')\n", "Transient", 2, "TransientError: own")]
    // Out of memory is transient.
    [InlineData("def parse(path):\n    raise MemoryError('oom')\n", "Transient", 2, "MemoryError: oom")]
    // Anything else is permanent.
    [InlineData("def parse(path):\n    raise KeyError('k')\n", "Failed", 1, "KeyError: 'k'")]
    // sys.exit with a non-zero code is a failure, not a crash of the shim.
    [InlineData("import sys\ndef parse(path):\n    sys.exit(3)\n", "Failed", 1, "called sys.exit(3)")]
    // sys.exit(0) ends the parser successfully.
    [InlineData("import sys\ndef parse(path):\n    yield {'a': [1]}\n    sys.exit(0)\n", "Success", 0, null)]
    public async Task Shim_ExitCodes_FollowTheErrorKind(string source, string outcome, int exitCode, string? messageEnd)
    {
        using var dir = new TempDir();
        var (r, s) = await Guest.RunAsync(dir, source);
        using (s)
        {
            Assert.True(r.Outcome.ToString() == outcome, Guest.Describe(r, s));
            Assert.Equal(exitCode, r.ExitCode);
            if (messageEnd is null) Assert.Null(r.ErrorMessage);
            else Assert.EndsWith(messageEnd, r.ErrorMessage);
        }
    }

    public static TheoryData<string, string, string> BadInputs => new()
    {
        // The parser file does not exist.
        { "missing", "", "parser not found: {dir}/missing.py" },
        // The parser does not compile.
        { "syntax", "def parse(path)\n    return None\n", "syntax error in {dir}/p.py line 1: expected ':'" },
        // It defines neither entry point.
        { "noentry", "def parse_it(path):\n    pass\n", "defines neither parse(path) nor class Handler" },
        // It returns something that is not a table.
        { "badtype", "def parse(path):\n    return 42\n", "returned int; expected a table (pyarrow Table or RecordBatch, pandas DataFrame, an object with to_arrow(), a dict of equal-length lists, a list of row dicts), Output(topic, table), an iterable of those, or None" },
        // Its columns differ in length.
        { "unequal", "def parse(path):\n    return {'a': [1, 2, 3], 'b': [1, 2]}\n", "columns of unequal length: 'a' has 3, 'b' has 2" },
        // Its module TOPIC is not a valid topic name.
        { "badtopic", "TOPIC = 'Sales-2024'\ndef parse(path):\n    return None\n", "invalid topic name 'Sales-2024': topic names match [a-z][a-z0-9_]*" },
        // An Output names an invalid topic.
        { "badoutput", "def parse(path):\n    yield Output('9lives', {'a': [1]})\n", "invalid topic name '9lives': topic names match [a-z][a-z0-9_]*" },
        // The input file cannot be read.
        { "unreadable", "def parse(path):\n    return None\n", "input file is not readable: No such file or directory" },
        // Its import fails.
        { "importfails", "import no_such_module_xyz\n", "importing the parser raised ModuleNotFoundError: No module named 'no_such_module_xyz'" },
    };

    [Theory]
    [MemberData(nameof(BadInputs))]
    public async Task Shim_BadInput_OneClearLineNamingParserFileAndCause(string kind, string source, string cause)
    {
        using var dir = new TempDir();
        string input = kind == "unreadable" ? dir.File("nope.csv") : dir.File("in.csv");
        if (kind != "unreadable") File.WriteAllText(input, "x\n");
        string parserPath = kind == "missing" ? dir.File("missing.py") : dir.File("p.py");
        var (r, s) = await Guest.RunAsync(dir, source, input: input, parser: GuestParser.Path(parserPath));
        using (s)
        {
            Assert.True(r.Outcome == GuestOutcome.Failed, Guest.Describe(r, s));
            Assert.Equal(1, r.ExitCode);
            string name = Path.GetFileName(parserPath);
            Assert.Equal($"parser {name} on {input}: {cause.Replace("{dir}", dir.Path)}", r.ErrorMessage);
            if (kind == "importfails") Assert.Contains("ModuleNotFoundError", r.Traceback);
            else Assert.Null(r.Traceback);
        }
    }

    [Fact]
    public async Task Shim_ParserName_IsUsedInMessages()
    {
        using var dir = new TempDir();
        var (r, s) = await Guest.RunAsync(dir, "def parse(path):\n    return 1.5\n", parserName: "sales_csv");
        using (s)
            Assert.StartsWith($"parser sales_csv on {dir.File("input.txt")}: returned float;", r.ErrorMessage);
    }

    [Fact]
    public async Task Shim_SourceParser_ViaEnvironment_AndTooBigForIt_ViaFile()
    {
        using var dir = new TempDir();
        const string Small = "def parse(path):\n    return {'src': ['env']}\n";
        var (r1, s1) = await Guest.RunAsync(dir, "", parser: GuestParser.Source(Small), parserName: "small");
        using (s1) Assert.Equal(["env"], s1.Columns()["src"]);
        Assert.True(r1.Succeeded, Guest.Describe(r1, s1));

        string big = "# " + new string('p', 200_000) + "\ndef parse(path):\n    return {'src': ['file']}\n";
        var (r2, s2) = await Guest.RunAsync(dir, "", parser: GuestParser.Source(big));
        using (s2) Assert.Equal(["file"], s2.Columns()["src"]);
        Assert.True(r2.Succeeded, Guest.Describe(r2, s2));

        var (r3, s3) = await Guest.RunAsync(dir, "", parser: GuestParser.Source("def parse(path):\n    raise RuntimeError('from source')\n"), parserName: "src_parser");
        using (s3)
        {
            Assert.Equal($"parser src_parser on {dir.File("input.txt")}: RuntimeError: from source", r3.ErrorMessage);
            Assert.Contains("raise RuntimeError('from source')", r3.Traceback);
        }
    }

    [Fact]
    public async Task Shim_ParserDirectory_EntryRuleAndSiblingImports()
    {
        using var dir = new TempDir();
        string pdir = Directory.CreateDirectory(dir.File("pdir")).FullName;
        File.WriteAllText(Path.Combine(pdir, "helpers.py"), "def rows():\n    return {'from': ['helper']}\n");
        File.WriteAllText(Path.Combine(pdir, "main.py"), "import helpers\ndef parse(path):\n    return helpers.rows()\n");
        // Two candidates besides main.py: main.py wins.
        var (r, s) = await Guest.RunAsync(dir, "", parser: GuestParser.Path(pdir));
        using (s) Assert.Equal(["helper"], s.Columns()["from"]);
        Assert.True(r.Succeeded, Guest.Describe(r, s));

        // parser.py wins over main.py.
        File.WriteAllText(Path.Combine(pdir, "parser.py"), "def parse(path):\n    return {'from': ['parser.py']}\n");
        var (_, s2) = await Guest.RunAsync(dir, "", parser: GuestParser.Path(pdir));
        using (s2) Assert.Equal(["parser.py"], s2.Columns()["from"]);

        // No parser.py, no main.py, several .py files: no entry module.
        string other = Directory.CreateDirectory(dir.File("other")).FullName;
        File.WriteAllText(Path.Combine(other, "a.py"), "");
        File.WriteAllText(Path.Combine(other, "b.py"), "");
        var (r3, s3) = await Guest.RunAsync(dir, "", parser: GuestParser.Path(other));
        using (s3)
            Assert.Equal($"parser other on {dir.File("input.txt")}: no entry module in {other}: expected parser.py, else main.py, else the only top-level .py file (found: a.py, b.py)", r3.ErrorMessage);

        // A single .py file is the entry.
        File.Delete(Path.Combine(other, "b.py"));
        File.WriteAllText(Path.Combine(other, "a.py"), "def parse(path):\n    return {'from': ['only']}\n");
        var (_, s4) = await Guest.RunAsync(dir, "", parser: GuestParser.Path(other));
        using (s4) Assert.Equal(["only"], s4.Columns()["from"]);
    }

    [Fact]
    public async Task Shim_ParserArchive_LoadsEntryAndSiblingsFromTheZip()
    {
        using var dir = new TempDir();
        string zip = dir.File("bundle.zip");
        using (var archive = ZipFile.Open(zip, ZipArchiveMode.Create))
        {
            void Add(string name, string text)
            {
                using var w = new StreamWriter(archive.CreateEntry(name).Open());
                w.Write(text);
            }
            Add("util.py", "def shout(s):\n    return s.upper()\n");
            Add("parser.py", "import util\nTOPIC = 'zipped'\ndef parse(path):\n    return {'v': [util.shout('ok')]}\ndef fail():\n    raise ValueError('in zip')\n");
        }
        var (r, s) = await Guest.RunAsync(dir, "", parser: GuestParser.Archive(zip));
        using (s) Assert.Equal(["OK"], s.Columns("zipped")["v"]);
        Assert.True(r.Succeeded, Guest.Describe(r, s));

        File.WriteAllText(dir.File("broken.zip"), "not a zip");
        var (r2, s2) = await Guest.RunAsync(dir, "", parser: GuestParser.Archive(dir.File("broken.zip")));
        using (s2)
            Assert.Equal($"parser broken.zip on {dir.File("input.txt")}: parser archive {dir.File("broken.zip")} is not a readable ZIP file: File is not a zip file", r2.ErrorMessage);
    }

    [Fact]
    public async Task Shim_Pandas_DataFrameColumnsFromNumpyBuffers()
    {
        using var dir = new TempDir();
        var (r, s) = await Ok(dir, """
            import numpy as np
            import pandas as pd
            def parse(path):
                n = 70_000
                df = pd.DataFrame({
                    "i": np.arange(n, dtype="int64"),
                    "i32": np.arange(n, dtype="int32"),
                    "f": np.where(np.arange(n) % 10 == 0, np.nan, np.arange(n) / 4),
                    "b": np.arange(n) % 2 == 0,
                    "s": ["v%d" % i if i % 5 else None for i in range(n)],
                    "ts": pd.date_range("2024-01-01", periods=n, freq="s"),
                    "tz": pd.date_range("2024-01-01", periods=n, freq="min", tz="Europe/Paris"),
                    "ni": pd.array([None if i % 3 == 0 else i for i in range(n)], dtype="Int64"),
                    "cat": pd.Categorical(["a", "b"] * (n // 2)),
                    "obj_mixed": [1 if i % 2 else "x" for i in range(n)],
                })
                yield df
                yield df.head(0)
                yield pd.DataFrame({"v": [1.5, 2.5]}, index=pd.Index(["x", "y"], name="key"))
            """, interpreter: Guest.DebianPython);
        using (s)
        {
            Assert.Equal(3, r.Tables);
            var first = s.Batches.Where(b => b.Batch.Schema.FieldsList.Count == 10).ToList();
            var schema = first[0].Batch.Schema;
            Assert.Equal([ArrowTypeId.Int64, ArrowTypeId.Int64, ArrowTypeId.Double, ArrowTypeId.Boolean, ArrowTypeId.String, ArrowTypeId.Timestamp, ArrowTypeId.Timestamp, ArrowTypeId.Int64, ArrowTypeId.Dictionary, ArrowTypeId.String],
                schema.FieldsList.Select(f => f.DataType.TypeId));
            Assert.Equal("Europe/Paris", ((TimestampType)schema.GetFieldByName("tz").DataType).Timezone);
            var c = new Dictionary<string, List<object?>>();
            foreach (var (_, batch) in first)
                for (int col = 0; col < batch.ColumnCount; col++)
                {
                    string name = batch.Schema.FieldsList[col].Name;
                    if (!c.TryGetValue(name, out var list)) c[name] = list = [];
                    for (int i = 0; i < batch.Length; i++) list.Add(Arrow.Value(batch.Column(col), i));
                }
            Assert.Equal(70_000 + 0, c["i"].Count);
            Assert.Equal(69_999L, c["i"][^1]);
            Assert.Equal(12L, c["i32"][12]);
            Assert.Null(c["f"][10]);
            Assert.Equal(11 / 4.0, c["f"][11]);
            Assert.Equal([true, false], c["b"].Take(2));
            Assert.Null(c["s"][5]);
            Assert.Equal("v6", c["s"][6]);
            long epoch2024 = (new DateTime(2024, 1, 1) - DateTime.UnixEpoch).Ticks / 10;
            Assert.Equal(epoch2024 + 61_000_000L, c["ts"][61]);
            Assert.Equal(epoch2024 - 3_600_000_000L + 60_000_000L, c["tz"][1]);
            Assert.Null(c["ni"][0]);
            Assert.Equal(4L, c["ni"][4]);
            Assert.Equal(["a", "b"], c["cat"].Take(2));
            Assert.Equal(["x", "1"], c["obj_mixed"].Take(2));

            var empty = s.Batches.Single(b => b.Batch.Length == 0 && b.Batch.Schema.FieldsList.Count == 10);
            Assert.Equal(ArrowTypeId.Int64, empty.Batch.Schema.GetFieldByName("i").DataType.TypeId);

            var indexed = s.Batches.Last().Batch;
            Assert.Equal(["key", "v"], indexed.Schema.FieldsList.Select(f => f.Name));
            Assert.Equal("y", Arrow.Value(indexed.Column(0), 1));
        }
    }

    [Fact]
    public async Task Shim_SourceIsPython39Syntax()
    {
        foreach (string file in new[] { "bridge_shim.py", "arrow_ipc.py" })
        {
            var r = Proc.Run(Guest.Python, ["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read(), feature_version=(3, 9))", Path.Combine(Path.GetDirectoryName(Guest.ShimPath)!, file)]);
            Assert.True(r.ExitCode == 0, r.ToString());
        }
        await Task.CompletedTask;
    }

    [Fact]
    public void Shim_Ensure_ExtractsOnceAtomicallyAndRepairsADamagedCopy()
    {
        using var dir = new TempDir();
        string root = dir.File("shim");
        string[] paths = new string[8];
        Parallel.For(0, paths.Length, i => paths[i] = Shim.Ensure(root));
        Assert.Single(paths.Distinct());
        string shimDir = Path.GetDirectoryName(paths[0])!;
        Assert.Equal(Path.Combine(root, Shim.DirectoryName), shimDir);
        Assert.Matches(@"^\d+\.\d+\.\d+-[0-9a-f]{8}$", Shim.DirectoryName);
        Assert.Equal([Shim.DirectoryName], Directory.GetFileSystemEntries(root).Select(Path.GetFileName));
        Assert.Equal(File.ReadAllText(Path.Combine(Repo.Root, "shim", "bridge_shim.py")), File.ReadAllText(paths[0]));
        Assert.Equal(File.ReadAllText(Path.Combine(Repo.Root, "shim", "arrow_ipc.py")), File.ReadAllText(Path.Combine(shimDir, "arrow_ipc.py")));

        // A damaged copy (edited, truncated) is replaced whole by the next Ensure.
        File.WriteAllText(Path.Combine(shimDir, "arrow_ipc.py"), "damaged");
        Assert.Equal(paths[0], Shim.Ensure(root));
        Assert.Equal(File.ReadAllText(Path.Combine(Repo.Root, "shim", "arrow_ipc.py")), File.ReadAllText(Path.Combine(shimDir, "arrow_ipc.py")));
        Assert.Equal([Shim.DirectoryName], Directory.GetFileSystemEntries(root).Select(Path.GetFileName));
    }
}
