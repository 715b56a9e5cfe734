// What only the SQLite store has: its file format and schema versions, its indexes and query plans,
// WAL, and how SQLite's errors become the store's exceptions. The behaviour every store shares is in
// StoreContract.cs.
using Microsoft.Data.Sqlite;
using Xunit;

namespace Casparian.Tests;

public sealed class StoreTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private string DbPath => _dir.File("jobs.db");

    private SqliteJobStore Open() => new(Defaults.Store(DbPath));

    private static NewJob Job(string path) => new("p", "1.0", path, "hash-" + path);

    private static readonly string[] Any = ["*"];

    [Fact]
    public void Store_Open_UsesWalAndTheCurrentSchemaVersion()
    {
        using (var store = Open()) store.Enqueue(Job("/x"));
        using var raw = new SqliteConnection($"Data Source={DbPath};Pooling=False");
        raw.Open();
        using var cmd = raw.CreateCommand();
        cmd.CommandText = "SELECT (SELECT journal_mode FROM pragma_journal_mode), (SELECT user_version FROM pragma_user_version)";
        using var r = cmd.ExecuteReader();
        r.Read();
        Assert.Equal(("wal", (long)SqliteJobStore.SchemaVersion), (r.GetString(0), r.GetInt64(1)));
    }

    [Fact]
    public void Store_Factory_PathIsSqliteAndAnUnknownSchemeIsRefused()
    {
        using (var store = JobStores.Open(Defaults.Store(DbPath))) Assert.IsType<SqliteJobStore>(store);
        // postgresql:// is PostgresStoreTests'.
        var e = Assert.Throws<InputException>(() => JobStores.Open(Defaults.Store("mysql://casparian@db.internal/jobs")));
        Assert.Equal("job store 'mysql://casparian@db.internal/jobs': mysql:// stores are not supported; give a file path for an SQLite store or postgresql://USER[:PASS]@HOST[:PORT]/DB", e.Message);
    }

    [Fact]
    public void Store_Locked_IsATransientStoreUnavailableException()
    {
        using var store = new SqliteJobStore(Defaults.Store(DbPath) with { LockTimeout = TimeSpan.FromMilliseconds(200) });
        using var blocker = new SqliteConnection($"Data Source={DbPath};Pooling=False");
        blocker.Open();
        using (var begin = blocker.CreateCommand())
        {
            begin.CommandText = "BEGIN IMMEDIATE";
            begin.ExecuteNonQuery();
        }
        var e = Assert.Throws<StoreUnavailableException>(() => store.Enqueue(Job("/x")));
        Assert.Equal(ExitCode.Unavailable, e.Code);
        Assert.Contains("locked by another process", e.Message);
        using (var rollback = blocker.CreateCommand())
        {
            rollback.CommandText = "ROLLBACK";
            rollback.ExecuteNonQuery();
        }
        // Nothing was lost or left half-done: the same call succeeds once the lock is gone.
        Assert.Equal("/x", store.Get(store.Enqueue(Job("/x")))!.InputPath);
    }

    [Fact]
    public void Store_Open_MigratesAVersion1FileKeepingItsJobs()
    {
        // A store as the first release wrote it: the version-1 schema and one queued job.
        using (var v1 = new SqliteConnection($"Data Source={DbPath};Pooling=False"))
        {
            v1.Open();
            using var cmd = v1.CreateCommand();
            cmd.CommandText = SqliteJobStore.SchemaSql.Split("CREATE INDEX jobs_file")[0] +
                "INSERT INTO jobs (parser_name, parser_version, input_path, content_hash, state, created_at) VALUES ('p', '1.0', '/in/old', 'h-old', 'QUEUED', 0);" +
                "PRAGMA user_version = 1;";
            cmd.ExecuteNonQuery();
        }
        using (var store = Open())
        {
            Assert.True(store.HasJob("p", "1.0", "h-old"));
            Assert.Equal("/in/old", Assert.Single(store.Claim("w", Any, 5)).InputPath);
        }
        using var check = new SqliteConnection($"Data Source={DbPath};Pooling=False");
        check.Open();
        using var q = check.CreateCommand();
        q.CommandText = "SELECT (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_master WHERE name = 'jobs_file')";
        using var r = q.ExecuteReader();
        r.Read();
        Assert.Equal(SqliteJobStore.SchemaVersion, r.GetInt64(0));
        Assert.Equal(1, r.GetInt64(1));
    }

    [Fact]
    public void Store_Open_MigratingAVersion2File_FillsTheCatalogFromTheJobs()
    {
        // Version 2: two COMPLETED jobs of one parser for /in/a (the old naming kept both files), one
        // of another version for /in/b, and a FAILED one for /in/c.
        using (var v2 = new SqliteConnection($"Data Source={DbPath};Pooling=False"))
        {
            v2.Open();
            using var cmd = v2.CreateCommand();
            string Row(string parser, string version, string path, string hash, string state, string? artifacts) =>
                $"INSERT INTO jobs (parser_name, parser_version, input_path, content_hash, state, created_at, artifacts) VALUES ('{parser}', '{version}', '{path}', '{hash}', '{state}', 0, {(artifacts is null ? "NULL" : $"'{artifacts}'")});";
            cmd.CommandText = SqliteJobStore.SchemaSql.Split("CREATE TABLE sources")[0] +
                Row("p", "1.0", "/in/a", "h1", "COMPLETED", """[{"topic":"t","uri":"file:///o/t/job-1.parquet"}]""") +
                Row("p", "1.0", "/in/a", "h2", "COMPLETED", """[{"topic":"t","uri":"file:///o/t/job-2.parquet"}]""") +
                Row("p", "0.9", "/in/b", "hb", "COMPLETED", "[]") +
                Row("p", "1.0", "/in/c", "hc", "FAILED", null) +
                "PRAGMA user_version = 2;";
            cmd.ExecuteNonQuery();
        }
        using var store = Open();
        var a = store.GetOutput("p", "/in/a")!;
        Assert.Equal((2L, "1.0", "h2"), (a.JobId, a.ParserVersion, a.ContentHash));
        Assert.Equal(["file:///o/t/job-1.parquet", "file:///o/t/job-2.parquet"], a.Uris());
        Assert.Null(store.GetOutput("p", "/in/c"));
        Assert.Equal(["/in/b"], store.OutputsNotFrom("p", "1.0").Select(o => o.SourcePath));
        var known = store.LookupSources("p", "1.0", ["/in/a", "/in/c"], "");
        Assert.Equal(("h2", -1L), (known["/in/a"].ContentHash, known["/in/a"].Size));
        Assert.Equal("hc", known["/in/c"].ContentHash);
    }

    [Fact]
    public void Store_Lookups_UseIndexesNotScans()
    {
        using var store = Open();
        store.EnqueueMany([.. Enumerable.Range(0, 100).Select(i => Job($"/{i}"))]);

        string get = string.Join(" | ", store.ExplainQueryPlan("SELECT * FROM jobs WHERE id = $id", ("$id", 5L)));
        Assert.Contains("USING INTEGER PRIMARY KEY", get);

        string claim = string.Join(" | ", store.ExplainQueryPlan(SqliteJobStore.ClaimSql,
            ("$worker", "w"), ("$now", 0L), ("$any", 0), ("$caps", "[\"p\"]")));
        Assert.True(claim.Contains("USING COVERING INDEX jobs_queue"), claim);
        Assert.Contains("USING INTEGER PRIMARY KEY", claim);
        Assert.DoesNotContain("TEMP B-TREE", claim);

        string done = string.Join(" | ", store.ExplainQueryPlan(
            "SELECT 1 FROM jobs WHERE content_hash = $h AND parser_name = $p AND parser_version = $v AND state = 'COMPLETED' LIMIT 1",
            ("$h", "x"), ("$p", "p"), ("$v", "1")));
        Assert.Contains("jobs_done", done);

        string running = string.Join(" | ", store.ExplainQueryPlan("SELECT id FROM jobs WHERE state = 'RUNNING' AND worker = $w", ("$w", "w")));
        Assert.Contains("USING INDEX jobs_running (worker=?)", running);

        string failed = string.Join(" | ", store.ExplainQueryPlan("SELECT id FROM jobs WHERE state IN ('FAILED', 'CANCELLED') AND state = 'FAILED' ORDER BY id DESC LIMIT 5"));
        Assert.Contains("jobs_attention", failed);
    }

    [Fact]
    public void Store_Open_NewerSchemaIsRefusedAndLeftUnchanged()
    {
        using (var store = Open()) store.Enqueue(Job("/x"));
        using (var raw = new SqliteConnection($"Data Source={DbPath};Pooling=False"))
        {
            raw.Open();
            using var cmd = raw.CreateCommand();
            cmd.CommandText = "PRAGMA user_version = 99";
            cmd.ExecuteNonQuery();
        }
        byte[] before = File.ReadAllBytes(DbPath);
        var e = Assert.Throws<StoreException>(() => Open());
        Assert.Equal(ExitCode.BadInput, e.Code);
        Assert.Contains("schema version 99", e.Message);
        Assert.Contains("upgrade casparian", e.Message);
        Assert.Equal(before, File.ReadAllBytes(DbPath));
    }

    [Fact]
    public void Store_Open_GarbageFileIsRefusedAndLeftUnchanged()
    {
        byte[] garbage = [.. Enumerable.Range(0, 4096).Select(i => (byte)(i * 7))];
        File.WriteAllBytes(DbPath, garbage);
        var e = Assert.Throws<StoreException>(() => Open());
        Assert.Equal(ExitCode.BadInput, e.Code);
        Assert.Contains("not an SQLite database", e.Message);
        Assert.Equal(garbage, File.ReadAllBytes(DbPath));
    }

    [Fact]
    public void Store_Open_ForeignSqliteDatabaseIsRefused()
    {
        SqliteRuntime.EnsureInitialized();
        using (var raw = new SqliteConnection($"Data Source={DbPath};Pooling=False"))
        {
            raw.Open();
            using var cmd = raw.CreateCommand();
            cmd.CommandText = "CREATE TABLE notes (t TEXT)";
            cmd.ExecuteNonQuery();
        }
        Assert.Contains("not a Casparian job store", Assert.Throws<StoreException>(() => Open()).Message);
    }

    [Fact]
    public void Store_Open_MissingFileWithoutCreateIsRefused()
    {
        var e = Assert.Throws<InputException>(() => JobStores.Open(Defaults.Store(DbPath) with { Create = false }));
        Assert.Contains("no job store", e.Message);
        Assert.False(File.Exists(DbPath));
    }
}
