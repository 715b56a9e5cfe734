// The PostgreSQL store's batched forms of a sentinel's turn (issue 16): every success concluded in
// the turn completes in one statement, and its free workers claim in one statement per run of
// workers with one capability set, each job with its current output (for DISPATCH's supersede
// list). Against a server each statement is a round trip, and the round trips, not the rows, are what
// a turn costs; SQLite runs the interface's per-job defaults (as does GetOutputs here: the turn reads
// outputs in ClaimMany).
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
    /// The turn's claim for every worker of one capability set at once, with each claimed job's current
    /// output beside it (one key probe of outputs per job). @slots names a worker per free slot, in the
    /// turn's fair order; the n-th job in queue order goes to the n-th slot, as one claim per worker in
    /// that order would hand them out, and the worker comes back with each row. So a turn sends one
    /// claim per run of workers with one capability set (ClaimGroups), not one per worker.
    /// </summary>
    internal const string ClaimWithOutputSql = WithOutputHead + "(SELECT id, priority FROM jobs WHERE " + Claimable +
        " ORDER BY priority DESC, id LIMIT @max FOR UPDATE SKIP LOCKED)" + WithOutputTail;

    private const string WithOutputHead = "WITH claimed AS (UPDATE jobs SET state = 'RUNNING', worker = s.worker, sentinel = @me, " +
        "claimed_at = @now, heartbeat_at = @now, finished_at = NULL " +
        "FROM (SELECT id, (@slots::text[])[row_number() OVER (ORDER BY priority DESC, id)::int] AS worker FROM (SELECT id, priority FROM ";

    /// <summary>The most jobs a turn's claim takes, as SQL: a worker's slots (<see cref="Sentinel.MaxSlots"/>, which a test holds equal).</summary>
    internal const string MaxClaim = "256";

    /// <summary>
    /// The claim runs with its generic plan (see GenericPlans), which cannot see @max. The LIMIT here
    /// (never reached) tells the planner the batch is small, so the UPDATE probes the primary key per
    /// job: without it, on a large, analyzed table the generic plan guessed a tenth of the queue and
    /// joined it to a sequential scan of jobs.
    /// </summary>
    private const string WithOutputTail = " picked LIMIT " + MaxClaim + ") picked) s WHERE jobs.id = s.id " +
        "RETURNING jobs.id, jobs.parser_name, jobs.parser_version, jobs.input_path, jobs.priority, jobs.retry_count, jobs.content_hash, jobs.topic_prefix, jobs.worker) " +
        "SELECT c.*, o.job_id, o.parser_version, o.content_hash, o.artifacts, o.topic_prefix FROM claimed c " +
        "LEFT JOIN LATERAL (SELECT * FROM outputs o WHERE o.parser_name = c.parser_name AND o.source_path = c.input_path LIMIT 1) o ON true";

    public List<List<(ClaimedJob Job, CurrentOutput? Current)>> ClaimMany(IReadOnlyList<ClaimRequest> requests)
    {
        if (requests.Count == 0) return [];
        var groups = ClaimGroups(requests);
        var claimed = InTransaction(() =>
        {
            // One batch: Npgsql sends its statements together and reads their results in order.
            using var batch = new NpgsqlBatch(Connection(), _tx);
            GenericPlans(batch, () => AddClaims(batch, requests, groups));
            using var r = batch.ExecuteReader();
            return ReadClaimed(r, requests, groups);
        });
        AdvanceCursors(requests, groups, claimed);
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
        var groups = ClaimGroups(claims);
        try
        {
            var turn = Run(() =>
            {
                using var batch = new NpgsqlBatch(Connection());
                GenericPlans(batch, () =>
                {
                    if (completions.Count > 0) batch.BatchCommands.Add(CompleteManyCommand(completions));
                    AddClaims(batch, claims, groups);
                });
                using var r = batch.ExecuteReader();
                List<(bool, string?)> completed = [];
                if (completions.Count > 0)
                {
                    completed = ReadCompleted(r, completions);
                    r.NextResult();
                }
                return (completed, ReadClaimed(r, claims, groups));
            });
            AdvanceCursors(claims, groups, turn.Item2);
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

    /// <summary>
    /// The requests in runs of one capability set, in order: one claim statement each. Only neighbours
    /// share a statement, so the jobs still go out in request order when sets overlap ("*" and a list).
    /// <see cref="ClaimGroup.Since"/> is filled when the statement is built.
    /// </summary>
    private static List<ClaimGroup> ClaimGroups(IReadOnlyList<ClaimRequest> requests)
    {
        var groups = new List<ClaimGroup>();
        for (int i = 0; i < requests.Count; i++)
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThan(requests[i].Max, Sentinel.MaxSlots);
            if (requests[i].Max <= 0) continue;
            string key = CursorKey(requests[i].Capabilities);
            // A statement claims at most MaxClaim jobs: past that, the set's next workers start another.
            var group = groups.Count > 0 && groups[^1].Key == key ? groups[^1] : null;
            if (group is null || group.Slots + requests[i].Max > Sentinel.MaxSlots) groups.Add(group = new ClaimGroup(key));
            group.Requests.Add(i);
            group.Slots += requests[i].Max;
        }
        return groups;
    }

    /// <summary>The requests (indexes) one claim statement serves, and when its cursor's chain of claims left the head.</summary>
    private sealed class ClaimGroup(string key)
    {
        public string Key { get; } = key;
        public List<int> Requests { get; } = [];
        public int Slots { get; set; }
        public long Since { get; set; }
    }

    private void AddClaims(NpgsqlBatch batch, IReadOnlyList<ClaimRequest> requests, List<ClaimGroup> groups)
    {
        foreach (var group in groups)
        {
            batch.BatchCommands.Add(ClaimCommand(requests, group, out long since));
            group.Since = since;
        }
    }

    /// <summary>
    /// One ClaimWithOutputSql result set per group, in order; each row goes to the request of the worker
    /// it names, and each request's jobs are sorted in dispatch order.
    /// </summary>
    private static List<List<(ClaimedJob Job, CurrentOutput? Current)>> ReadClaimed(NpgsqlDataReader r, IReadOnlyList<ClaimRequest> requests, List<ClaimGroup> groups)
    {
        var claimed = new List<List<(ClaimedJob Job, CurrentOutput? Current)>>(requests.Count);
        for (int i = 0; i < requests.Count; i++) claimed.Add([]);
        foreach (var group in groups)
        {
            while (r.Read())
            {
                var job = ReadClaimed(r);
                string worker = r.GetString(8);
                var current = r.IsDBNull(9) ? null
                    : new CurrentOutput(job.ParserName, job.InputPath, r.GetInt64(9), r.GetString(10), r.GetString(11), r.IsDBNull(12) ? null : r.GetString(12)) { TopicPrefix = r.GetString(13) };
                claimed[group.Requests[group.Requests.FindIndex(i => requests[i].Worker == worker)]].Add((job, current));
            }
            r.NextResult();
        }
        foreach (var jobs in claimed) jobs.Sort((a, b) => DispatchOrder(a.Job, b.Job));
        return claimed;
    }
}
