// The source and rule commands (issue 19): `source add|ls|rm|show`, `rule add|ls|rm|test`, `scan`.
// Like the job commands they work on the store directly, so a running sentinel or `start` picks up a
// change within a few seconds (Sources.Watch.cs reloads them). Sources and rules declared in
// casparian.toml are shown with the file and line that declare them and are edited there.
using System.Globalization;
using System.Text;

namespace Casparian;

internal static partial class Commands
{
    private static readonly Flag RecursiveFlag = new("--recursive", null, "take files in subfolders too");
    private static readonly Flag IgnoreFlag = new("--ignore", "GLOB", "leave out files matching GLOB, relative to DIR (repeatable)");
    private static readonly Flag RulePriorityFlag = new("--priority", "N", "rules with a higher priority are tried first (default 0)");
    private static readonly Flag TopicPrefixFlag = new("--topic-prefix", "P", "write the parser's topics under P+TOPIC for this rule's files (P: lowercase letters, digits, '_'; e.g. crm_ makes orders land as crm_orders)");
    private static readonly Flag RerouteFlag = new("--reroute", null, "route every file by the current rules, also files routed before (their new parser processes them)");

    /// <summary>Files `source show` and `scan` list per group; past this, a count.</summary>
    private const int FilesShown = 50;

    // ---- source ----------------------------------------------------------------------------

    private static readonly Command SourceAdd = new("add", "watch a folder: its files are routed to parsers by the source's rules",
        "source add NAME DIR [--recursive] [--ignore GLOB…] [--db PATH]", [RecursiveFlag, IgnoreFlag, .. Config.Flags(Config.Db)], args =>
        {
            var p = args.RequirePositionals(2, 2);
            string name = p[0];
            Sources.CheckName(name, "source add");
            var ignore = args.GetAll(IgnoreFlag.Name).ToList();
            foreach (string g in ignore) Sources.CheckGlob(g, "source add --ignore");
            string dir = Sources.RealDir(p[1]);
            var config = Config.Load(args);
            var declared = SourceSet.FromConfig(config);
            if (declared.Find(name) is { } d) throw SourceThrow.Input_ConfigSource(name, d.Origin);
            return WithStore(StoreOptions(config, create: true), store =>
            {
                var source = new WatchSource(name, dir, args.Has(RecursiveFlag.Name), ignore);
                if (!store.AddSource(source)) throw SourceThrow.Input_SourceExists(name, store.Location);
                Console.Out.WriteLine($"added source {name}: {dir}{(source.Recursive ? " and its subfolders" : "")}" +
                    (ignore.Count > 0 ? $", ignoring {string.Join(", ", ignore)}" : "") +
                    $"; route its files with 'casparian rule add {name} GLOB PARSER'");
                return 0;
            });
        });

    private static readonly Command SourceLs = new("ls", "list sources, with their rules and unmatched files",
        "source ls [--db PATH]", Config.Flags(Config.Db), args =>
        {
            args.RequirePositionals(0, 0);
            return WithSources(args, (store, set) =>
            {
                if (set.Sources.Count == 0)
                {
                    Console.Out.WriteLine("no sources; add one with 'casparian source add NAME DIR'");
                    return 0;
                }
                var table = new Table("NAME", "RULES", "UNMATCHED", "RECURSIVE", "IGNORE", "FROM", "DIR");
                foreach (var s in set.Sources)
                    table.Add(s.Name, Num(set.RulesOf(s.Name).Count), store is null ? "-" : Num(store.ListUnmatched(s.Name).Count), s.Recursive ? "yes" : "no",
                        s.Ignore.Count == 0 ? "-" : string.Join(",", s.Ignore), s.Origin, s.Dir);
                Console.Out.Write(table.Render());
                return 0;
            });
        });

    private static readonly Command SourceRm = new("rm", "stop watching a source (its rules and unmatched list go with it; queued jobs and output stay)",
        "source rm NAME [--db PATH]", Config.Flags(Config.Db), args =>
        {
            string name = args.RequirePositionals(1, 1)[0];
            var config = Config.Load(args);
            if (SourceSet.FromConfig(config).Find(name) is { } d) throw SourceThrow.Input_ConfigSource(name, d.Origin);
            return WithStore(StoreOptions(config, create: false), store =>
            {
                if (!store.RemoveSource(name)) throw SourceThrow.Input_NoSource(name, store.Location);
                Console.Out.WriteLine($"removed source {name}");
                return 0;
            });
        });

    private static readonly Command SourceShow = new("show", "show a source: its folder, rules and the files no rule matched at its last scan",
        "source show NAME [--db PATH]", Config.Flags(Config.Db), args =>
        {
            string name = args.RequirePositionals(1, 1)[0];
            return WithSources(args, (store, set) =>
            {
                var s = set.Find(name) ?? throw SourceThrow.Input_NoSource(name, store?.Location ?? "the store");
                var sb = new StringBuilder($"source {s.Name} ({s.Origin})\n");
                sb.Append($"  folder:     {s.Dir}{(s.Recursive ? " (and subfolders)" : " (top level only)")}\n");
                if (s.Ignore.Count > 0) sb.Append($"  ignore:     {string.Join(", ", s.Ignore)}\n");
                var rules = set.RulesOf(s.Name);
                if (rules.Count == 0) sb.Append($"  rules:      none; every file is unmatched until 'casparian rule add {s.Name} GLOB PARSER'\n");
                else sb.Append("rules, in the order they are tried:\n").Append(RuleTable(rules).Render());
                var unmatched = store?.ListUnmatched(s.Name) ?? [];
                sb.Append(CultureInfo.InvariantCulture, $"unmatched files (no rule matched them at the last scan): {unmatched.Count}\n");
                foreach (var u in unmatched.Take(FilesShown)) sb.Append("  ").Append(u.Path).Append('\n');
                if (unmatched.Count > FilesShown) sb.Append(CultureInfo.InvariantCulture, $"  … and {unmatched.Count - FilesShown} more\n");
                Console.Out.Write(sb.ToString());
                return 0;
            });
        });

    private static readonly Command SourceGroup = Command.Group("source", "watched folders whose files rules route to parsers (add|ls|rm|show)",
        SourceAdd, SourceLs, SourceRm, SourceShow);

    // ---- rule ------------------------------------------------------------------------------

    private static readonly Command RuleAdd = new("add", "route a source's files matching GLOB (e.g. **/*.csv) to a parser",
        "rule add SOURCE GLOB PARSER[@VERSION] [--priority N] [--topic-prefix P] [--db PATH]", [RulePriorityFlag, TopicPrefixFlag, .. Config.Flags(Config.Db)], args =>
        {
            var p = args.RequirePositionals(3, 3);
            var (sourceName, glob, spec) = (p[0], p[1], p[2]);
            Sources.CheckGlob(glob, "rule add");
            var (name, version) = Sources.ParseParser(spec, "rule add");
            int priority = args.GetInt(RulePriorityFlag.Name, 0, min: -1_000_000, max: 1_000_000);
            string prefix = args.Get(TopicPrefixFlag.Name) ?? "";
            Sources.CheckTopicPrefix(prefix, "rule add --topic-prefix");
            var config = Config.Load(args);
            var declared = SourceSet.FromConfig(config);
            return WithStore(StoreOptions(config, create: false), store =>
            {
                var set = SourceSet.Load(store, declared);
                if (set.Find(sourceName) is null) throw SourceThrow.Input_NoSource(sourceName, store.Location);
                var parser = FindParser(store, name, version);
                long id = store.AddRule(new RoutingRule(0, sourceName, glob, name, version, priority) { TopicPrefix = prefix });
                Console.Out.WriteLine($"added rule {id}: {sourceName} {glob} -> {spec} (now {parser.Name} {parser.Version}), priority {priority}" +
                    (prefix.Length > 0 ? $", topics written as {prefix}TOPIC" : "") + "; " +
                    $"it applies to new and changed files ('casparian scan {sourceName} --reroute' applies it to the others)");
                return 0;
            });
        });

    private static readonly Command RuleLs = new("ls", "list routing rules, in the order each source tries them",
        "rule ls [SOURCE] [--db PATH]", Config.Flags(Config.Db), args =>
        {
            var p = args.RequirePositionals(0, 1);
            return WithSources(args, (_, set) =>
            {
                var rules = set.Sources.Select(s => s.Name).Concat(set.Rules.Select(r => r.Source)).Distinct()
                    .Where(s => p.Count == 0 || s == p[0]).SelectMany(set.RulesOf).ToList();
                if (rules.Count == 0) Console.Out.WriteLine("no rules; add one with 'casparian rule add SOURCE GLOB PARSER'");
                else Console.Out.Write(RuleTable(rules).Render());
                return 0;
            });
        });

    private static readonly Command RuleRm = new("rm", "remove a routing rule (files it routed keep their jobs and output)",
        "rule rm ID [--db PATH]", Config.Flags(Config.Db), args =>
        {
            string text = args.RequirePositionals(1, 1)[0];
            if (!long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long id) || id <= 0)
                throw CliThrow.Usage_BadValue("rule rm", "ID", text, "a rule id as 'casparian rule ls' prints it");
            return WithStore(StoreFrom(args, create: false), store =>
            {
                if (!store.RemoveRule(id)) throw SourceThrow.Input_NoRule(id, store.Location);
                Console.Out.WriteLine($"removed rule {id}");
                return 0;
            });
        });

    private static readonly Command RuleTest = new("test", "show, for each file of a source, the rule and parser it would get",
        "rule test SOURCE [--db PATH]", Config.Flags(Config.Db, Config.ScanFileLimit), args =>
        {
            string name = args.RequirePositionals(1, 1)[0];
            var config = Config.Load(args);
            return WithSources(args, (store, set) =>
            {
                var source = set.Find(name) ?? throw SourceThrow.Input_NoSource(name, store?.Location ?? "the store");
                var rules = set.RulesOf(name);
                var files = new SourceScan(source, ScanSettings(config)).Preview(rules);
                var table = new Table("FILE", "RULE", "GLOB", "PARSER", "PREFIX");
                foreach (var (path, rule, ignored) in files)
                {
                    string parser = rule is null ? (ignored ? "(ignored)" : "(unmatched)")
                        : store?.GetParser(rule.ParserName, rule.ParserVersion) is { } pr ? $"{pr.Name} {pr.Version}" : $"{rule.Parser} (not registered)";
                    table.Add(Text.Rel(path, source.Dir), rule?.Label ?? "-", rule?.Glob ?? "-", parser, rule is { TopicPrefix.Length: > 0 } ? rule.TopicPrefix : "-");
                }
                Console.Out.Write(files.Count == 0 ? $"source {name} has no files in {source.Dir}\n" : table.Render());
                int unmatched = files.Count(f => f.Rule is null && !f.Ignored);
                Console.Out.WriteLine($"{files.Count} file(s): {files.Count - unmatched - files.Count(f => f.Ignored)} routed, {unmatched} unmatched, {files.Count(f => f.Ignored)} ignored");
                return 0;
            });
        });

    private static readonly Command RuleGroup = Command.Group("rule", "routing rules: which parser gets which files of a source (add|ls|rm|test)",
        RuleAdd, RuleLs, RuleRm, RuleTest);

    // ---- scan ------------------------------------------------------------------------------

    private static readonly Command ScanCommand = new("scan", "scan a source once: route its new and changed files and queue them, per rule",
        "scan NAME [--dry-run] [--reroute] [--db PATH]", [DryRunFlag, RerouteFlag, .. Config.Flags(Config.Db, Config.SettleInterval, Config.ScanFileLimit)], args =>
        {
            string name = args.RequirePositionals(1, 1)[0];
            var config = Config.Load(args);
            bool dryRun = args.Has(DryRunFlag.Name);
            var declared = SourceSet.FromConfig(config);
            return WithStore(StoreOptions(config, create: false) with { ReadOnly = dryRun }, store =>
            {
                var set = SourceSet.Load(store, declared);
                var source = set.Find(name) ?? throw SourceThrow.Input_NoSource(name, store.Location);
                var report = new SourceScan(source, ScanSettings(config)).Pass(store, set.RulesOf(name), DateTimeOffset.UtcNow, dryRun, args.Has(RerouteFlag.Name));
                Console.Out.Write(ScanText(report, dryRun, config.Get(Config.SettleInterval)));
                return 0;
            });
        });

    private static string ScanText(ScanReport r, bool dryRun, TimeSpan settle)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        foreach (var m in r.Messages) sb.Append("warning: ").Append(m).Append('\n');
        sb.Append(inv, $"source {r.Source.Name} ({r.Source.Dir}): {r.Files} file(s); {r.Known} unchanged since they were routed, ");
        sb.Append(inv, $"{r.Unmatched.Count} unmatched, {r.Settling.Count} settling, {r.Ignored.Count} ignored{(dryRun ? " (dry run: nothing queued or recorded)" : "")}\n");
        string verb = dryRun ? "would queue" : "queued";
        foreach (var t in r.Rules)
        {
            sb.Append(inv, $"rule {t.Rule.Label} {t.Rule.Glob} -> {t.Parser ?? t.Rule.Parser + " (not registered: its files wait)"}");
            if (t.Rule.TopicPrefix.Length > 0) sb.Append(inv, $" (topics as {t.Rule.TopicPrefix}TOPIC)");
            sb.Append(": ");
            sb.Append(inv, $"{verb} {t.Queued.Count}, {t.Unchanged.Count} with content this version already processed or has queued\n");
            List(sb, t.Queued);
        }
        if (r.Rules.Count == 0) sb.Append(dryRun ? "nothing new or changed would be queued\n" : "nothing new or changed to queue\n");
        if (r.Unmatched.Count > 0)
        {
            sb.Append(inv, $"unmatched (no rule): {r.Unmatched.Count}\n");
            List(sb, r.Unmatched);
        }
        if (r.Settling.Count > 0)
        {
            sb.Append(inv, $"settling (changed within the last {Parsers.FormatDuration(settle)}; a later scan takes them): {r.Settling.Count}\n");
            List(sb, r.Settling);
        }
        return sb.ToString();

        static void List(StringBuilder sb, List<string> files)
        {
            foreach (var f in files.Take(FilesShown)) sb.Append("  ").Append(f).Append('\n');
            if (files.Count > FilesShown) sb.Append(CultureInfo.InvariantCulture, $"  … and {files.Count - FilesShown} more\n");
        }
    }

    // ---- helpers ---------------------------------------------------------------------------

    private static Table RuleTable(IEnumerable<RoutingRule> rules)
    {
        var table = new Table("ID", "SOURCE", "PRIORITY", "GLOB", "PARSER", "PREFIX", "FROM").AlignRight(2);
        foreach (var r in rules) table.Add(r.Id > 0 ? Num(r.Id) : "-", r.Source, Num(r.Priority), r.Glob, r.Parser, r.TopicPrefix.Length > 0 ? r.TopicPrefix : "-", r.Origin);
        return table;
    }

    /// <summary>A read-only look at the sources and rules in effect; the store is null when there is none yet (only the config file's then).</summary>
    private static int WithSources(Args args, Func<IJobStore?, SourceSet, int> work)
    {
        var config = Config.Load(args);
        var declared = SourceSet.FromConfig(config);
        var options = StoreOptions(config, create: false) with { ReadOnly = true };
        if (!JobStores.Exists(options)) return work(null, declared);
        return WithStore(options, store => work(store, SourceSet.Load(store, declared)));
    }

    /// <summary>`casparian config`'s part on sources and rules: each with where it came from.</summary>
    internal static string SourcesText(Config config)
    {
        var declared = SourceSet.FromConfig(config);
        var options = StoreOptions(config, create: false) with { ReadOnly = true };
        SourceSet set = declared;
        if (JobStores.Exists(options))
        {
            using var store = JobStores.Open(options);
            set = SourceSet.Load(store, declared);
        }
        if (set.Sources.Count == 0 && set.Rules.Count == 0) return "";
        var sb = new StringBuilder("\n# sources ([[sources]] in the config file, or 'casparian source add')\n");
        foreach (var s in set.Sources)
            sb.Append($"# {s.Name} = {s.Dir}{(s.Recursive ? " (recursive)" : "")}{(s.Ignore.Count > 0 ? $" ignore {string.Join(",", s.Ignore)}" : "")}  # {s.Origin}\n");
        sb.Append("# rules ([[rules]] in the config file, or 'casparian rule add')\n");
        foreach (var r in set.Rules)
            sb.Append($"# {r.Label}: {r.Source} {r.Glob} -> {r.Parser} priority {r.Priority}{(r.TopicPrefix.Length > 0 ? $" topic_prefix {r.TopicPrefix}" : "")}  # {r.Origin}\n");
        return sb.ToString();
    }
}
