// The PostgreSQL store's side of `store copy` (Store.Copy.cs) and `store check`: rows written with
// binary COPY, keeping their ids, and the identity sequences moved past them at the end; rows read in
// id (or key) order, one chunk per statement.
using Npgsql;
using NpgsqlTypes;

namespace Casparian;

internal sealed partial class PostgresJobStore
{
    public IEnumerable<StoreRows> Export(int chunk)
    {
        var parsers = new List<ParserRecord>();
        foreach (var p in ListParsers())
            if (GetParser(p.Name, p.Version) is { } full) parsers.Add(full with { CreatedAt = p.CreatedAt });
        yield return new StoreRows { Parsers = parsers };
        for (long after = 0; ;)
        {
            long from = after;
            var jobs = Run(() => Rows($"SELECT {JobColumns} FROM jobs WHERE id > @after ORDER BY id LIMIT @limit", c => c.Parameters.Add(Long("after", from)), chunk, ReadJob));
            if (jobs.Count == 0) break;
            after = jobs[^1].Id;
            yield return new StoreRows { Jobs = jobs };
        }
        for (string after = ""; ;)
        {
            string from = after;
            var sources = Run(() => Rows("SELECT path, content_hash, size, mtime, updated_at FROM sources WHERE path COLLATE \"C\" > @after ORDER BY path COLLATE \"C\" LIMIT @limit",
                c => c.Parameters.Add(Text("after", from)), chunk, r => new SourceRow(r.GetString(0), r.GetString(1), r.GetInt64(2), r.GetInt64(3), r.GetInt64(4))));
            if (sources.Count == 0) break;
            after = sources[^1].Path;
            yield return new StoreRows { Sources = sources };
        }
        for (long after = 0; ;)
        {
            long from = after;
            var versions = Run(() => Rows("SELECT id, path, content_hash, size, seen_at FROM source_versions WHERE id > @after ORDER BY id LIMIT @limit",
                c => c.Parameters.Add(Long("after", from)), chunk, r => new SourceVersionRow(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetInt64(3), r.GetInt64(4))));
            if (versions.Count == 0) break;
            after = versions[^1].Id;
            yield return new StoreRows { Versions = versions };
        }
        for ((string Parser, string Path) after = ("", ""); ;)
        {
            var from = after;
            var outputs = Run(() => Rows(
                $"SELECT {OutputColumns}, updated_at FROM outputs WHERE (parser_name COLLATE \"C\", source_path COLLATE \"C\") > (@parser, @path) " +
                "ORDER BY parser_name COLLATE \"C\", source_path COLLATE \"C\" LIMIT @limit",
                c => { c.Parameters.Add(Text("parser", from.Parser)); c.Parameters.Add(Text("path", from.Path)); }, chunk, r => new OutputRow(ReadOutput(r), r.GetInt64(7))));
            if (outputs.Count == 0) break;
            after = (outputs[^1].Output.ParserName, outputs[^1].Output.SourcePath);
            yield return new StoreRows { Outputs = outputs };
        }
        long lastJob = Run(() => { using var cmd = Command("SELECT coalesce(max(job_id), 0) FROM quarantine"); return (long)cmd.ExecuteScalar()!; });
        for (long after = 0; after < lastJob; after += chunk)
        {
            long from = after;
            var quarantine = Run(() => Rows("SELECT job_id, topic, reason, rows FROM quarantine WHERE job_id > @after AND job_id <= @after + @limit ORDER BY job_id",
                c => c.Parameters.Add(Long("after", from)), chunk, r => (r.GetInt64(0), new QuarantineCount(r.GetString(1), r.GetString(2), r.GetInt64(3)))));
            if (quarantine.Count > 0) yield return new StoreRows { Quarantine = quarantine };
        }
        yield return new StoreRows
        {
            Schemas = Run(() => Rows("SELECT topic, version, columns, job_id, parser_name, created_at FROM topic_schemas ORDER BY topic COLLATE \"C\", version LIMIT @limit",
                _ => { }, int.MaxValue, r => new TopicSchemaVersion(r.GetString(0), r.GetInt64(1), r.GetString(2), r.GetInt64(3), r.GetString(4), FromMs(r.GetInt64(5))))),
        };
    }

    private List<T> Rows<T>(string sql, Action<NpgsqlCommand> bind, int limit, Func<NpgsqlDataReader, T> read)
    {
        using var cmd = Command(sql);
        bind(cmd);
        cmd.Parameters.Add(Int("limit", limit));
        var list = new List<T>();
        using var r = cmd.ExecuteReader();
        while (r.Read()) list.Add(read(r));
        return list;
    }

    public void BeginImport() => Run(() =>
    {
        using var cmd = Command("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM parsers), (SELECT count(*) FROM sources)");
        long jobs, parsers, sources;
        using (var r = cmd.ExecuteReader())
        {
            r.Read();
            (jobs, parsers, sources) = (r.GetInt64(0), r.GetInt64(1), r.GetInt64(2));
        }
        if (jobs + parsers + sources > 0) throw StoreCopyThrow.Input_NotEmpty(Location, jobs, parsers);
        // No sentinel claims from a store half copied: the tables stay locked until the copy commits.
        Exec("LOCK TABLE jobs, parsers, sources, source_versions, outputs, quarantine, topic_schemas IN EXCLUSIVE MODE");
        // The catalog's history is copied as it was, not re-derived from the copied sources.
        Exec("ALTER TABLE sources DISABLE TRIGGER sources_version");
        return 0;
    });

    public void Import(StoreRows rows) => Run(() =>
    {
        var conn = Connection();
        if (rows.Parsers.Count > 0)
        {
            using var copy = conn.BeginBinaryImport(
                "COPY parsers (id, name, version, source, lockfile, env_hash, source_hash, lockfile_hash, artifact_hash, archive, entry_module, created_at, topics) FROM STDIN (FORMAT BINARY)");
            foreach (var p in rows.Parsers)
            {
                copy.StartRow();
                copy.Write(p.Id, NpgsqlDbType.Bigint);
                copy.Write(p.Name, NpgsqlDbType.Text);
                copy.Write(p.Version, NpgsqlDbType.Text);
                copy.Write(p.Source, NpgsqlDbType.Text);
                Nullable(copy, p.Lockfile);
                copy.Write(p.EnvHash, NpgsqlDbType.Text);
                copy.Write(p.SourceHash, NpgsqlDbType.Text);
                Nullable(copy, p.LockfileHash);
                copy.Write(p.ArtifactHash, NpgsqlDbType.Text);
                if (p.Archive is { } a) copy.Write(a, NpgsqlDbType.Bytea); else copy.WriteNull();
                Nullable(copy, p.EntryModule);
                copy.Write(p.CreatedAt.ToUnixTimeMilliseconds(), NpgsqlDbType.Bigint);
                Nullable(copy, p.TopicsJson);
            }
            copy.Complete();
        }
        if (rows.Jobs.Count > 0)
        {
            using var copy = conn.BeginBinaryImport(
                "COPY jobs (id, parser_name, parser_version, input_path, content_hash, priority, state, worker, created_at, claimed_at, heartbeat_at, " +
                "finished_at, retry_count, next_attempt_at, error, metrics, artifacts, topic_prefix) FROM STDIN (FORMAT BINARY)");
            foreach (var j in rows.Jobs)
            {
                copy.StartRow();
                copy.Write(j.Id, NpgsqlDbType.Bigint);
                copy.Write(j.ParserName, NpgsqlDbType.Text);
                copy.Write(j.ParserVersion, NpgsqlDbType.Text);
                copy.Write(j.InputPath, NpgsqlDbType.Text);
                copy.Write(j.ContentHash, NpgsqlDbType.Text);
                copy.Write(j.Priority, NpgsqlDbType.Integer);
                copy.Write(j.State.Name(), NpgsqlDbType.Text);
                Nullable(copy, j.Worker);
                copy.Write(j.CreatedAt.ToUnixTimeMilliseconds(), NpgsqlDbType.Bigint);
                Nullable(copy, j.ClaimedAt);
                Nullable(copy, j.HeartbeatAt);
                Nullable(copy, j.FinishedAt);
                copy.Write(j.RetryCount, NpgsqlDbType.Integer);
                copy.Write(j.NextAttemptAt?.ToUnixTimeMilliseconds() ?? 0, NpgsqlDbType.Bigint);
                Nullable(copy, j.Error);
                Nullable(copy, j.MetricsJson);
                Nullable(copy, j.ArtifactsJson);
                copy.Write(j.TopicPrefix, NpgsqlDbType.Text);
            }
            copy.Complete();
        }
        if (rows.Sources.Count > 0)
        {
            using var copy = conn.BeginBinaryImport("COPY sources (path, content_hash, size, mtime, updated_at) FROM STDIN (FORMAT BINARY)");
            foreach (var s in rows.Sources)
            {
                copy.StartRow();
                copy.Write(s.Path, NpgsqlDbType.Text);
                copy.Write(s.ContentHash, NpgsqlDbType.Text);
                copy.Write(s.Size, NpgsqlDbType.Bigint);
                copy.Write(s.MtimeUs, NpgsqlDbType.Bigint);
                copy.Write(s.UpdatedAtMs, NpgsqlDbType.Bigint);
            }
            copy.Complete();
        }
        if (rows.Versions.Count > 0)
        {
            using var copy = conn.BeginBinaryImport("COPY source_versions (id, path, content_hash, size, seen_at) FROM STDIN (FORMAT BINARY)");
            foreach (var v in rows.Versions)
            {
                copy.StartRow();
                copy.Write(v.Id, NpgsqlDbType.Bigint);
                copy.Write(v.Path, NpgsqlDbType.Text);
                copy.Write(v.ContentHash, NpgsqlDbType.Text);
                copy.Write(v.Size, NpgsqlDbType.Bigint);
                copy.Write(v.SeenAtMs, NpgsqlDbType.Bigint);
            }
            copy.Complete();
        }
        if (rows.Outputs.Count > 0)
        {
            using var copy = conn.BeginBinaryImport(
                "COPY outputs (parser_name, source_path, job_id, parser_version, content_hash, artifacts, updated_at, topic_prefix) FROM STDIN (FORMAT BINARY)");
            foreach (var (o, updated) in rows.Outputs)
            {
                copy.StartRow();
                copy.Write(o.ParserName, NpgsqlDbType.Text);
                copy.Write(o.SourcePath, NpgsqlDbType.Text);
                copy.Write(o.JobId, NpgsqlDbType.Bigint);
                copy.Write(o.ParserVersion, NpgsqlDbType.Text);
                copy.Write(o.ContentHash, NpgsqlDbType.Text);
                Nullable(copy, o.ArtifactsJson);
                copy.Write(updated, NpgsqlDbType.Bigint);
                copy.Write(o.TopicPrefix, NpgsqlDbType.Text);
            }
            copy.Complete();
        }
        if (rows.Quarantine.Count > 0)
        {
            using var copy = conn.BeginBinaryImport("COPY quarantine (job_id, topic, reason, rows) FROM STDIN (FORMAT BINARY)");
            foreach (var (job, c) in rows.Quarantine)
            {
                copy.StartRow();
                copy.Write(job, NpgsqlDbType.Bigint);
                copy.Write(c.Topic, NpgsqlDbType.Text);
                copy.Write(c.Reason, NpgsqlDbType.Text);
                copy.Write(c.Rows, NpgsqlDbType.Bigint);
            }
            copy.Complete();
        }
        if (rows.Schemas.Count > 0)
        {
            using var copy = conn.BeginBinaryImport("COPY topic_schemas (topic, version, columns, job_id, parser_name, created_at) FROM STDIN (FORMAT BINARY)");
            foreach (var t in rows.Schemas)
            {
                copy.StartRow();
                copy.Write(t.Topic, NpgsqlDbType.Text);
                copy.Write(t.Version, NpgsqlDbType.Bigint);
                copy.Write(t.Columns, NpgsqlDbType.Text);
                copy.Write(t.JobId, NpgsqlDbType.Bigint);
                copy.Write(t.ParserName, NpgsqlDbType.Text);
                copy.Write(t.CreatedAt.ToUnixTimeMilliseconds(), NpgsqlDbType.Bigint);
            }
            copy.Complete();
        }
        return 0;
    });

    public void EndImport() => Run(() =>
    {
        Exec("ALTER TABLE sources ENABLE TRIGGER sources_version");
        foreach (var table in new[] { "jobs", "parsers", "source_versions" })
            Exec($"SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce((SELECT max(id) FROM {table}), 0) + 1, false)");
        // Copied RUNNING jobs belong to no sentinel here: the first sweep requeues those no worker reports.
        return 0;
    });

    private static void Nullable(NpgsqlBinaryImporter copy, string? value)
    {
        if (value is null) copy.WriteNull(); else copy.Write(value, NpgsqlDbType.Text);
    }

    private static void Nullable(NpgsqlBinaryImporter copy, DateTimeOffset? value)
    {
        if (value is { } v) copy.Write(v.ToUnixTimeMilliseconds(), NpgsqlDbType.Bigint); else copy.WriteNull();
    }

    public List<string> Check() => Run(() =>
    {
        var lines = new List<string> { $"PostgreSQL, schema version {ReadVersion()} (this casparian: {SchemaVersion})" };
        using (var cmd = Command("SELECT count(*) FROM jobs WHERE state NOT IN ('QUEUED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED') OR (state = 'RUNNING' AND worker IS NULL)"))
            if ((long)cmd.ExecuteScalar()! is > 0 and var bad)
                throw new StoreException(ExitCode.StoreDamaged, $"job store {Location} holds {bad} job(s) in an unknown state or RUNNING on no worker; was it written by a newer casparian?");
        var leases = Leases();
        if (leases.Count == 0) lines.Add("no sentinel holds a lease");
        foreach (var (name, expiresIn, leader) in leases)
            lines.Add(expiresIn >= 0
                ? $"sentinel {name}: lease live for {expiresIn:0.#} s{(leader ? ", leads maintenance" : "")}"
                : $"sentinel {name}: lease expired {-expiresIn:0.#} s ago (stopped or dead)");
        return lines;
    });
}
