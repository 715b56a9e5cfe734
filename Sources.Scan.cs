// One source, scanned pass by pass. A pass lists the folder (one directory walk: size and mtime come
// with each entry, no extra stat), and only files that are new or whose size or mtime changed since
// the last pass go further, so a rescan of 100k unchanged files costs the walk and a dictionary probe
// each. A new or changed file is taken once it has settled: its size and mtime unchanged for the
// settle interval (or its mtime already that old), which lets a file still being copied in finish.
// A settled file the catalog already holds with the same size and mtime was routed before (by an
// earlier session, or `job add`) and is left alone: routing changes apply to new and changed files;
// `scan --reroute` applies them to every file, explicitly. The others are routed by the rules and
// planned through the catalog (Catalog.Plan: unchanged content skipped, changed content queued and
// superseding), and a file no rule matches is recorded as unmatched.
using System.IO.Enumeration;

namespace Casparian;

/// <summary>How a scan waits and how much it takes on.</summary>
internal sealed record ScanSettings
{
    /// <summary>A new or changed file is queued once its size and mtime have not changed for this long.</summary>
    public required TimeSpan Settle { get; init; }
    /// <summary>Files a pass considers per source; past this the rest wait (and a warning says so).</summary>
    public required int FileLimit { get; init; }
}

/// <summary>What one rule got in a pass: files queued (or, in a dry run, that would be), and files whose content its parser already processed.</summary>
internal sealed class RuleTally(RoutingRule rule)
{
    public RoutingRule Rule { get; } = rule;
    /// <summary>"NAME VERSION" of the parser the rule resolved to, or null when it is not registered.</summary>
    public string? Parser { get; set; }
    public List<string> Queued { get; } = [];
    public List<string> Unchanged { get; } = [];
    public List<string> Waiting { get; } = [];
}

/// <summary>What one pass over a source saw and did.</summary>
internal sealed class ScanReport(WatchSource source)
{
    public WatchSource Source { get; } = source;
    public int Files { get; set; }
    public bool Capped { get; set; }
    /// <summary>Files left alone: unchanged since they were routed (this session or, by the catalog, before).</summary>
    public int Known { get; set; }
    public List<string> Settling { get; } = [];
    public List<string> Ignored { get; } = [];
    /// <summary>Every file of the source no rule matches now.</summary>
    public List<string> Unmatched { get; } = [];
    /// <summary>How many of <see cref="Unmatched"/> this pass found (new, changed, or after a rule change).</summary>
    public int NewlyUnmatched { get; set; }
    public List<RuleTally> Rules { get; } = [];
    public List<string> Messages { get; } = [];
}

internal sealed class SourceScan(WatchSource source, ScanSettings settings)
{
    private enum Outcome { Settling, Done, Unmatched, Ignored, Waiting }

    private sealed class Entry(long size, long mtimeUs, long firstSeenMs)
    {
        public long Size = size, MtimeUs = mtimeUs, FirstSeenMs = firstSeenMs;
        public Outcome Outcome = Outcome.Settling;
        /// <summary>The last pass that found the file: an entry a pass did not stamp is a deleted file.</summary>
        public long Pass;
    }

    private long _pass;

    private readonly Dictionary<string, Entry> _files = new(StringComparer.Ordinal);
    private List<RoutingRule>? _rules;
    private List<string>? _unmatchedWritten;

    public WatchSource Source => source;

    /// <summary>No file is waiting to settle.</summary>
    public bool Idle { get; private set; } = true;

    /// <summary>
    /// One pass. <paramref name="dryRun"/>: nothing is queued or recorded. <paramref name="waitToSettle"/>
    /// false (a one-off `scan`): a file whose mtime is younger than the settle interval is reported as
    /// settling instead of being watched. <paramref name="reroute"/>: files routed before are routed again.
    /// </summary>
    public ScanReport Pass(IJobStore store, IReadOnlyList<RoutingRule> rules, DateTimeOffset now, bool dryRun = false, bool reroute = false)
    {
        var report = new ScanReport(source);
        if (_rules is not null && !_rules.SequenceEqual(rules))
        {
            // New rules apply to every file not yet routed to a parser.
            foreach (var gone in _files.Where(f => f.Value.Outcome is Outcome.Unmatched or Outcome.Waiting).Select(f => f.Key).ToList()) _files.Remove(gone);
        }
        _rules = [.. rules];
        string real = RealPath.Of(source.Dir);
        if (real != Path.TrimEndingDirectorySeparator(source.Dir))
        {
            report.Messages.Add(SourceThrow.Input_Moved(source.Name, source.Dir, real).Message);
            return report;
        }
        List<Listed> listing;
        try
        {
            listing = List(out bool capped);
            report.Capped = capped;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            report.Messages.Add($"source '{source.Name}': cannot read {source.Dir}: {e.Message}");
            return report;
        }
        report.Files = listing.Count;
        if (report.Capped)
            report.Messages.Add($"source '{source.Name}' has more than {settings.FileLimit} files; this pass took the first {settings.FileLimit} it found (raise scan_file_limit to take more)");

        long nowMs = now.ToUnixTimeMilliseconds();
        long settleMs = (long)settings.Settle.TotalMilliseconds;
        long pass = ++_pass;
        var candidates = new List<(string Path, long Size, long MtimeUs)>();
        foreach (var file in listing)
        {
            var entry = file.Known;
            if (entry is not null) entry.Pass = pass;
            if (entry is not null && entry.Size == file.Size && entry.MtimeUs == file.MtimeUs)
            {
                switch (entry.Outcome)
                {
                    case Outcome.Done: report.Known++; continue;
                    case Outcome.Ignored: report.Ignored.Add(file.Path); continue;
                    case Outcome.Unmatched: report.Unmatched.Add(file.Path); continue;
                }
            }
            else
            {
                entry = new Entry(file.Size, file.MtimeUs, nowMs) { Pass = pass };
                _files[file.Path] = entry;
            }
            bool settled = nowMs - entry.FirstSeenMs >= settleMs || nowMs - file.MtimeUs / 1000 >= settleMs;
            if (!settled) report.Settling.Add(file.Path);
            else candidates.Add((file.Path, file.Size, file.MtimeUs));
        }
        if (_files.Count > listing.Count)
            foreach (var gone in _files.Where(f => f.Value.Pass != pass).Select(f => f.Key).ToList()) _files.Remove(gone);

        // The walk's order is the file system's; what is queued and reported goes by path.
        candidates.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        if (candidates.Count > 0) Route(store, candidates, report, dryRun, reroute);

        report.Unmatched.Sort(StringComparer.Ordinal);
        report.Settling.Sort(StringComparer.Ordinal);
        report.Ignored.Sort(StringComparer.Ordinal);
        if (!dryRun && (_unmatchedWritten is null || !_unmatchedWritten.SequenceEqual(report.Unmatched)))
        {
            var sizes = report.Unmatched.Select(p => (p, _files[p].Size)).ToList();
            store.SetUnmatched(source.Name, sizes);
            _unmatchedWritten = [.. report.Unmatched];
        }
        Idle = report.Settling.Count == 0;
        return report;
    }

    /// <summary>`rule test`: every file of the source with the rule it would get (null: none), and whether an ignore glob leaves it out.</summary>
    public List<(string Path, RoutingRule? Rule, bool Ignored)> Preview(IReadOnlyList<RoutingRule> rules)
    {
        var listing = List(out _);
        listing.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        var relative = listing.Select(f => Relative(f.Path)).ToList();
        var ignored = new HashSet<string>(Sources.Matches(source.Ignore, relative), StringComparer.Ordinal);
        var routed = Sources.Route(rules, relative);
        return [.. listing.Select((f, i) => (f.Path, ignored.Contains(relative[i]) ? null : routed[i], ignored.Contains(relative[i])))];
    }

    private void Route(IJobStore store, List<(string Path, long Size, long MtimeUs)> candidates, ScanReport report, bool dryRun, bool reroute)
    {
        // Relative paths are only made for the globs that need them: ignore globs (all candidates) and rules (those left).
        var ignored = source.Ignore.Count == 0 ? null
            : new HashSet<string>(Sources.Matches(source.Ignore, [.. candidates.Select(c => Relative(c.Path))]), StringComparer.Ordinal);
        // Routed before: the catalog holds the path with this size and mtime (whatever parser). Many
        // candidates (a first pass, a dry run): one range read of the catalog under the folder; a few
        // (a watcher's new files): a lookup of just those.
        var known = reroute ? [] : Known(store, candidates);
        var toRoute = new List<int>();
        for (int i = 0; i < candidates.Count; i++)
        {
            var (path, size, mtime) = candidates[i];
            if (ignored is not null && ignored.Contains(Relative(path)))
            {
                _files[path].Outcome = Outcome.Ignored;
                report.Ignored.Add(path);
            }
            else if (known.TryGetValue(path, out var entry) && entry.Size == size && entry.MtimeUs == mtime)
            {
                _files[path].Outcome = Outcome.Done;
                report.Known++;
            }
            else toRoute.Add(i);
        }
        var routed = Sources.Route(_rules!, [.. toRoute.Select(i => Relative(candidates[i].Path))]);
        var byRule = new Dictionary<RoutingRule, List<SourceStat>>(ReferenceEqualityComparer.Instance);
        for (int k = 0; k < toRoute.Count; k++)
        {
            var (path, size, mtime) = candidates[toRoute[k]];
            if (routed[k] is not { } rule)
            {
                _files[path].Outcome = Outcome.Unmatched;
                report.Unmatched.Add(path);
                report.NewlyUnmatched++;
                continue;
            }
            if (!byRule.TryGetValue(rule, out var list)) byRule[rule] = list = [];
            list.Add(new SourceStat(path, size, mtime));
        }
        foreach (var rule in _rules!)
        {
            if (!byRule.TryGetValue(rule, out var files)) continue;
            var tally = new RuleTally(rule);
            report.Rules.Add(tally);
            var parser = store.GetParser(rule.ParserName, rule.ParserVersion);
            if (parser is null)
            {
                foreach (var f in files)
                {
                    _files[f.Path].Outcome = Outcome.Waiting;
                    tally.Waiting.Add(f.Path);
                }
                report.Messages.Add($"source '{source.Name}': rule {rule.Label} ({rule.Glob}) names parser {rule.Parser}, which is not registered; " +
                    $"its {files.Count} file(s) wait for it ('casparian parser register DIR')");
                continue;
            }
            tally.Parser = $"{parser.Name} {parser.Version}";
            foreach (var (f, plan) in Plans(store, parser, rule.TopicPrefix, files, dryRun, report))
            {
                if (!dryRun && plan.ToQueue.Count > 0) Commands.Queue(store, parser, plan.ToQueue, priority: 0, skip: null, rule.TopicPrefix);
                tally.Queued.AddRange(plan.ToQueue.Select(q => q.Path));
                tally.Unchanged.AddRange(plan.Unchanged);
                foreach (var s in f) _files[s.Path].Outcome = Outcome.Done;
            }
        }
    }

    /// <summary>
    /// The catalog's plan for <paramref name="files"/>, in one piece; a file that cannot be read (gone,
    /// no permission) fails only itself: it is forgotten, so the next pass tries it again.
    /// </summary>
    private IEnumerable<(List<SourceStat> Files, SourcePlan Plan)> Plans(IJobStore store, ParserRecord parser, string prefix, List<SourceStat> files, bool dryRun, ScanReport report)
    {
        SourcePlan? whole = null;
        try
        {
            whole = Catalog.Plan(store, parser, files, force: false, record: !dryRun, prefix);
        }
        catch (InputException)
        {
        }
        if (whole is not null)
        {
            yield return (files, whole);
            yield break;
        }
        foreach (var file in files)
        {
            SourcePlan? one = null;
            try
            {
                one = Catalog.Plan(store, parser, [file], force: false, record: !dryRun, prefix);
            }
            catch (InputException e)
            {
                _files.Remove(file.Path);
                report.Messages.Add($"source '{source.Name}': skipping {file.Path} for now: {e.Message}");
            }
            if (one is not null) yield return ([file], one);
        }
    }

    /// <summary>Candidates past which <see cref="Known"/> reads the catalog's whole range under the folder instead of looking each up.</summary>
    private const int BulkCatalogRead = 1024;

    private Dictionary<string, (long Size, long MtimeUs)> Known(IJobStore store, List<(string Path, long Size, long MtimeUs)> candidates)
    {
        if (candidates.Count >= BulkCatalogRead) return store.SourceStatsUnder(source.Dir);
        var known = new Dictionary<string, (long, long)>(StringComparer.Ordinal);
        foreach (var (path, e) in store.LookupSources("", "", [.. candidates.Select(c => c.Path)], "")) known[path] = (e.Size, e.MtimeUs);
        return known;
    }

    /// <summary>A path of the walk (always under the folder) relative to it, '/'-separated.</summary>
    private string Relative(string path) =>
        path.Length > _dir.Length && path.StartsWith(_dir, StringComparison.Ordinal) && path[_dir.Length] == '/'
            ? path[(_dir.Length + 1)..]
            : Path.GetRelativePath(source.Dir, path).Replace(Path.DirectorySeparatorChar, '/');

    private readonly string _dir = Path.TrimEndingDirectorySeparator(source.Dir);

    /// <summary>A file as the walk found it, with the entry of the last pass when the path had one.</summary>
    private readonly record struct Listed(string Path, long Size, long MtimeUs, Entry? Known);

    /// <summary>
    /// The source's files in the walk's order: hidden entries and symlinks skipped, subfolders only when
    /// recursive, at most the file limit (the first found). One stat per file (the entry's size and
    /// mtime). A path the last pass saw is found by its characters in the walk's buffer, so an unchanged
    /// file costs no string: the last pass's key is reused.
    /// </summary>
    private List<Listed> List(out bool capped)
    {
        var options = new EnumerationOptions
        {
            RecurseSubdirectories = source.Recursive,
            IgnoreInaccessible = true,
            // Symlinks are never followed: a link could lead out of the source's folder.
            AttributesToSkip = FileAttributes.Hidden | FileAttributes.System | FileAttributes.ReparsePoint,
        };
        var seen = _files.GetAlternateLookup<ReadOnlySpan<char>>();
        char[] buffer = new char[1024];
        var walk = new FileSystemEnumerable<Listed>(source.Dir, (ref FileSystemEntry e) =>
        {
            long size = e.Length, mtime = Catalog.MtimeUs(e.LastWriteTimeUtc.UtcDateTime);
            int length = e.Directory.Length + 1 + e.FileName.Length;
            if (length > buffer.Length) buffer = new char[Math.Max(length, buffer.Length * 2)];
            e.Directory.CopyTo(buffer);
            buffer[e.Directory.Length] = Path.DirectorySeparatorChar;
            e.FileName.CopyTo(buffer.AsSpan(e.Directory.Length + 1));
            var path = buffer.AsSpan(0, length);
            return seen.TryGetValue(path, out string? key, out var entry) ? new Listed(key, size, mtime, entry) : new Listed(path.ToString(), size, mtime, null);
        }, options)
        {
            ShouldIncludePredicate = (ref FileSystemEntry e) => !e.IsDirectory,
        };
        var list = new List<Listed>(_files.Count > 0 ? _files.Count : 16);
        capped = false;
        foreach (var f in walk)
        {
            // A name that is not valid UTF-8 cannot be opened by the name .NET decodes; it stays out.
            if (f.Known is null && f.Path.Contains('\uFFFD')) continue;
            if (list.Count == settings.FileLimit)
            {
                capped = true;
                break;
            }
            list.Add(f);
        }
        return list;
    }
}
