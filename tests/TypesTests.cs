// Issue 20: every Python and pandas value lands in Parquet with the type a reader expects
// (docs/types.md). Each case runs a parser through `casparian run` (the native binary, the real
// python3) and reads the file back with DuckDB, as a user would, value by value, plus the Arrow types
// ParquetSharp's reader restores from the stored schema (what pyarrow and pandas would see).
using Apache.Arrow;
using Apache.Arrow.Types;
using DuckDB.NET.Data;
using Xunit;

namespace Casparian.Tests;

public sealed class TypesTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>Runs <paramref name="parser"/> over one input with `casparian run`; pandas parsers get Debian's python3 through a VIRTUAL_ENV.</summary>
    private (ProcessResult Result, string Parquet) Run(string parser, bool pandas = false)
    {
        File.WriteAllText(_dir.File("p.py"), parser);
        File.WriteAllText(_dir.File("in.txt"), "x\n");
        var env = new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _dir.File("home"), ["VIRTUAL_ENV"] = null };
        if (pandas)
        {
            Directory.CreateDirectory(_dir.File("venv/bin"));
            if (!File.Exists(_dir.File("venv/bin/python"))) File.CreateSymbolicLink(_dir.File("venv/bin/python"), Guest.DebianPython);
            env["VIRTUAL_ENV"] = _dir.File("venv");
        }
        var r = Proc.Run(Repo.Binary, ["run", "p.py", "in.txt"], TimeSpan.FromMinutes(3), workingDirectory: _dir.Path, environment: env);
        Assert.True(r.ExitCode == 0, r.ToString());
        return (r, _dir.File("output/output/in.parquet"));
    }

    /// <summary>DuckDB's type name of each column.</summary>
    private static Dictionary<string, string> DuckTypes(string parquet) =>
        Duck.Rows(parquet, "DESCRIBE SELECT * FROM read_parquet($path)").ToDictionary(r => (string)r[0]!, r => (string)r[1]!);

    /// <summary>One column as DuckDB prints it (CAST to VARCHAR), row by row, nulls as null.</summary>
    private static List<string?> Text(string parquet, string column) =>
        Duck.Rows(parquet, $"SELECT CAST(\"{column}\" AS VARCHAR) FROM read_parquet($path)").Select(r => (string?)r[0]).ToList();

    private static IArrowType ArrowType(string parquet, string column)
    {
        using var reader = new ParquetSharp.Arrow.FileReader(parquet);
        return reader.Schema.GetFieldByName(column).DataType;
    }

    private const string PlainPython = """
        import datetime as dt
        import uuid
        from decimal import Decimal

        def parse(path):
            return {
                "dec": [Decimal("1.10"), None, Decimal("-3.255"), Decimal("12345")],
                "big": [2**70, None, -(2**70), 1],
                "huge": [2**200, None, 1, 2],
                "dec_nan": [Decimal("NaN"), None, Decimal(1), Decimal(2)],
                "js": [{"a": 1}, None, {"b": [1, 2], "c": Decimal("1.1"), 3: float("nan")}, {}],
                "lst": [[1, 2], None, [], [None, 3]],
                "tup": [("a", "b"), None, (), ("c",)],
                "nested": [[1, [2]], None, [], [3]],
                "lst_mixed": [[1, "a"], None, [], [2]],
                "tm": [dt.time(1, 2, 3), None, dt.time(23, 59, 59, 999999), dt.time()],
                "td": [dt.timedelta(seconds=5), None, dt.timedelta(days=-1, microseconds=1), dt.timedelta(0)],
                "uu": [uuid.UUID(int=1), None, uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID(int=2)],
                "by": [b"a", bytearray(b"b"), memoryview(b"c"), None],
                "dec_int": [Decimal("1.5"), 2, None, 3],
                "dict_str": [{"a": 1}, "x", None, [1]],
                # Past Python's 4300-digit limit on str(int): still every digit, as text or in JSON.
                "giant": [10**5000, None, "x", 7],
                "giant_mixed": [-10**5000, uuid.UUID(int=3), None, 1],
                "giant_js": [{"n": 10**5000}, None, {}, {"k": 1}],
            }
        """;

    [Fact]
    public void Types_PlainPython_EveryValueTypedAndReadBackByDuckDb()
    {
        var (r, parquet) = Run(PlainPython);
        var types = DuckTypes(parquet);

        Assert.Equal("DECIMAL(8,3)", types["dec"]);          // widest scale 3, 5 integer digits
        Assert.Equal(["1.100", null, "-3.255", "12345.000"], Text(parquet, "dec"));
        Assert.Equal("DECIMAL(38,0)", types["big"]);
        Assert.Equal(["1180591620717411303424", null, "-1180591620717411303424", "1"], Text(parquet, "big"));
        Assert.Equal("VARCHAR", types["huge"]);               // beyond 38 digits: text, with a warning
        Assert.Equal([System.Numerics.BigInteger.Pow(2, 200).ToString(), null, "1", "2"], Text(parquet, "huge"));
        Assert.Contains("column 'huge': integers beyond 38 digits do not fit decimal128(38, 0); written as text", r.Stdout + r.Stderr);
        Assert.Equal("VARCHAR", types["dec_nan"]);
        Assert.Contains("column 'dec_nan': NaN or infinite Decimal values do not fit decimal128; written as text", r.Stdout + r.Stderr);
        Assert.Equal(["NaN", null, "1", "2"], Text(parquet, "dec_nan"));

        Assert.Equal("JSON", types["js"]);
        Assert.Equal(["{\"a\": 1}", null, "{\"b\": [1, 2], \"c\": \"1.1\", \"3\": null}", "{}"], Text(parquet, "js"));
        Assert.All(Duck.Rows(parquet, "SELECT json_valid(js) FROM read_parquet($path) WHERE js IS NOT NULL"), row => Assert.Equal(true, row[0]));

        Assert.Equal("BIGINT[]", types["lst"]);
        Assert.Equal(["[1, 2]", null, "[]", "[NULL, 3]"], Text(parquet, "lst"));
        Assert.Equal("VARCHAR[]", types["tup"]);
        Assert.Equal(["[a, b]", null, "[]", "[c]"], Text(parquet, "tup"));
        Assert.Equal("JSON", types["nested"]);
        Assert.Equal(["[1, [2]]", null, "[]", "[3]"], Text(parquet, "nested"));
        Assert.Equal("JSON", types["lst_mixed"]);
        Assert.Equal(["[1, \"a\"]", null, "[]", "[2]"], Text(parquet, "lst_mixed"));

        Assert.Equal("TIME", types["tm"]);
        Assert.Equal(["01:02:03", null, "23:59:59.999999", "00:00:00"], Text(parquet, "tm"));
        // Parquet has no duration type DuckDB reads: int64 microseconds, restored as duration[us] by Arrow readers.
        Assert.Equal("BIGINT", types["td"]);
        Assert.Equal(["5000000", null, "-86399999999", "0"], Text(parquet, "td"));
        Assert.Equal(Apache.Arrow.Types.TimeUnit.Microsecond, Assert.IsType<DurationType>(ArrowType(parquet, "td")).Unit);
        Assert.Equal(Apache.Arrow.Types.TimeUnit.Microsecond, Assert.IsType<Time64Type>(ArrowType(parquet, "tm")).Unit);

        Assert.Equal("VARCHAR", types["uu"]);
        Assert.Equal(["00000000-0000-0000-0000-000000000001", null, "12345678-1234-5678-1234-567812345678", "00000000-0000-0000-0000-000000000002"], Text(parquet, "uu"));
        Assert.Equal("BLOB", types["by"]);
        Assert.Equal(["a", "b", "c", null], Text(parquet, "by"));

        Assert.Equal("DECIMAL(2,1)", types["dec_int"]);     // int + Decimal widens losslessly
        Assert.Equal(["1.5", "2.0", null, "3.0"], Text(parquet, "dec_int"));
        Assert.Equal("VARCHAR", types["dict_str"]);          // dict + str: text, the dict as JSON
        Assert.Equal(["{\"a\": 1}", "x", null, "[1]"], Text(parquet, "dict_str"));

        string giant = System.Numerics.BigInteger.Pow(10, 5000).ToString();
        Assert.Equal("VARCHAR", types["giant"]);
        Assert.Equal([giant, null, "x", "7"], Text(parquet, "giant"));
        Assert.Equal("VARCHAR", types["giant_mixed"]);
        Assert.Equal(["-" + giant, "00000000-0000-0000-0000-000000000003", null, "1"], Text(parquet, "giant_mixed"));
        Assert.Equal("JSON", types["giant_js"]);
        Assert.Equal(["{\"n\": " + giant + "}", null, "{}", "{\"k\": 1}"], Text(parquet, "giant_js"));
    }

    [Fact]
    public void Types_DeepDictHugeListAndNestedEmptyLists_Bounded()
    {
        var (r, parquet) = Run("""
            def parse(path):
                deep = {}
                for _ in range(10_000):
                    deep = {"x": deep}
                return {
                    "deep": [deep, {"ok": True}],
                    "huge": [list(range(1_000_000)), [None]],
                    "empties": [[[], [[]]], []],
                    "dicts_in_list": [[{"a": 1}], [{"b": [2]}]],
                }
            """);
        var types = DuckTypes(parquet);
        Assert.Equal("JSON", types["deep"]);
        // Too deep for the JSON encoder: null, with a warning, instead of a crash.
        Assert.Equal([null, "{\"ok\": true}"], Text(parquet, "deep"));
        Assert.Contains("column 'deep': 1 value(s) nest too deep to encode as JSON; written as null", r.Stdout + r.Stderr);
        Assert.Equal("BIGINT[]", types["huge"]);
        var huge = Duck.Rows(parquet, "SELECT CAST(len(huge) AS VARCHAR), CAST(huge[1] AS VARCHAR), CAST(huge[1000000] AS VARCHAR), CAST(list_sum(huge) AS VARCHAR) FROM read_parquet($path)");
        Assert.Equal(["1000000", "0", "999999", "499999500000"], huge[0]);
        Assert.Equal(["1", null, null, null], huge[1]);
        Assert.Equal("JSON", types["empties"]);
        Assert.Equal(["[[], [[]]]", "[]"], Text(parquet, "empties"));
        Assert.Equal("JSON", types["dicts_in_list"]);
        Assert.Equal(["[{\"a\": 1}]", "[{\"b\": [2]}]"], Text(parquet, "dicts_in_list"));
    }

    [Fact]
    public void Types_Pandas_EveryDebianDtypeTyped()
    {
        var (_, parquet) = Run("""
            import datetime as dt
            from decimal import Decimal
            import numpy as np
            import pandas as pd

            def parse(path):
                return pd.DataFrame({
                    "i8": np.array([1, -2, 3], dtype="int8"),
                    "i16": np.array([1, -2, 3], dtype="int16"),
                    "i32": np.array([1, -2, 3], dtype="int32"),
                    "u8": np.array([1, 2, 255], dtype="uint8"),
                    "u32": np.array([1, 2, 2**32 - 1], dtype="uint32"),
                    "u64": np.array([1, 2, 2**64 - 1], dtype="uint64"),
                    "f32": np.array([0.5, np.nan, 2.0], dtype="float32"),
                    "f64": [0.25, None, 1e300],
                    "b": [True, False, True],
                    "ni": pd.array([1, None, 3], dtype="Int64"),
                    "nb": pd.array([True, None, False], dtype="boolean"),
                    "nf": pd.array([1.5, None, 2.5], dtype="Float64"),
                    "s": pd.array(["a", None, "c"], dtype="string"),
                    "ts": pd.to_datetime(["2024-01-01 00:00:01", None, "2024-12-31 23:59:59.5"]),
                    "tz": pd.to_datetime(["2024-01-01 01:00", None, "2024-07-01 02:00"]).tz_localize("Europe/Paris"),
                    "td": pd.to_timedelta([5, None, -1], unit="s"),
                    "cat": pd.Categorical(["x", None, "y"]),
                    # pandas itself cannot infer these categories (it tries float): given as an object Index.
                    "cat_giant": pd.Categorical.from_codes([0, -1, 1], categories=pd.Index([10**5000, "x"], dtype=object)),
                    "dec": [Decimal("1.10"), None, Decimal("-2.5")],
                    "js": [{"a": [1]}, None, {"b": None}],
                    "lst": [[1.5], None, []],
                    "tm": [dt.time(12, 30), None, dt.time(0, 0, 1)],
                    "per": pd.period_range("2024-01", periods=3, freq="M"),
                    "iv": pd.interval_range(0, 3),
                })
            """, pandas: true);
        var types = DuckTypes(parquet);
        foreach (var c in new[] { "i8", "i16", "i32", "u8", "u32", "ni" }) Assert.Equal("BIGINT", types[c]);
        Assert.Equal(["1", "-2", "3"], Text(parquet, "i8"));
        Assert.Equal(["1", "2", "4294967295"], Text(parquet, "u32"));
        Assert.Equal("DECIMAL(38,0)", types["u64"]);         // beyond int64: decimal128(38, 0)
        Assert.Equal(["1", "2", "18446744073709551615"], Text(parquet, "u64"));
        Assert.Equal("DOUBLE", types["f32"]);
        Assert.Equal(["0.5", null, "2.0"], Text(parquet, "f32"));
        Assert.Equal(["0.25", null, "1e+300"], Text(parquet, "f64"));
        Assert.Equal("BOOLEAN", types["nb"]);
        Assert.Equal(["true", null, "false"], Text(parquet, "nb"));
        Assert.Equal(["1.5", null, "2.5"], Text(parquet, "nf"));
        Assert.Equal(["1", null, "3"], Text(parquet, "ni"));
        Assert.Equal(["a", null, "c"], Text(parquet, "s"));
        Assert.Equal("TIMESTAMP", types["ts"]);
        Assert.Equal(["2024-01-01 00:00:01", null, "2024-12-31 23:59:59.5"], Text(parquet, "ts"));
        Assert.Equal("TIMESTAMP WITH TIME ZONE", types["tz"]);
        Assert.Equal("Europe/Paris", Assert.IsType<TimestampType>(ArrowType(parquet, "tz")).Timezone);
        Assert.Equal("BIGINT", types["td"]);
        Assert.Equal(["5000000", null, "-1000000"], Text(parquet, "td"));
        Assert.IsType<DurationType>(ArrowType(parquet, "td"));
        Assert.Equal("VARCHAR", types["cat"]);
        Assert.Equal(["x", null, "y"], Text(parquet, "cat"));
        Assert.IsType<DictionaryType>(ArrowType(parquet, "cat"));
        Assert.Equal([System.Numerics.BigInteger.Pow(10, 5000).ToString(), null, "x"], Text(parquet, "cat_giant")); // categories past str()'s 4300 digits
        Assert.Equal("DECIMAL(3,2)", types["dec"]);
        Assert.Equal(["1.10", null, "-2.50"], Text(parquet, "dec"));
        Assert.Equal("JSON", types["js"]);
        Assert.Equal(["{\"a\": [1]}", null, "{\"b\": null}"], Text(parquet, "js"));
        Assert.Equal("DOUBLE[]", types["lst"]);
        Assert.Equal(["[1.5]", null, "[]"], Text(parquet, "lst"));
        Assert.Equal("TIME", types["tm"]);
        Assert.Equal(["12:30:00", null, "00:00:01"], Text(parquet, "tm"));
        Assert.Equal("VARCHAR", types["per"]);               // no Parquet type: text
        Assert.Equal(["2024-01", "2024-02", "2024-03"], Text(parquet, "per"));
        Assert.Equal(["(0, 1]", "(1, 2]", "(2, 3]"], Text(parquet, "iv"));
    }

    [Fact]
    public void Types_ChunksOfOneTopic_JoinDecimalsListsJsonAndNulls()
    {
        var (_, parquet) = Run("""
            from decimal import Decimal

            def parse(path):
                yield {"d": [Decimal("1.25")], "l": [[]], "j": [{"a": 1}], "n": [None], "k": [[1]]}
                yield {"d": [Decimal("123.5")], "l": [[1, None]], "j": [{"b": 2}], "n": [[1.5]], "k": [None]}
                yield {"d": [None], "l": [None], "j": ["plain text"], "n": [None], "k": [[2.5]]}
            """);
        var types = DuckTypes(parquet);
        Assert.Equal("DECIMAL(5,2)", types["d"]);            // (3,2) and (4,1) join as (5,2)
        Assert.Equal(["1.25", "123.50", null], Text(parquet, "d"));
        Assert.Equal("BIGINT[]", types["l"]);                // list<null> then list<int64>
        Assert.Equal(["[]", "[1, NULL]", null], Text(parquet, "l"));
        Assert.Equal("VARCHAR", types["j"]);                 // JSON then plain text: text, no JSON annotation
        Assert.Equal(["{\"a\": 1}", "{\"b\": 2}", "plain text"], Text(parquet, "j"));
        Assert.Equal("DOUBLE[]", types["n"]);                // null, then list<double>, then null again
        Assert.Equal([null, "[1.5]", null], Text(parquet, "n"));
        Assert.Equal("DOUBLE[]", types["k"]);                // list<int64> then list<double>
        Assert.Equal(["[1.0]", null, "[2.5]"], Text(parquet, "k"));
    }

    [Fact]
    public void Types_PandasCategoriesDifferAcrossChunks_ValuesKept()
    {
        var (_, parquet) = Run("""
            import pandas as pd

            def parse(path):
                yield pd.DataFrame({"c": pd.Categorical(["a", "b", None])})
                yield pd.DataFrame({"c": pd.Categorical(["z", "a"])})
                yield pd.DataFrame({"c": [None]})
            """, pandas: true);
        Assert.Equal("VARCHAR", DuckTypes(parquet)["c"]);
        Assert.Equal(["a", "b", null, "z", "a", null], Text(parquet, "c"));
        Assert.IsType<DictionaryType>(ArrowType(parquet, "c"));
    }

    [Theory]
    [InlineData("decimal(5,2)", "decimal(5,2)", nameof(Promotion.None))]
    [InlineData("decimal(5,2)", "decimal(3,1)", nameof(Promotion.Cast))]        // fits: rescaled into the topic's type
    [InlineData("decimal(3,1)", "decimal(5,2)", nameof(Promotion.WidenTopic))]
    [InlineData("decimal(4,1)", "decimal(3,2)", nameof(Promotion.WidenTopic))]  // neither holds the other: (5,2)
    [InlineData("decimal(38,0)", "decimal(38,10)", nameof(Promotion.Mismatch))] // the join would need 48 digits
    [InlineData("decimal(5,2)", "int64", nameof(Promotion.Mismatch))]
    [InlineData("decimal(5,2)", "double", nameof(Promotion.Mismatch))]         // a float is not an exact decimal
    [InlineData("list<int64>", "list<double>", nameof(Promotion.WidenTopic))]
    [InlineData("list<double>", "list<int64>", nameof(Promotion.Cast))]
    [InlineData("list<null>", "list<int64>", nameof(Promotion.WidenTopic))]
    [InlineData("list<int64>", "list<null>", nameof(Promotion.Cast))]
    [InlineData("list<int64>", "list<utf8>", nameof(Promotion.Mismatch))]
    [InlineData("list<int64>", "int64", nameof(Promotion.Mismatch))]
    [InlineData("list<int64>", "null", nameof(Promotion.FillNulls))]
    public void Types_Promote_DecimalsAndLists(string topic, string batch, string promotion)
    {
        Assert.Equal(Enum.Parse<Promotion>(promotion), ArrowSchemas.Promote(Type(topic), Type(batch)));
    }

    [Fact]
    public void Types_Join_DecimalWidestScaleAndIntegerPart()
    {
        var joined = Assert.IsType<Decimal128Type>(ArrowSchemas.Join(Type("decimal(4,1)"), Type("decimal(3,2)")));
        Assert.Equal((5, 2), (joined.Precision, joined.Scale));
    }

    [Fact]
    public void Types_EmptyBatch_NestedAndDictionaryTypes()
    {
        // What a pyarrow table of no rows may carry: the bridge must make zero-row arrays of each.
        var schema = new Schema(
        [
            new Field("l", Type("list<list<int64>>"), true),
            new Field("d", new DictionaryType(Int32Type.Default, StringType.Default, false), true),
            new Field("s", new StructType([new Field("a", Type("decimal(5,2)"), true), new Field("b", LargeStringType.Default, true)]), true),
            new Field("t", new Time64Type(Apache.Arrow.Types.TimeUnit.Microsecond), true),
        ], null);
        using var batch = Bridge.EmptyBatch(schema);
        Assert.Equal(0, batch.Length);
        for (int i = 0; i < schema.FieldsList.Count; i++)
        {
            Assert.Equal(0, batch.Column(i).Length);
            Assert.True(ArrowSchemas.SameType(schema.FieldsList[i].DataType, batch.Column(i).Data.DataType));
        }
        Assert.Equal(0, ((DictionaryArray)batch.Column(1)).Dictionary.Length);
    }

    private static IArrowType Type(string name) => name switch
    {
        "int64" => Int64Type.Default,
        "double" => DoubleType.Default,
        "utf8" => StringType.Default,
        "null" => NullType.Default,
        _ when name.StartsWith("list<", StringComparison.Ordinal) => new ListType(new Field("item", Type(name[5..^1]), true)),
        _ when name.StartsWith("decimal(", StringComparison.Ordinal) =>
            name[8..^1].Split(',') is [var p, var s] ? new Decimal128Type(int.Parse(p), int.Parse(s)) : throw new ArgumentException(name),
        _ => throw new ArgumentException(name),
    };
}

/// <summary>DuckDB over one Parquet file: the reader a user points at our output.</summary>
internal static class Duck
{
    /// <summary>Rows of <paramref name="sql"/>, where $path stands for the file (a quoted literal); DBNull becomes null.</summary>
    public static List<object?[]> Rows(string parquet, string sql)
    {
        using var connection = new DuckDBConnection("DataSource=:memory:");
        connection.Open();
        using var command = connection.CreateCommand();
        command.CommandText = sql.Replace("$path", "'" + parquet.Replace("'", "''") + "'", StringComparison.Ordinal);
        using var reader = command.ExecuteReader();
        var rows = new List<object?[]>();
        while (reader.Read())
        {
            var row = new object?[reader.FieldCount];
            for (int i = 0; i < row.Length; i++) row[i] = reader.IsDBNull(i) ? null : reader.GetValue(i);
            rows.Add(row);
        }
        return rows;
    }
}
