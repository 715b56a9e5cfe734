// Sources and routing rules (issue 19): a source is a watched folder, a rule sends the source's files
// matching a glob to a parser, the first matching rule by priority wins, and a file no rule matches is
// recorded as unmatched (`source show`), never dropped. This file owns the model: which sources and
// rules are in effect (the store's and the config file's [[sources]]/[[rules]]), their validation,
// and routing with Microsoft.Extensions.FileSystemGlobbing. Sources.Scan.cs walks a source and queues
// its files through the catalog; Sources.Watch.cs keeps doing that for `start` and the sentinel.
//
// Security: a source's folder is stored as its real path (symlinks resolved) and checked again before
// every scan; inside it, symlinks are not followed (a symlinked file or folder is skipped), so nothing
// outside the folder is ever queued through a source. A scan considers at most scan_file_limit files.
using Microsoft.Extensions.FileSystemGlobbing;

namespace Casparian;

/// <summary>The sources and rules in effect: the store's and the config file's.</summary>
internal sealed record SourceSet(IReadOnlyList<WatchSource> Sources, IReadOnlyList<RoutingRule> Rules)
{
    public static readonly SourceSet Empty = new([], []);

    public WatchSource? Find(string name) => Sources.FirstOrDefault(s => s.Name == name);

    /// <summary>The rules of <paramref name="source"/> in the order they are tried: higher priority first, then stored ones by id, then the config file's in file order.</summary>
    public List<RoutingRule> RulesOf(string source) =>
        [.. Rules.Where(r => r.Source == source).OrderByDescending(r => r.Priority).ThenBy(r => r.Id == 0).ThenBy(r => r.Id)];

    /// <summary>The store's sources and rules with <paramref name="declared"/> (the config file's) added; a name in both is an error.</summary>
    public static SourceSet Load(IJobStore store, SourceSet declared)
    {
        var stored = store.ListSources();
        foreach (var s in declared.Sources)
            if (stored.Exists(t => t.Name == s.Name)) throw SourceThrow.Input_DeclaredTwice(s.Name, s.Origin, store.Location);
        return new SourceSet([.. stored, .. declared.Sources], [.. store.ListRules(), .. declared.Rules]);
    }

    /// <summary>The config file's <c>[[sources]]</c> and <c>[[rules]]</c>.</summary>
    public static SourceSet FromConfig(Config config)
    {
        var sources = new List<WatchSource>();
        foreach (var t in config.TablesOf(Casparian.Sources.SourcesTable))
        {
            string origin = $"{t.File}:{t.Line}";
            if (!t.ArrayItem || t.Name != Casparian.Sources.SourcesTable) throw SourceThrow.Input_BadTable(origin, t.Name, "[[sources]]");
            string? name = null, dir = null;
            bool recursive = false;
            var ignore = new List<string>();
            foreach (var e in t.Entries)
            {
                switch (e.Key)
                {
                    case "name": name = Text(e, origin); break;
                    case "dir": dir = RealPath.Of(Parsers.ExpandPath(Text(e, origin), Path.GetDirectoryName(t.File)!)); break;
                    case "recursive": recursive = Parsers.Bool(e.Value, "") is (true, var b, _) ? b : throw SourceThrow.Input_BadEntry(origin, e, "true or false"); break;
                    case "ignore": ignore = e.Value.Items?.ToList() ?? throw SourceThrow.Input_BadEntry(origin, e, "an array of globs"); break;
                    default: throw SourceThrow.Input_UnknownKey(origin, e.Key, "name, dir, recursive, ignore");
                }
            }
            if (name is null || dir is null) throw SourceThrow.Input_Missing(origin, "[[sources]]", "name and dir");
            Casparian.Sources.CheckName(name, origin);
            foreach (string g in ignore) Casparian.Sources.CheckGlob(g, origin);
            if (sources.Exists(s => s.Name == name)) throw SourceThrow.Input_DeclaredTwice(name, origin, t.File);
            sources.Add(new WatchSource(name, dir, recursive, ignore, origin));
        }
        var rules = new List<RoutingRule>();
        foreach (var t in config.TablesOf(Casparian.Sources.RulesTable))
        {
            string origin = $"{t.File}:{t.Line}";
            if (!t.ArrayItem || t.Name != Casparian.Sources.RulesTable) throw SourceThrow.Input_BadTable(origin, t.Name, "[[rules]]");
            string? source = null, glob = null, parser = null;
            int priority = 0;
            string prefix = "";
            foreach (var e in t.Entries)
            {
                switch (e.Key)
                {
                    case "source": source = Text(e, origin); break;
                    case "glob": glob = Text(e, origin); break;
                    case "parser": parser = Text(e, origin); break;
                    case "priority": priority = Parsers.Int(-1_000_000, 1_000_000)(e.Value, "") is (true, var p, _) ? p : throw SourceThrow.Input_BadEntry(origin, e, "an integer"); break;
                    case "topic_prefix": prefix = Text(e, origin); break;
                    default: throw SourceThrow.Input_UnknownKey(origin, e.Key, "source, glob, parser, priority, topic_prefix");
                }
            }
            if (source is null || glob is null || parser is null) throw SourceThrow.Input_Missing(origin, "[[rules]]", "source, glob and parser");
            Casparian.Sources.CheckGlob(glob, origin);
            var (name, version) = Casparian.Sources.ParseParser(parser, origin);
            Casparian.Sources.CheckTopicPrefix(prefix, origin);
            rules.Add(new RoutingRule(0, source, glob, name, version, priority, origin) { TopicPrefix = prefix });
        }
        return new SourceSet(sources, rules);
    }

    private static string Text(ConfigEntry e, string origin) =>
        e.Value.Items is null && e.Value.Table is null && e.Value.Text is { } t ? t : throw SourceThrow.Input_BadEntry(origin, e, "a string");
}

internal static class Sources
{
    public const string SourcesTable = "sources";
    public const string RulesTable = "rules";

    public static void CheckName(string name, string where)
    {
        if (!ParserBundle.ValidName().IsMatch(name)) throw SourceThrow.Input_BadName(name, where);
    }

    /// <summary>A glob relative to the source's folder: not empty, not absolute, no "..".</summary>
    public static void CheckGlob(string glob, string where)
    {
        if (glob.Trim().Length == 0 || glob.StartsWith('/') || glob.Split('/').Contains("..") || glob.Contains('\0'))
            throw SourceThrow.Input_BadGlob(glob, where);
    }

    /// <summary>Longest topic prefix: a prefixed name must still fit a topic name (Bridge.MaxTopicLength) with room for the parser's own.</summary>
    public const int MaxTopicPrefix = 64;

    /// <summary>
    /// A topic prefix is a topic-name fragment: "" (none), or [a-z][a-z0-9_]* up to <see cref="MaxTopicPrefix"/>
    /// characters, so prefix + any valid topic is a valid topic (crm_ + orders = crm_orders).
    /// </summary>
    public static bool IsValidTopicPrefix(string prefix) =>
        prefix.Length == 0 || prefix.Length <= MaxTopicPrefix && Bridge.IsValidTopic(prefix);

    public static void CheckTopicPrefix(string prefix, string where)
    {
        if (!IsValidTopicPrefix(prefix)) throw SourceThrow.Input_BadTopicPrefix(prefix, where);
    }

    /// <summary>NAME or NAME@VERSION.</summary>
    public static (string Name, string? Version) ParseParser(string spec, string where)
    {
        int at = spec.IndexOf('@');
        string name = at < 0 ? spec : spec[..at];
        string? version = at < 0 ? null : spec[(at + 1)..];
        if (!ParserBundle.ValidName().IsMatch(name) || version is not null && !ParserBundle.ValidVersion().IsMatch(version))
            throw SourceThrow.Input_BadParser(spec, where);
        return (name, version);
    }

    /// <summary>
    /// The folder a source may be added with: an existing directory, by its real path, so a symlink
    /// changed later cannot move the source elsewhere (each scan checks the real path again).
    /// </summary>
    public static string RealDir(string dir)
    {
        string full = Path.GetFullPath(dir);
        if (!Directory.Exists(full)) throw SourceThrow.Input_NoFolder(full);
        return RealPath.Of(full);
    }

    /// <summary>
    /// Routes files (paths relative to the source's folder, '/'-separated) by <paramref name="rules"/>
    /// in order: each file gets the first rule whose glob matches, or none. One glob match per rule over
    /// all the files at once, so routing 100k files costs a few passes over an in-memory tree.
    /// </summary>
    public static RoutingRule?[] Route(IReadOnlyList<RoutingRule> rules, IReadOnlyList<string> relative)
    {
        var routed = new RoutingRule?[relative.Count];
        if (relative.Count == 0 || rules.Count == 0) return routed;
        var index = new Dictionary<string, int>(relative.Count, StringComparer.Ordinal);
        for (int i = 0; i < relative.Count; i++) index[relative[i]] = i;
        int left = relative.Count;
        foreach (var rule in rules)
        {
            foreach (string match in Matches([rule.Glob], relative))
                if (index.TryGetValue(match, out int i) && routed[i] is null)
                {
                    routed[i] = rule;
                    left--;
                }
            if (left == 0) break;
        }
        return routed;
    }

    /// <summary>The ones of <paramref name="relative"/> that any of <paramref name="globs"/> matches.</summary>
    public static IEnumerable<string> Matches(IReadOnlyList<string> globs, IReadOnlyList<string> relative)
    {
        if (globs.Count == 0 || relative.Count == 0) return [];
        var matcher = new Matcher(StringComparison.Ordinal);
        foreach (string g in globs) matcher.AddInclude(g);
        // An in-memory tree under a root no file is really under: only the relative paths matter.
        const string Root = "/casparian-source";
        return matcher.Match(Root, relative.Select(r => Root + "/" + r)).Files.Select(f => f.Path);
    }
}

internal static class SourceThrow
{
    public static InputException Input_BadName(string name, string where) =>
        new($"{where}: source name '{name}' is invalid; a name starts with a letter or '_' and has letters, digits, '_', '.', '-'");
    public static InputException Input_BadGlob(string glob, string where) =>
        new($"{where}: glob '{glob}' is invalid; write it relative to the source's folder (e.g. **/*.csv), without a leading '/' or '..'");
    public static InputException Input_BadParser(string spec, string where) =>
        new($"{where}: parser '{spec}' is invalid; expected NAME or NAME@VERSION");
    public static InputException Input_BadTopicPrefix(string prefix, string where) =>
        new($"{where}: topic prefix '{prefix}' is invalid; a prefix is the start of a topic name: a lowercase letter, then lowercase letters, digits or '_' (at most {Sources.MaxTopicPrefix} characters), e.g. crm_");
    public static InputException Input_NoFolder(string dir) =>
        new($"source folder {dir} does not exist or is not a folder; create it first");
    public static InputException Input_NoSource(string name, string location) =>
        new($"no source named '{name}' in {location} or the config file (see 'casparian source ls')");
    public static InputException Input_SourceExists(string name, string location) =>
        new($"a source named '{name}' exists already in {location}; remove it first ('casparian source rm {name}') or pick another name");
    public static InputException Input_DeclaredTwice(string name, string origin, string other) =>
        new($"{origin}: source '{name}' is declared again (also in {other}); give each source one name");
    public static InputException Input_ConfigSource(string name, string origin) =>
        new($"source '{name}' is declared in the config file ({origin}); edit or remove it there");
    public static InputException Input_NoRule(long id, string location) =>
        new($"no rule {id} in {location} (see 'casparian rule ls'); rules from the config file are edited there");
    public static InputException Input_BadTable(string origin, string name, string expected) =>
        new($"{origin}: [{name}] is not a sources or rules table; write {expected} entries");
    public static InputException Input_BadEntry(string origin, ConfigEntry e, string expected) =>
        new($"{origin}: bad value {e.Value} for '{e.Key}' (line {e.Line}): expected {expected}");
    public static InputException Input_UnknownKey(string origin, string key, string known) =>
        new($"{origin}: unknown key '{key}'; known keys: {known}");
    public static InputException Input_Missing(string origin, string table, string what) =>
        new($"{origin}: a {table} entry needs {what}");
    public static InputException Input_Moved(string name, string dir, string real) =>
        new($"source '{name}': its folder {dir} now resolves to {real} (a symlink changed?); not scanned. Remove the source and add the real folder if that is intended");
}
