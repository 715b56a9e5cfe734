// Schema contracts and quarantine on the command line (issue 14):
//   quarantine ls [--topic T] [--parser P]      current jobs with quarantined rows: counts and reasons
//   quarantine show JOB [--limit N] [--json]    the rows, read from the job's quarantine Parquet
//   quarantine replay (JOB | --parser P | --topic T)
//                                               queue those sources again under the parser's newest
//                                               version; their quarantine is superseded when they commit
//   topic show NAME                             the topic's current schema and its history
// All read the store through IJobStore; `show` also reads the quarantine file, so it runs where the
// output directory is (the machine of `start`, or one that mounts the workers' output).
using System.Globalization;
using System.Text;
using System.Text.Json;
using Apache.Arrow;
using ParquetSharp.Arrow;

namespace Casparian;

internal static partial class Commands
{
    private static readonly Flag QuarantineTopicFlag = new("--topic", "T", "only this topic");
    private static readonly Flag QuarantineParserFlag = new("--parser", "NAME", "only jobs of this parser");
    private static readonly Flag RowsLimitFlag = new("--limit", "N", "show at most N rows (default 20)");
    private static readonly Flag RowsJsonFlag = new("--json", null, "one JSON object per quarantined row and line");

    private static readonly Command QuarantineLs = new("ls", "list jobs with quarantined rows, with counts and reasons",
        "quarantine ls [--topic T] [--parser NAME] [--db PATH]", [QuarantineTopicFlag, QuarantineParserFlag, .. Config.Flags(Config.Db)], args =>
        {
            args.RequirePositionals(0, 0);
            var storeOptions = StoreFrom(args, create: false) with { ReadOnly = true };
            if (!JobStores.Exists(storeOptions))
            {
                Console.Out.WriteLine($"no quarantined rows (no store at {storeOptions.Db})");
                return 0;
            }
            return WithStore(storeOptions, store =>
            {
                var rows = store.ListQuarantine(args.Get(QuarantineTopicFlag.Name), args.Get(QuarantineParserFlag.Name), null);
                if (rows.Count == 0)
                {
                    Console.Out.WriteLine("no quarantined rows");
                    return 0;
                }
                var table = new Table("JOB", "PARSER", "TOPIC", "ROWS", "REASONS", "INPUT");
                foreach (var g in rows.GroupBy(r => (r.JobId, r.Topic)))
                {
                    var first = g.First();
                    table.Add(Num(first.JobId), $"{first.ParserName} {first.ParserVersion}", first.Topic, Num(g.Sum(r => r.Rows)),
                        string.Join(" ", g.Select(r => $"{r.Reason}={Num(r.Rows)}")), first.InputPath);
                }
                Console.Out.Write(table.Render());
                Console.Out.WriteLine($"{Num(rows.Sum(r => r.Rows))} quarantined row(s) in {Num(rows.Select(r => r.JobId).Distinct().Count())} job(s); 'casparian quarantine show JOB' prints them");
                return 0;
            });
        });

    private static readonly Command QuarantineShow = new("show", "print a job's quarantined rows: row, column, reason, message, the raw row",
        "quarantine show JOB [--limit N] [--json] [--db PATH]", [RowsLimitFlag, RowsJsonFlag, .. Config.Flags(Config.Db)], args =>
        {
            bool json = args.Has(RowsJsonFlag.Name);
            int limit = args.GetInt(RowsLimitFlag.Name, json ? int.MaxValue : 20, min: 1);
            // The rows are read from Parquet: the native library must be in place first (NativeParquet.cs).
            NativeParquet.Ensure(Config.Load(args).LibDir);
            return WithJob(args, (_, job) => QuarantineRows(job, limit, json), readOnly: true);
        });

    private static readonly Command QuarantineReplay = new("replay", "queue the sources of quarantined jobs again under the parser's newest version",
        "quarantine replay (JOB | --parser NAME | --topic T) [--priority N] [--db PATH]",
        [QuarantineParserFlag, QuarantineTopicFlag, PriorityFlag, .. Config.Flags(Config.Db)], args =>
        {
            var positionals = args.RequirePositionals(0, 1);
            string? parserName = args.Get(QuarantineParserFlag.Name), topic = args.Get(QuarantineTopicFlag.Name);
            long? jobId = positionals.Count == 1 ? JobId(args) : null;
            if ((jobId is null ? 0 : 1) + (parserName is null ? 0 : 1) + (topic is null ? 0 : 1) != 1)
                throw CliThrow.Usage_Positionals(args.CommandPath, args.Synopsis, positionals.Count);
            int priority = args.GetInt(PriorityFlag.Name, 0);
            return WithStore(StoreFrom(args, create: false), store =>
            {
                if (jobId is { } id && store.Get(id) is null) throw StoreThrow.Input_NoJob(id, store.Location);
                var rows = store.ListQuarantine(topic, parserName, jobId);
                if (rows.Count == 0)
                {
                    Console.Out.WriteLine("no current job with quarantined rows matches; nothing queued");
                    return 0;
                }
                foreach (var byParser in rows.GroupBy(r => r.ParserName))
                {
                    var parser = FindParser(store, byParser.Key, null);
                    var files = new List<(string, string, string)>();
                    int pending = 0;
                    // Each source is replayed under the topic prefix its current job was routed with (issue 19), so
                    // the replayed rows land in the topics the job wrote; a job pending under that prefix settles it.
                    foreach (var byPrefix in byParser.GroupBy(r => r.TopicPrefix))
                    {
                        var sources = byPrefix.Select(r => r.InputPath).Distinct().ToList();
                        var known = store.LookupSources(parser.Name, parser.Version, sources, byPrefix.Key);
                        foreach (string path in sources)
                        {
                            var entry = known.GetValueOrDefault(path);
                            if (entry?.Pending == true) { pending++; continue; }
                            files.Add((path, entry?.ContentHash ?? store.GetOutput(parser.Name, path)?.ContentHash ?? "", byPrefix.Key));
                        }
                    }
                    var r = QueueUnderPrefixes(store, parser, files, priority);
                    var sb = new StringBuilder($"queued {r.Queued} source(s) with quarantined rows for {parser.Name} {parser.Version}");
                    if (r.Queued > 0) sb.Append(r.FirstId == r.LastId ? $" (job {r.FirstId})" : $" (jobs {r.FirstId}-{r.LastId})");
                    Console.Out.WriteLine(sb.Append(Pending(pending)).ToString());
                }
                return 0;
            });
        });

    private static readonly Command QuarantineGroup = Command.Group("quarantine", "rows schema contracts rejected (ls|show|replay)", QuarantineLs, QuarantineShow, QuarantineReplay);

    private static readonly Command TopicShow = new("show", "print a topic's current schema and its history",
        "topic show NAME [--db PATH]", Config.Flags(Config.Db), args =>
        {
            string topic = args.RequirePositionals(1, 1)[0];
            return WithStore(StoreFrom(args, create: false) with { ReadOnly = true }, store =>
            {
                var history = store.TopicSchemaHistory(topic);
                if (history.Count == 0)
                {
                    Console.Out.WriteLine($"topic {topic} has no recorded schema (no completed job has written it)");
                    return 0;
                }
                var current = history[^1];
                var sb = new StringBuilder($"topic {topic}: schema version {current.Version} (since job {current.JobId}, {current.ParserName}, {Time(current.CreatedAt)})\n");
                foreach (var c in SchemaDrift.Parse(current.Columns)) sb.Append(CultureInfo.InvariantCulture, $"  {c.Name,-24} {c.Type}\n");
                sb.Append("history:\n");
                SchemaColumn[] before = [];
                foreach (var v in history)
                {
                    var columns = SchemaDrift.Parse(v.Columns);
                    var changes = columns.Where(c => !before.Contains(c)).Select(c => before.Any(b => b.Name == c.Name) ? $"{c.Name} → {c.Type}" : $"+{c.Name} {c.Type}")
                        .Concat(before.Where(b => !columns.Any(c => c.Name == b.Name)).Select(b => $"-{b.Name}"));
                    sb.Append(CultureInfo.InvariantCulture, $"  v{v.Version}  {Time(v.CreatedAt)}  job {v.JobId} ({v.ParserName}): {string.Join(", ", changes)}\n");
                    before = [.. columns];
                }
                Console.Out.Write(sb.ToString());
                return 0;
            });
        });

    private static readonly Command TopicGroup = Command.Group("topic", "topics' schemas (show)", TopicShow);

    /// <summary>What <c>quarantine show</c> prints for <paramref name="job"/>: every topic's quarantine file, read back.</summary>
    private static string QuarantineRows(JobRecord job, int limit, bool json)
    {
        var files = new List<(string Topic, string Path)>();
        if (job.ArtifactsJson is { } aj && JsonSerializer.Deserialize(aj, StoreJson.Default.ListDictionaryStringString) is { } artifacts)
            foreach (var a in artifacts)
                if (a.TryGetValue(OutputArtifact.QuarantineUriKey, out string? uri)) files.Add((a.GetValueOrDefault("topic") ?? "", new Uri(uri).LocalPath));
        if (files.Count == 0) return json ? "" : $"job {job.Id} ({job.State.Name()}) has no quarantined rows\n";
        var sb = new StringBuilder();
        var table = new Table("TOPIC", "ROW", "COLUMN", "REASON", "MESSAGE", "RAW");
        int shown = 0;
        long total = 0;
        foreach (var (topic, path) in files)
        {
            if (!File.Exists(path)) throw CliThrow.Input_QuarantineGone(job.Id, path);
            using var reader = new FileReader(path);
            total += reader.ParquetReader.FileMetaData.NumRows;
            using var stream = reader.GetRecordBatchReader();
            while (shown < limit && stream.ReadNextRecordBatchAsync().AsTask().GetAwaiter().GetResult() is { } batch)
            {
                using (batch)
                {
                    var row = (Int64Array)batch.Column("_row");
                    var column = (StringArray)batch.Column("_column");
                    var reason = (StringArray)batch.Column("_reason");
                    var message = (StringArray)batch.Column("_message");
                    var raw = (StringArray)batch.Column("_raw");
                    for (int i = 0; i < batch.Length && shown < limit; i++, shown++)
                    {
                        if (json)
                        {
                            using var buffer = new MemoryStream();
                            using (var w = new Utf8JsonWriter(buffer))
                            {
                                w.WriteStartObject();
                                w.WriteNumber("job_id", job.Id);
                                w.WriteString("topic", topic);
                                w.WriteNumber("row", row.GetValue(i) ?? 0);
                                w.WriteString("column", column.GetString(i));
                                w.WriteString("reason", reason.GetString(i));
                                w.WriteString("message", message.GetString(i));
                                w.WritePropertyName("raw");
                                using (var doc = JsonDocument.Parse(raw.GetString(i))) doc.WriteTo(w);
                                w.WriteEndObject();
                            }
                            sb.Append(Encoding.UTF8.GetString(buffer.ToArray())).Append('\n');
                        }
                        else table.Add(topic, Num(row.GetValue(i) ?? 0), column.GetString(i), reason.GetString(i), message.GetString(i), raw.GetString(i));
                    }
                }
            }
        }
        if (json) return sb.ToString();
        sb.Append(CultureInfo.InvariantCulture, $"job {job.Id} ({job.ParserName} {job.ParserVersion}, {job.InputPath}): {total} quarantined row(s)\n");
        sb.Append(table.Render());
        if (total > shown) sb.Append(CultureInfo.InvariantCulture, $"… {total - shown} more (--limit N)\n");
        return sb.ToString();
    }
}
