// Sources and routing rules (issue 19) as the store keeps them:
//   watch_sources    one row per source: a name, the folder (its real path, checked at `source add`),
//                    whether subfolders count, and globs to ignore
//   routing_rules    SOURCE GLOB → PARSER[@VERSION], with a priority (higher first; ties: lower id first)
//                    and a topic prefix ("" none) its jobs carry to the worker
//   unmatched_files  per source, the files the last scan found that no rule matched (`source show`)
// Sources and rules may also be declared in casparian.toml ([[sources]], [[rules]]; Sources.Config.cs);
// those are never stored. Nothing here knows about the disk: Sources.cs scans and routes.
namespace Casparian;

/// <summary>
/// A watched folder. <see cref="Dir"/> is absolute, its real path when it was added; <see cref="Ignore"/>
/// are globs relative to it; <see cref="Origin"/> is "store" or the config file and line that declared it.
/// </summary>
internal sealed record WatchSource(string Name, string Dir, bool Recursive, IReadOnlyList<string> Ignore, string Origin = WatchSource.Stored)
{
    public const string Stored = "store";

    public bool Equals(WatchSource? other) =>
        other is not null && Name == other.Name && Dir == other.Dir && Recursive == other.Recursive && Ignore.SequenceEqual(other.Ignore) && Origin == other.Origin;

    public override int GetHashCode() => HashCode.Combine(Name, Dir, Recursive, Origin);
}

/// <summary>
/// A routing rule: files of <see cref="Source"/> matching <see cref="Glob"/> (relative to the source's
/// folder, <c>**/*.csv</c> syntax) go to the parser; <see cref="ParserVersion"/> null means the latest
/// registered. <see cref="Id"/> is the store's (0 for a rule from the config file).
/// </summary>
internal sealed record RoutingRule(long Id, string Source, string Glob, string ParserName, string? ParserVersion, int Priority, string Origin = WatchSource.Stored)
{
    /// <summary>
    /// Put before every topic name the parser writes for the rule's files ("" none): prefix crm_ makes
    /// topic orders land as crm_orders (Sources.CheckTopicPrefix says what a prefix may be).
    /// </summary>
    public string TopicPrefix { get; init; } = "";

    public string Parser => ParserVersion is null ? ParserName : $"{ParserName}@{ParserVersion}";

    /// <summary>How messages and tables name the rule: its id, or where the config file declares it.</summary>
    public string Label => Id > 0 ? Id.ToString(System.Globalization.CultureInfo.InvariantCulture) : Origin;
}

/// <summary>A file the last scan of a source found that no rule matched.</summary>
internal readonly record struct UnmatchedFile(string Path, long Size, DateTimeOffset SeenAt);

internal partial interface IJobStore
{
    // ---- sources and routing rules (Store.Sources.cs) ----
    /// <summary>Stores a source; false (nothing changed) when one of that name exists.</summary>
    bool AddSource(WatchSource source);
    /// <summary>Every stored source, by name.</summary>
    List<WatchSource> ListSources();
    /// <summary>Removes a source with its rules and unmatched files; false when there is none of that name.</summary>
    bool RemoveSource(string name);
    /// <summary>Stores a rule (its <see cref="RoutingRule.Id"/> is ignored); returns the new id.</summary>
    long AddRule(RoutingRule rule);
    /// <summary>Every stored rule, by id.</summary>
    List<RoutingRule> ListRules();
    /// <summary>Removes a rule; false when there is none with that id.</summary>
    bool RemoveRule(long id);
    /// <summary>Replaces the unmatched files of <paramref name="source"/> with <paramref name="files"/> (path, size), in one transaction.</summary>
    void SetUnmatched(string source, IReadOnlyList<(string Path, long Size)> files);
    /// <summary>The unmatched files of <paramref name="source"/>, by path.</summary>
    List<UnmatchedFile> ListUnmatched(string source);
}
