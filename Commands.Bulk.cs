// Commands over many jobs or sources at once (issue 13): `job retry --state`, `job cancel --state`,
// `jobs --parser --since --json`, and `parser backfill`. Each prints what it touched.
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Casparian;

internal static partial class Commands
{
    private static readonly Flag BulkParserFlag = new("--parser", "NAME[@VERSION]", "only jobs of this parser (and version)");
    private static readonly Flag SinceFlag = new("--since", "DURATION", "only jobs queued in the last DURATION (30m, 1h, 2d is 48h)");
    private static readonly Flag JsonFlag = new("--json", null, "one JSON object per job and line, for scripts (no counts line)");
    private static readonly Flag DryRunFlag = new("--dry-run", null, "say what would be queued, queue nothing");

    /// <summary>`job retry|cancel --state S [--parser P]`: every matching job; <paramref name="allowed"/> are the states the action applies to.</summary>
    private static int Bulk(Args args, string action, JobState[] allowed, Func<IJobStore, JobQuery, List<long>> act)
    {
        args.RequirePositionals(0, 0);
        string text = args.Require(StateFlag.Name);
        if (!JobStates.TryParse(text, out var state) || !allowed.Contains(state))
            throw CliThrow.Usage_BadValue(args.CommandPath, StateFlag.Name, text, string.Join(" or ", allowed.Select(s => s.Name().ToLowerInvariant())));
        var query = new JobQuery(state);
        if (args.Get(BulkParserFlag.Name) is { } spec)
        {
            var (name, version) = ParserSpec(args.CommandPath, BulkParserFlag, spec);
            query = query with { ParserName = name, ParserVersion = version };
        }
        return WithStore(StoreFrom(args, create: false), store =>
        {
            var ids = act(store, query);
            string which = query.ParserName is null ? "" : $" of parser {args.Get(BulkParserFlag.Name)}";
            Console.Out.WriteLine(ids.Count == 0
                ? $"no {state.Name()} jobs{which}; nothing {action}"
                : $"{action} {ids.Count} {state.Name()} job(s){which}: {IdRanges(ids)}");
            return 0;
        });
    }

    /// <summary>"1-3, 7, 9-10": sorted ids as ranges, so a thousand consecutive jobs print as one.</summary>
    internal static string IdRanges(IReadOnlyList<long> sorted)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < sorted.Count;)
        {
            int j = i;
            while (j + 1 < sorted.Count && sorted[j + 1] == sorted[j] + 1) j++;
            if (sb.Length > 0) sb.Append(", ");
            sb.Append(sorted[i].ToString(CultureInfo.InvariantCulture));
            if (j > i) sb.Append('-').Append(sorted[j].ToString(CultureInfo.InvariantCulture));
            i = j + 1;
        }
        return sb.ToString();
    }

    /// <summary>--since: a duration back from now (30s, 5m, 1h, or d for days).</summary>
    private static DateTimeOffset? Since(Args args)
    {
        if (args.Get(SinceFlag.Name) is not { } text) return null;
        string t = text.Trim();
        bool days = t.EndsWith('d');
        var (ok, span, expected) = Parsers.Duration(new ConfigValue(days ? t[..^1] + "h" : t), "");
        if (!ok) throw CliThrow.Usage_BadValue(args.CommandPath, SinceFlag.Name, text, expected.Replace("2h)", "2h, 3d)", StringComparison.Ordinal));
        return DateTimeOffset.UtcNow - (days ? span * 24 : span);
    }

    private static void WriteJsonLine(Utf8JsonWriter w, JobRecord j)
    {
        static string Iso(DateTimeOffset t) => t.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture);
        w.WriteStartObject();
        w.WriteNumber("id", j.Id);
        w.WriteString("state", j.State.Name());
        w.WriteString("parser", j.ParserName);
        w.WriteString("version", j.ParserVersion);
        w.WriteString("input", j.InputPath);
        w.WriteString("content_hash", j.ContentHash);
        w.WriteNumber("priority", j.Priority);
        w.WriteNumber("retries", j.RetryCount);
        if (j.Worker is { } worker) w.WriteString("worker", worker); else w.WriteNull("worker");
        w.WriteString("created_at", Iso(j.CreatedAt));
        if (j.FinishedAt is { } f) w.WriteString("finished_at", Iso(f)); else w.WriteNull("finished_at");
        if (j.Error is { } e) w.WriteString("error", e); else w.WriteNull("error");
        w.WriteEndObject();
    }

    private static void PrintJsonLines(IEnumerable<JobRecord> jobs)
    {
        using var stdout = Console.OpenStandardOutput();
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        foreach (var j in jobs)
        {
            using (var w = new Utf8JsonWriter(buffer)) WriteJsonLine(w, j);
            System.Buffers.BuffersExtensions.Write(buffer, "\n"u8);
            if (buffer.WrittenCount > 1 << 16)
            {
                stdout.Write(buffer.WrittenSpan);
                buffer.Clear();
            }
        }
        stdout.Write(buffer.WrittenSpan);
    }

    // ---- parser backfill ------------------------------------------------------------------------

    private static readonly Command Backfill = new("backfill",
        "queue every source whose current output came from another version of the parser",
        "parser backfill NAME[@VERSION] [--dry-run] [--priority N] [--db PATH]",
        [DryRunFlag, PriorityFlag, .. Config.Flags(Config.Db)], args =>
        {
            string spec = args.RequirePositionals(1, 1)[0];
            bool dryRun = args.Has(DryRunFlag.Name);
            int priority = args.GetInt(PriorityFlag.Name, 0);
            var (name, version) = ParserSpec("parser backfill", new Flag("NAME", "NAME[@VERSION]", ""), spec);
            return WithStore(StoreFrom(args, create: false), store =>
            {
                var parser = FindParser(store, name, version);
                var plan = BackfillPlan(store, parser);
                string what = $"source(s) whose current output of {parser.Name} came from another version";
                if (dryRun)
                {
                    Console.Out.WriteLine($"would queue {plan.ToQueue.Count} {what} for {parser.Name} {parser.Version}" + Pending(plan.Pending) + " (dry run: nothing queued)");
                    foreach (var (path, _, _) in plan.ToQueue.Take(SkippedShown)) Console.Out.WriteLine($"  {path}");
                    if (plan.ToQueue.Count > SkippedShown) Console.Out.WriteLine($"  … and {plan.ToQueue.Count - SkippedShown} more");
                    return 0;
                }
                var r = QueueUnderPrefixes(store, parser, plan.ToQueue, priority);
                var sb = new StringBuilder($"queued {r.Queued} {what} for {parser.Name} {parser.Version}");
                if (r.Queued > 0) sb.Append(r.FirstId == r.LastId ? $" (job {r.FirstId})" : $" (jobs {r.FirstId}-{r.LastId})");
                Console.Out.WriteLine(sb.Append(Pending(plan.Pending)).ToString());
                return 0;
            });
        });

    private static string Pending(int n) => n > 0 ? $"; {n} more already queued or running for this version" : "";

    /// <summary>
    /// The sources a backfill to <paramref name="parser"/> queues (with the catalog's hash and the topic
    /// prefix of their current output), by path, and how many already have a job of that version pending.
    /// </summary>
    /// <remarks>
    /// A source routed under a topic prefix (issue 19) is re-parsed under the same prefix: its new rows
    /// land in the topics the old ones are in, and supersede them there. A job of the version pending
    /// under that prefix settles the source.
    /// </remarks>
    internal static (List<(string Path, string Hash, string Prefix)> ToQueue, int Pending) BackfillPlan(IJobStore store, ParserRecord parser)
    {
        var outdated = store.OutputsNotFrom(parser.Name, parser.Version);
        var queue = new List<(string Path, string, string)>(outdated.Count);
        int pending = 0;
        foreach (var byPrefix in outdated.GroupBy(o => o.TopicPrefix))
        {
            var known = store.LookupSources(parser.Name, parser.Version, [.. byPrefix.Select(o => o.SourcePath)], byPrefix.Key);
            foreach (var o in byPrefix)
            {
                var entry = known.GetValueOrDefault(o.SourcePath);
                if (entry?.Pending == true) { pending++; continue; }
                queue.Add((o.SourcePath, entry?.ContentHash ?? o.ContentHash, byPrefix.Key));
            }
        }
        queue.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        return (queue, pending);
    }
}
