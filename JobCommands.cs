// The job and parser commands (SPEC §1): `parser register|ls`, `job add|show|retry|cancel`, `jobs`.
// They open the store file directly, so they work whether or not a sentinel is running: SQLite's
// locking orders their writes with the sentinel's, and the sentinel notices new jobs and
// cancellations when it next polls the store. Bad input is found before anything is written.
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace Casparian;

internal static class JobCommands
{
    private static readonly Flag ParserFlag = new("--parser", "NAME[@VERSION]", "parser to run (default version: the latest registered)");
    private static readonly Flag PriorityFlag = new("--priority", "N", "higher runs first (default 0)");
    private static readonly Flag ForceFlag = new("--force", null, "queue files this parser version already completed");
    private static readonly Flag StateFlag = new("--state", "S", "only jobs in state S: queued, running, completed, failed, cancelled");
    private static readonly Flag LimitFlag = new("--limit", "N", "show the N most recent jobs (default 50)");

    /// <summary>Rows per transaction when queueing: keeps the write lock short for a running sentinel.</summary>
    private const int EnqueueChunk = 5000;

    // ---- parser ------------------------------------------------------------------------------

    private static readonly Command Register = new("register", "bundle a parser (directory or .py file) and store it",
        "parser register PATH [--db PATH]", Config.Flags(Config.Db), args =>
        {
            string path = args.RequirePositionals(1, 1)[0];
            string db = DbFrom(args);
            // Bundling reads and checks everything before the store is touched.
            var bundle = ParserBundle.Load(path);
            return WithStore(db, create: true, store =>
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
                };
                var result = store.RegisterParser(record);
                switch (result.Outcome)
                {
                    case RegisterOutcome.Created:
                        Console.Out.WriteLine($"registered parser {bundle.Name} {bundle.Version} (id {result.Id}): {bundle.Files.Count} file(s), " +
                            $"{Size(bundle.Archive.Length)} bundle, entry {bundle.EntryModule}, environment {ShortEnv(bundle.EnvHash)}");
                        break;
                    case RegisterOutcome.Unchanged:
                        Console.Out.WriteLine($"parser {bundle.Name} {bundle.Version} is already registered with the same source (id {result.Id}); nothing changed");
                        break;
                    default:
                        throw new InputException($"parser {bundle.Name} {bundle.Version} is already registered with a different source " +
                            $"(source hash {Short(result.Existing!.SourceHash)}, now {Short(bundle.SourceHash)}); bump the version in {path} and register again");
                }
                return 0;
            });
        });

    private static readonly Command Ls = new("ls", "list registered parsers", "parser ls [--db PATH]", Config.Flags(Config.Db), args =>
    {
        args.RequirePositionals(0, 0);
        string db = DbFrom(args);
        if (!File.Exists(db))
        {
            Console.Out.WriteLine($"no parsers registered (no store at {db}); register one with 'casparian parser register DIR'");
            return 0;
        }
        return WithStore(db, create: false, store =>
        {
            var parsers = store.ListParsers();
            if (parsers.Count == 0)
            {
                Console.Out.WriteLine("no parsers registered; register one with 'casparian parser register DIR'");
                return 0;
            }
            var table = new Table("NAME", "VERSION", "ID", "ENV", "SOURCE", "BUNDLE", "REGISTERED");
            foreach (var p in parsers)
                table.Add(p.Name, p.Version, Num(p.Id), ShortEnv(p.EnvHash), Short(p.SourceHash), p.ArchiveBytes == 0 ? "-" : Size(p.ArchiveBytes), Time(p.CreatedAt));
            Console.Out.Write(table.Render());
            return 0;
        });
    });

    internal static readonly Command Parser = Command.Group("parser", "register and list parsers (register|ls)", Register, Ls);

    // ---- job ---------------------------------------------------------------------------------

    private static readonly Command Add = new("add", "queue files (a folder: its files, recursively) for a parser",
        "job add --parser NAME[@VERSION] PATH… [--priority N] [--force] [--db PATH]",
        [ParserFlag, PriorityFlag, ForceFlag, .. Config.Flags(Config.Db)], args =>
        {
            var paths = args.RequirePositionals(1);
            string spec = args.Require(ParserFlag.Name);
            int priority = args.GetInt(PriorityFlag.Name, 0);
            bool force = args.Has(ForceFlag.Name);
            string db = DbFrom(args);
            int at = spec.IndexOf('@');
            string name = at < 0 ? spec : spec[..at];
            string? version = at < 0 ? null : spec[(at + 1)..];
            if (name.Length == 0 || version is { Length: 0 }) CliThrow.Usage_BadValue("job add", ParserFlag.Name, spec, "NAME or NAME@VERSION");
            var files = ExpandInputs(paths);

            return WithStore(db, create: false, store =>
            {
                var parser = store.GetParser(name, version) ?? throw UnknownParser(store, db, name, version);
                var jobs = new List<NewJob>(files.Count);
                int skipped = 0;
                foreach (string file in files)
                {
                    string hash = HashFile(file);
                    if (!force && store.IsCompleted(parser.Name, parser.Version, hash)) { skipped++; continue; }
                    jobs.Add(new NewJob(parser.Name, parser.Version, file, hash, priority));
                }
                long first = 0, last = 0;
                for (int i = 0; i < jobs.Count; i += EnqueueChunk)
                {
                    var chunk = jobs.GetRange(i, Math.Min(EnqueueChunk, jobs.Count - i));
                    long id = store.EnqueueMany(chunk);
                    if (first == 0) first = id;
                    last = id + chunk.Count - 1;
                }
                var sb = new StringBuilder($"queued {jobs.Count} job(s) for parser {parser.Name} {parser.Version}");
                if (jobs.Count > 0) sb.Append(first == last ? $" (job {first})" : $" (jobs {first}-{last})");
                if (skipped > 0) sb.Append($"; skipped {skipped} file(s) this version already completed (--force queues them anyway)");
                Console.Out.WriteLine(sb.ToString());
                return 0;
            });
        });

    private static readonly Command Show = new("show", "show one job in full", "job show ID [--db PATH]", Config.Flags(Config.Db), args =>
    {
        long id = JobId(args);
        return WithStore(DbFrom(args), create: false, store =>
        {
            var job = store.Get(id) ?? StoreThrow.Input_NoJob<JobRecord>(id, store.Path);
            Console.Out.Write(Describe(job));
            return 0;
        });
    });

    private static readonly Command Retry = new("retry", "queue a FAILED or CANCELLED job again", "job retry ID [--db PATH]", Config.Flags(Config.Db), args =>
    {
        long id = JobId(args);
        return WithStore(DbFrom(args), create: false, store =>
        {
            var before = store.Get(id) ?? StoreThrow.Input_NoJob<JobRecord>(id, store.Path);
            store.Retry(id);
            Console.Out.WriteLine($"job {id} queued again (was {before.State.Name()}; retry count reset)");
            return 0;
        });
    });

    private static readonly Command Cancel = new("cancel", "cancel a QUEUED or RUNNING job", "job cancel ID [--db PATH]", Config.Flags(Config.Db), args =>
    {
        long id = JobId(args);
        return WithStore(DbFrom(args), create: false, store =>
        {
            var before = store.Get(id) ?? StoreThrow.Input_NoJob<JobRecord>(id, store.Path);
            store.Cancel(id);
            string note = before.State == JobState.Running ? $"; the sentinel will tell worker {before.Worker} to abort it" : "";
            Console.Out.WriteLine($"job {id} cancelled (was {before.State.Name()}){note}");
            return 0;
        });
    });

    internal static readonly Command Job = Command.Group("job", "queue and manage jobs (add|show|retry|cancel)", Add, Show, Retry, Cancel);

    internal static readonly Command Jobs = new("jobs", "list jobs and counts per state", "jobs [--state S] [--limit N] [--db PATH]",
        [StateFlag, LimitFlag, .. Config.Flags(Config.Db)], args =>
        {
            args.RequirePositionals(0, 0);
            JobState? state = null;
            if (args.Get(StateFlag.Name) is { } s)
            {
                if (!JobStates.TryParse(s, out var parsed)) CliThrow.Usage_BadValue("jobs", StateFlag.Name, s, "one of queued, running, completed, failed, cancelled");
                state = parsed;
            }
            int limit = args.GetInt(LimitFlag.Name, 50, min: 1);
            string db = DbFrom(args);
            if (!File.Exists(db))
            {
                Console.Out.WriteLine($"no jobs (no store at {db})");
                return 0;
            }
            return WithStore(db, create: false, store =>
            {
                var jobs = store.List(state, limit);
                var counts = store.Counts();
                if (jobs.Count == 0) Console.Out.WriteLine(state is null ? "no jobs" : $"no {state.Value.Name()} jobs");
                else
                {
                    var table = new Table("ID", "STATE", "PRI", "RETRIES", "PARSER", "WORKER", "UPDATED", "INPUT");
                    foreach (var j in jobs)
                        table.Add(Num(j.Id), j.State.Name(), Num(j.Priority), Num(j.RetryCount), $"{j.ParserName} {j.ParserVersion}", j.Worker ?? "-",
                            Time(j.FinishedAt ?? j.HeartbeatAt ?? j.ClaimedAt ?? j.CreatedAt), j.InputPath);
                    Console.Out.Write(table.Render());
                }
                long total = counts.Values.Sum();
                Console.Out.WriteLine(string.Join(", ", JobStates.All.Select(st => $"{Num(counts[st])} {st.Name().ToLowerInvariant()}")) + $" ({Num(total)} total)");
                return 0;
            });
        });

    // ---- helpers -----------------------------------------------------------------------------

    private static string DbFrom(Args args) => Config.Load(args).Get(Config.Db);

    private static int WithStore(string db, bool create, Func<SqliteJobStore, int> work)
    {
        using var store = new SqliteJobStore(new StoreOptions { Path = db, Create = create });
        try
        {
            return work(store);
        }
        catch (SqliteException e)
        {
            throw store.Translate(e);
        }
    }

    private static long JobId(Args args)
    {
        string text = args.RequirePositionals(1, 1)[0];
        if (!long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long id) || id <= 0)
            throw new UsageException($"'casparian {args.CommandPath}' got '{text}' as a job id; expected a positive integer (see 'casparian jobs')");
        return id;
    }

    /// <summary>Files to queue, in order: each file as given, each folder's files recursively sorted; hidden entries skipped.</summary>
    internal static List<string> ExpandInputs(IEnumerable<string> paths)
    {
        var files = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var walk = new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = false };
        foreach (string p in paths)
        {
            string full = Path.GetFullPath(p);
            List<string> found;
            if (File.Exists(full)) found = [full];
            else if (Directory.Exists(full))
            {
                try
                {
                    found = [.. Directory.EnumerateFiles(full, "*", walk)];
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    throw new InputException($"cannot read folder {full}: {e.Message}; nothing was queued", e);
                }
                found.Sort(StringComparer.Ordinal);
            }
            else throw new InputException($"no such file or folder: {p}; nothing was queued");
            foreach (string f in found)
                if (seen.Add(f)) files.Add(f);
        }
        return files;
    }

    private static string HashFile(string path)
    {
        try
        {
            using var stream = File.OpenRead(path);
            return Convert.ToHexStringLower(SHA256.HashData(stream));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InputException($"cannot read {path}: {e.Message}; nothing was queued", e);
        }
    }

    private static InputException UnknownParser(SqliteJobStore store, string db, string name, string? version)
    {
        var versions = store.ListParsers().Where(p => p.Name == name).Select(p => p.Version).ToList();
        if (version is not null && versions.Count > 0)
            return new InputException($"parser {name} has no version {version} in {db}; registered: {string.Join(", ", versions)}; nothing was queued");
        return new InputException($"unknown parser '{name}' in {db}; register it with 'casparian parser register DIR' (see 'casparian parser ls'); nothing was queued");
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
        Line("priority", Num(j.Priority));
        Line("retries", Num(j.RetryCount));
        Line("worker", j.Worker);
        Line("created", Time(j.CreatedAt));
        Line("claimed", j.ClaimedAt is { } c ? Time(c) : null);
        Line("heartbeat", j.HeartbeatAt is { } h ? Time(h) : null);
        Line("finished", j.FinishedAt is { } f ? Time(f) : null);
        Line("next try", j.State == JobState.Queued && j.NextAttemptAt is { } n ? Time(n) : null);
        Line("error", j.Error?.ReplaceLineEndings("\n" + new string(' ', 14)));
        if (j.MetricsJson is { } mj && JsonSerializer.Deserialize(mj, StoreJson.Default.DictionaryStringInt64) is { Count: > 0 } metrics)
            Line("metrics", string.Join(" ", metrics.Select(kv => $"{kv.Key}={kv.Value.ToString(CultureInfo.InvariantCulture)}")));
        if (j.ArtifactsJson is { } aj && JsonSerializer.Deserialize(aj, StoreJson.Default.ListDictionaryStringString) is { Count: > 0 } artifacts)
            foreach (var a in artifacts)
                Line("output", a.TryGetValue("topic", out var topic) && a.TryGetValue("uri", out var uri)
                    ? $"{topic} -> {uri}"
                    : string.Join(" ", a.Select(kv => $"{kv.Key}={kv.Value}")));
        return sb.ToString();
    }

    private static string Num(long n) => n.ToString(CultureInfo.InvariantCulture);

    private static string Time(DateTimeOffset t) => t.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss'Z'", CultureInfo.InvariantCulture);

    private static string Short(string hash) => hash.Length > 12 ? hash[..12] : hash;

    private static string ShortEnv(string envHash) => envHash == ParserRecord.SystemEnv ? envHash : Short(envHash);

    private static string Size(long bytes) => bytes switch
    {
        < 1024 => $"{bytes} B",
        < 1024 * 1024 => (bytes / 1024.0).ToString("0.#", CultureInfo.InvariantCulture) + " KiB",
        _ => (bytes / (1024.0 * 1024)).ToString("0.#", CultureInfo.InvariantCulture) + " MiB",
    };

    /// <summary>A plain text table: columns padded to their widest cell, the last one left ragged.</summary>
    private sealed class Table(params string[] headers)
    {
        private readonly List<string[]> _rows = [headers];

        public void Add(params string[] cells) => _rows.Add(cells);

        public string Render()
        {
            int n = _rows[0].Length;
            var widths = new int[n];
            foreach (var row in _rows)
                for (int i = 0; i < n; i++) widths[i] = Math.Max(widths[i], row[i].Length);
            var sb = new StringBuilder();
            foreach (var row in _rows)
            {
                for (int i = 0; i < n; i++)
                {
                    if (i < n - 1) sb.Append(row[i].PadRight(widths[i] + 2));
                    else sb.Append(row[i]);
                }
                sb.AppendLine();
            }
            return sb.ToString();
        }
    }
}
