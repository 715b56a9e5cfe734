// The durable job store (SPEC §6): its records, the IJobStore interface every caller depends on, its
// options, its exceptions and the factory that picks the implementation (Store.Sqlite.cs: an embedded
// SQLite file in WAL mode). The sentinel, `start` and the job/parser commands share one store; every
// state change is one statement guarded by the state it expects, so a stale writer (a late CONCLUDE,
// a second claimer) changes nothing and learns so from the row count.
using System.Text.Json.Serialization;

namespace Casparian;

internal enum JobState { Queued, Running, Completed, Failed, Cancelled }

internal static class JobStates
{
    public static readonly JobState[] All = [JobState.Queued, JobState.Running, JobState.Completed, JobState.Failed, JobState.Cancelled];

    /// <summary>The spelling stored in the database and shown to users.</summary>
    public static string Name(this JobState state) => state switch
    {
        JobState.Queued => "QUEUED",
        JobState.Running => "RUNNING",
        JobState.Completed => "COMPLETED",
        JobState.Failed => "FAILED",
        JobState.Cancelled => "CANCELLED",
        _ => throw new ArgumentOutOfRangeException(nameof(state)),
    };

    public static bool TryParse(string text, out JobState state)
    {
        foreach (var s in All)
            if (string.Equals(s.Name(), text, StringComparison.OrdinalIgnoreCase)) { state = s; return true; }
        state = default;
        return false;
    }

    public static JobState Parse(string text) =>
        TryParse(text, out var s) ? s : throw StoreThrow.Corrupt_UnknownState(text);
}

/// <summary>A job to queue. <see cref="ContentHash"/> is the hex SHA-256 of the input file.</summary>
/// <see cref="TopicPrefix"/> is the routing rule's (issue 19): the worker writes each topic the parser
/// writes under the prefixed name ("" none).
internal readonly record struct NewJob(string ParserName, string ParserVersion, string InputPath, string ContentHash, int Priority = 0, string TopicPrefix = "");

/// <summary>What a claim hands the dispatcher: enough to build a DISPATCH.</summary>
internal readonly record struct ClaimedJob(long Id, string ParserName, string ParserVersion, string InputPath, int Priority, int RetryCount, string ContentHash = "", string TopicPrefix = "");

/// <summary>One worker's share of <see cref="IJobStore.ClaimMany"/>: <see cref="IJobStore.Claim"/>'s arguments.</summary>
internal readonly record struct ClaimRequest(string Worker, IReadOnlyList<string> Capabilities, int Max);

/// <summary>One successful conclusion for <see cref="IJobStore.CompleteMany"/>: <see cref="IJobStore.Complete(long, string?, IReadOnlyDictionary{string, long}, IReadOnlyList{Dictionary{string, string}}, string?, out string?)"/>'s arguments.</summary>
internal readonly record struct Completion(long Id, string? Worker, IReadOnlyDictionary<string, long> Metrics, IReadOnlyList<Dictionary<string, string>> Artifacts, string? ParsedHash);

internal sealed record JobRecord(
    long Id, string ParserName, string ParserVersion, string InputPath, string ContentHash, int Priority, JobState State,
    string? Worker, DateTimeOffset CreatedAt, DateTimeOffset? ClaimedAt, DateTimeOffset? HeartbeatAt, DateTimeOffset? FinishedAt,
    int RetryCount, DateTimeOffset? NextAttemptAt, string? Error, string? MetricsJson, string? ArtifactsJson)
{
    /// <summary>The routing rule's topic prefix the job was queued with ("" none).</summary>
    public string TopicPrefix { get; init; } = "";
}

/// <summary>
/// A registered parser. <see cref="Source"/> is the entry module's source; <see cref="Archive"/> the
/// deterministic ZIP of a bundle (null for a single source deployed over DEPLOY). <see cref="EnvHash"/>
/// is the lockfile's SHA-256, or "system" without a lockfile.
/// </summary>
internal sealed record ParserRecord
{
    public long Id { get; init; }
    public required string Name { get; init; }
    public required string Version { get; init; }
    public required string Source { get; init; }
    public string? Lockfile { get; init; }
    public required string EnvHash { get; init; }
    public required string SourceHash { get; init; }
    public string? LockfileHash { get; init; }
    public required string ArtifactHash { get; init; }
    public byte[]? Archive { get; init; }
    public string? EntryModule { get; init; }
    /// <summary>The topics the entry module declares (its static TOPICS, Topics.cs), as JSON SinkConfigs with "" for no sink; null: none.</summary>
    public string? TopicsJson { get; init; }
    public DateTimeOffset CreatedAt { get; init; }
}

/// <summary>A parser as <c>parser ls</c> shows it: no source or archive bytes.</summary>
internal readonly record struct ParserSummary(long Id, string Name, string Version, string EnvHash, string SourceHash, string ArtifactHash, long ArchiveBytes, DateTimeOffset CreatedAt);

internal enum RegisterOutcome { Created, Unchanged, Conflict }

internal readonly record struct ParserRegistration(RegisterOutcome Outcome, long Id, ParserRecord? Existing);

/// <summary>Result of a FAILED receipt or a lost worker: where the job went.</summary>
internal readonly record struct FailResult(JobState State, int RetryCount, DateTimeOffset? NextAttemptAt);

internal readonly record struct RequeueResult(int Requeued, int Failed)
{
    public int Total => Requeued + Failed;
}

/// <summary>
/// The job store's operations (SPEC §6), shaped so a second backend (PostgreSQL) can implement them.
/// One instance is one connection: not thread-safe; each thread or process opens its own.
/// Failures of the store itself come as <see cref="StoreException"/> (<see cref="StoreUnavailableException"/>
/// when retrying may help); a request the state refuses (no such job, not cancellable) as <see cref="InputException"/>.
/// Operations taking a <c>worker</c> only touch a job that is RUNNING on that worker, and report
/// whether they did; a null worker matches whichever worker holds it.
/// </summary>
internal partial interface IJobStore : IDisposable
{
    /// <summary>Where the store is, as messages name it (a file path, a server without credentials).</summary>
    string Location { get; }

    /// <summary>Runs <paramref name="work"/> in one transaction (group commit); operations inside join it.</summary>
    T InTransaction<T>(Func<T> work);

    long Enqueue(NewJob job);
    /// <summary>Queues every job in one transaction; returns the first id (the rest follow in order).</summary>
    long EnqueueMany(IReadOnlyList<NewJob> jobs);

    /// <summary>
    /// Atomically moves up to <paramref name="max"/> QUEUED jobs that are due and that one of
    /// <paramref name="capabilities"/> can run ("*" = any) to RUNNING on <paramref name="worker"/>,
    /// highest priority first, then oldest. Returned in that order.
    /// </summary>
    List<ClaimedJob> Claim(string worker, IReadOnlyList<string> capabilities, int max);
    /// <summary>
    /// <see cref="Claim"/> for each request, in order, in one transaction; each job comes with its
    /// (parser, source)'s current output (<see cref="GetOutput"/>), which its DISPATCH supersedes. A
    /// sentinel's turn claims for all its free workers this way: a server-backed store sends them as
    /// one round trip instead of one per worker plus one for the outputs.
    /// </summary>
    List<List<(ClaimedJob Job, CurrentOutput? Current)>> ClaimMany(IReadOnlyList<ClaimRequest> requests) => InTransaction(() =>
    {
        var claimed = new List<List<(ClaimedJob, CurrentOutput?)>>(requests.Count);
        foreach (var (worker, capabilities, max) in requests)
        {
            var jobs = Claim(worker, capabilities, max);
            var current = jobs.Count == 0 ? [] : GetOutputs([.. jobs.Select(j => (j.ParserName, j.InputPath))]);
            claimed.Add([.. jobs.Select(j => (j, current.GetValueOrDefault((j.ParserName, j.InputPath))))]);
        }
        return claimed;
    });

    /// <summary>Refreshes the heartbeat time of every job RUNNING on <paramref name="worker"/>.</summary>
    int Heartbeat(string worker);
    bool Complete(long id, string? worker, IReadOnlyDictionary<string, long> metrics, IReadOnlyList<Dictionary<string, string>> artifacts) =>
        Complete(id, worker, metrics, artifacts, parsedHash: null, out _);
    /// <summary>
    /// RUNNING → COMPLETED, and in the same transaction the job becomes the current output of its
    /// (parser, source) in the catalog, recording <paramref name="parsedHash"/> (the hash of the bytes the worker parsed, when
    /// it says) as the job's content hash; <paramref name="queuedHash"/> is the hash taken at queue time
    /// when it differed (the file changed between `job add` and the run), else null.
    /// </summary>
    bool Complete(long id, string? worker, IReadOnlyDictionary<string, long> metrics, IReadOnlyList<Dictionary<string, string>> artifacts,
        string? parsedHash, out string? queuedHash);
    /// <summary>
    /// <see cref="Complete(long, string?, IReadOnlyDictionary{string, long}, IReadOnlyList{Dictionary{string, string}}, string?, out string?)"/>
    /// for each of <paramref name="completions"/> (distinct job ids), in one transaction; one result per
    /// completion, in order. A sentinel's turn completes its conclusions this way: a server-backed store
    /// does it in one statement instead of a round trip per job.
    /// </summary>
    List<(bool Done, string? QueuedHash)> CompleteMany(IReadOnlyList<Completion> completions) => InTransaction(() =>
    {
        var results = new List<(bool, string?)>(completions.Count);
        foreach (var c in completions)
            results.Add((Complete(c.Id, c.Worker, c.Metrics, c.Artifacts, c.ParsedHash, out string? queuedHash), queuedHash));
        return results;
    });
    /// <summary>
    /// <see cref="CompleteMany"/> then <see cref="ClaimMany"/>, atomically: a sentinel's turn when it
    /// has nothing else to write. A server-backed store sends both, and its commit, as one round trip.
    /// </summary>
    (List<(bool Done, string? QueuedHash)> Completed, List<List<(ClaimedJob Job, CurrentOutput? Current)>> Claimed) CompleteAndClaim(
        IReadOnlyList<Completion> completions, IReadOnlyList<ClaimRequest> claims) =>
        InTransaction(() => (CompleteMany(completions), ClaimMany(claims)));
    /// <summary>Transient: back to QUEUED with exponential backoff until the retry limit, then FAILED. Null when the job was not RUNNING there.</summary>
    FailResult? Fail(long id, string? worker, string error, bool transient, IReadOnlyDictionary<string, long>? metrics = null);
    /// <summary>The worker turned the job down: back to QUEUED at once, no retry counted.</summary>
    bool Reject(long id, string? worker);
    /// <summary>Every job RUNNING on a lost worker goes back to QUEUED (counted as a retry; FAILED past the limit).</summary>
    RequeueResult RequeueWorker(string worker, string reason);
    /// <summary>Jobs RUNNING with a heartbeat older than <paramref name="cutoff"/> on a worker not in <paramref name="liveWorkers"/>.</summary>
    RequeueResult RequeueStale(DateTimeOffset cutoff, IReadOnlyCollection<string> liveWorkers);
    /// <summary>The ids of the jobs RUNNING on <paramref name="worker"/>.</summary>
    List<long> RunningOn(string worker);
    /// <summary>The ids among <paramref name="ids"/> that are CANCELLED now.</summary>
    List<long> CancelledAmong(IReadOnlyCollection<long> ids);

    JobRecord Cancel(long id);
    JobRecord Retry(long id);
    JobRecord? Get(long id);
    List<JobRecord> List(JobState? state, int limit);
    Dictionary<JobState, long> Counts();
    /// <summary>When the oldest QUEUED job was queued (retries keep their first queueing time); null when none is.</summary>
    DateTimeOffset? OldestQueuedAt();
    bool IsCompleted(string parserName, string parserVersion, string contentHash);
    /// <summary>Whether any job, in any state, exists for this parser version and file content.</summary>
    bool HasJob(string parserName, string parserVersion, string contentHash);

    /// <summary>Jobs matching <paramref name="query"/>, oldest first.</summary>
    List<JobRecord> Find(JobQuery query);
    /// <summary>Every FAILED or CANCELLED job matching <paramref name="query"/> back to QUEUED (as <see cref="Retry"/>), in one transaction; returns their ids.</summary>
    List<long> RetryMany(JobQuery query);
    /// <summary>Every QUEUED or RUNNING job matching <paramref name="query"/> to CANCELLED, in one transaction; returns their ids.</summary>
    List<long> CancelMany(JobQuery query);

    // ---- the file catalog (Store.Catalog.cs) ----
    /// <summary>
    /// The catalog's entries for those of <paramref name="paths"/> it holds, keyed by path, each with
    /// <paramref name="parserName"/>'s current output and whether a job of <paramref name="parserVersion"/>
    /// for the recorded content is pending under <paramref name="topicPrefix"/> (a job under another
    /// prefix makes other topics, so it does not settle the file for this one).
    /// </summary>
    Dictionary<string, CatalogEntry> LookupSources(string parserName, string parserVersion, IReadOnlyList<string> paths, string topicPrefix);
    /// <summary>
    /// Size and mtime the catalog records for every path under the folder <paramref name="dir"/> (absolute,
    /// no trailing '/'), keyed by path: one range read, which is what a scan of a source needs to tell a
    /// file routed before (same size and mtime) from a new or changed one.
    /// </summary>
    Dictionary<string, (long Size, long MtimeUs)> SourceStatsUnder(string dir);
    /// <summary>Records what was seen on disk: new paths, new size and mtime, and a new version where the hash changed. Returns how many versions were added.</summary>
    int RecordSources(IReadOnlyList<SourceObservation> files);
    /// <summary>The content versions of a source, oldest first (empty for a path the catalog does not hold).</summary>
    List<SourceVersion> SourceVersions(string path);
    /// <summary>The current output of <paramref name="parserName"/> for a source, or null.</summary>
    CurrentOutput? GetOutput(string parserName, string sourcePath);
    /// <summary><see cref="GetOutput"/> for each (parser, source) pair, keyed by the pair; pairs without an output are absent.</summary>
    Dictionary<(string Parser, string Path), CurrentOutput> GetOutputs(IReadOnlyList<(string Parser, string Path)> keys)
    {
        var found = new Dictionary<(string, string), CurrentOutput>();
        foreach (var key in keys)
            if (!found.ContainsKey(key) && GetOutput(key.Parser, key.Path) is { } output) found[key] = output;
        return found;
    }
    /// <summary>Every source whose current output of <paramref name="parserName"/> came from a version other than <paramref name="parserVersion"/>, by path.</summary>
    List<CurrentOutput> OutputsNotFrom(string parserName, string parserVersion);

    // ---- schema contracts and quarantine (Store.Contracts.cs) ----
    /// <summary>A completed job's quarantined rows per (topic, reason); recording the same job again replaces its counts.</summary>
    void RecordQuarantine(long jobId, IReadOnlyList<QuarantineCount> counts);
    /// <summary>Quarantine counts of jobs that are still their source's current output, filtered by each argument that is set; by job, topic, reason.</summary>
    List<QuarantinedJob> ListQuarantine(string? topic, string? parserName, long? jobId);
    /// <summary>Adds a version of <paramref name="topic"/>'s schema when <paramref name="columns"/> differs from its current one; returns whether it did.</summary>
    bool RecordTopicSchema(string topic, string columns, long jobId);
    /// <summary>Every version of a topic's schema, oldest first (empty: never written).</summary>
    List<TopicSchemaVersion> TopicSchemaHistory(string topic);
    /// <summary>The current version of every topic's schema, by topic.</summary>
    List<TopicSchemaDef> CurrentTopicSchemas();

    ParserRegistration RegisterParser(ParserRecord parser);
    /// <summary>The named version, or the highest by version order (ParserVersions) when <paramref name="version"/> is null.</summary>
    ParserRecord? GetParser(string name, string? version = null);
    List<ParserSummary> ListParsers();

    // ---- `store copy` and `store check` (Store.Copy.cs) ----
    /// <summary>Every row of the store, in chunks of about <paramref name="chunk"/>: parsers first, then jobs, sources, versions, outputs.</summary>
    IEnumerable<StoreRows> Export(int chunk);
    /// <summary>Inside a transaction: refuses a store that holds anything (an SQLite store refuses always: it is copied as a file).</summary>
    void BeginImport();
    /// <summary>Writes rows read by <see cref="Export"/>, keeping their ids.</summary>
    void Import(StoreRows rows);
    /// <summary>Moves the id sequences past the imported ids, so new rows follow them.</summary>
    void EndImport();
    /// <summary>The store's own consistency checks; lines describing it (schema, leases). Damage throws <see cref="StoreException"/>.</summary>
    List<string> Check();

    // ---- several sentinels on one store (Store.Postgres.Cluster.cs); a file store has one sentinel ----
    /// <summary>
    /// Renews the lease of this store's sentinel (<see cref="StoreOptions.Sentinel"/>) for <paramref name="ttl"/>
    /// and takes or keeps the maintenance lead if it is free; returns whether this sentinel leads.
    /// </summary>
    bool RenewLease(TimeSpan ttl) => true;
    /// <summary>Gives up this sentinel's lease and lead (a clean stop), so the others adopt its jobs at once.</summary>
    void EndLease() { }
    /// <summary>
    /// When job <paramref name="id"/> is RUNNING on <paramref name="worker"/> but owned by another sentinel
    /// whose lease is live (so this store's sentinel may not conclude it yet): the time it was claimed,
    /// which names that attempt. Null otherwise, and always on a file store.
    /// </summary>
    DateTimeOffset? HeldElsewhere(long id, string worker) => null;
    /// <summary>
    /// Whether several sentinels may share this store: then each renews its lease, one leads the
    /// maintenance, and the store tells them when jobs are queued (<see cref="QueueSignalled"/>), so polling can be slow.
    /// </summary>
    bool Shared => false;
    /// <summary>Whether a job was queued since the last call (LISTEN/NOTIFY); false when the store does not notify.</summary>
    bool QueueSignalled() => false;
}

internal sealed record StoreOptions
{
    /// <summary>Where the store is: a file path (SQLite) or a postgresql:// URL. See <see cref="JobStores.Open"/>.</summary>
    public required string Db { get; init; }
    /// <summary>Retries of a transient failure or a lost worker before the job is FAILED.</summary>
    public required int RetryLimit { get; init; }
    /// <summary>Delay before the first retry; doubles with each retry up to <see cref="RetryBackoffMax"/>.</summary>
    public required TimeSpan RetryBackoff { get; init; }
    public required TimeSpan RetryBackoffMax { get; init; }
    /// <summary>How long an operation waits for another process's lock before it fails with <see cref="StoreUnavailableException"/>.</summary>
    public required TimeSpan LockTimeout { get; init; }
    public required TimeProvider Clock { get; init; }
    /// <summary>False: a missing store is an error instead of a new one.</summary>
    public required bool Create { get; init; }
    /// <summary>
    /// Open for reading only (`jobs`, `job show`, `parser ls`): nothing is written, not even the
    /// journal mode or a migration, so it works on a read-only directory or file.
    /// </summary>
    public bool ReadOnly { get; init; }
    /// <summary>
    /// The sentinel this store acts for (null for a command). On a store shared by several sentinels
    /// (PostgreSQL) its claims are marked with this name, and it touches a worker's RUNNING jobs only
    /// when they are its own or their sentinel's lease has expired.
    /// </summary>
    public string? Sentinel { get; init; }
}

/// <summary>
/// The store failed in a way that does not pass by itself (corrupt, not a store, a newer schema,
/// read-only, disk full): the role stops with this error.
/// </summary>
internal class StoreException(ExitCode code, string message, Exception? inner = null) : CasparianException(code, message, inner);

/// <summary>Another process holds the store's lock (SQLite BUSY/LOCKED) or its disk is full: the same operation may succeed when retried.</summary>
internal sealed class StoreUnavailableException(string message, Exception? inner = null) : StoreException(ExitCode.Unavailable, message, inner);

/// <summary>
/// Opens the store the <c>db</c> setting names. A plain path is an SQLite file; a URL picks a server
/// backend by its scheme (postgresql:// plugs in here), each implementing <see cref="IJobStore"/>.
/// </summary>
internal static class JobStores
{
    public static IJobStore Open(StoreOptions options) => Scheme(options.Db) switch
    {
        null => new SqliteJobStore(options),
        _ when PostgresUrl.IsPostgres(options.Db) => new PostgresJobStore(options),
        var scheme => throw StoreThrow.Input_UnsupportedScheme(options.Db, scheme),
    };

    /// <summary>Whether the store exists already (commands that only read say "nothing yet" rather than create it).</summary>
    public static bool Exists(StoreOptions options) => Scheme(options.Db) is not null || File.Exists(options.Db);

    /// <summary>
    /// One sentinel per file store (issue 11 item 6): two would dispatch the same queue and requeue each
    /// other's jobs as orphans. A file store is locked by {db}.lock, the holder's pid in {db}.pid; a
    /// server store (PostgreSQL) orders its sentinels itself with leases, so there is nothing to take.
    /// </summary>
    public static IDisposable? LockForSentinel(StoreOptions options)
    {
        if (Scheme(options.Db) is not null) return null;
        string db = Path.GetFullPath(options.Db);
        Directory.CreateDirectory(Path.GetDirectoryName(db)!);
        return PidLock.Acquire(db + ".lock", db + ".pid", owner => StoreThrow.Unavailable_InUse(db, owner));
    }

    private static string? Scheme(string db) => db.IndexOf("://", StringComparison.Ordinal) is > 0 and var at ? db[..at] : null;
}

internal static class StoreThrow
{
    public static StoreException Corrupt_UnknownState(string state) =>
        new(ExitCode.BadInput, $"the job store holds a job in state '{state}', which this casparian does not know; was it written by a newer one?");
    public static InputException Input_UnsupportedScheme(string db, string scheme) =>
        new($"job store '{db}': {scheme}:// stores are not supported; give a file path for an SQLite store or postgresql://USER[:PASS]@HOST[:PORT]/DB");
    public static StoreException Input_NotAStore(string location, string cause, Exception? inner = null) =>
        new(ExitCode.BadInput, $"cannot open job store {location}: {cause}", inner);
    public static StoreException Input_NewerSchema(string location, long found, int supported) =>
        new(ExitCode.BadInput, $"job store {location} has schema version {found}, newer than this casparian understands ({supported}); upgrade casparian (the store was left unchanged)");
    public static StoreException Damaged_Check(string location, string result) =>
        new(ExitCode.StoreDamaged, $"job store {location} is damaged: its integrity check says \"{Text.Headline(result)}\"; stop every sentinel using it and restore it from a backup (or move it aside to start a new store)");
    public static StoreException Damaged_Corrupt(string location, Exception inner) =>
        new(ExitCode.StoreDamaged, $"job store {location} is damaged: SQLite says the database file is corrupt; stop every sentinel using it and restore it from a backup (or move it aside to start a new store)", inner);
    public static StoreException Damaged_Empty(string location) =>
        new(ExitCode.StoreDamaged, $"job store {location} is an empty file (0 bytes), not a store: was it truncated? restore it from a backup, or delete it to start a new store");
    public static UnavailableException Unavailable_InUse(string location, string owner) =>
        new($"job store {location} is in use by another sentinel or 'casparian start'{owner}; stop it first, or give this one its own store with --db");
    public static InputException Input_Missing(string location) =>
        new($"no job store at {location}; register a parser first ('casparian parser register PATH') or pass --db");
    public static InputException Input_NoJob(long id, string location) =>
        new($"no job {id} in {location} (see 'casparian jobs')");
    public static InputException Input_WrongState(long id, JobState state, string action, string hint) =>
        new($"job {id} is {state.Name()}; cannot {action} it{hint}");
}

/// <summary>What every store reads and writes the same way: a job row in JobColumns order, and the receipt's JSON columns.</summary>
internal static class JobRows
{
    /// <summary>The jobs a newest-first query returns, oldest first.</summary>
    public static List<JobRecord> OldestFirst(System.Data.Common.DbCommand cmd)
    {
        var list = new List<JobRecord>();
        using (var r = cmd.ExecuteReader())
            while (r.Read()) list.Add(Read(r));
        list.Reverse();
        return list;
    }

    /// <summary>The one job a query returns, or null.</summary>
    public static JobRecord? ReadOne(System.Data.Common.DbCommand cmd)
    {
        using var r = cmd.ExecuteReader();
        return r.Read() ? Read(r) : null;
    }

    /// <summary>A job from a row of "id, parser_name, parser_version, input_path, content_hash, priority, state, worker, created_at, claimed_at, heartbeat_at, finished_at, retry_count, next_attempt_at, error, metrics, artifacts, topic_prefix" (times in Unix ms).</summary>
    public static JobRecord Read(System.Data.Common.DbDataReader r) => new(
        Id: r.GetInt64(0),
        ParserName: r.GetString(1),
        ParserVersion: r.GetString(2),
        InputPath: r.GetString(3),
        ContentHash: r.GetString(4),
        Priority: r.GetInt32(5),
        State: JobStates.Parse(r.GetString(6)),
        Worker: r.IsDBNull(7) ? null : r.GetString(7),
        CreatedAt: DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(8)),
        ClaimedAt: r.IsDBNull(9) ? null : DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(9)),
        HeartbeatAt: r.IsDBNull(10) ? null : DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(10)),
        FinishedAt: r.IsDBNull(11) ? null : DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(11)),
        RetryCount: r.GetInt32(12),
        NextAttemptAt: r.GetInt64(13) == 0 ? null : DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(13)),
        Error: r.IsDBNull(14) ? null : r.GetString(14),
        MetricsJson: r.IsDBNull(15) ? null : r.GetString(15),
        ArtifactsJson: r.IsDBNull(16) ? null : r.GetString(16)) { TopicPrefix = r.GetString(17) };

    public static string MetricsJson(IReadOnlyDictionary<string, long> metrics) =>
        System.Text.Json.JsonSerializer.Serialize(metrics as Dictionary<string, long> ?? new Dictionary<string, long>(metrics), StoreJson.Default.DictionaryStringInt64);

    public static string ArtifactsJson(IReadOnlyList<Dictionary<string, string>> artifacts) =>
        System.Text.Json.JsonSerializer.Serialize(artifacts as List<Dictionary<string, string>> ?? [.. artifacts], StoreJson.Default.ListDictionaryStringString);
}

[JsonSerializable(typeof(Dictionary<string, long>))]
[JsonSerializable(typeof(List<Dictionary<string, string>>))]
[JsonSerializable(typeof(List<string>))]
[JsonSerializable(typeof(List<long>))]
[JsonSerializable(typeof(List<SinkConfig>))]
internal sealed partial class StoreJson : JsonSerializerContext;
