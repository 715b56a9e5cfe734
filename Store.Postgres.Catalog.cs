// The PostgreSQL store's file catalog and job filters (Store.Catalog.cs says what the tables hold;
// the SQL mirrors Store.Sqlite.Catalog.cs). sources and outputs are keyed by path, so `job add`'s
// lookups are index probes; a trigger keeps source_versions, as in SQLite.
using System.Text;
using Npgsql;

namespace Casparian;

internal sealed partial class PostgresJobStore
{
    /// <summary>
    /// Complete's catalog rows, as CTEs over its `done` (the completed row, or none): the job becomes its
    /// (parser, source)'s current output unless a job with a higher id already is (newest wins, as in
    /// SQLite); the source takes the content parsed when the worker reported one and this job is now
    /// current (`made_current` returned its row).
    /// </summary>
    private const string SupersedeCte =
        ", made_current AS (INSERT INTO outputs (parser_name, source_path, job_id, parser_version, content_hash, artifacts, updated_at, topic_prefix) " +
        "  SELECT parser_name, input_path, id, parser_version, content_hash, artifacts, @now, topic_prefix FROM done " +
        "  ON CONFLICT (parser_name, source_path) DO UPDATE SET job_id = excluded.job_id, parser_version = excluded.parser_version, " +
        "    content_hash = excluded.content_hash, artifacts = excluded.artifacts, updated_at = excluded.updated_at, topic_prefix = excluded.topic_prefix " +
        "    WHERE excluded.job_id >= outputs.job_id RETURNING job_id), " +
        "source_row AS (INSERT INTO sources (path, content_hash, size, mtime, updated_at) " +
        "  SELECT input_path, content_hash, -1, -1, @now FROM done " +
        "  ON CONFLICT (path) DO UPDATE SET content_hash = excluded.content_hash, size = -1, mtime = -1, updated_at = excluded.updated_at " +
        "    WHERE @hash::text IS NOT NULL AND sources.content_hash <> excluded.content_hash AND EXISTS (SELECT 1 FROM made_current))";

    /// <summary>Paths per lookup statement.</summary>
    private const int LookupChunk = 5000;

    public Dictionary<string, CatalogEntry> LookupSources(string parserName, string parserVersion, IReadOnlyList<string> paths, string topicPrefix) => Run(() =>
    {
        var found = new Dictionary<string, CatalogEntry>(StringComparer.Ordinal);
        for (int i = 0; i < paths.Count; i += LookupChunk)
        {
            var chunk = new string[Math.Min(LookupChunk, paths.Count - i)];
            for (int j = 0; j < chunk.Length; j++) chunk[j] = paths[i + j];
            using var cmd = Command(
                "SELECT s.path, s.content_hash, s.size, s.mtime, (SELECT count(*) FROM source_versions v WHERE v.path = s.path), " +
                "  o.job_id, o.parser_version, o.content_hash, o.artifacts, " +
                "  EXISTS (SELECT 1 FROM jobs j WHERE j.content_hash = s.content_hash AND j.parser_name = @parser AND j.parser_version = @version " +
                "          AND j.input_path = s.path AND j.topic_prefix = @prefix AND j.state IN ('QUEUED', 'RUNNING')), o.topic_prefix " +
                "FROM sources s LEFT JOIN outputs o ON o.parser_name = @parser AND o.source_path = s.path " +
                "WHERE s.path = ANY(@paths)");
            cmd.Parameters.Add(Text("parser", parserName));
            cmd.Parameters.Add(Text("version", parserVersion));
            cmd.Parameters.Add(Text("prefix", topicPrefix));
            cmd.Parameters.Add(new NpgsqlParameter<string[]>("paths", chunk));
            using var r = cmd.ExecuteReader();
            while (r.Read())
            {
                string path = r.GetString(0);
                var output = r.IsDBNull(5) ? null
                    : new CurrentOutput(parserName, path, r.GetInt64(5), r.GetString(6), r.GetString(7), r.IsDBNull(8) ? null : r.GetString(8)) { TopicPrefix = r.GetString(10) };
                found[path] = new CatalogEntry(path, r.GetString(1), r.GetInt64(2), r.GetInt64(3), r.GetInt64(4), output, r.GetBoolean(9));
            }
        }
        return found;
    });

    public Dictionary<string, (long Size, long MtimeUs)> SourceStatsUnder(string dir) => Run(() =>
    {
        // A byte-order range, as in SQLite: the paths from "DIR/" up to "DIR0" ('0' follows '/').
        string lo = Path.TrimEndingDirectorySeparator(dir) + "/";
        using var cmd = Command("SELECT path, size, mtime FROM sources WHERE path COLLATE \"C\" >= @lo AND path COLLATE \"C\" < @hi");
        cmd.Parameters.Add(Text("lo", lo));
        cmd.Parameters.Add(Text("hi", lo[..^1] + "0"));
        var found = new Dictionary<string, (long, long)>(StringComparer.Ordinal);
        using var r = cmd.ExecuteReader();
        while (r.Read()) found[r.GetString(0)] = (r.GetInt64(1), r.GetInt64(2));
        return found;
    });

    public int RecordSources(IReadOnlyList<SourceObservation> files) => InTransaction(() =>
    {
        if (files.Count == 0) return 0;
        // One statement for the batch; the trigger adds a version for each new path or changed hash,
        // counted from the rows it wrote (xmax = 0: inserted) and the hashes they replaced.
        var paths = new string[files.Count];
        var hashes = new string[files.Count];
        var sizes = new long[files.Count];
        var mtimes = new long[files.Count];
        for (int i = 0; i < files.Count; i++)
        {
            var (stat, hash) = files[i];
            (paths[i], hashes[i], sizes[i], mtimes[i]) = (stat.Path, hash, stat.Size, stat.MtimeUs);
        }
        using var cmd = Command(
            "WITH input AS (SELECT DISTINCT ON (path) path, hash, size, mtime FROM unnest(@paths, @hashes, @sizes, @mtimes) AS t(path, hash, size, mtime)), " +
            "     old AS (SELECT s.path, s.content_hash FROM sources s JOIN input i ON i.path = s.path), " +
            "     written AS (INSERT INTO sources (path, content_hash, size, mtime, updated_at) SELECT path, hash, size, mtime, @now FROM input " +
            "       ON CONFLICT (path) DO UPDATE SET content_hash = excluded.content_hash, size = excluded.size, mtime = excluded.mtime, updated_at = excluded.updated_at " +
            "       WHERE sources.content_hash <> excluded.content_hash OR sources.size <> excluded.size OR sources.mtime <> excluded.mtime " +
            "       RETURNING path, content_hash) " +
            "SELECT count(*) FROM written w LEFT JOIN old o ON o.path = w.path WHERE o.path IS NULL OR o.content_hash <> w.content_hash");
        cmd.Parameters.Add(new NpgsqlParameter<string[]>("paths", paths));
        cmd.Parameters.Add(new NpgsqlParameter<string[]>("hashes", hashes));
        cmd.Parameters.Add(new NpgsqlParameter<long[]>("sizes", sizes));
        cmd.Parameters.Add(new NpgsqlParameter<long[]>("mtimes", mtimes));
        cmd.Parameters.Add(Long("now", Now()));
        return (int)(long)cmd.ExecuteScalar()!;
    });

    public List<SourceVersion> SourceVersions(string path) => Run(() =>
    {
        using var cmd = Command("SELECT id, content_hash, size, seen_at FROM source_versions WHERE path = @path ORDER BY id");
        cmd.Parameters.Add(Text("path", path));
        var list = new List<SourceVersion>();
        using var r = cmd.ExecuteReader();
        while (r.Read()) list.Add(new SourceVersion(r.GetInt64(0), r.GetString(1), r.GetInt64(2), FromMs(r.GetInt64(3))));
        return list;
    });

    private const string OutputColumns = "parser_name, source_path, job_id, parser_version, content_hash, artifacts, topic_prefix";

    private static CurrentOutput ReadOutput(NpgsqlDataReader r) =>
        new(r.GetString(0), r.GetString(1), r.GetInt64(2), r.GetString(3), r.GetString(4), r.IsDBNull(5) ? null : r.GetString(5)) { TopicPrefix = r.GetString(6) };

    public CurrentOutput? GetOutput(string parserName, string sourcePath) => Run(() =>
    {
        using var cmd = Command($"SELECT {OutputColumns} FROM outputs WHERE parser_name = @parser AND source_path = @path");
        cmd.Parameters.Add(Text("parser", parserName));
        cmd.Parameters.Add(Text("path", sourcePath));
        using var r = cmd.ExecuteReader();
        return r.Read() ? ReadOutput(r) : null;
    });

    public List<CurrentOutput> OutputsNotFrom(string parserName, string parserVersion) => Run(() =>
    {
        using var cmd = Command($"SELECT {OutputColumns} FROM outputs WHERE parser_name = @parser AND parser_version <> @version ORDER BY source_path COLLATE \"C\"");
        cmd.Parameters.Add(Text("parser", parserName));
        cmd.Parameters.Add(Text("version", parserVersion));
        var list = new List<CurrentOutput>();
        using var r = cmd.ExecuteReader();
        while (r.Read()) list.Add(ReadOutput(r));
        return list;
    });

    // ---- job filters ------------------------------------------------------------------------

    public List<JobRecord> Find(JobQuery query) => Run(() =>
    {
        using var cmd = Command("");
        cmd.CommandText = $"SELECT {JobColumns} FROM jobs WHERE {Filter(cmd, query, null)} ORDER BY id DESC LIMIT @limit";
        cmd.Parameters.Add(Int("limit", query.Limit));
        return OldestFirst(cmd);
    });

    public List<long> RetryMany(JobQuery query)
    {
        ForgetClaimCursors();
        return Bulk(query, "state IN ('FAILED', 'CANCELLED')", RetrySet);
    }

    public List<long> CancelMany(JobQuery query) => Bulk(query, "state IN ('QUEUED', 'RUNNING')", "state = 'CANCELLED', finished_at = @now");

    private List<long> Bulk(JobQuery query, string allowed, string set) => InTransaction(() =>
    {
        using var cmd = Command("");
        cmd.CommandText = $"UPDATE jobs SET {set} WHERE {Filter(cmd, query, allowed)} RETURNING id";
        if (set.Contains("@now", StringComparison.Ordinal)) cmd.Parameters.Add(Long("now", Now()));
        var ids = new List<long>();
        using (var r = cmd.ExecuteReader())
            while (r.Read()) ids.Add(r.GetInt64(0));
        ids.Sort();
        return ids;
    });

    private static string Filter(NpgsqlCommand cmd, JobQuery query, string? allowed)
    {
        var where = new StringBuilder(allowed ?? "TRUE");
        if (query.State is { } state)
        {
            where.Append(" AND state = @state");
            cmd.Parameters.Add(Text("state", state.Name()));
        }
        if (query.ParserName is { } parser)
        {
            where.Append(" AND parser_name = @parser");
            cmd.Parameters.Add(Text("parser", parser));
        }
        if (query.ParserVersion is { } version)
        {
            where.Append(" AND parser_version = @version");
            cmd.Parameters.Add(Text("version", version));
        }
        if (query.Since is { } since)
        {
            where.Append(" AND created_at >= @since");
            cmd.Parameters.Add(Long("since", since.ToUnixTimeMilliseconds()));
        }
        return where.ToString();
    }
}
