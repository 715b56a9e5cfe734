// The SQLite store's file catalog and job filters (Store.Catalog.cs says what the tables hold).
// Index use: sources and outputs are keyed by path (WITHOUT ROWID), so the lookups of `job add` are
// one B-tree probe per path; source_versions_path serves a path's history; jobs_created serves
// `jobs --since`; the pending-job check walks jobs_file by content hash.
using System.Text;
using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace Casparian;

internal sealed partial class SqliteJobStore
{
    private SqliteStatement? _supersede, _supersedeSource;
    private SqliteCommand? _getOutput, _recordSource;

    /// <summary>Paths per lookup statement: one json_each argument each, so 100k files are 20 statements.</summary>
    private const int LookupChunk = 5000;

    /// <summary>
    /// The concluding job becomes its (parser, source)'s current output, unless a job with a higher id
    /// (queued later) already is: a late commit of an older job changes nothing. Runs inside Complete's
    /// transaction. The catalog's hash of the source follows a parsed hash (size and mtime then unknown:
    /// the next <c>job add</c> hashes the file again); without one, the hash <c>job add</c> recorded stays.
    /// </summary>
    private void Supersede(long id, string? parsedHash, long now)
    {
        Raw(ref _supersede, SupersedeSql, "$parsed", "$now", "$id").Bind(1, parsedHash).Bind(2, now).Bind(3, id).Execute();
        Raw(ref _supersedeSource, SupersedeSourceSql, "$parsed", "$now", "$id").Bind(1, parsedHash).Bind(2, now).Bind(3, id).Execute();
    }

    // Exposed for the benchmarks, which replay them through Python's sqlite3.
    internal const string SupersedeSql =
        "INSERT INTO outputs (parser_name, source_path, job_id, parser_version, content_hash, artifacts, updated_at, topic_prefix) " +
        "SELECT parser_name, input_path, id, parser_version, coalesce($parsed, content_hash), artifacts, $now, topic_prefix FROM jobs WHERE id = $id " +
        "ON CONFLICT (parser_name, source_path) DO UPDATE SET job_id = excluded.job_id, parser_version = excluded.parser_version, " +
        "  content_hash = excluded.content_hash, artifacts = excluded.artifacts, updated_at = excluded.updated_at, topic_prefix = excluded.topic_prefix " +
        "  WHERE excluded.job_id >= outputs.job_id";

    internal const string SupersedeSourceSql =
        "INSERT INTO sources (path, content_hash, size, mtime, updated_at) " +
        "SELECT input_path, coalesce($parsed, content_hash), -1, -1, $now FROM jobs WHERE id = $id " +
        "ON CONFLICT (path) DO UPDATE SET content_hash = excluded.content_hash, size = -1, mtime = -1, updated_at = excluded.updated_at " +
        "  WHERE $parsed IS NOT NULL AND sources.content_hash <> excluded.content_hash " +
        "  AND EXISTS (SELECT 1 FROM jobs j JOIN outputs o ON o.parser_name = j.parser_name AND o.source_path = j.input_path WHERE j.id = $id AND o.job_id = $id)";

    internal const string LookupSql =
        // p.key is the path's index in $paths: the caller has the string already, so none is decoded per row.
        "SELECT p.key, s.content_hash, s.size, s.mtime, (SELECT count(*) FROM source_versions v WHERE v.path = s.path), " +
        "  o.job_id, o.parser_version, o.content_hash, o.artifacts, " +
        // The pending-job probe reads a jobs row per path (index jobs_file, then the table): skipped where the
        // asked version's current output is already from the recorded content and under the asked prefix, which
        // settles the file either way. A job pending under another prefix makes other topics: it does not count.
        "  CASE WHEN o.parser_version = $version AND o.content_hash = s.content_hash AND o.topic_prefix = $prefix THEN 0 " +
        "  ELSE EXISTS (SELECT 1 FROM jobs j WHERE j.content_hash = s.content_hash AND j.parser_name = $parser AND j.parser_version = $version " +
        "          AND j.input_path = s.path AND j.topic_prefix = $prefix AND j.state IN ('QUEUED', 'RUNNING')) END, o.topic_prefix " +
        "FROM json_each($paths) p JOIN sources s ON s.path = p.value " +
        "LEFT JOIN outputs o ON o.parser_name = $parser AND o.source_path = s.path";

    private void DisposeCatalog()
    {
        _supersede?.Dispose();
        _supersedeSource?.Dispose();
    }

    public Dictionary<string, CatalogEntry> LookupSources(string parserName, string parserVersion, IReadOnlyList<string> paths, string topicPrefix)
    {
        try
        {
            var found = new Dictionary<string, CatalogEntry>(StringComparer.Ordinal);
            using var cmd = _db.CreateCommand();
            cmd.CommandText = LookupSql;
            var pathsParameter = cmd.Parameters.Add(new SqliteParameter("$paths", ""));
            cmd.Parameters.AddWithValue("$parser", parserName);
            cmd.Parameters.AddWithValue("$version", parserVersion);
            cmd.Parameters.AddWithValue("$prefix", topicPrefix);
            for (int i = 0; i < paths.Count; i += LookupChunk)
            {
                var chunk = new List<string>(Math.Min(LookupChunk, paths.Count - i));
                for (int j = i; j < paths.Count && j < i + LookupChunk; j++) chunk.Add(paths[j]);
                pathsParameter.Value = JsonSerializer.Serialize(chunk, StoreJson.Default.ListString);
                using var r = cmd.ExecuteReader();
                while (r.Read())
                {
                    string path = chunk[r.GetInt32(0)];
                    var output = r.IsDBNull(5) ? null
                        : new CurrentOutput(parserName, path, r.GetInt64(5), r.GetString(6), r.GetString(7), r.IsDBNull(8) ? null : r.GetString(8)) { TopicPrefix = r.GetString(10) };
                    found[path] = new CatalogEntry(path, r.GetString(1), r.GetInt64(2), r.GetInt64(3), r.GetInt64(4), output, r.GetInt64(9) != 0);
                }
            }
            return found;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public Dictionary<string, (long Size, long MtimeUs)> SourceStatsUnder(string dir)
    {
        try
        {
            // sources is keyed by path (WITHOUT ROWID, BINARY collation: byte order), so the paths under
            // DIR/ are one range: from "DIR/" up to "DIR0" ('0' is the byte after '/').
            string lo = Path.TrimEndingDirectorySeparator(dir) + "/";
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT path, size, mtime FROM sources WHERE path >= $lo AND path < $hi";
            cmd.Parameters.AddWithValue("$lo", lo);
            cmd.Parameters.AddWithValue("$hi", lo[..^1] + "0");
            var found = new Dictionary<string, (long, long)>(StringComparer.Ordinal);
            using var r = cmd.ExecuteReader();
            while (r.Read()) found[r.GetString(0)] = (r.GetInt64(1), r.GetInt64(2));
            return found;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public int RecordSources(IReadOnlyList<SourceObservation> files) => InTransaction(() =>
    {
        long before = Scalar("SELECT coalesce(max(id), 0) FROM source_versions");
        var cmd = Prepare(ref _recordSource,
            "INSERT INTO sources (path, content_hash, size, mtime, updated_at) VALUES ($path, $hash, $size, $mtime, $now) " +
            "ON CONFLICT (path) DO UPDATE SET content_hash = excluded.content_hash, size = excluded.size, mtime = excluded.mtime, updated_at = excluded.updated_at " +
            "  WHERE sources.content_hash <> excluded.content_hash OR sources.size <> excluded.size OR sources.mtime <> excluded.mtime",
            "$path", "$hash", "$size", "$mtime", "$now");
        var p = cmd.Parameters;
        p[4].Value = Now();
        foreach (var (stat, hash) in files)
        {
            p[0].Value = stat.Path;
            p[1].Value = hash;
            p[2].Value = stat.Size;
            p[3].Value = stat.MtimeUs;
            cmd.ExecuteNonQuery();
        }
        return (int)(Scalar("SELECT coalesce(max(id), 0) FROM source_versions") - before);
    });

    public List<SourceVersion> SourceVersions(string path)
    {
        try
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT id, content_hash, size, seen_at FROM source_versions WHERE path = $path ORDER BY id";
            cmd.Parameters.AddWithValue("$path", path);
            var list = new List<SourceVersion>();
            using var r = cmd.ExecuteReader();
            while (r.Read()) list.Add(new SourceVersion(r.GetInt64(0), r.GetString(1), r.GetInt64(2), FromMs(r.GetInt64(3))));
            return list;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    private const string OutputColumns = "parser_name, source_path, job_id, parser_version, content_hash, artifacts, topic_prefix";

    private static CurrentOutput ReadOutput(SqliteDataReader r) =>
        new(r.GetString(0), r.GetString(1), r.GetInt64(2), r.GetString(3), r.GetString(4), r.IsDBNull(5) ? null : r.GetString(5)) { TopicPrefix = r.GetString(6) };

    public CurrentOutput? GetOutput(string parserName, string sourcePath)
    {
        try
        {
            var cmd = Prepare(ref _getOutput, $"SELECT {OutputColumns} FROM outputs WHERE parser_name = $parser AND source_path = $path", "$parser", "$path");
            cmd.Parameters[0].Value = parserName;
            cmd.Parameters[1].Value = sourcePath;
            using var r = cmd.ExecuteReader();
            return r.Read() ? ReadOutput(r) : null;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public List<CurrentOutput> OutputsNotFrom(string parserName, string parserVersion)
    {
        try
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = $"SELECT {OutputColumns} FROM outputs WHERE parser_name = $parser AND parser_version <> $version ORDER BY source_path";
            cmd.Parameters.AddWithValue("$parser", parserName);
            cmd.Parameters.AddWithValue("$version", parserVersion);
            var list = new List<CurrentOutput>();
            using var r = cmd.ExecuteReader();
            while (r.Read()) list.Add(ReadOutput(r));
            return list;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    // ---- job filters ------------------------------------------------------------------------

    public List<JobRecord> Find(JobQuery query)
    {
        try
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = $"SELECT {JobColumns} FROM jobs WHERE {Filter(cmd, query, null)} ORDER BY id DESC LIMIT $limit";
            cmd.Parameters.AddWithValue("$limit", query.Limit);
            return OldestFirst(cmd);
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public List<long> RetryMany(JobQuery query) => Bulk(query, "state IN ('FAILED', 'CANCELLED')", RetrySet);

    public List<long> CancelMany(JobQuery query) => Bulk(query, "state IN ('QUEUED', 'RUNNING')", "state = 'CANCELLED', finished_at = $now");

    private List<long> Bulk(JobQuery query, string allowed, string set) => InTransaction(() =>
    {
        using var cmd = _db.CreateCommand();
        cmd.CommandText = $"UPDATE jobs SET {set} WHERE {Filter(cmd, query, allowed)} RETURNING id";
        if (set.Contains("$now", StringComparison.Ordinal)) cmd.Parameters.AddWithValue("$now", Now());
        var ids = new List<long>();
        using (var r = cmd.ExecuteReader())
            while (r.Read()) ids.Add(r.GetInt64(0));
        ids.Sort();
        return ids;
    });

    /// <summary>The WHERE condition of <paramref name="query"/> (and <paramref name="allowed"/>), binding its values on <paramref name="cmd"/>.</summary>
    private static string Filter(SqliteCommand cmd, JobQuery query, string? allowed)
    {
        var where = new StringBuilder(allowed ?? "1");
        if (query.State is { } state)
        {
            where.Append(" AND state = $state");
            cmd.Parameters.AddWithValue("$state", state.Name());
        }
        if (query.ParserName is { } parser)
        {
            where.Append(" AND parser_name = $parser");
            cmd.Parameters.AddWithValue("$parser", parser);
        }
        if (query.ParserVersion is { } version)
        {
            where.Append(" AND parser_version = $version");
            cmd.Parameters.AddWithValue("$version", version);
        }
        if (query.Since is { } since)
        {
            where.Append(" AND created_at >= $since");
            cmd.Parameters.AddWithValue("$since", since.ToUnixTimeMilliseconds());
        }
        return where.ToString();
    }
}
