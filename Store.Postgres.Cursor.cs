// Claim cursors (issue 16): a sentinel's claims start where its last claim ended, not at the head of
// the queue index.
//
// Why: a claim moves jobs out of QUEUED, and PostgreSQL keeps their entries in the jobs_queue index
// until VACUUM removes them (autovacuum: about once a minute at best, and only past a fifth of the
// table). Every claim from the head walks all of them first. Measured with two clients claiming 4 at
// a time: 0.28 ms per claim on a fresh table, 1.38 ms once 260,000 jobs had passed through, against
// 0.26-0.33 ms from a cursor on that same table (pgbench, prepared statements).
//
// What it costs: a job that becomes claimable behind a cursor is seen at the next claim from the head.
// The store forgets its cursors when it makes a job QUEUED itself (enqueue, a fail that retries,
// reject, a requeue that queued a job, retry; not a permanent failure or a sweep that found nothing),
// when a NOTIFY says jobs were added (they may sort first by priority), after a claim that did not fill
// its batch (the queue's end), when an operation fails, and a second after the last claim from the
// head. So a job another process made QUEUED (or whose backoff ended) waits at most about a second,
// which is also how often an idle sentinel polls; nothing is skipped for good.
//
// A cursor belongs to one capability set: a claim filtered to other parsers passes over rows this one
// would take. Only a sentinel's batched claims (ClaimMany, CompleteAndClaim) use cursors.
using Npgsql;

namespace Casparian;

internal sealed partial class PostgresJobStore
{
    private const long CursorLifeMs = 1000;

    /// <summary>Per capability set: the (priority, id) of the last job claimed, and when its chain of claims left the head.</summary>
    private readonly Dictionary<string, (int Priority, long After, long Since)> _cursors = new(StringComparer.Ordinal);

    /// <summary>
    /// Claim's statement from a cursor: the rest of the cursor's priority after its job (a seek on
    /// jobs_queue), then the lower priorities, which are read only when the first part leaves room.
    /// FOR UPDATE cannot sit under a UNION, so each part locks in its own CTE. The LIMIT around the
    /// union (WithOutputTail, never reached) is what keeps the UPDATE a key probe per job: without it,
    /// a plan prepared on small tables joined the union to a sequential scan of jobs (see WithOutputHead).
    /// The cursor's priority is written as a range of one value, not `priority = @priority`: with an
    /// equality the planner drops priority from the wanted order, and a generic plan on a large,
    /// analyzed table then walked the primary key from the cursor (Index Cond `id > $8`), reading every
    /// later job of every priority. As a range, only jobs_queue serves the order, and btree still seeks
    /// to (priority, id) since both bounds are inclusive.
    /// </summary>
    internal const string ClaimAfterWithOutputSql = WithOutputHead +
        "(WITH rest AS (SELECT id, priority FROM jobs WHERE " + Claimable + " AND priority >= @priority AND priority <= @priority AND id > @after ORDER BY priority DESC, id LIMIT @max FOR UPDATE SKIP LOCKED), " +
        "lower AS (SELECT id, priority FROM jobs WHERE " + Claimable + " AND priority < @priority ORDER BY priority DESC, id LIMIT @max - (SELECT count(*) FROM rest) FOR UPDATE SKIP LOCKED) " +
        "SELECT id, priority FROM rest UNION ALL SELECT id, priority FROM lower LIMIT @max)" + WithOutputTail;

    private static string CursorKey(IReadOnlyList<string> capabilities) => capabilities.Contains("*") ? "*" : string.Join('\n', capabilities);

    /// <summary>
    /// The claim for one group of requests (one capability set), from the set's cursor when that is
    /// live; <paramref name="since"/> is the chain's start.
    /// </summary>
    private NpgsqlBatchCommand ClaimCommand(IReadOnlyList<ClaimRequest> requests, ClaimGroup group, out long since)
    {
        long now = Environment.TickCount64;
        bool live = _cursors.TryGetValue(group.Key, out var cursor) && now - cursor.Since < CursorLifeMs;
        var slots = new string[group.Slots];
        int n = 0;
        foreach (int i in group.Requests)
            for (int k = 0; k < requests[i].Max; k++) slots[n++] = requests[i].Worker;
        var command = new NpgsqlBatchCommand(live ? ClaimAfterWithOutputSql : ClaimWithOutputSql);
        command.Parameters.Add(new NpgsqlParameter<string[]>("slots", slots));
        AddClaimParameters(command.Parameters, requests[group.Requests[0]].Capabilities, slots.Length);
        if (live)
        {
            command.Parameters.Add(Int("priority", cursor.Priority));
            command.Parameters.Add(Long("after", cursor.After));
        }
        since = live ? cursor.Since : now;
        return command;
    }

    /// <summary>
    /// After the claims went through: a group that filled its slots moves its cursor to its last job in
    /// queue order (dispatch order is index order); one that fell short ends it.
    /// </summary>
    private void AdvanceCursors(IReadOnlyList<ClaimRequest> requests, List<ClaimGroup> groups, List<List<(ClaimedJob Job, CurrentOutput? Current)>> claimed)
    {
        foreach (var group in groups)
        {
            int got = 0;
            ClaimedJob? last = null;
            foreach (int i in group.Requests)
            {
                got += claimed[i].Count;
                if (claimed[i].Count > 0 && (last is not { } l || DispatchOrder(claimed[i][^1].Job, l) > 0)) last = claimed[i][^1].Job;
            }
            if (got < group.Slots || last is not { } end) _cursors.Remove(group.Key);
            else _cursors[group.Key] = (end.Priority, end.Id, group.Since);
        }
    }

    private void ForgetClaimCursors() => _cursors.Clear();
}
