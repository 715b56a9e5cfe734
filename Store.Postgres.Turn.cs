// The PostgreSQL store's batched forms of a sentinel's turn (issue 16): every success concluded in
// the turn completes in one statement, and the claims of all its free workers, each job with its
// current output (for DISPATCH's supersede list), go out as one batch. Against a server each
// statement is a round trip, and the round trips, not the rows, are what a turn costs; SQLite runs
// the interface's per-job defaults (as does GetOutputs here: the turn reads outputs in ClaimMany).
// A turn with nothing else to write sends both, and its commit, as one batch (CompleteAndClaim).
//
// Every lookup here is written so its only plan is a probe of a primary key per job (`= ANY(@ids)`,
// or a LATERAL subquery with LIMIT 1, which the planner cannot turn into a join). Npgsql prepares
// these statements, and PostgreSQL may keep a generic plan made while the tables were small until
// autovacuum next analyzes them: the outputs lookup written as a join became a hash join over a
// sequential scan of all of outputs, each turn (measured: 4 ms per turn at 10,000 outputs, growing with each one).
using Npgsql;
using NpgsqlTypes;

namespace Casparian;

internal sealed partial class PostgresJobStore
{
    /// <summary>
    /// Complete's statement (Store.Postgres.cs) over a set of jobs. The catalog rows take, per (parser,
    /// source) and per source, the newest job of the batch, as completing them one by one in id order
    /// would leave them (an upsert may touch a row only once per statement).
    /// </summary>
    internal string CompleteManySql => _completeManySql ??=
        "WITH input AS (SELECT * FROM unnest(@ids, @workers, @metrics, @artifacts, @hashes) AS t(id, worker, metrics, artifacts, hash)), " +
        "prior AS (SELECT i.id, j.content_hash FROM input i CROSS JOIN LATERAL (SELECT content_hash FROM jobs WHERE jobs.id = i.id LIMIT 1) j), " +
        "done AS (UPDATE jobs SET state = 'COMPLETED', finished_at = @now, heartbeat_at = @now, error = NULL, metrics = i.metrics, artifacts = i.artifacts, " +
        $"  content_hash = coalesce(i.hash, jobs.content_hash){Adopt} " +
        $"  FROM input i WHERE jobs.id = ANY(@ids) AND jobs.id = i.id AND jobs.state = 'RUNNING' AND (i.worker IS NULL OR jobs.worker = i.worker) AND {Owned} " +
        "  RETURNING jobs.id, jobs.parser_name, jobs.parser_version, jobs.input_path, jobs.content_hash, jobs.artifacts, jobs.topic_prefix, i.hash AS parsed), " +
        "newest AS (SELECT DISTINCT ON (parser_name, input_path) * FROM done ORDER BY parser_name, input_path, id DESC), " +
        "made_current AS (INSERT INTO outputs (parser_name, source_path, job_id, parser_version, content_hash, artifacts, updated_at, topic_prefix) " +
        "  SELECT parser_name, input_path, id, parser_version, content_hash, artifacts, @now, topic_prefix FROM newest " +
        "  ON CONFLICT (parser_name, source_path) DO UPDATE SET job_id = excluded.job_id, parser_version = excluded.parser_version, " +
        "    content_hash = excluded.content_hash, artifacts = excluded.artifacts, updated_at = excluded.updated_at, topic_prefix = excluded.topic_prefix " +
        "    WHERE excluded.job_id >= outputs.job_id RETURNING job_id), " +
        // A source the catalog lacks gets a row; one it holds takes the content parsed, when the
        // worker reported it and the job is now current.
        "source_row AS (INSERT INTO sources (path, content_hash, size, mtime, updated_at) " +
        "  SELECT DISTINCT ON (n.input_path) n.input_path, n.content_hash, -1, -1, @now FROM newest n " +
        "  LEFT JOIN LATERAL (SELECT true AS held FROM sources s WHERE s.path = n.input_path LIMIT 1) k ON true " +
        "  WHERE (n.parsed IS NOT NULL AND n.id IN (SELECT job_id FROM made_current)) OR k.held IS NULL " +
        "  ORDER BY n.input_path, n.id DESC " +
        "  ON CONFLICT (path) DO UPDATE SET content_hash = excluded.content_hash, size = -1, mtime = -1, updated_at = excluded.updated_at " +
        "    WHERE sources.content_hash <> excluded.content_hash) " +
        "SELECT p.id, p.content_hash, d.id IS NOT NULL FROM prior p LEFT JOIN done d ON d.id = p.id";

    private string? _completeManySql;

    public List<(bool Done, string? QueuedHash)> CompleteMany(IReadOnlyList<Completion> completions)
    {
        if (completions.Count == 0) return [];
        return InTransaction(() =>
        {
            using var batch = new NpgsqlBatch(Connection(), _tx);
            GenericPlans(batch, () => batch.BatchCommands.Add(CompleteManyCommand(completions)));
            using var r = batch.ExecuteReader();
            return ReadCompleted(r, completions);
        });
    }

    private NpgsqlBatchCommand CompleteManyCommand(IReadOnlyList<Completion> completions)
    {
        var ids = new long[completions.Count];
        var workers = new string?[completions.Count];
        var metrics = new string[completions.Count];
        var artifacts = new string[completions.Count];
        var hashes = new string?[completions.Count];
        for (int i = 0; i < completions.Count; i++)
        {
            var c = completions[i];
            (ids[i], workers[i], metrics[i], artifacts[i], hashes[i]) = (c.Id, c.Worker, MetricsJson(c.Metrics), ArtifactsJson(c.Artifacts), c.ParsedHash);
        }
        var cmd = new NpgsqlBatchCommand(CompleteManySql);
        cmd.Parameters.Add(new NpgsqlParameter<long[]>("ids", ids));
        cmd.Parameters.Add(new NpgsqlParameter("workers", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = workers });
        cmd.Parameters.Add(new NpgsqlParameter("metrics", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = metrics });
        cmd.Parameters.Add(new NpgsqlParameter("artifacts", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = artifacts });
        cmd.Parameters.Add(new NpgsqlParameter("hashes", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = hashes });
        cmd.Parameters.Add(Long("now", Now()));
        cmd.Parameters.Add(Text("me", _options.Sentinel));
        return cmd;
    }

    /// <summary>CompleteManySql's result set, one result per completion in order; leaves the reader on that result set.</summary>
    private static List<(bool Done, string? QueuedHash)> ReadCompleted(NpgsqlDataReader r, IReadOnlyList<Completion> completions)
    {
        var rows = new Dictionary<long, (bool Done, string Before)>();
        while (r.Read()) rows[r.GetInt64(0)] = (r.GetBoolean(2), r.GetString(1));
        var results = new List<(bool, string?)>(completions.Count);
        foreach (var c in completions)
        {
            bool done = rows.TryGetValue(c.Id, out var row) && row.Done;
            results.Add((done, done && c.ParsedHash is not null && row.Before != c.ParsedHash ? row.Before : null));
        }
        return results;
    }

    /// <summary>
    /// Claim's statement with each claimed job's current output beside it (one key probe of outputs per
    /// job); ClaimMany sends one per worker, all in one round trip.
    /// </summary>
    internal const string ClaimWithOutputSql = WithOutputHead + ClaimTurnSql + WithOutputTail;

    /// <summary>
    /// Claim's statement (ClaimSql) for a turn, which runs it with its generic plan (see GenericPlans).
    /// The outer LIMIT (never reached) tells the planner the batch is small, so the UPDATE probes the
    /// primary key per job: a generic plan cannot see @max, guesses a tenth of the queue, and on a large,
    /// analyzed table planned `id IN (…)` as a hash join over a sequential scan of jobs.
    /// </summary>
    private const string ClaimTurnSql = ClaimUpdate + "(SELECT id FROM (SELECT id FROM jobs WHERE " + Claimable +
        " ORDER BY priority DESC, id LIMIT @max FOR UPDATE SKIP LOCKED) picked LIMIT " + MaxClaim + ")" + ClaimReturning;

    /// <summary>The most jobs a turn's claim takes, as SQL: a worker's slots (<see cref="Sentinel.MaxSlots"/>, which a test holds equal).</summary>
    internal const string MaxClaim = "256";

    private const string WithOutputHead = "WITH claimed AS (";
    private const string WithOutputTail = ") SELECT c.*, o.job_id, o.parser_version, o.content_hash, o.artifacts, o.topic_prefix FROM claimed c " +
        "LEFT JOIN LATERAL (SELECT * FROM outputs o WHERE o.parser_name = c.parser_name AND o.source_path = c.input_path LIMIT 1) o ON true";

    public List<List<(ClaimedJob Job, CurrentOutput? Current)>> ClaimMany(IReadOnlyList<ClaimRequest> requests)
    {
        if (requests.Count == 0) return [];
        var since = new List<long>(requests.Count);
        var claimed = InTransaction(() =>
        {
            // One batch: Npgsql sends its statements together and reads their results in order.
            using var batch = new NpgsqlBatch(Connection(), _tx);
            GenericPlans(batch, () => AddClaims(batch, requests, since));
            using var r = batch.ExecuteReader();
            return ReadClaimed(r, requests.Count);
        });
        AdvanceCursors(requests, since, claimed);
        return claimed;
    }

    /// <summary>
    /// The interface's CompleteAndClaim as one batch with no explicit transaction: PostgreSQL runs the
    /// statements of one batch (up to its single Sync) as one implicit transaction, all or nothing, and
    /// commits it at the end, so the turn costs one round trip instead of three (BEGIN with the
    /// completions, the claims, COMMIT). Inside a caller's transaction it joins that one instead.
    /// </summary>
    public (List<(bool Done, string? QueuedHash)> Completed, List<List<(ClaimedJob Job, CurrentOutput? Current)>> Claimed) CompleteAndClaim(
        IReadOnlyList<Completion> completions, IReadOnlyList<ClaimRequest> claims)
    {
        if (_tx is not null) return (CompleteMany(completions), ClaimMany(claims));
        if (completions.Count == 0 && claims.Count == 0) return ([], []);
        var since = new List<long>(claims.Count);
        try
        {
            var turn = Run(() =>
            {
                using var batch = new NpgsqlBatch(Connection());
                GenericPlans(batch, () =>
                {
                    if (completions.Count > 0) batch.BatchCommands.Add(CompleteManyCommand(completions));
                    AddClaims(batch, claims, since);
                });
                using var r = batch.ExecuteReader();
                List<(bool, string?)> completed = [];
                if (completions.Count > 0)
                {
                    completed = ReadCompleted(r, completions);
                    r.NextResult();
                }
                return (completed, ReadClaimed(r, claims.Count));
            });
            AdvanceCursors(claims, since, turn.Item2);
            return turn;
        }
        catch
        {
            ForgetClaimCursors();
            throw;
        }
    }

    /// <summary>
    /// Runs the turn's statements that <paramref name="add"/> puts in <paramref name="batch"/> with their
    /// generic plans. Left to choose, PostgreSQL planned them afresh at every execution (custom plans,
    /// as it can see the arrays and the cursor), and planning these CTEs cost the server more than
    /// running them: two sentinels end to end with async commits went from 4.3k to 6.0k jobs/s (median,
    /// BENCHMARKS.md). Their generic plans are held to key probes and index seeks, on empty and on
    /// large analyzed tables (PostgresStoreTests, Postgres_TurnStatements_…). The setting is set back at the batch's end;
    /// if the batch fails first, the rollback sets it back too (SET is transactional). Other
    /// statements keep PostgreSQL's choice: a one-job claim and complete was slower with generic plans.
    /// </summary>
    private static void GenericPlans(NpgsqlBatch batch, Action add)
    {
        batch.BatchCommands.Add(new NpgsqlBatchCommand("SET plan_cache_mode = force_generic_plan"));
        add();
        batch.BatchCommands.Add(new NpgsqlBatchCommand("RESET plan_cache_mode"));
    }

    /// <summary>
    /// This store's session, as PostgreSQL sees it: its plan_cache_mode, and each statement it has
    /// prepared with how many generic and custom plans it ran (pg_prepared_statements). For tests.
    /// </summary>
    internal (string Mode, List<(string Statement, long Generic, long Custom)> Prepared) SessionPlans() => Run(() =>
    {
        string mode;
        using (var cmd = Command("SHOW plan_cache_mode")) mode = (string)cmd.ExecuteScalar()!;
        var prepared = new List<(string, long, long)>();
        using var list = Command("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements");
        using var r = list.ExecuteReader();
        while (r.Read()) prepared.Add((r.GetString(0), r.GetInt64(1), r.GetInt64(2)));
        return (mode, prepared);
    });

    private void AddClaims(NpgsqlBatch batch, IReadOnlyList<ClaimRequest> requests, List<long> since)
    {
        since.Clear();
        foreach (var request in requests)
        {
            batch.BatchCommands.Add(ClaimCommand(request, out long started));
            since.Add(started);
        }
    }

    /// <summary>One ClaimWithOutputSql result set per request, in order, each sorted in dispatch order.</summary>
    private static List<List<(ClaimedJob Job, CurrentOutput? Current)>> ReadClaimed(NpgsqlDataReader r, int requests)
    {
        var claimed = new List<List<(ClaimedJob, CurrentOutput?)>>(requests);
        for (int i = 0; i < requests; i++)
        {
            var jobs = new List<(ClaimedJob Job, CurrentOutput? Current)>();
            while (r.Read())
            {
                var job = ReadClaimed(r);
                var current = r.IsDBNull(8) ? null
                    : new CurrentOutput(job.ParserName, job.InputPath, r.GetInt64(8), r.GetString(9), r.GetString(10), r.IsDBNull(11) ? null : r.GetString(11)) { TopicPrefix = r.GetString(12) };
                jobs.Add((job, current));
            }
            jobs.Sort((a, b) => DispatchOrder(a.Job, b.Job));
            claimed.Add(jobs);
            r.NextResult();
        }
        return claimed;
    }
}
