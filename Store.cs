// The durable job store (SPEC §6): jobs and registered parsers in one embedded SQLite file (WAL).
// The sentinel, `start` and the job/parser commands share the file; SQLite's locking makes their
// writes safe, and every state change is one statement guarded by the state it expects, so a stale
// writer (a late CONCLUDE, a second claimer) changes nothing and learns so from the row count.
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.Json.Serialization;
using Microsoft.Data.Sqlite;

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
        TryParse(text, out var s) ? s : throw new InvalidDataException($"unknown job state '{text}' in the store");
}

/// <summary>A job to queue. <see cref="ContentHash"/> is the hex SHA-256 of the input file.</summary>
internal readonly record struct NewJob(string ParserName, string ParserVersion, string InputPath, string ContentHash, int Priority = 0);

/// <summary>What a claim hands the dispatcher: enough to build a DISPATCH.</summary>
internal readonly record struct ClaimedJob(long Id, string ParserName, string ParserVersion, string InputPath, int Priority, int RetryCount);

internal sealed record JobRecord(
    long Id, string ParserName, string ParserVersion, string InputPath, string ContentHash, int Priority, JobState State,
    string? Worker, DateTimeOffset CreatedAt, DateTimeOffset? ClaimedAt, DateTimeOffset? HeartbeatAt, DateTimeOffset? FinishedAt,
    int RetryCount, DateTimeOffset? NextAttemptAt, string? Error, string? MetricsJson, string? ArtifactsJson);

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
    public DateTimeOffset CreatedAt { get; init; }

    public const string SystemEnv = "system";
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
/// Operations taking a <c>worker</c> only touch a job that is RUNNING on that worker, and report
/// whether they did; a null worker matches whichever worker holds it.
/// </summary>
internal interface IJobStore : IDisposable
{
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

    /// <summary>Refreshes the heartbeat time of every job RUNNING on <paramref name="worker"/>.</summary>
    int Heartbeat(string worker);
    bool Complete(long id, string? worker, IReadOnlyDictionary<string, long> metrics, IReadOnlyList<Dictionary<string, string>> artifacts);
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
    bool IsCompleted(string parserName, string parserVersion, string contentHash);

    ParserRegistration RegisterParser(ParserRecord parser);
    /// <summary>The named version, or the most recently registered one when <paramref name="version"/> is null.</summary>
    ParserRecord? GetParser(string name, string? version = null);
    List<ParserSummary> ListParsers();
}

internal sealed record StoreOptions
{
    public required string Path { get; init; }
    /// <summary>Retries of a transient failure or a lost worker before the job is FAILED.</summary>
    public int RetryLimit { get; init; } = 3;
    /// <summary>Delay before the first retry; doubles with each retry up to <see cref="BackoffMax"/>.</summary>
    public TimeSpan BackoffBase { get; init; } = TimeSpan.FromSeconds(2);
    public TimeSpan BackoffMax { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>How long a writer waits for another's lock before the operation fails as unavailable.</summary>
    public TimeSpan BusyTimeout { get; init; } = TimeSpan.FromSeconds(10);
    public TimeProvider Clock { get; init; } = TimeProvider.System;
    /// <summary>False: a missing file is an error instead of a new store.</summary>
    public bool Create { get; init; } = true;
}

internal static class StoreThrow
{
    [DoesNotReturn] public static void Input_NotAStore(string path, string cause, Exception? inner = null) =>
        throw new InputException($"cannot open job store {path}: {cause}", inner);
    [DoesNotReturn] public static void Input_NewerSchema(string path, long found, int supported) =>
        throw new InputException($"job store {path} has schema version {found}, newer than this casparian understands ({supported}); upgrade casparian (the store was left unchanged)");
    [DoesNotReturn] public static void Input_Missing(string path) =>
        throw new InputException($"no job store at {path}; register a parser first ('casparian parser register PATH') or pass --db");
    [DoesNotReturn] public static T Input_NoJob<T>(long id, string path) =>
        throw new InputException($"no job {id} in {path} (see 'casparian jobs')");
    [DoesNotReturn] public static T Input_WrongState<T>(long id, JobState state, string action, string hint) =>
        throw new InputException($"job {id} is {state.Name()}; cannot {action} it{hint}");

    /// <summary>The SQLite failures a user can act on, as CasparianExceptions; anything else (a bug) passes through.</summary>
    public static Exception Translate(string path, SqliteException e) => e.SqliteErrorCode switch
    {
        5 or 6 => new UnavailableException($"job store {path} is locked by another process; try again (SQLite: {e.Message})", e), // BUSY, LOCKED
        26 => new InputException($"cannot open job store {path}: the file is not an SQLite database", e),                        // NOTADB
        11 => new InputException($"cannot open job store {path}: the database file is corrupt", e),                              // CORRUPT
        14 => new InputException($"cannot open job store {path}: {e.Message}", e),                                               // CANTOPEN
        8 or 23 => new InputException($"cannot write job store {path}: permission denied or read-only file", e),                  // READONLY, AUTH
        13 => new UnavailableException($"cannot write job store {path}: the disk is full", e),                                   // FULL
        _ => e,
    };
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

[JsonSerializable(typeof(Dictionary<string, long>))]
[JsonSerializable(typeof(List<Dictionary<string, string>>))]
[JsonSerializable(typeof(List<string>))]
[JsonSerializable(typeof(List<long>))]
internal sealed partial class StoreJson : JsonSerializerContext;
