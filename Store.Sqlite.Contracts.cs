// The SQLite store's quarantine counts and schema registry (Store.Contracts.cs says what they hold).
// quarantine is keyed by (job, topic, reason): `quarantine show JOB` is one prefix probe, and `ls` joins
// each row to its job and to the catalog's outputs by primary key. topic_schemas is keyed by (topic,
// version): the current version of a topic is the last entry of its key range.
using Microsoft.Data.Sqlite;

namespace Casparian;

internal sealed partial class SqliteJobStore
{
    internal const string RecordTopicSchemaSql =
        "INSERT INTO topic_schemas (topic, version, columns, job_id, parser_name, created_at) " +
        "SELECT $topic, (SELECT coalesce(max(version), 0) + 1 FROM topic_schemas WHERE topic = $topic), $columns, $job, " +
        "  coalesce((SELECT parser_name FROM jobs WHERE id = $job), ''), $now " +
        "WHERE coalesce((SELECT columns FROM topic_schemas WHERE topic = $topic ORDER BY version DESC LIMIT 1), '') <> $columns";

    public void RecordQuarantine(long jobId, IReadOnlyList<QuarantineCount> counts) => InTransaction(() =>
    {
        using var delete = _db.CreateCommand();
        delete.CommandText = "DELETE FROM quarantine WHERE job_id = $job";
        delete.Parameters.AddWithValue("$job", jobId);
        delete.ExecuteNonQuery();
        using var insert = _db.CreateCommand();
        insert.CommandText = "INSERT INTO quarantine (job_id, topic, reason, rows) VALUES ($job, $topic, $reason, $rows) " +
            "ON CONFLICT (job_id, topic, reason) DO UPDATE SET rows = rows + excluded.rows";
        var job = insert.Parameters.AddWithValue("$job", jobId);
        var topic = insert.Parameters.Add(new SqliteParameter { ParameterName = "$topic" });
        var reason = insert.Parameters.Add(new SqliteParameter { ParameterName = "$reason" });
        var rows = insert.Parameters.Add(new SqliteParameter { ParameterName = "$rows" });
        foreach (var c in counts)
        {
            topic.Value = c.Topic;
            reason.Value = c.Reason;
            rows.Value = c.Rows;
            insert.ExecuteNonQuery();
        }
        return 0;
    });

    public List<QuarantinedJob> ListQuarantine(string? topic, string? parserName, long? jobId) => Query(
        "SELECT q.job_id, j.parser_name, j.parser_version, j.input_path, q.topic, q.reason, q.rows, coalesce(j.finished_at, j.created_at), j.topic_prefix " +
        "FROM quarantine q JOIN jobs j ON j.id = q.job_id " +
        "JOIN outputs o ON o.parser_name = j.parser_name AND o.source_path = j.input_path AND o.job_id = q.job_id " +
        "WHERE ($topic IS NULL OR q.topic = $topic) AND ($parser IS NULL OR j.parser_name = $parser) AND ($job IS NULL OR q.job_id = $job) " +
        "ORDER BY q.job_id, q.topic, q.reason",
        cmd =>
        {
            cmd.Parameters.AddWithValue("$topic", (object?)topic ?? DBNull.Value);
            cmd.Parameters.AddWithValue("$parser", (object?)parserName ?? DBNull.Value);
            cmd.Parameters.AddWithValue("$job", (object?)jobId ?? DBNull.Value);
        },
        r => new QuarantinedJob(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetString(4), r.GetString(5), r.GetInt64(6), FromMs(r.GetInt64(7))) { TopicPrefix = r.GetString(8) });

    // On every completion's path (once per topic): prepared once per connection.
    private SqliteCommand? _recordTopicSchema;

    public bool RecordTopicSchema(string topic, string columns, long jobId) => InTransaction(() =>
    {
        var cmd = Prepare(ref _recordTopicSchema, RecordTopicSchemaSql, "$topic", "$columns", "$job", "$now");
        cmd.Parameters[0].Value = topic;
        cmd.Parameters[1].Value = columns;
        cmd.Parameters[2].Value = jobId;
        cmd.Parameters[3].Value = Now();
        return cmd.ExecuteNonQuery() == 1;
    });

    public List<TopicSchemaVersion> TopicSchemaHistory(string topic) => Query(
        "SELECT topic, version, columns, job_id, parser_name, created_at FROM topic_schemas WHERE topic = $topic ORDER BY version",
        cmd => cmd.Parameters.AddWithValue("$topic", topic),
        r => new TopicSchemaVersion(r.GetString(0), r.GetInt64(1), r.GetString(2), r.GetInt64(3), r.GetString(4), FromMs(r.GetInt64(5))));

    public List<TopicSchemaDef> CurrentTopicSchemas() => Query(
        "SELECT t.topic, t.version, t.columns FROM topic_schemas t " +
        "WHERE t.version = (SELECT max(version) FROM topic_schemas WHERE topic = t.topic) ORDER BY t.topic",
        _ => { },
        r => new TopicSchemaDef { Topic = r.GetString(0), Version = r.GetInt64(1), Columns = r.GetString(2) });

    private List<T> Query<T>(string sql, Action<SqliteCommand> bind, Func<SqliteDataReader, T> read)
    {
        try
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = sql;
            bind(cmd);
            using var r = cmd.ExecuteReader();
            var list = new List<T>();
            while (r.Read()) list.Add(read(r));
            return list;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }
}
