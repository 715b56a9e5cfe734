// Schema contracts and quarantine in the store (issue 14):
//   quarantine     per (job, topic, reason): how many rows the job's contract sent to quarantine (the
//                  rows themselves are Parquet under OUTPUT/_quarantine/TOPIC/, Output.Quarantine.cs)
//   topic_schemas  the schema registry: per topic, a version each time the schema a job left the topic
//                  with differs from the current one (columns JSON, Output.Drift.cs), with that job
// `quarantine ls` lists only jobs that are still their source's current output (the catalog's outputs
// table), so a replay that commits supersedes the old job's quarantine in the listing as on disk.
namespace Casparian;

/// <summary>Rows a job quarantined in one topic for one reason.</summary>
internal readonly record struct QuarantineCount(string Topic, string Reason, long Rows);

/// <summary>A <c>quarantine ls</c> row: a current job's quarantined rows in one topic for one reason.</summary>
internal sealed record QuarantinedJob(long JobId, string ParserName, string ParserVersion, string InputPath, string Topic, string Reason, long Rows, DateTimeOffset At)
{
    /// <summary>The topic prefix the job was queued with ("" none): a replay re-parses the source under it.</summary>
    public string TopicPrefix { get; init; } = "";
}

/// <summary>One version of a topic's schema: its columns JSON, and the job (and parser) that brought it.</summary>
internal sealed record TopicSchemaVersion(string Topic, long Version, string Columns, long JobId, string ParserName, DateTimeOffset CreatedAt);

/// <summary>Turns a completed job's receipt artifacts into the store's quarantine counts and schema versions.</summary>
internal static class ContractRecords
{
    /// <summary>Whether <see cref="Record"/> would write anything for these artifacts.</summary>
    public static bool Needed(IReadOnlyList<Dictionary<string, string>> artifacts)
    {
        foreach (var a in artifacts)
            if (a.ContainsKey("topic") && (a.ContainsKey(OutputArtifact.QuarantineReasonsKey) || a.ContainsKey(OutputArtifact.SchemaKey))) return true;
        return false;
    }

    /// <summary>Records both; returns whether any topic's schema got a new version.</summary>
    public static bool Record(IJobStore store, long jobId, IReadOnlyList<Dictionary<string, string>> artifacts)
    {
        var counts = new List<QuarantineCount>();
        bool changed = false;
        foreach (var a in artifacts)
        {
            if (!a.TryGetValue("topic", out string? topic)) continue;
            if (a.TryGetValue(OutputArtifact.QuarantineReasonsKey, out string? reasons))
                foreach (string part in reasons.Split(',', StringSplitOptions.RemoveEmptyEntries))
                    if (part.Split(':') is [var reason, var n] && long.TryParse(n, System.Globalization.CultureInfo.InvariantCulture, out long rows))
                        counts.Add(new QuarantineCount(topic, reason, rows));
            if (a.TryGetValue(OutputArtifact.SchemaKey, out string? schema)) changed |= store.RecordTopicSchema(topic, schema, jobId);
        }
        if (counts.Count > 0) store.RecordQuarantine(jobId, counts);
        return changed;
    }
}
