// The PostgreSQL store's quarantine counts and schema registry (Store.Contracts.cs says what they
// hold; the SQL mirrors Store.Sqlite.Contracts.cs). A topic's next schema version is taken under a
// transaction-scoped advisory lock on the topic, so two sentinels completing jobs of one topic at
// once do not both write version n+1.
using Npgsql;

namespace Casparian;

internal sealed partial class PostgresJobStore
{
    public void RecordQuarantine(long jobId, IReadOnlyList<QuarantineCount> counts) => InTransaction(() =>
    {
        using (var delete = Command("DELETE FROM quarantine WHERE job_id = @job"))
        {
            delete.Parameters.Add(Long("job", jobId));
            delete.ExecuteNonQuery();
        }
        foreach (var c in counts)
        {
            using var insert = Command("INSERT INTO quarantine (job_id, topic, reason, rows) VALUES (@job, @topic, @reason, @rows) " +
                "ON CONFLICT (job_id, topic, reason) DO UPDATE SET rows = quarantine.rows + excluded.rows");
            insert.Parameters.Add(Long("job", jobId));
            insert.Parameters.Add(Text("topic", c.Topic));
            insert.Parameters.Add(Text("reason", c.Reason));
            insert.Parameters.Add(Long("rows", c.Rows));
            insert.ExecuteNonQuery();
        }
        return 0;
    });

    public List<QuarantinedJob> ListQuarantine(string? topic, string? parserName, long? jobId) => Run(() =>
    {
        using var cmd = Command(
            "SELECT q.job_id, j.parser_name, j.parser_version, j.input_path, q.topic, q.reason, q.rows, coalesce(j.finished_at, j.created_at), j.topic_prefix " +
            "FROM quarantine q JOIN jobs j ON j.id = q.job_id " +
            "JOIN outputs o ON o.parser_name = j.parser_name AND o.source_path = j.input_path AND o.job_id = q.job_id " +
            "WHERE (@topic::text IS NULL OR q.topic = @topic) AND (@parser::text IS NULL OR j.parser_name = @parser) AND (@job::bigint IS NULL OR q.job_id = @job) " +
            "ORDER BY q.job_id, q.topic COLLATE \"C\", q.reason COLLATE \"C\"");
        cmd.Parameters.Add(Text("topic", topic));
        cmd.Parameters.Add(Text("parser", parserName));
        cmd.Parameters.Add(new NpgsqlParameter("job", NpgsqlTypes.NpgsqlDbType.Bigint) { Value = (object?)jobId ?? DBNull.Value });
        var list = new List<QuarantinedJob>();
        using var r = cmd.ExecuteReader();
        while (r.Read())
            list.Add(new QuarantinedJob(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetString(4), r.GetString(5), r.GetInt64(6), FromMs(r.GetInt64(7))) { TopicPrefix = r.GetString(8) });
        return list;
    });

    public bool RecordTopicSchema(string topic, string columns, long jobId) => InTransaction(() =>
    {
        using (var lockCmd = Command("SELECT pg_advisory_xact_lock(hashtext('casparian.topic:' || @topic))"))
        {
            lockCmd.Parameters.Add(Text("topic", topic));
            lockCmd.ExecuteNonQuery();
        }
        using var cmd = Command(
            "INSERT INTO topic_schemas (topic, version, columns, job_id, parser_name, created_at) " +
            "SELECT @topic, (SELECT coalesce(max(version), 0) + 1 FROM topic_schemas WHERE topic = @topic), @columns, @job, " +
            "  coalesce((SELECT parser_name FROM jobs WHERE id = @job), ''), @now " +
            "WHERE coalesce((SELECT columns FROM topic_schemas WHERE topic = @topic ORDER BY version DESC LIMIT 1), '') <> @columns");
        cmd.Parameters.Add(Text("topic", topic));
        cmd.Parameters.Add(Text("columns", columns));
        cmd.Parameters.Add(Long("job", jobId));
        cmd.Parameters.Add(Long("now", Now()));
        return cmd.ExecuteNonQuery() == 1;
    });

    public List<TopicSchemaVersion> TopicSchemaHistory(string topic) => Run(() =>
    {
        using var cmd = Command("SELECT topic, version, columns, job_id, parser_name, created_at FROM topic_schemas WHERE topic = @topic ORDER BY version");
        cmd.Parameters.Add(Text("topic", topic));
        var list = new List<TopicSchemaVersion>();
        using var r = cmd.ExecuteReader();
        while (r.Read()) list.Add(new TopicSchemaVersion(r.GetString(0), r.GetInt64(1), r.GetString(2), r.GetInt64(3), r.GetString(4), FromMs(r.GetInt64(5))));
        return list;
    });

    public List<TopicSchemaDef> CurrentTopicSchemas() => Run(() =>
    {
        using var cmd = Command(
            "SELECT t.topic, t.version, t.columns FROM topic_schemas t " +
            "WHERE t.version = (SELECT max(version) FROM topic_schemas WHERE topic = t.topic) ORDER BY t.topic COLLATE \"C\"");
        var list = new List<TopicSchemaDef>();
        using var r = cmd.ExecuteReader();
        while (r.Read()) list.Add(new TopicSchemaDef { Topic = r.GetString(0), Version = r.GetInt64(1), Columns = r.GetString(2) });
        return list;
    });
}
