// The file catalog (issue 13): what the store knows of each source file and of the output made from it.
//   sources          one row per source path (as queued: absolute): its current content hash, size, mtime
//   source_versions  a row each time a path's content hash changes (triggers on sources keep it)
//   outputs          per (parser name, source path): the job whose output is current, with the parser
//                    version and content hash it parsed and its artifacts (topic → file)
// `job add` reads the catalog to skip unchanged files without hashing them (same size and mtime as
// recorded → same content); Complete makes the concluding job the current output of its (parser,
// source) in the same transaction that marks it COMPLETED; `parser backfill` lists sources whose
// current output came from another version of the parser.
namespace Casparian;

/// <summary>A source file as <c>job add</c> found it on disk: its path (absolute, as queued), size and mtime (Unix microseconds: a millisecond is too coarse to see an edit).</summary>
internal readonly record struct SourceStat(string Path, long Size, long MtimeUs);

/// <summary>A source file with the content hash to record for it.</summary>
internal readonly record struct SourceObservation(SourceStat Stat, string ContentHash);

/// <summary>
/// What the catalog knows of one source for one parser: its recorded content (hash, size, mtime; size
/// and mtime are -1 when a worker's parsed hash replaced what <c>job add</c> saw), how many versions
/// it has had, the parser's current output for it (null: none yet), and whether a job of the asked
/// parser version and topic prefix for the recorded content is QUEUED or RUNNING. <see cref="Pending"/>
/// is only looked for when the current output is not already from the asked version, prefix and the
/// recorded content (then the file is done whatever is pending, and a store may report false: the probe
/// costs a jobs row per path).
/// </summary>
internal sealed record CatalogEntry(string Path, string ContentHash, long Size, long MtimeUs, long Versions, CurrentOutput? Output, bool Pending);

/// <summary>The current output of a parser for a source: the job that made it, from which version and content, and its artifacts (JSON, as the receipt gave them).</summary>
internal sealed record CurrentOutput(string ParserName, string SourcePath, long JobId, string ParserVersion, string ContentHash, string? ArtifactsJson)
{
    /// <summary>The topic prefix the job that made it was queued with ("" none): a reroute under another prefix is new output.</summary>
    public string TopicPrefix { get; init; } = "";

    /// <summary>The artifacts' file uris (with their quarantine files, issue 14), for DISPATCH's supersede list.</summary>
    public List<string> Uris()
    {
        if (ArtifactsJson is null) return [];
        var list = System.Text.Json.JsonSerializer.Deserialize(ArtifactsJson, StoreJson.Default.ListDictionaryStringString) ?? [];
        return [.. list.SelectMany(a => new[] { a.GetValueOrDefault("uri"), a.GetValueOrDefault(OutputArtifact.QuarantineUriKey) }).OfType<string>()];
    }
}

/// <summary>One version of a source's content.</summary>
internal readonly record struct SourceVersion(long Id, string ContentHash, long Size, DateTimeOffset SeenAt);

/// <summary>A filter over jobs for the bulk commands and <c>jobs --parser --since</c>: every field that is set must match.</summary>
internal readonly record struct JobQuery(JobState? State = null, string? ParserName = null, string? ParserVersion = null, DateTimeOffset? Since = null, int Limit = int.MaxValue);
