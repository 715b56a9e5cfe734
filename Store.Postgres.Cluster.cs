// Several sentinels on one PostgreSQL store (issue 16), with nothing home-made: the database keeps
// the leases and the leader, and its own clock times them.
//   sentinels  one row per sentinel (StoreOptions.Sentinel), renewed every turn or so; a sentinel
//              whose row expired is dead to the others: a worker that fails over to another
//              sentinel has its jobs adopted there (Owned/Adopt in Store.Postgres.cs), and the
//              leader's sweep requeues those no worker reports.
//   leader     one row with an expiry, as River elects its leader: held by whoever renews it in
//              time, taken over by anyone once it lapses. Maintenance (the stale sweep) runs there.
// Wake-ups: EnqueueMany NOTIFYs QueueChannel at commit; a listener thread with a connection of its
// own LISTENs and raises a flag the sentinel reads each turn, so a job added is dispatched at once
// while the sentinel polls only slowly for the rest (retries coming due, cancellations).
using Npgsql;

namespace Casparian;

internal sealed partial class PostgresJobStore
{
    public bool RenewLease(TimeSpan ttl) => InTransaction(() =>
    {
        string me = _options.Sentinel ?? throw new InvalidOperationException("RenewLease needs StoreOptions.Sentinel");
        long ms = (long)ttl.TotalMilliseconds;
        using var cmd = Command(
            $"INSERT INTO sentinels (name, started_at, expires_at) VALUES (@me, {ServerNowMs}, {ServerNowMs} + @ttl) " +
            "ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at; " +
            // Expired leases of others are history: kept a while for `store check`, then dropped.
            $"DELETE FROM sentinels WHERE expires_at < {ServerNowMs} - 3600000; " +
            $"INSERT INTO leader (id, name, expires_at) VALUES (1, @me, {ServerNowMs} + @ttl) " +
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, expires_at = excluded.expires_at " +
            $"  WHERE leader.name = excluded.name OR leader.expires_at < {ServerNowMs} RETURNING name");
        cmd.Parameters.Add(Text("me", me));
        cmd.Parameters.Add(Long("ttl", ms));
        return cmd.ExecuteScalar() is string;
    });

    public void EndLease()
    {
        if (_options.Sentinel is not { } me) return;
        InTransaction(() =>
        {
            using var cmd = Command("DELETE FROM sentinels WHERE name = @me; DELETE FROM leader WHERE name = @me");
            cmd.Parameters.Add(Text("me", me));
            return cmd.ExecuteNonQuery();
        });
    }

    public DateTimeOffset? HeldElsewhere(long id, string worker) => Run(() =>
    {
        if (_options.Sentinel is null) return (DateTimeOffset?)null;
        using var cmd = Command(
            "SELECT claimed_at FROM jobs WHERE id = @id AND state = 'RUNNING' AND worker = @worker AND sentinel <> @me " +
            $"AND EXISTS (SELECT 1 FROM sentinels s WHERE s.name = jobs.sentinel AND s.expires_at > {ServerNowMs})");
        cmd.Parameters.Add(Long("id", id));
        cmd.Parameters.Add(Text("worker", worker));
        cmd.Parameters.Add(Text("me", _options.Sentinel));
        return cmd.ExecuteScalar() is long ms ? FromMs(ms) : (DateTimeOffset?)null;
    });

    /// <summary>The sentinels with a lease, live or lapsed, for `store check`: name and seconds until expiry (negative: expired).</summary>
    public List<(string Name, double ExpiresIn, bool Leader)> Leases() => Run(() =>
    {
        using var cmd = Command(
            $"SELECT s.name, (s.expires_at - {ServerNowMs}) / 1000.0, coalesce(l.name = s.name AND l.expires_at > {ServerNowMs}, false) " +
            "FROM sentinels s LEFT JOIN leader l ON l.id = 1 ORDER BY s.name COLLATE \"C\"");
        var list = new List<(string, double, bool)>();
        using var r = cmd.ExecuteReader();
        while (r.Read()) list.Add((r.GetString(0), (double)r.GetDecimal(1), r.GetBoolean(2)));
        return list;
    });

    // ---- LISTEN/NOTIFY -----------------------------------------------------------------------

    private Thread? _listener;
    private volatile bool _stopListening;
    private int _signalled;

    public bool Shared => true;

    public bool QueueSignalled()
    {
        if (_listener is null)
        {
            _signalled = 1;
            _listener = new Thread(Listen) { IsBackground = true, Name = "casparian-pg-listen" };
            _listener.Start();
        }
        if (Interlocked.Exchange(ref _signalled, 0) == 0) return false;
        ForgetClaimCursors(); // new jobs may sort before a cursor (a higher priority)
        return true;
    }

    private void Listen()
    {
        while (!_stopListening)
        {
            try
            {
                using var conn = _source.OpenConnection();
                conn.Notification += (_, _) => Volatile.Write(ref _signalled, 1);
                using (var cmd = new NpgsqlCommand($"LISTEN {QueueChannel}", conn)) cmd.ExecuteNonQuery();
                // A job may have been queued while we were not listening.
                Volatile.Write(ref _signalled, 1);
                while (!_stopListening) conn.Wait(TimeSpan.FromMilliseconds(500));
            }
            catch (Exception e) when (e is NpgsqlException or TimeoutException or System.IO.IOException or InvalidOperationException)
            {
                // The server is away: the sentinel's own operations report it; listen again once it is back.
                for (int i = 0; i < 10 && !_stopListening; i++) Thread.Sleep(100);
            }
        }
    }

    private void StopListening()
    {
        _stopListening = true;
        _listener?.Join(TimeSpan.FromSeconds(2));
    }
}
