// The SQLite store's side of `store copy` (Store.Copy.cs) and `store check`: its rows read in id (or
// path) order, one chunk per statement, and its integrity check. It is only ever a source: an SQLite
// store is copied by copying its file.
using Microsoft.Data.Sqlite;

namespace Casparian;

internal sealed partial class SqliteJobStore
{
    public IEnumerable<StoreRows> Export(int chunk)
    {
        var parsers = new List<ParserRecord>();
        foreach (var p in ListParsers())
            if (GetParser(p.Name, p.Version) is { } full) parsers.Add(full with { CreatedAt = p.CreatedAt });
        yield return new StoreRows { Parsers = parsers };
        for (long after = 0; ;)
        {
            var jobs = Rows($"SELECT {JobColumns} FROM jobs WHERE id > $after ORDER BY id LIMIT $limit", after, chunk, ReadJob);
            if (jobs.Count == 0) break;
            after = jobs[^1].Id;
            yield return new StoreRows { Jobs = jobs };
        }
        for (string after = ""; ;)
        {
            var sources = Rows("SELECT path, content_hash, size, mtime, updated_at FROM sources WHERE path > $after ORDER BY path LIMIT $limit", after, chunk,
                r => new SourceRow(r.GetString(0), r.GetString(1), r.GetInt64(2), r.GetInt64(3), r.GetInt64(4)));
            if (sources.Count == 0) break;
            after = sources[^1].Path;
            yield return new StoreRows { Sources = sources };
        }
        for (long after = 0; ;)
        {
            var versions = Rows("SELECT id, path, content_hash, size, seen_at FROM source_versions WHERE id > $after ORDER BY id LIMIT $limit", after, chunk,
                r => new SourceVersionRow(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetInt64(3), r.GetInt64(4)));
            if (versions.Count == 0) break;
            after = versions[^1].Id;
            yield return new StoreRows { Versions = versions };
        }
        for ((string Parser, string Path) after = ("", ""); ;)
        {
            var outputs = new List<OutputRow>();
            try
            {
                using var cmd = _db.CreateCommand();
                cmd.CommandText = $"SELECT {OutputColumns}, updated_at FROM outputs " +
                    "WHERE (parser_name, source_path) > ($parser, $path) ORDER BY parser_name, source_path LIMIT $limit";
                cmd.Parameters.AddWithValue("$parser", after.Parser);
                cmd.Parameters.AddWithValue("$path", after.Path);
                cmd.Parameters.AddWithValue("$limit", chunk);
                using var r = cmd.ExecuteReader();
                while (r.Read()) outputs.Add(new OutputRow(ReadOutput(r), r.GetInt64(7)));
            }
            catch (SqliteException e)
            {
                throw Translate(e);
            }
            if (outputs.Count == 0) break;
            after = (outputs[^1].Output.ParserName, outputs[^1].Output.SourcePath);
            yield return new StoreRows { Outputs = outputs };
        }
        long lastJob = Scalar("SELECT coalesce(max(job_id), 0) FROM quarantine");
        for (long after = 0; after < lastJob; after += chunk)
        {
            var quarantine = Rows("SELECT job_id, topic, reason, rows FROM quarantine WHERE job_id > $after AND job_id <= $after + $limit ORDER BY job_id, topic, reason",
                after, chunk, r => (r.GetInt64(0), new QuarantineCount(r.GetString(1), r.GetString(2), r.GetInt64(3))));
            if (quarantine.Count > 0) yield return new StoreRows { Quarantine = quarantine };
        }
        // One row per topic and change of its schema: few.
        yield return new StoreRows
        {
            Schemas = Rows("SELECT topic, version, columns, job_id, parser_name, created_at FROM topic_schemas WHERE $after = 0 ORDER BY topic, version LIMIT $limit",
                0L, int.MaxValue, r => new TopicSchemaVersion(r.GetString(0), r.GetInt64(1), r.GetString(2), r.GetInt64(3), r.GetString(4), FromMs(r.GetInt64(5)))),
        };
    }

    private List<T> Rows<T>(string sql, object after, int limit, Func<SqliteDataReader, T> read)
    {
        try
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = sql;
            cmd.Parameters.AddWithValue("$after", after);
            cmd.Parameters.AddWithValue("$limit", limit);
            var list = new List<T>();
            using var r = cmd.ExecuteReader();
            while (r.Read()) list.Add(read(r));
            return list;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public void BeginImport() => throw StoreCopyThrow.Input_CannotImport(Location);

    public void Import(StoreRows rows) => throw StoreCopyThrow.Input_CannotImport(Location);

    public void EndImport() => throw StoreCopyThrow.Input_CannotImport(Location);

    public List<string> Check()
    {
        try
        {
            // integrity_check (not only the quick_check of every open): index contents too.
            string result = TextScalar("PRAGMA integrity_check(1)");
            if (result != "ok") throw StoreThrow.Damaged_Check(Location, result);
            return [$"SQLite file, schema version {Scalar("PRAGMA user_version")} (this casparian: {SchemaVersion}), integrity check ok"];
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }
}
