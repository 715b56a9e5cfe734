// A topic's schema across jobs (issue 14): the store keeps each topic's schema in versions (the schema
// registry, Store.Contracts.cs), DISPATCH hands a job the current one of every topic its parser has
// written (topic_schemas), and a job checks its topics against them before it renames anything. Only
// what a reader can union over the topic's files may change: a new column, a column this job lacks,
// a column of no values so far (Arrow null) taking a type, and int64 ↔ float64 (the topic becomes
// float64). Any other change fails the job naming the column and both types, so `read_parquet(glob)`
// over a topic's folder never meets two types for one column. The receipt's artifact carries the
// topic's schema after the job (current ∪ written); the sentinel records it as a new version when it
// differs. Two jobs running at once may both pass against the same version: the check is per job.
//
// Columns JSON: [{"name":"id","type":"int64"},…], types as ArrowSchemas.Describe spells them.
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Apache.Arrow;

namespace Casparian;

/// <summary>DISPATCH extension: a topic's current schema in the registry.</summary>
internal sealed record TopicSchemaDef
{
    [JsonPropertyName("topic")] public required string Topic { get; init; }
    [JsonPropertyName("version")] public long Version { get; init; }
    /// <summary>Columns JSON (the file header).</summary>
    [JsonPropertyName("columns")] public required string Columns { get; init; }
}

internal readonly record struct SchemaColumn(string Name, string Type);

/// <summary>A column whose type changed in a way readers cannot union.</summary>
internal readonly record struct SchemaConflict(string Column, string Written, string Current);

internal static class SchemaDrift
{
    public static List<SchemaColumn> Columns(Schema schema) => [.. schema.FieldsList.Select(f => new SchemaColumn(f.Name, ArrowSchemas.Describe(f.DataType)))];

    public static string ToJson(IReadOnlyList<SchemaColumn> columns)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartArray();
            foreach (var c in columns)
            {
                w.WriteStartObject();
                w.WriteString("name", c.Name);
                w.WriteString("type", c.Type);
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    public static List<SchemaColumn> Parse(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return [.. doc.RootElement.EnumerateArray().Select(e => new SchemaColumn(e.GetProperty("name").GetString() ?? "", e.GetProperty("type").GetString() ?? ""))];
    }

    /// <summary>The topic's schema once <paramref name="written"/> joins <paramref name="current"/>, or the first column that cannot.</summary>
    public static List<SchemaColumn> Merge(IReadOnlyList<SchemaColumn> current, IReadOnlyList<SchemaColumn> written, out SchemaConflict? conflict)
    {
        conflict = null;
        var merged = new List<SchemaColumn>(current);
        foreach (var w in written)
        {
            int i = merged.FindIndex(c => c.Name == w.Name);
            if (i < 0) { merged.Add(w); continue; }
            string have = merged[i].Type;
            if (have == w.Type || w.Type == "null") continue;
            if (have == "null" || (have, w.Type) is ("int64", "double") or ("double", "int64"))
            {
                merged[i] = w with { Type = have == "null" ? w.Type : "double" };
                continue;
            }
            conflict ??= new SchemaConflict(w.Name, w.Type, have);
        }
        return merged;
    }
}

internal sealed partial class JobOutput
{
    /// <summary>The registry's current schemas (DISPATCH topic_schemas): every topic's schema is checked against its own at Commit.</summary>
    public void ExpectSchemas(IReadOnlyList<TopicSchemaDef>? registered) => _registered = registered ?? [];

    /// <summary>Each topic's schema after this job (columns JSON, by _topics index); throws on a change readers cannot union.</summary>
    private string?[] CheckDrift()
    {
        var result = new string?[_topics.Count];
        for (int i = 0; i < _topics.Count; i++)
        {
            var t = _topics[i];
            if (t.Schema is not { } schema) continue;
            var registered = _registered.FirstOrDefault(r => r.Topic == t.Name);
            var current = registered is null ? [] : SchemaDrift.Parse(registered.Columns);
            var merged = SchemaDrift.Merge(current, SchemaDrift.Columns(schema), out var conflict);
            if (conflict is { } c) throw OutputThrow.Schema_Drift(_jobId, t.Name, c.Column, c.Written, c.Current, registered!.Version);
            result[i] = SchemaDrift.ToJson(merged);
        }
        return result;
    }
}
