// Schema contracts (issue 14, SPEC §7.1): what a topic declares about its columns and what happens to a
// row that breaks it. This file is the declaration: the type names, the modes, and schema_def, the
// JSON text DISPATCH carries in a SinkConfig:
//
//   {"columns":[{"name":"id","type":"int64","nullable":false},…],"contract":"discard_row","max_quarantine":0.5}
//
// Every key is optional in a stored declaration (a config file may override only the contract); the
// effective schema_def a worker gets has whatever the parser and the config set between them. The
// worker enforces it on each batch (Output.Contract.cs) and keeps rejected rows (Output.Quarantine.cs).
using System.Globalization;
using System.Text;
using System.Text.Json;
using Apache.Arrow.Types;

namespace Casparian;

/// <summary>What happens to a batch's violations (after dlt's schema contracts).</summary>
internal enum ContractMode
{
    /// <summary>Nothing is enforced per value: new columns and widened types are accepted (the topic's schema rules, Output.cs).</summary>
    Evolve,
    /// <summary>Any violation fails the job.</summary>
    Freeze,
    /// <summary>A violating row goes to quarantine; the rest are written.</summary>
    DiscardRow,
    /// <summary>A violating value becomes null and goes to quarantine (a non-nullable column: the row does).</summary>
    DiscardValue,
}

internal enum ColumnKind { Int64, Float64, String, Bool, Date, Timestamp, Decimal, Binary }

/// <summary>A declared column type; <see cref="Precision"/> and <see cref="Scale"/> only for decimal.</summary>
internal readonly record struct ColumnType(ColumnKind Kind, int Precision = 0, int Scale = 0)
{
    public const string Known = "int64, float64, string, bool, date, timestamp, decimal(P,S) with 1 <= P <= 38 and 0 <= S <= P, binary";

    public string Name => Kind switch
    {
        ColumnKind.Int64 => "int64",
        ColumnKind.Float64 => "float64",
        ColumnKind.String => "string",
        ColumnKind.Bool => "bool",
        ColumnKind.Date => "date",
        ColumnKind.Timestamp => "timestamp",
        ColumnKind.Decimal => $"decimal({Precision},{Scale})",
        _ => "binary",
    };

    /// <summary>The Arrow type the column is written as (timestamps: microseconds, UTC).</summary>
    public IArrowType Arrow => Kind switch
    {
        ColumnKind.Int64 => Int64Type.Default,
        ColumnKind.Float64 => DoubleType.Default,
        ColumnKind.String => StringType.Default,
        ColumnKind.Bool => BooleanType.Default,
        ColumnKind.Date => Date32Type.Default,
        ColumnKind.Timestamp => new TimestampType(TimeUnit.Microsecond, "UTC"),
        ColumnKind.Decimal => new Decimal128Type(Precision, Scale),
        _ => BinaryType.Default,
    };

    /// <summary>A type name as declared (no '?'), or null when it is none of <see cref="Known"/>.</summary>
    public static ColumnType? Parse(string text)
    {
        switch (text)
        {
            case "int64": return new(ColumnKind.Int64);
            case "float64": return new(ColumnKind.Float64);
            case "string": return new(ColumnKind.String);
            case "bool": return new(ColumnKind.Bool);
            case "date": return new(ColumnKind.Date);
            case "timestamp": return new(ColumnKind.Timestamp);
            case "binary": return new(ColumnKind.Binary);
        }
        if (!text.StartsWith("decimal(", StringComparison.Ordinal) || !text.EndsWith(')')) return null;
        string[] parts = text[8..^1].Split(',');
        if (parts.Length != 2
            || !int.TryParse(parts[0].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int p)
            || !int.TryParse(parts[1].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int s)
            || p is < 1 or > 38 || s > p) return null;
        return new(ColumnKind.Decimal, p, s);
    }
}

/// <summary>One declared column.</summary>
internal sealed record DeclaredColumn(string Name, ColumnType Type, bool Nullable)
{
    /// <summary>The declaration's spelling: the type, with '?' when nullable.</summary>
    public string Spelling => Type.Name + (Nullable ? "?" : "");
}

/// <summary>
/// A topic's schema contract as declared or stored: any field may be unset (null) in a declaration;
/// <see cref="Merge"/> lays a config override over a parser's declaration field by field.
/// </summary>
internal sealed record SchemaContract(IReadOnlyList<DeclaredColumn>? Columns, ContractMode? Mode, double? MaxQuarantine)
{
    public static readonly string[] ModeNames = ["evolve", "freeze", "discard_row", "discard_value"];

    public bool IsEmpty => Columns is null && Mode is null && MaxQuarantine is null;

    /// <summary>The mode in force: evolve when none is set.</summary>
    public ContractMode Effective => Mode ?? ContractMode.Evolve;

    public static SchemaContract? Merge(SchemaContract? under, SchemaContract? over) =>
        under is null ? over : over is null ? under
        : new SchemaContract(over.Columns ?? under.Columns, over.Mode ?? under.Mode, over.MaxQuarantine ?? under.MaxQuarantine);

    public static string ModeName(ContractMode mode) => ModeNames[(int)mode];

    public static ContractMode? ParseMode(string text)
    {
        int i = Array.IndexOf(ModeNames, text);
        return i < 0 ? null : (ContractMode)i;
    }

    /// <summary>
    /// A declared column from its name and spelling ("int64", "float64?"); throws <see cref="InputException"/>
    /// through <paramref name="error"/> naming what is wrong.
    /// </summary>
    public static DeclaredColumn Column(string name, string spelling, Func<string, Exception> error)
    {
        if (name.Length == 0) throw error("a schema column has an empty name");
        bool nullable = spelling.EndsWith('?');
        string typeName = nullable ? spelling[..^1] : spelling;
        var type = ColumnType.Parse(typeName) ?? throw error($"column '{name}' has unknown type '{spelling}'; types are {ColumnType.Known}, with '?' for nullable");
        return new DeclaredColumn(name, type, nullable);
    }

    /// <summary>Checks a declaration on its own; <paramref name="error"/> makes the exception naming where.</summary>
    public void Check(string topic, Func<string, Exception> error)
    {
        if (MaxQuarantine is { } m && (double.IsNaN(m) || m < 0 || m > 1))
            throw error($"topic '{topic}': max_quarantine {m.ToString(CultureInfo.InvariantCulture)} is not a fraction from 0 to 1");
        if (Columns is { } columns)
            for (int i = 0; i < columns.Count; i++)
                for (int j = 0; j < i; j++)
                    if (columns[i].Name == columns[j].Name) throw error($"topic '{topic}': schema column '{columns[i].Name}' is declared twice");
    }

    /// <summary>schema_def (SPEC §7.1); unset fields are left out.</summary>
    public string ToJson()
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            if (Columns is { } columns)
            {
                w.WriteStartArray("columns");
                foreach (var c in columns)
                {
                    w.WriteStartObject();
                    w.WriteString("name", c.Name);
                    w.WriteString("type", c.Type.Name);
                    w.WriteBoolean("nullable", c.Nullable);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            }
            if (Mode is { } mode) w.WriteString("contract", ModeName(mode));
            if (MaxQuarantine is { } max) w.WriteNumber("max_quarantine", max);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>Reads schema_def; throws <see cref="FormatException"/> naming what is wrong.</summary>
    public static SchemaContract FromJson(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new FormatException("schema_def is not a JSON object");
        List<DeclaredColumn>? columns = null;
        ContractMode? mode = null;
        double? max = null;
        foreach (var p in root.EnumerateObject())
        {
            switch (p.Name)
            {
                case "columns":
                    columns = [];
                    foreach (var c in p.Value.EnumerateArray())
                    {
                        string name = c.GetProperty("name").GetString() ?? "";
                        string type = c.GetProperty("type").GetString() ?? "";
                        bool nullable = c.TryGetProperty("nullable", out var n) && n.GetBoolean();
                        columns.Add(Column(name, type + (nullable ? "?" : ""), m => new FormatException(m)));
                    }
                    break;
                case "contract":
                    string text = p.Value.GetString() ?? "";
                    mode = ParseMode(text) ?? throw new FormatException($"contract '{text}' is not one of {string.Join(", ", ModeNames)}");
                    break;
                case "max_quarantine":
                    max = p.Value.GetDouble();
                    break;
                default:
                    throw new FormatException($"schema_def has unknown key '{p.Name}'");
            }
        }
        return new SchemaContract(columns, mode, max);
    }
}
