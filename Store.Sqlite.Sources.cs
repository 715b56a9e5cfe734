// The SQLite store's sources, routing rules and unmatched files (Store.Sources.cs says what they hold).
// A handful of rows each, except unmatched_files (one per file no rule matched), keyed by (source,
// path) so a source's list is one range scan; a scan replaces a source's list in one transaction.
using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace Casparian;

internal sealed partial class SqliteJobStore
{
    // 5: sources and routing rules (issue 19). No foreign keys: a rule may name a source declared in
    // the config file, and a stored source's rules are removed with it by RemoveSource.
    private const string SourcesMigration =
        """
        CREATE TABLE watch_sources (
            name        TEXT PRIMARY KEY,
            dir         TEXT NOT NULL,
            recursive   INTEGER NOT NULL,
            ignore      TEXT NOT NULL,
            created_at  INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE routing_rules (
            id             INTEGER PRIMARY KEY,
            source         TEXT NOT NULL,
            glob           TEXT NOT NULL,
            parser_name    TEXT NOT NULL,
            parser_version TEXT,
            priority       INTEGER NOT NULL,
            created_at     INTEGER NOT NULL
        );
        CREATE TABLE unmatched_files (
            source   TEXT NOT NULL,
            path     TEXT NOT NULL,
            size     INTEGER NOT NULL,
            seen_at  INTEGER NOT NULL,
            PRIMARY KEY (source, path)
        ) WITHOUT ROWID;
        """;

    // 6: a routing rule's topic prefix (issue 19), carried by the jobs it queues (DISPATCH topic_prefix)
    // and by the catalog's current output, so a file routed again under another prefix is new output.
    // "" is no prefix: existing rules, jobs and outputs keep their unprefixed topics. routing_rules is
    // rebuilt with AUTOINCREMENT: a plain INTEGER PRIMARY KEY hands the highest id out again once that
    // rule is removed, and `rule rm ID` must never reach a rule added after the id was read.
    private const string TopicPrefixMigration =
        """
        CREATE TABLE routing_rules_v6 (
            id             INTEGER PRIMARY KEY AUTOINCREMENT,
            source         TEXT NOT NULL,
            glob           TEXT NOT NULL,
            parser_name    TEXT NOT NULL,
            parser_version TEXT,
            priority       INTEGER NOT NULL,
            created_at     INTEGER NOT NULL,
            topic_prefix   TEXT NOT NULL DEFAULT ''
        );
        INSERT INTO routing_rules_v6 (id, source, glob, parser_name, parser_version, priority, created_at)
            SELECT id, source, glob, parser_name, parser_version, priority, created_at FROM routing_rules;
        DROP TABLE routing_rules;
        ALTER TABLE routing_rules_v6 RENAME TO routing_rules;
        ALTER TABLE jobs ADD COLUMN topic_prefix TEXT NOT NULL DEFAULT '';
        ALTER TABLE outputs ADD COLUMN topic_prefix TEXT NOT NULL DEFAULT '';
        """;

    public bool AddSource(WatchSource source) => AdHoc(cmd =>
    {
        cmd.CommandText = "INSERT INTO watch_sources (name, dir, recursive, ignore, created_at) VALUES ($name, $dir, $recursive, $ignore, $now) ON CONFLICT (name) DO NOTHING";
        cmd.Parameters.AddWithValue("$name", source.Name);
        cmd.Parameters.AddWithValue("$dir", source.Dir);
        cmd.Parameters.AddWithValue("$recursive", source.Recursive ? 1 : 0);
        cmd.Parameters.AddWithValue("$ignore", JsonSerializer.Serialize([.. source.Ignore], StoreJson.Default.ListString));
        cmd.Parameters.AddWithValue("$now", Now());
        return cmd.ExecuteNonQuery() == 1;
    });

    public List<WatchSource> ListSources() => AdHoc(cmd =>
    {
        cmd.CommandText = "SELECT name, dir, recursive, ignore FROM watch_sources ORDER BY name";
        var list = new List<WatchSource>();
        using var r = cmd.ExecuteReader();
        while (r.Read())
            list.Add(new WatchSource(r.GetString(0), r.GetString(1), r.GetInt64(2) != 0, JsonSerializer.Deserialize(r.GetString(3), StoreJson.Default.ListString) ?? []));
        return list;
    });

    public bool RemoveSource(string name) => InTransaction(() => AdHoc(cmd =>
    {
        cmd.CommandText = "DELETE FROM routing_rules WHERE source = $name; DELETE FROM unmatched_files WHERE source = $name; DELETE FROM watch_sources WHERE name = $name";
        cmd.Parameters.AddWithValue("$name", name);
        cmd.ExecuteNonQuery();
        return Changes() == 1;
    }));

    public long AddRule(RoutingRule rule) => AdHoc(cmd =>
    {
        cmd.CommandText = "INSERT INTO routing_rules (source, glob, parser_name, parser_version, priority, created_at, topic_prefix) " +
            "VALUES ($source, $glob, $parser, $version, $priority, $now, $prefix) RETURNING id";
        cmd.Parameters.AddWithValue("$prefix", rule.TopicPrefix);
        cmd.Parameters.AddWithValue("$source", rule.Source);
        cmd.Parameters.AddWithValue("$glob", rule.Glob);
        cmd.Parameters.AddWithValue("$parser", rule.ParserName);
        cmd.Parameters.AddWithValue("$version", (object?)rule.ParserVersion ?? DBNull.Value);
        cmd.Parameters.AddWithValue("$priority", rule.Priority);
        cmd.Parameters.AddWithValue("$now", Now());
        return (long)cmd.ExecuteScalar()!;
    });

    public List<RoutingRule> ListRules() => AdHoc(cmd =>
    {
        cmd.CommandText = "SELECT id, source, glob, parser_name, parser_version, priority, topic_prefix FROM routing_rules ORDER BY id";
        var list = new List<RoutingRule>();
        using var r = cmd.ExecuteReader();
        while (r.Read())
            list.Add(new RoutingRule(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetString(3), r.IsDBNull(4) ? null : r.GetString(4), r.GetInt32(5)) { TopicPrefix = r.GetString(6) });
        return list;
    });

    public bool RemoveRule(long id) => AdHoc(cmd =>
    {
        cmd.CommandText = "DELETE FROM routing_rules WHERE id = $id";
        cmd.Parameters.AddWithValue("$id", id);
        return cmd.ExecuteNonQuery() == 1;
    });

    public void SetUnmatched(string source, IReadOnlyList<(string Path, long Size)> files) => InTransaction(() => AdHoc(cmd =>
    {
        cmd.CommandText = "DELETE FROM unmatched_files WHERE source = $source";
        cmd.Parameters.AddWithValue("$source", source);
        cmd.ExecuteNonQuery();
        cmd.CommandText = "INSERT INTO unmatched_files (source, path, size, seen_at) VALUES ($source, $path, $size, $now) ON CONFLICT DO NOTHING";
        var path = cmd.Parameters.Add(new SqliteParameter("$path", ""));
        var size = cmd.Parameters.Add(new SqliteParameter("$size", 0L));
        cmd.Parameters.AddWithValue("$now", Now());
        foreach (var (p, s) in files)
        {
            path.Value = p;
            size.Value = s;
            cmd.ExecuteNonQuery();
        }
        return 0;
    }));

    public List<UnmatchedFile> ListUnmatched(string source) => AdHoc(cmd =>
    {
        cmd.CommandText = "SELECT path, size, seen_at FROM unmatched_files WHERE source = $source ORDER BY path";
        cmd.Parameters.AddWithValue("$source", source);
        var list = new List<UnmatchedFile>();
        using var r = cmd.ExecuteReader();
        while (r.Read()) list.Add(new UnmatchedFile(r.GetString(0), r.GetInt64(1), FromMs(r.GetInt64(2))));
        return list;
    });

    private long Changes() => Scalar("SELECT changes()");

    /// <summary>One ad-hoc command, its SQLite errors translated.</summary>
    private T AdHoc<T>(Func<SqliteCommand, T> work)
    {
        try
        {
            using var cmd = _db.CreateCommand();
            return work(cmd);
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }
}
