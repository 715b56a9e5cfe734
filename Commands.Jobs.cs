// The job and parser commands (SPEC §1): `parser register|ls`, `job add|show|retry|cancel`, `jobs`.
// They open the store directly (through IJobStore), so they work whether or not a sentinel is
// running: the store orders their writes with the sentinel's, and the sentinel notices new jobs and
// cancellations when it next polls. Bad input is found before anything is written.
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Casparian;

internal static partial class Commands
{
    private static readonly Flag ParserFlag = new("--parser", "NAME[@VERSION]", "parser to run (default version: the latest registered)");
    private static readonly Flag PriorityFlag = new("--priority", "N", "higher runs first (default 0)");
    private static readonly Flag ForceFlag = new("--force", null, "queue files even when unchanged since this parser version processed them");
    private static readonly Flag StateFlag = new("--state", "S", "only jobs in state S: queued, running, completed, failed, cancelled");
    private static readonly Flag LimitFlag = new("--limit", "N", "show the N most recent jobs (default 50)");

    // ---- parser ------------------------------------------------------------------------------

    private static readonly Command Register = new("register", "bundle a parser (directory or .py file) and store it",
        "parser register PATH [--db PATH]", Config.Flags(Config.Db), args =>
        {
            string path = args.RequirePositionals(1, 1)[0];
            var storeOptions = StoreFrom(args, create: true);
            // Bundling reads and checks everything before the store is touched.
            var bundle = ParserBundle.Load(path);
            var topics = Topics.Read(bundle.EntrySource, Directory.Exists(path) ? Path.Combine(path, bundle.EntryModule ?? "") : path);
            return WithStore(storeOptions, store =>
            {
                var record = new ParserRecord
                {
                    Name = bundle.Name,
                    Version = bundle.Version,
                    Source = bundle.EntrySource,
                    Lockfile = bundle.LockfileHash is null ? null : bundle.LockfileContent,
                    EnvHash = bundle.EnvHash,
                    SourceHash = bundle.SourceHash,
                    LockfileHash = bundle.LockfileHash,
                    ArtifactHash = bundle.ArtifactHash,
                    Archive = bundle.Archive,
                    EntryModule = bundle.EntryModule,
                    TopicsJson = topics.Count == 0 ? null : Topics.ToJson(topics),
                };
                var result = store.RegisterParser(record);
                switch (result.Outcome)
                {
                    case RegisterOutcome.Created:
                        Console.Out.WriteLine($"registered parser {bundle.Name} {bundle.Version} (id {result.Id}): {bundle.Files.Count} file(s), " +
                            $"{Size(bundle.Archive.Length)} bundle, entry {bundle.EntryModule}, environment {ShortEnv(bundle.EnvHash)}");
                        int outdated = store.OutputsNotFrom(bundle.Name, bundle.Version).Count;
                        if (outdated > 0)
                            Console.Out.WriteLine($"{outdated} source(s) have current output from another version of {bundle.Name}; " +
                                $"'casparian parser backfill {bundle.Name}' queues them for {bundle.Version} (--dry-run lists them)");
                        break;
                    case RegisterOutcome.Unchanged:
                        Console.Out.WriteLine($"parser {bundle.Name} {bundle.Version} is already registered with the same source (id {result.Id}); nothing changed");
                        break;
                    default:
                        throw CliThrow.Input_ParserConflict(bundle.Name, bundle.Version, result.Existing!.SourceHash, bundle.SourceHash, path);
                }
                return 0;
            });
        });

    private static readonly Command Ls = new("ls", "list registered parsers", "parser ls [--db PATH]", Config.Flags(Config.Db), args =>
    {
        args.RequirePositionals(0, 0);
        var storeOptions = StoreFrom(args, create: false) with { ReadOnly = true };
        if (!JobStores.Exists(storeOptions))
        {
            Console.Out.WriteLine($"no parsers registered (no store at {storeOptions.Db}); register one with 'casparian parser register DIR'");
            return 0;
        }
        return WithStore(storeOptions, store =>
        {
            var parsers = store.ListParsers();
            if (parsers.Count == 0)
            {
                Console.Out.WriteLine("no parsers registered; register one with 'casparian parser register DIR'");
                return 0;
            }
            var table = new Table("NAME", "VERSION", "ID", "ENV", "SOURCE", "BUNDLE", "REGISTERED");
            foreach (var p in parsers)
                table.Add(p.Name, p.Version, Num(p.Id), ShortEnv(p.EnvHash), Hashes.Short(p.SourceHash), p.ArchiveBytes == 0 ? "-" : Size(p.ArchiveBytes), Time(p.CreatedAt));
            Console.Out.Write(table.Render());
            return 0;
        });
    });

    private static readonly Command ShowParser = new("show", "show a parser and its effective topic table (its TOPICS with the config's [topics.NAME])",
        "parser show NAME[@VERSION] [--db PATH] [--config FILE]", Config.Flags(Config.Db), args =>
        {
            string spec = args.RequirePositionals(1, 1)[0];
            var (name, version) = ParserSpec("parser show", new Flag("NAME", "NAME[@VERSION]", ""), spec);
            var config = Config.Load(args);
            var overrides = Topics.FromConfig(config.TablesOf(Topics.ConfigTable));
            return WithStore(StoreOptions(config, create: false), store =>
            {
                var p = FindParser(store, name, version);
                var declared = Topics.FromJson(p.TopicsJson, "parser");
                var sb = new StringBuilder($"parser {p.Name} {p.Version} (id {p.Id}), registered {Time(p.CreatedAt)}, entry {p.EntryModule ?? "-"}, environment {ShortEnv(p.EnvHash)}\n");
                var sinks = Topics.Effective(declared, overrides);
                if (sinks.Count == 0) sb.Append("topics: none declared and none configured; each topic goes to OUTPUT/TOPIC, mode append\n");
                else
                {
                    var table = new Table("TOPIC", "SINK", "MODE", "FROM");
                    foreach (var s in sinks)
                        table.Add(s.Topic, s.Uri, s.Mode.ToString().ToLowerInvariant(), Topics.OriginOf(s.Topic, declared, overrides));
                    sb.Append(table.Render());
                    sb.Append("topics not listed go to OUTPUT/TOPIC, mode append\n");
                }
                Console.Out.Write(sb.ToString());
                return 0;
            });
        });

    private static readonly Command ParserGroup = Command.Group("parser", "register, list, show and backfill parsers (register|ls|show|backfill)", Register, Ls, ShowParser, Backfill);

    // ---- job ---------------------------------------------------------------------------------

    private static readonly Command Add = new("add", "queue files (a folder: its files, recursively) for a parser",
        "job add --parser NAME[@VERSION] PATH… [--priority N] [--force] [--db PATH]",
        [ParserFlag, PriorityFlag, ForceFlag, .. Config.Flags(Config.Db)], args =>
        {
            var paths = args.RequirePositionals(1);
            string spec = args.Require(ParserFlag.Name);
            int priority = args.GetInt(PriorityFlag.Name, 0);
            bool force = args.Has(ForceFlag.Name);
            var storeOptions = StoreFrom(args, create: false);
            var (name, version) = ParserSpec("job add", ParserFlag, spec);
            var undecodable = new List<string>();
            paths = ExpandInputs(paths, undecodable);
            foreach (string bad in undecodable)
                Console.Error.WriteLine($"warning: skipped {bad.Replace('\uFFFD', '?')}: its name is not valid UTF-8, so it cannot be queued by name; rename it");

            var stats = Catalog.Stat(paths);

            return WithStore(storeOptions, store =>
            {
                var parser = FindParser(store, name, version);
                var plan = Catalog.Plan(store, parser, stats, force);
                var r = Queue(store, parser, plan.ToQueue, priority, skip: null);
                var sb = new StringBuilder($"queued {r.Queued} job(s) for parser {parser.Name} {parser.Version}");
                if (r.Queued > 0) sb.Append(r.FirstId == r.LastId ? $" (job {r.FirstId})" : $" (jobs {r.FirstId}-{r.LastId})");
                if (plan.NewVersions > 0) sb.Append($"; {plan.NewVersions} new or changed file(s)");
                if (plan.Unchanged.Count > 0)
                {
                    sb.Append($"; skipped {plan.Unchanged.Count} unchanged file(s) this version already processed or has queued (--force queues them anyway):");
                    foreach (string path in plan.Unchanged.Take(SkippedShown)) sb.Append("\n  unchanged: ").Append(path);
                    if (plan.Unchanged.Count > SkippedShown) sb.Append($"\n  … and {plan.Unchanged.Count - SkippedShown} more");
                }
                Console.Out.WriteLine(sb.ToString());
                return 0;
            });
        });

    /// <summary>Skipped files `job add` names one per line; past this, a count.</summary>
    private const int SkippedShown = 20;

    private static readonly Command Show = new("show", "show one job in full", "job show ID [--db PATH]", Config.Flags(Config.Db),
        args => WithJob(args, (_, job) => Describe(job), readOnly: true));

    private static readonly Command Retry = new("retry", "queue a FAILED or CANCELLED job again, or every one in a state (--state)",
        "job retry ID | job retry --state failed|cancelled [--parser NAME[@VERSION]] [--db PATH]", [StateFlag, BulkParserFlag, .. Config.Flags(Config.Db)],
        args => args.Has(StateFlag.Name)
            ? Bulk(args, "queued again", [JobState.Failed, JobState.Cancelled], (store, q) => store.RetryMany(q))
            : WithJob(args, (store, before) =>
            {
                store.Retry(before.Id);
                return $"job {before.Id} queued again (was {before.State.Name()}; retry count reset)\n";
            }));

    private static readonly Command Cancel = new("cancel", "cancel a QUEUED or RUNNING job, or every one in a state (--state)",
        "job cancel ID | job cancel --state queued|running [--parser NAME[@VERSION]] [--db PATH]", [StateFlag, BulkParserFlag, .. Config.Flags(Config.Db)],
        args => args.Has(StateFlag.Name)
            ? Bulk(args, "cancelled", [JobState.Queued, JobState.Running], (store, q) => store.CancelMany(q))
            : WithJob(args, (store, before) =>
            {
                store.Cancel(before.Id);
                string note = before.State == JobState.Running ? $"; the sentinel will tell worker {before.Worker} to abort it" : "";
                return $"job {before.Id} cancelled (was {before.State.Name()}){note}\n";
            }));

    private static readonly Command JobGroup = Command.Group("job", "queue and manage jobs (add|show|retry|cancel)", Add, Show, Retry, Cancel);

    private static readonly Command JobsCommand = new("jobs", "list jobs and counts per state",
        "jobs [--state S] [--parser NAME[@VERSION]] [--since DURATION] [--limit N] [--json] [--db PATH]",
        [StateFlag, BulkParserFlag, SinceFlag, LimitFlag, JsonFlag, .. Config.Flags(Config.Db)], args =>
        {
            args.RequirePositionals(0, 0);
            JobState? state = null;
            if (args.Get(StateFlag.Name) is { } s)
            {
                if (!JobStates.TryParse(s, out var parsed)) throw CliThrow.Usage_BadValue("jobs", StateFlag.Name, s, "one of queued, running, completed, failed, cancelled");
                state = parsed;
            }
            bool json = args.Has(JsonFlag.Name);
            int limit = args.GetInt(LimitFlag.Name, json ? int.MaxValue : 50, min: 1);
            var query = new JobQuery(state, Since: Since(args), Limit: limit);
            if (args.Get(BulkParserFlag.Name) is { } spec)
            {
                var (name, version) = ParserSpec("jobs", BulkParserFlag, spec);
                query = query with { ParserName = name, ParserVersion = version };
            }
            bool filtered = query.ParserName is not null || query.Since is not null;
            var storeOptions = StoreFrom(args, create: false) with { ReadOnly = true };
            if (!JobStores.Exists(storeOptions))
            {
                if (!json) Console.Out.WriteLine($"no jobs (no store at {storeOptions.Db})");
                return 0;
            }
            return WithStore(storeOptions, store =>
            {
                var jobs = filtered || json ? store.Find(query) : store.List(state, limit);
                if (json)
                {
                    PrintJsonLines(jobs);
                    return 0;
                }
                var counts = store.Counts();
                if (jobs.Count == 0) Console.Out.WriteLine(state is null ? "no jobs" : $"no {state.Value.Name()} jobs");
                else
                {
                    var table = new Table("ID", "STATE", "PRI", "RETRIES", "QUARANTINED", "PARSER", "WORKER", "UPDATED", "INPUT");
                    foreach (var j in jobs)
                        table.Add(Num(j.Id), j.State.Name(), Num(j.Priority), Num(j.RetryCount), Quarantined(j) is > 0 and var q ? Num(q) : "-", $"{j.ParserName} {j.ParserVersion}", j.Worker ?? "-",
                            Time(j.FinishedAt ?? j.HeartbeatAt ?? j.ClaimedAt ?? j.CreatedAt), j.InputPath);
                    Console.Out.Write(table.Render());
                }
                long total = counts.Values.Sum();
                Console.Out.WriteLine(string.Join(", ", JobStates.All.Select(st => $"{Num(counts[st])} {st.Name().ToLowerInvariant()}")) + $" ({Num(total)} total)");
                return 0;
            });
        });

    // ---- helpers -----------------------------------------------------------------------------

    private static StoreOptions StoreFrom(Args args, bool create) => StoreOptions(Config.Load(args), create);

    private static int WithStore(StoreOptions options, Func<IJobStore, int> work)
    {
        using var store = JobStores.Open(options);
        return work(store);
    }

    /// <summary>A command on the one job its argument names, which must exist; <paramref name="act"/> returns what to print.</summary>
    private static int WithJob(Args args, Func<IJobStore, JobRecord, string> act, bool readOnly = false)
    {
        long id = JobId(args);
        return WithStore(StoreFrom(args, create: false) with { ReadOnly = readOnly }, store =>
        {
            var job = store.Get(id) ?? throw StoreThrow.Input_NoJob(id, store.Location);
            Console.Out.Write(act(store, job));
            return 0;
        });
    }

    private static long JobId(Args args)
    {
        string text = args.RequirePositionals(1, 1)[0];
        if (!long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long id) || id <= 0)
            throw CliThrow.Usage_BadJobId(args.CommandPath, text);
        return id;
    }

    private static string Describe(JobRecord j)
    {
        var sb = new StringBuilder();
        void Line(string key, string? value)
        {
            if (value is not null) sb.Append("  ").Append((key + ":").PadRight(12)).AppendLine(value);
        }
        sb.AppendLine($"job {j.Id}");
        Line("state", j.State.Name());
        Line("parser", $"{j.ParserName} {j.ParserVersion}");
        Line("input", j.InputPath);
        Line("sha256", j.ContentHash);
        Line("topics as", j.TopicPrefix.Length > 0 ? $"{j.TopicPrefix}TOPIC (the routing rule's prefix)" : null);
        Line("priority", Num(j.Priority));
        Line("retries", Num(j.RetryCount));
        Line("worker", j.Worker);
        Line("created", Time(j.CreatedAt));
        Line("claimed", j.ClaimedAt is { } c ? Time(c) : null);
        Line("heartbeat", j.HeartbeatAt is { } h ? Time(h) : null);
        Line("finished", j.FinishedAt is { } f ? Time(f) : null);
        Line("next try", j.State == JobState.Queued && j.NextAttemptAt is { } n ? Time(n) : null);
        Line("error", j.Error?.ReplaceLineEndings("\n" + new string(' ', 14)));
        Line("quarantine", Quarantined(j) is > 0 and var q ? $"{Num(q)} row(s) (casparian quarantine show {j.Id})" : null);
        if (j.MetricsJson is { } mj && JsonSerializer.Deserialize(mj, StoreJson.Default.DictionaryStringInt64) is { Count: > 0 } metrics)
            Line("metrics", string.Join(" ", metrics.Select(kv => $"{kv.Key}={kv.Value.ToString(CultureInfo.InvariantCulture)}")));
        if (j.ArtifactsJson is { } aj && JsonSerializer.Deserialize(aj, StoreJson.Default.ListDictionaryStringString) is { Count: > 0 } artifacts)
            foreach (var a in artifacts)
                Line("output", a.TryGetValue("topic", out var topic) && a.TryGetValue("uri", out var uri)
                    ? $"{topic} -> {uri}"
                    : string.Join(" ", a.Select(kv => $"{kv.Key}={kv.Value}")));
        return sb.ToString();
    }

    /// <summary>Rows the job's contracts quarantined (its receipt's metrics), 0 when none or unknown.</summary>
    private static long Quarantined(JobRecord j) =>
        j.MetricsJson is { } mj && mj.Contains("\"quarantined\"", StringComparison.Ordinal)
        && JsonSerializer.Deserialize(mj, StoreJson.Default.DictionaryStringInt64) is { } m ? m.GetValueOrDefault("quarantined") : 0;

    private static string Num(long n) => n.ToString(CultureInfo.InvariantCulture);

    private static string Time(DateTimeOffset t) => t.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss'Z'", CultureInfo.InvariantCulture);

    private static string ShortEnv(string envHash) => envHash == Hashes.SystemEnv ? envHash : Hashes.Short(envHash);

    private static string Size(long bytes) => bytes switch
    {
        < 1024 => $"{bytes} B",
        < 1024 * 1024 => (bytes / 1024.0).ToString("0.#", CultureInfo.InvariantCulture) + " KiB",
        _ => (bytes / (1024.0 * 1024)).ToString("0.#", CultureInfo.InvariantCulture) + " MiB",
    };
}
