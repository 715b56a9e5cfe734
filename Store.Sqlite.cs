// The SQLite job store. Times are Unix milliseconds (UTC); states are stored as their names so the
// file reads well in the sqlite3 shell. Statements are prepared once per connection and reused.
// Everything SQLite stays in this file: paths, pragmas, and its errors, which every public method
// turns into the store's own (Translate: BUSY/LOCKED → StoreUnavailableException, the rest → StoreException).
//
// Indexes, each serving one access path so no operation scans the jobs table. All but the primary
// key are partial, so the hot path (claim: QUEUED → RUNNING, complete: RUNNING → COMPLETED) writes as
// few index pages as possible; with one job per transaction those pages are most of the commit.
//   jobs_queue     (priority DESC, id, next_attempt_at, parser_name, state) WHERE state='QUEUED'
//                  claim walks it in dispatch order and filters due time and capability from the
//                  index alone, so jobs in backoff or for a parser nobody runs cost no row reads;
//                  named with INDEXED BY, since without statistics SQLite may pick another plan
//   jobs_running   (worker, id) WHERE state='RUNNING'        lost worker, heartbeat, adoption
//   jobs_done      (content_hash, parser_name, parser_version) WHERE state='COMPLETED'   `job add` skip
//   jobs_attention (state, id) WHERE state IN ('FAILED','CANCELLED')                  `jobs --state`
// Jobs are never deleted (they are the history), so the number of COMPLETED jobs is max(id) minus
// the others, each counted from its small partial index: counts per state cost O(unfinished jobs).
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace Casparian;

internal sealed partial class SqliteJobStore : IJobStore
{
    /// <summary>The schema this build reads and writes (PRAGMA user_version).</summary>
    public const int SchemaVersion = 6;

    // Migrations by target version: Migrations[0] takes an empty file to version 1.
    private static readonly string[] Migrations =
    [
        """
        CREATE TABLE parsers (
            id            INTEGER PRIMARY KEY,
            name          TEXT NOT NULL,
            version       TEXT NOT NULL,
            source        TEXT NOT NULL,
            lockfile      TEXT,
            env_hash      TEXT NOT NULL,
            source_hash   TEXT NOT NULL,
            lockfile_hash TEXT,
            artifact_hash TEXT NOT NULL,
            archive       BLOB,
            entry_module  TEXT,
            created_at    INTEGER NOT NULL,
            UNIQUE (name, version)
        );
        CREATE TABLE jobs (
            id              INTEGER PRIMARY KEY,
            parser_name     TEXT NOT NULL,
            parser_version  TEXT NOT NULL,
            input_path      TEXT NOT NULL,
            content_hash    TEXT NOT NULL,
            priority        INTEGER NOT NULL DEFAULT 0,
            state           TEXT NOT NULL,
            worker          TEXT,
            created_at      INTEGER NOT NULL,
            claimed_at      INTEGER,
            heartbeat_at    INTEGER,
            finished_at     INTEGER,
            retry_count     INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL DEFAULT 0,
            error           TEXT,
            metrics         TEXT,
            artifacts       TEXT
        );
        CREATE INDEX jobs_queue ON jobs (priority DESC, id, next_attempt_at, parser_name, state) WHERE state = 'QUEUED';
        CREATE INDEX jobs_running ON jobs (worker, id) WHERE state = 'RUNNING';
        CREATE INDEX jobs_done ON jobs (content_hash, parser_name, parser_version) WHERE state = 'COMPLETED';
        CREATE INDEX jobs_attention ON jobs (state, id) WHERE state IN ('FAILED', 'CANCELLED');
        """,
        // 2: a folder watcher must not queue a file again that already has a job in any state (queued
        // by an earlier session, or failed), so every job is findable by its parser and content.
        """
        CREATE INDEX jobs_file ON jobs (content_hash, parser_name, parser_version);
        """,
        // 3: the file catalog (Store.Catalog.cs). Paths are the key (a source is its path, as queued);
        // versions follow the current hash by trigger, so no writer can change one without the other.
        """
        CREATE TABLE sources (
            path          TEXT PRIMARY KEY,
            content_hash  TEXT NOT NULL,
            size          INTEGER NOT NULL,
            mtime         INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE source_versions (
            id            INTEGER PRIMARY KEY,
            path          TEXT NOT NULL,
            content_hash  TEXT NOT NULL,
            size          INTEGER NOT NULL,
            seen_at       INTEGER NOT NULL
        );
        CREATE INDEX source_versions_path ON source_versions (path, id);
        CREATE TRIGGER sources_new AFTER INSERT ON sources BEGIN
            INSERT INTO source_versions (path, content_hash, size, seen_at) VALUES (new.path, new.content_hash, new.size, new.updated_at);
        END;
        CREATE TRIGGER sources_changed AFTER UPDATE OF content_hash ON sources WHEN old.content_hash <> new.content_hash BEGIN
            INSERT INTO source_versions (path, content_hash, size, seen_at) VALUES (new.path, new.content_hash, new.size, new.updated_at);
        END;
        CREATE TABLE outputs (
            parser_name    TEXT NOT NULL,
            source_path    TEXT NOT NULL,
            job_id         INTEGER NOT NULL,
            parser_version TEXT NOT NULL,
            content_hash   TEXT NOT NULL,
            artifacts      TEXT,
            updated_at     INTEGER NOT NULL,
            PRIMARY KEY (parser_name, source_path)
        ) WITHOUT ROWID;
        CREATE INDEX jobs_created ON jobs (created_at);
        ALTER TABLE parsers ADD COLUMN topics TEXT;
        -- A store from before the catalog: each path's latest job gives its content, and each (parser,
        -- path)'s latest COMPLETED job is its current output, listing the files of every COMPLETED job
        -- of that pair, so the next job for the source removes them all (duplicates the old naming left).
        INSERT INTO sources (path, content_hash, size, mtime, updated_at)
            SELECT input_path, content_hash, -1, -1, created_at FROM jobs WHERE id IN (SELECT max(id) FROM jobs GROUP BY input_path);
        INSERT INTO outputs (parser_name, source_path, job_id, parser_version, content_hash, artifacts, updated_at)
            SELECT j.parser_name, j.input_path, j.id, j.parser_version, j.content_hash,
                   (SELECT json_group_array(json(a.value)) FROM jobs o, json_each(o.artifacts) a
                    WHERE o.parser_name = j.parser_name AND o.input_path = j.input_path AND o.state = 'COMPLETED' AND json_valid(o.artifacts)),
                   coalesce(j.finished_at, j.created_at)
            FROM jobs j WHERE j.id IN (SELECT max(id) FROM jobs WHERE state = 'COMPLETED' GROUP BY parser_name, input_path);
        """,
        // 4: schema contracts and quarantine (Store.Contracts.cs).
        """
        CREATE TABLE quarantine (
            job_id  INTEGER NOT NULL,
            topic   TEXT NOT NULL,
            reason  TEXT NOT NULL,
            rows    INTEGER NOT NULL,
            PRIMARY KEY (job_id, topic, reason)
        ) WITHOUT ROWID;
        CREATE TABLE topic_schemas (
            topic       TEXT NOT NULL,
            version     INTEGER NOT NULL,
            columns     TEXT NOT NULL,
            job_id      INTEGER NOT NULL,
            parser_name TEXT NOT NULL,
            created_at  INTEGER NOT NULL,
            PRIMARY KEY (topic, version)
        ) WITHOUT ROWID;
        """,
        SourcesMigration,
        TopicPrefixMigration,
    ];

    private const string JobColumns =
        "id, parser_name, parser_version, input_path, content_hash, priority, state, worker, created_at, claimed_at, " +
        "heartbeat_at, finished_at, retry_count, next_attempt_at, error, metrics, artifacts, topic_prefix";

    private const string ParserColumns =
        "id, name, version, source, lockfile, env_hash, source_hash, lockfile_hash, artifact_hash, archive, entry_module, created_at, topics";

    private SqliteConnection _db;
    private readonly StoreOptions _options;
    private readonly TimeProvider _clock;
    private bool _inTransaction;

    // Hot paths run through SQLitePCL directly (Store.Statement.cs); the rest through ADO.NET commands.
    private SqliteStatement? _begin, _commit, _rollback, _enqueue, _claim, _complete;
    private SqliteCommand? _heartbeat, _fail, _reject, _requeueWorker,
        _requeueStale, _runningOn, _cancelledAmong, _cancel, _retry, _get, _isCompleted, _hasJob, _insertParser, _getParser, _parserVersions;

    /// <summary>The store file.</summary>
    public string Location => _options.Db;

    public SqliteJobStore(StoreOptions options)
    {
        SqliteRuntime.EnsureInitialized();
        _options = options;
        _clock = options.Clock;
        string path = options.Db;
        if (!options.Create && !File.Exists(path)) throw StoreThrow.Input_Missing(path);
        // SQLite takes a 0-byte file for a new database; a store is never empty, so this one lost its data.
        if (File.Exists(path) && new FileInfo(path).Length == 0) throw StoreThrow.Damaged_Empty(path);
        string? dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
        if (dir is not null && !Directory.Exists(dir))
        {
            if (!options.Create) throw StoreThrow.Input_Missing(path);
            Directory.CreateDirectory(dir);
        }
        var cs = new SqliteConnectionStringBuilder
        {
            DataSource = path,
            Mode = options.ReadOnly ? SqliteOpenMode.ReadOnly : options.Create ? SqliteOpenMode.ReadWriteCreate : SqliteOpenMode.ReadWrite,
            Pooling = false,
            DefaultTimeout = Math.Max(1, (int)options.LockTimeout.TotalSeconds),
        };
        _db = new SqliteConnection(cs.ToString());
        try
        {
            _db.Open();
            Exec($"PRAGMA busy_timeout = {(long)options.LockTimeout.TotalMilliseconds}");
            if (options.ReadOnly && !CanRead())
            {
                // A WAL store needs its -shm file to be read, and one that cannot be created (a read-only
                // directory) means nobody can be writing either: then the file is read as immutable.
                _db.Dispose();
                cs.DataSource = new Uri(System.IO.Path.GetFullPath(path)).AbsoluteUri + "?immutable=1";
                _db = new SqliteConnection(cs.ToString());
                _db.Open();
            }
            // Read before anything writes: a file from a newer build, or not a store at all, is left untouched.
            long version = Scalar("PRAGMA user_version");
            if (version > SchemaVersion) throw StoreThrow.Input_NewerSchema(path, version, SchemaVersion);
            if (version == 0 && Scalar("SELECT count(*) FROM sqlite_master") > 0)
                throw StoreThrow.Input_NotAStore(path, "it is an SQLite database but not a Casparian job store");
            // Damage is found here, in one line, rather than as a failing statement later (issue 11 item 5).
            // quick_check reads every page once (about 1 s for 116 MB, 500,000 jobs, on the 2-core dev
            // machine) and skips the index-content checks of integrity_check.
            if (version > 0 && TextScalar("PRAGMA quick_check(1)") is var check && check != "ok") throw StoreThrow.Damaged_Check(path, check);
            if (options.ReadOnly) return;
            Exec("PRAGMA journal_mode = WAL");
            Exec("PRAGMA synchronous = NORMAL");
            // A checkpoint syncs twice; every 10,000 pages (40 MB of WAL) instead of every 1,000 keeps
            // that off most commits. A larger cache holds the queue head and recent rows.
            Exec("PRAGMA wal_autocheckpoint = 10000");
            Exec("PRAGMA cache_size = -16384");
            if (version < SchemaVersion) Migrate();
        }
        catch (SqliteException e)
        {
            _db.Dispose();
            throw Translate(e);
        }
        catch
        {
            _db.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        foreach (var statement in new[] { _begin, _commit, _rollback, _enqueue, _claim, _complete }) statement?.Dispose();
        DisposeCatalog();
        _db.Dispose();
    }

    private void Migrate()
    {
        InTransaction(() =>
        {
            // Another process may have migrated between our read and our lock.
            long version = Scalar("PRAGMA user_version");
            if (version > SchemaVersion) throw StoreThrow.Input_NewerSchema(Location, version, SchemaVersion);
            if (version == 0 && Scalar("SELECT count(*) FROM sqlite_master") > 0)
                throw StoreThrow.Input_NotAStore(Location, "it is an SQLite database but not a Casparian job store");
            for (long v = version; v < SchemaVersion; v++) Exec(Migrations[v]);
            Exec($"PRAGMA user_version = {SchemaVersion}");
            return 0;
        });
    }

    /// <summary>An SQLite failure as our exception: transient (BUSY, LOCKED) or permanent, each with the exit code it deserves.</summary>
    private StoreException Translate(SqliteException e) => e.SqliteErrorCode switch
    {
        5 or 6 => new StoreUnavailableException($"job store {Location} is locked by another process; try again (SQLite: {e.Message})", e), // BUSY, LOCKED
        26 => new StoreException(ExitCode.BadInput, $"cannot open job store {Location}: the file is not an SQLite database", e),     // NOTADB
        11 => StoreThrow.Damaged_Corrupt(Location, e),                                                                                // CORRUPT
        14 => new StoreException(ExitCode.BadInput, $"cannot open job store {Location}: {e.Message}", e),                            // CANTOPEN
        8 or 23 => new StoreException(ExitCode.BadInput, $"cannot write job store {Location}: permission denied or read-only file", e), // READONLY, AUTH
        // FULL passes once space is freed: a sentinel keeps its work and retries, a command exits 4.
        13 => new StoreUnavailableException($"cannot write job store {Location}: the disk is full; free some space", e),            // FULL
        10 => new StoreException(ExitCode.Unavailable, $"job store {Location}: disk I/O error ({e.Message})", e),                   // IOERR
        _ => new StoreException(ExitCode.Internal, $"job store {Location}: SQLite error {e.SqliteErrorCode}: {e.Message}", e),
    };

    // ---- transactions ----------------------------------------------------------------------

    public T InTransaction<T>(Func<T> work)
    {
        try
        {
            if (_inTransaction) return work();
            // IMMEDIATE takes the write lock up front: a deferred transaction that reads and then writes
            // can fail with SQLITE_BUSY_SNAPSHOT under WAL instead of waiting.
            Raw(ref _begin, "BEGIN IMMEDIATE").Execute();
            _inTransaction = true;
            try
            {
                T result = work();
                Raw(ref _commit, "COMMIT").Execute();
                return result;
            }
            catch
            {
                if (SQLitePCL.raw.sqlite3_get_autocommit(_db.Handle) == 0) Raw(ref _rollback, "ROLLBACK").Execute();
                throw;
            }
            finally
            {
                _inTransaction = false;
            }
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    // ---- jobs ------------------------------------------------------------------------------

    // The statements the benchmarks replay through Python's sqlite3 are exposed as constants.
    internal const string EnqueueSql =
        "INSERT INTO jobs (parser_name, parser_version, input_path, content_hash, priority, state, created_at, topic_prefix) " +
        "VALUES ($parser, $version, $path, $hash, $priority, 'QUEUED', $now, $prefix)";

    internal const string CompleteSql =
        "UPDATE jobs SET state = 'COMPLETED', finished_at = $now, heartbeat_at = $now, error = NULL, metrics = $metrics, artifacts = $artifacts, " +
        "content_hash = coalesce($hash, content_hash) " +
        "WHERE id = $id AND state = 'RUNNING' AND ($worker IS NULL OR worker = $worker)";

    /// <summary>The schema of the current version, as an empty file gets it.</summary>
    internal static string SchemaSql => string.Join("\n", Migrations);

    public long Enqueue(NewJob job)
    {
        try
        {
            Raw(ref _enqueue, EnqueueSql, "$parser", "$version", "$path", "$hash", "$priority", "$now", "$prefix")
                .Bind(1, job.ParserName).Bind(2, job.ParserVersion).Bind(3, job.InputPath).Bind(4, job.ContentHash).Bind(5, job.Priority).Bind(6, Now())
                .Bind(7, job.TopicPrefix ?? "")
                .Execute();
            return SQLitePCL.raw.sqlite3_last_insert_rowid(_db.Handle);
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public long EnqueueMany(IReadOnlyList<NewJob> jobs)
    {
        if (jobs.Count == 0) return 0;
        return InTransaction(() =>
        {
            // Inside one transaction nobody else inserts, so the ids are consecutive.
            long first = Enqueue(jobs[0]);
            for (int i = 1; i < jobs.Count; i++) Enqueue(jobs[i]);
            return first;
        });
    }

    /// <summary>
    /// The claim: one statement, so two claimers can never take the same job. It takes one job; a
    /// batch repeats it. (A batch form, <c>id IN (SELECT … LIMIT n) RETURNING</c>, measured up to 40x
    /// slower on SQLite 3.40 once part of the queue had been claimed.)
    /// </summary>
    internal const string ClaimSql =
        "UPDATE jobs SET state = 'RUNNING', worker = $worker, claimed_at = $now, heartbeat_at = $now, finished_at = NULL " +
        "WHERE id = (SELECT id FROM jobs INDEXED BY jobs_queue WHERE state = 'QUEUED' AND next_attempt_at <= $now " +
        "    AND ($any OR parser_name IN (SELECT value FROM json_each($caps))) " +
        "    ORDER BY priority DESC, id LIMIT 1) " +
        "RETURNING id, parser_name, parser_version, input_path, priority, retry_count, content_hash, topic_prefix";

    public List<ClaimedJob> Claim(string worker, IReadOnlyList<string> capabilities, int max)
    {
        try
        {
            var claimed = new List<ClaimedJob>(Math.Min(max, 256));
            if (max <= 0) return claimed;
            bool any = capabilities.Contains("*");
            // Bindings survive a reset, so the statement is bound once for the whole batch.
            var st = Raw(ref _claim, ClaimSql, "$worker", "$now", "$any", "$caps")
                .Bind(1, worker).Bind(2, Now()).Bind(3, any ? 1 : 0)
                .Bind(4, any ? "[]" : JsonSerializer.Serialize(capabilities as List<string> ?? [.. capabilities], StoreJson.Default.ListString));
            for (int i = 0; i < max; i++)
            {
                try
                {
                    if (!st.Step()) break;
                    claimed.Add(new ClaimedJob(st.Int64(0), st.Text(1), st.Text(2), st.Text(3), st.Int32(4), st.Int32(5), st.Text(6), st.Text(7)));
                }
                finally
                {
                    st.Reset();
                }
            }
            return claimed;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public int Heartbeat(string worker)
    {
        try
        {
            var cmd = Prepare(ref _heartbeat, "UPDATE jobs SET heartbeat_at = $now WHERE state = 'RUNNING' AND worker = $worker", "$now", "$worker");
            cmd.Parameters[0].Value = Now();
            cmd.Parameters[1].Value = worker;
            return cmd.ExecuteNonQuery();
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public bool Complete(long id, string? worker, IReadOnlyDictionary<string, long> metrics, IReadOnlyList<Dictionary<string, string>> artifacts,
        string? parsedHash, out string? queuedHash)
    {
        string? before = null;
        bool done = InTransaction(() =>
        {
            long now = Now();
            // A primary-key read, only when the worker reported what it parsed: the queue-time hash, to say whether the file changed.
            before = parsedHash is null ? null : Get(id)?.ContentHash;
            if (Raw(ref _complete, CompleteSql, "$now", "$metrics", "$artifacts", "$hash", "$id", "$worker")
                    .Bind(1, now).Bind(2, MetricsJson(metrics)).Bind(3, ArtifactsJson(artifacts)).Bind(4, parsedHash).Bind(5, id).Bind(6, worker)
                    .Execute() != 1)
                return false;
            Supersede(id, parsedHash, now);
            return true;
        });
        queuedHash = done && before is not null && before != parsedHash ? before : null;
        return done;
    }

    public FailResult? Fail(long id, string? worker, string error, bool transient, IReadOnlyDictionary<string, long>? metrics = null)
    {
        try
        {
            // Every SET expression sees the row as it was, so retry_count below is the count before this failure.
            var cmd = Prepare(ref _fail,
                "UPDATE jobs SET " +
                "  state = CASE WHEN $transient AND retry_count < $limit THEN 'QUEUED' ELSE 'FAILED' END, " +
                "  retry_count = retry_count + ($transient AND retry_count < $limit), " +
                "  next_attempt_at = CASE WHEN $transient AND retry_count < $limit THEN $now + min($base << min(retry_count, 30), $max) ELSE next_attempt_at END, " +
                "  finished_at = CASE WHEN $transient AND retry_count < $limit THEN NULL ELSE $now END, " +
                "  heartbeat_at = $now, error = $error, metrics = coalesce($metrics, metrics) " +
                "WHERE id = $id AND state = 'RUNNING' AND ($worker IS NULL OR worker = $worker) " +
                "RETURNING state, retry_count, next_attempt_at",
                "$transient", "$limit", "$now", "$base", "$max", "$error", "$metrics", "$id", "$worker");
            var p = cmd.Parameters;
            p[0].Value = transient ? 1 : 0;
            p[1].Value = _options.RetryLimit;
            p[2].Value = Now();
            p[3].Value = (long)_options.RetryBackoff.TotalMilliseconds;
            p[4].Value = (long)_options.RetryBackoffMax.TotalMilliseconds;
            p[5].Value = error;
            p[6].Value = metrics is null ? DBNull.Value : MetricsJson(metrics);
            p[7].Value = id;
            p[8].Value = (object?)worker ?? DBNull.Value;
            using var r = cmd.ExecuteReader();
            if (!r.Read()) return null;
            var state = JobStates.Parse(r.GetString(0));
            return new FailResult(state, r.GetInt32(1), state == JobState.Queued ? FromMs(r.GetInt64(2)) : null);
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public bool Reject(long id, string? worker)
    {
        try
        {
            var cmd = Prepare(ref _reject,
                "UPDATE jobs SET state = 'QUEUED', heartbeat_at = $now WHERE id = $id AND state = 'RUNNING' AND ($worker IS NULL OR worker = $worker)",
                "$now", "$id", "$worker");
            cmd.Parameters[0].Value = Now();
            cmd.Parameters[1].Value = id;
            cmd.Parameters[2].Value = (object?)worker ?? DBNull.Value;
            return cmd.ExecuteNonQuery() == 1;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    // A lost worker counts as a retry (a file that crashes workers must not loop forever) but waits
    // for no backoff: the job did nothing wrong that waiting would fix.
    private const string RequeueSet =
        "UPDATE jobs SET " +
        "  state = CASE WHEN retry_count < $limit THEN 'QUEUED' ELSE 'FAILED' END, " +
        "  retry_count = retry_count + (retry_count < $limit), " +
        "  finished_at = CASE WHEN retry_count < $limit THEN NULL ELSE $now END, " +
        "  error = $reason ";

    public RequeueResult RequeueWorker(string worker, string reason)
    {
        try
        {
            var cmd = Prepare(ref _requeueWorker, RequeueSet + "WHERE state = 'RUNNING' AND worker = $worker RETURNING state",
                "$limit", "$now", "$reason", "$worker");
            var p = cmd.Parameters;
            p[0].Value = _options.RetryLimit;
            p[1].Value = Now();
            p[2].Value = reason;
            p[3].Value = worker;
            return ReadRequeue(cmd);
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public RequeueResult RequeueStale(DateTimeOffset cutoff, IReadOnlyCollection<string> liveWorkers)
    {
        try
        {
            var cmd = Prepare(ref _requeueStale, RequeueSet +
                "WHERE state = 'RUNNING' AND coalesce(heartbeat_at, 0) < $cutoff " +
                "  AND (worker IS NULL OR worker NOT IN (SELECT value FROM json_each($live))) RETURNING state",
                "$limit", "$now", "$reason", "$cutoff", "$live");
            var p = cmd.Parameters;
            p[0].Value = _options.RetryLimit;
            p[1].Value = Now();
            p[2].Value = "no heartbeat from its worker since " + cutoff.UtcDateTime.ToString("u", CultureInfo.InvariantCulture);
            p[3].Value = cutoff.ToUnixTimeMilliseconds();
            p[4].Value = JsonSerializer.Serialize([.. liveWorkers], StoreJson.Default.ListString);
            return ReadRequeue(cmd);
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    private static RequeueResult ReadRequeue(SqliteCommand cmd)
    {
        int requeued = 0, failed = 0;
        using var r = cmd.ExecuteReader();
        while (r.Read())
            if (r.GetString(0) == "QUEUED") requeued++; else failed++;
        return new RequeueResult(requeued, failed);
    }

    public List<long> RunningOn(string worker)
    {
        try
        {
            var cmd = Prepare(ref _runningOn, "SELECT id FROM jobs WHERE state = 'RUNNING' AND worker = $worker ORDER BY id", "$worker");
            cmd.Parameters[0].Value = worker;
            var ids = new List<long>();
            using var r = cmd.ExecuteReader();
            while (r.Read()) ids.Add(r.GetInt64(0));
            return ids;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public List<long> CancelledAmong(IReadOnlyCollection<long> ids)
    {
        try
        {
            var found = new List<long>();
            if (ids.Count == 0) return found;
            var cmd = Prepare(ref _cancelledAmong,
                "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each($ids)) AND state = 'CANCELLED'", "$ids");
            cmd.Parameters[0].Value = JsonSerializer.Serialize([.. ids], StoreJson.Default.ListInt64);
            using var r = cmd.ExecuteReader();
            while (r.Read()) found.Add(r.GetInt64(0));
            return found;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public JobRecord Cancel(long id) => InTransaction(() =>
    {
        var cmd = Prepare(ref _cancel,
            $"UPDATE jobs SET state = 'CANCELLED', finished_at = $now WHERE id = $id AND state IN ('QUEUED', 'RUNNING') RETURNING {JobColumns}",
            "$now", "$id");
        cmd.Parameters[0].Value = Now();
        cmd.Parameters[1].Value = id;
        if (ReadOneJob(cmd) is { } job) return job;
        var current = Get(id) ?? throw StoreThrow.Input_NoJob(id, Location);
        throw StoreThrow.Input_WrongState(id, current.State, "cancel", "; only QUEUED or RUNNING jobs can be cancelled");
    });

    /// <summary>What a retry resets: the job is as if just queued, keeping its id, priority and creation time.</summary>
    private const string RetrySet =
        "state = 'QUEUED', retry_count = 0, next_attempt_at = 0, error = NULL, metrics = NULL, artifacts = NULL, " +
        "claimed_at = NULL, heartbeat_at = NULL, finished_at = NULL";

    public JobRecord Retry(long id) => InTransaction(() =>
    {
        var cmd = Prepare(ref _retry,
            $"UPDATE jobs SET {RetrySet} WHERE id = $id AND state IN ('FAILED', 'CANCELLED') RETURNING {JobColumns}",
            "$id");
        cmd.Parameters[0].Value = id;
        if (ReadOneJob(cmd) is { } job) return job;
        var current = Get(id) ?? throw StoreThrow.Input_NoJob(id, Location);
        string hint = current.State == JobState.Completed
            ? $"; to run the file again, queue it with 'casparian job add --force --parser {current.ParserName}@{current.ParserVersion} {current.InputPath}'"
            : "; it is already queued or running";
        throw StoreThrow.Input_WrongState(id, current.State, "retry", hint);
    });

    public JobRecord? Get(long id)
    {
        try
        {
            var cmd = Prepare(ref _get, $"SELECT {JobColumns} FROM jobs WHERE id = $id", "$id");
            cmd.Parameters[0].Value = id;
            return ReadOneJob(cmd);
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public List<JobRecord> List(JobState? state, int limit)
    {
        try
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = state switch
            {
                null => $"SELECT {JobColumns} FROM jobs ORDER BY id DESC LIMIT $limit",
                JobState.Failed or JobState.Cancelled => $"SELECT {JobColumns} FROM jobs WHERE {Attention} AND state = $state ORDER BY id DESC LIMIT $limit",
                // Newest first by rowid: the completed index is ordered by content hash, so using it would sort every completed job.
                JobState.Completed => $"SELECT {JobColumns} FROM jobs NOT INDEXED WHERE state = $state ORDER BY id DESC LIMIT $limit",
                _ => $"SELECT {JobColumns} FROM jobs WHERE state = $state ORDER BY id DESC LIMIT $limit",
            };
            cmd.Parameters.AddWithValue("$limit", limit);
            if (state is { } s) cmd.Parameters.AddWithValue("$state", s.Name());
            return OldestFirst(cmd);
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    // SQLite uses a partial index only when the query repeats its condition; state = 'FAILED' alone is not enough.
    private const string Attention = "state IN ('FAILED', 'CANCELLED')";

    public Dictionary<JobState, long> Counts()
    {
        try
        {
            // One statement, so one snapshot: the derived COMPLETED count is exact (see the header).
            using var cmd = _db.CreateCommand();
            cmd.CommandText =
                "SELECT (SELECT count(*) FROM jobs INDEXED BY jobs_queue WHERE state = 'QUEUED'), " +
                "       (SELECT count(*) FROM jobs INDEXED BY jobs_running WHERE state = 'RUNNING'), " +
                $"       (SELECT count(*) FROM jobs INDEXED BY jobs_attention WHERE {Attention} AND state = 'FAILED'), " +
                $"       (SELECT count(*) FROM jobs INDEXED BY jobs_attention WHERE {Attention} AND state = 'CANCELLED'), " +
                "       (SELECT coalesce(max(id), 0) FROM jobs)";
            using var r = cmd.ExecuteReader();
            r.Read();
            long queued = r.GetInt64(0), running = r.GetInt64(1), failed = r.GetInt64(2), cancelled = r.GetInt64(3), total = r.GetInt64(4);
            return new Dictionary<JobState, long>
            {
                [JobState.Queued] = queued,
                [JobState.Running] = running,
                [JobState.Completed] = total - queued - running - failed - cancelled,
                [JobState.Failed] = failed,
                [JobState.Cancelled] = cancelled,
            };
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public DateTimeOffset? OldestQueuedAt()
    {
        try
        {
            // Ids grow with creation, so the oldest QUEUED job is the smallest id in the queue index.
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT created_at FROM jobs WHERE id = (SELECT min(id) FROM jobs INDEXED BY jobs_queue WHERE state = 'QUEUED')";
            return cmd.ExecuteScalar() is long ms ? FromMs(ms) : null;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    public bool HasJob(string parserName, string parserVersion, string contentHash) =>
        JobExists(ref _hasJob, "", parserName, parserVersion, contentHash);

    public bool IsCompleted(string parserName, string parserVersion, string contentHash) =>
        JobExists(ref _isCompleted, " AND state = 'COMPLETED'", parserName, parserVersion, contentHash);

    /// <summary>Whether a job of this parser version for this content exists (index jobs_file), with an optional extra condition.</summary>
    private bool JobExists(ref SqliteCommand? slot, string condition, string parserName, string parserVersion, string contentHash)
    {
        try
        {
            var cmd = Prepare(ref slot,
                $"SELECT 1 FROM jobs WHERE content_hash = $hash AND parser_name = $parser AND parser_version = $version{condition} LIMIT 1",
                "$hash", "$parser", "$version");
            cmd.Parameters[0].Value = contentHash;
            cmd.Parameters[1].Value = parserName;
            cmd.Parameters[2].Value = parserVersion;
            return cmd.ExecuteScalar() is not null;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    // ---- parsers ---------------------------------------------------------------------------

    public ParserRegistration RegisterParser(ParserRecord parser) => InTransaction(() =>
    {
        if (GetParser(parser.Name, parser.Version) is { } existing)
        {
            bool same = existing.SourceHash == parser.SourceHash && existing.LockfileHash == parser.LockfileHash;
            return new ParserRegistration(same ? RegisterOutcome.Unchanged : RegisterOutcome.Conflict, existing.Id, existing);
        }
        var cmd = Prepare(ref _insertParser,
            "INSERT INTO parsers (name, version, source, lockfile, env_hash, source_hash, lockfile_hash, artifact_hash, archive, entry_module, created_at, topics) " +
            "VALUES ($name, $version, $source, $lockfile, $env, $sourceHash, $lockHash, $artifact, $archive, $entry, $now, $topics) RETURNING id",
            "$name", "$version", "$source", "$lockfile", "$env", "$sourceHash", "$lockHash", "$artifact", "$archive", "$entry", "$now", "$topics");
        var p = cmd.Parameters;
        p[0].Value = parser.Name;
        p[1].Value = parser.Version;
        p[2].Value = parser.Source;
        p[3].Value = (object?)parser.Lockfile ?? DBNull.Value;
        p[4].Value = parser.EnvHash;
        p[5].Value = parser.SourceHash;
        p[6].Value = (object?)parser.LockfileHash ?? DBNull.Value;
        p[7].Value = parser.ArtifactHash;
        p[8].Value = (object?)parser.Archive ?? DBNull.Value;
        p[9].Value = (object?)parser.EntryModule ?? DBNull.Value;
        p[10].Value = Now();
        p[11].Value = (object?)parser.TopicsJson ?? DBNull.Value;
        long id = (long)cmd.ExecuteScalar()!;
        return new ParserRegistration(RegisterOutcome.Created, id, null);
    });

    public ParserRecord? GetParser(string name, string? version = null)
    {
        try
        {
            // The latest is the highest version by version order, not the last registered: an old
            // version registered late (or deployed by someone else) must not become the default.
            if (version is null && (version = HighestVersion(name)) is null) return null;
            var cmd = Prepare(ref _getParser, $"SELECT {ParserColumns} FROM parsers WHERE name = $name AND version = $version", "$name", "$version");
            cmd.Parameters[0].Value = name;
            cmd.Parameters[1].Value = version;
            using var r = cmd.ExecuteReader();
            if (!r.Read()) return null;
            return new ParserRecord
            {
                Id = r.GetInt64(0),
                Name = r.GetString(1),
                Version = r.GetString(2),
                Source = r.GetString(3),
                Lockfile = r.IsDBNull(4) ? null : r.GetString(4),
                EnvHash = r.GetString(5),
                SourceHash = r.GetString(6),
                LockfileHash = r.IsDBNull(7) ? null : r.GetString(7),
                ArtifactHash = r.GetString(8),
                Archive = r.IsDBNull(9) ? null : (byte[])r.GetValue(9),
                EntryModule = r.IsDBNull(10) ? null : r.GetString(10),
                CreatedAt = FromMs(r.GetInt64(11)),
                TopicsJson = r.IsDBNull(12) ? null : r.GetString(12),
            };
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    private string? HighestVersion(string name)
    {
        var cmd = Prepare(ref _parserVersions, "SELECT version FROM parsers WHERE name = $name", "$name");
        cmd.Parameters[0].Value = name;
        string? best = null;
        using var r = cmd.ExecuteReader();
        while (r.Read())
        {
            string v = r.GetString(0);
            if (best is null || ParserVersions.Compare(v, best) > 0) best = v;
        }
        return best;
    }

    public List<ParserSummary> ListParsers()
    {
        try
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT id, name, version, env_hash, source_hash, artifact_hash, coalesce(length(archive), 0), created_at FROM parsers ORDER BY name, id";
            var list = new List<ParserSummary>();
            using var r = cmd.ExecuteReader();
            while (r.Read())
                list.Add(new ParserSummary(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetString(4), r.GetString(5), r.GetInt64(6), FromMs(r.GetInt64(7))));
            return list;
        }
        catch (SqliteException e)
        {
            throw Translate(e);
        }
    }

    // ---- helpers ---------------------------------------------------------------------------

    /// <summary>The query plan SQLite chooses for <paramref name="sql"/>, one line per step (tests check index use).</summary>
    internal List<string> ExplainQueryPlan(string sql, params (string Name, object Value)[] parameters)
    {
        using var cmd = _db.CreateCommand();
        cmd.CommandText = "EXPLAIN QUERY PLAN " + sql;
        foreach (var (n, v) in parameters) cmd.Parameters.AddWithValue(n, v);
        var lines = new List<string>();
        using var r = cmd.ExecuteReader();
        while (r.Read()) lines.Add(r.GetString(3));
        return lines;
    }

    private long Now() => _clock.GetUtcNow().ToUnixTimeMilliseconds();

    private static DateTimeOffset FromMs(long ms) => DateTimeOffset.FromUnixTimeMilliseconds(ms);

    private static string MetricsJson(IReadOnlyDictionary<string, long> metrics) => JobRows.MetricsJson(metrics);

    private static string ArtifactsJson(IReadOnlyList<Dictionary<string, string>> artifacts) => JobRows.ArtifactsJson(artifacts);

    private SqliteCommand Prepare(ref SqliteCommand? slot, string sql, params ReadOnlySpan<string> parameters)
    {
        if (slot is not null) return slot;
        var cmd = _db.CreateCommand();
        cmd.CommandText = sql;
        foreach (var name in parameters) cmd.Parameters.Add(new SqliteParameter { ParameterName = name });
        cmd.Prepare();
        return slot = cmd;
    }

    private SqliteStatement Raw(ref SqliteStatement? slot, string sql, params string[] parameters) =>
        slot ??= new SqliteStatement(_db.Handle!, sql, parameters);

    private void Exec(string sql)
    {
        using var cmd = _db.CreateCommand();
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
    }

    /// <summary>Whether the first read works; false for the CANTOPEN a read-only WAL store gives without its -shm file.</summary>
    private bool CanRead()
    {
        try
        {
            Scalar("PRAGMA user_version");
            return true;
        }
        catch (SqliteException e) when (e.SqliteErrorCode == 14)
        {
            return false;
        }
    }

    private string TextScalar(string sql)
    {
        using var cmd = _db.CreateCommand();
        cmd.CommandText = sql;
        return Convert.ToString(cmd.ExecuteScalar(), CultureInfo.InvariantCulture) ?? "";
    }

    private long Scalar(string sql)
    {
        using var cmd = _db.CreateCommand();
        cmd.CommandText = sql;
        return Convert.ToInt64(cmd.ExecuteScalar(), CultureInfo.InvariantCulture);
    }

    private static List<JobRecord> OldestFirst(SqliteCommand cmd) => JobRows.OldestFirst(cmd);

    private static JobRecord? ReadOneJob(SqliteCommand cmd) => JobRows.ReadOne(cmd);

    private static JobRecord ReadJob(SqliteDataReader r) => JobRows.Read(r);
}

/// <summary>Points Microsoft.Data.Sqlite at SQLite once per process.</summary>
internal static class SqliteRuntime
{
    private static readonly Lock Gate = new();
    private static bool _ready;

    public static void EnsureInitialized()
    {
        lock (Gate)
        {
            if (_ready) return;
            // The native binary links e_sqlite3 statically (DirectPInvoke). Under the JIT (tests,
            // bench) the same entry points come from the system library.
            if (RuntimeFeature.IsDynamicCodeSupported)
                NativeLibrary.SetDllImportResolver(typeof(SQLitePCL.SQLite3Provider_e_sqlite3).Assembly,
                    static (name, _, _) => name == "e_sqlite3" ? NativeLibrary.Load("libsqlite3.so.0") : IntPtr.Zero);
            SQLitePCL.raw.SetProvider(new SQLitePCL.SQLite3Provider_e_sqlite3());
            _ready = true;
        }
    }
}
