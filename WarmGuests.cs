// Warm guests: the zygotes of one worker (or one `casparian run`), started lazily on a parser's
// first job, kept while they are used, bounded by a count and an idle timeout, evicted least
// recently used. A zygote that dies is dropped and the next job starts a new one; a parser that
// cannot run warm (WARM = False, a thread at import, an import that fails) is remembered and runs
// cold, with one log line saying why.
namespace Casparian;

internal sealed record WarmOptions
{
    /// <summary>Most zygotes kept at once; 0 turns warm guests off.</summary>
    public required int MaxZygotes { get; init; }
    /// <summary>A zygote unused this long is stopped.</summary>
    public required TimeSpan IdleTimeout { get; init; }
    /// <summary>Time a zygote may take to start and import the parser (the bridge's connect timeout).</summary>
    public required TimeSpan StartTimeout { get; init; }
    /// <summary>Where the private control-socket directories go; null for the system temp directory.</summary>
    public string? SocketRoot { get; init; }
}

/// <summary>One job's use of a zygote; given back with <see cref="WarmGuests.Release(WarmLease)"/>.</summary>
internal sealed record WarmLease(WarmGuests.Entry Entry, Zygote Zygote);

internal sealed class WarmGuests : IDisposable
{
    private readonly WarmOptions _options;
    private readonly Action<string> _log;
    private readonly Lock _gate = new();
    private readonly Dictionary<ZygoteKey, Entry> _entries = [];
    private readonly Timer _sweeper;
    private bool _disposed;

    internal sealed class Entry
    {
        public required ZygoteKey Key { get; init; }
        public required Task<(Zygote? Zygote, string? Cold)> Starting { get; init; }
        public long LastUsed;
        public int Leases;
        public bool Retired;
    }

    public WarmGuests(WarmOptions options, Action<string> log)
    {
        _options = options;
        _log = log;
        TimeSpan period = TimeSpan.FromTicks(Math.Clamp(options.IdleTimeout.Ticks / 4, TimeSpan.TicksPerSecond, TimeSpan.TicksPerMinute));
        _sweeper = new Timer(_ => Sweep(), null, period, period);
    }

    public bool Enabled => _options.MaxZygotes > 0;

    /// <summary>Zygotes alive now, for tests and metrics.</summary>
    public int Count
    {
        get
        {
            lock (_gate) return _entries.Values.Count(e => e.Starting.IsCompletedSuccessfully && e.Starting.Result.Zygote is { Alive: true });
        }
    }

    /// <summary>
    /// The zygote for <paramref name="key"/>, started if needed, leased until <see cref="Release"/>;
    /// null when this parser runs cold.
    /// </summary>
    public async Task<WarmLease?> AcquireAsync(ZygoteKey key, string zygoteScript, CancellationToken cancel)
    {
        if (!Enabled) return null;
        Entry entry;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_entries.TryGetValue(key, out entry!) || Dead(entry))
            {
                if (entry is not null) Drop(key, entry);
                entry = new Entry { Key = key, Starting = Zygote.StartAsync(key, zygoteScript, _options.SocketRoot, _options.StartTimeout, _log, CancellationToken.None) };
                _entries[key] = entry;
                _ = entry.Starting.ContinueWith(t => OnStarted(key, t), TaskScheduler.Default);
            }
            entry.Leases++;
            entry.LastUsed = Environment.TickCount64;
        }
        try
        {
            var (zygote, _) = await entry.Starting.WaitAsync(cancel).ConfigureAwait(false);
            if (zygote is null || !zygote.Alive)
            {
                Release(entry);
                return null;
            }
            return new WarmLease(entry, zygote);
        }
        catch
        {
            Release(entry);
            throw;
        }
    }

    public void Release(WarmLease lease) => Release(lease.Entry);

    /// <summary>Ends a lease; a zygote retired (evicted or lost) meanwhile is stopped once its last lease ends.</summary>
    private void Release(Entry entry)
    {
        Zygote? stop = null;
        ZygoteKey key = entry.Key;
        lock (_gate)
        {
            entry.Leases--;
            entry.LastUsed = Environment.TickCount64;
            if (entry.Retired && entry.Leases <= 0) stop = Remove(key, entry);
            else if (Dead(entry) && entry.Leases <= 0) stop = Remove(key, entry);
        }
        stop?.Dispose();
        Trim();
    }

    /// <summary>Stops every zygote whose interpreter or parser lives under <paramref name="directory"/>
    /// (an environment or bundle that was evicted); jobs still running on one finish first.</summary>
    public void EvictUnder(string directory)
    {
        string prefix = Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory)) + Path.DirectorySeparatorChar;
        Retire(k => k.Interpreter.StartsWith(prefix, StringComparison.Ordinal) || k.Parser.StartsWith(prefix, StringComparison.Ordinal));
    }

    private void OnStarted(ZygoteKey key, Task<(Zygote? Zygote, string? Cold)> started)
    {
        if (started.IsCompletedSuccessfully && started.Result.Cold is { } why)
            _log($"parser {key.ParserName ?? key.Parser} runs on cold guests: {why}");
        Trim();
    }

    private static bool Dead(Entry entry) =>
        entry.Starting.IsCompleted && (!entry.Starting.IsCompletedSuccessfully || entry.Starting.Result.Zygote is { Alive: false });

    private void Sweep()
    {
        long now = Environment.TickCount64;
        Retire(null, e => now - e.LastUsed >= _options.IdleTimeout.TotalMilliseconds);
    }

    /// <summary>Keeps at most MaxZygotes: the least recently used idle ones go first.</summary>
    private void Trim()
    {
        var stop = new List<Zygote>();
        lock (_gate)
        {
            var live = _entries.Where(e => !e.Value.Retired && e.Value.Starting.IsCompletedSuccessfully && e.Value.Starting.Result.Zygote is not null)
                .OrderBy(e => e.Value.LastUsed).ToList();
            int excess = live.Count - _options.MaxZygotes;
            foreach (var (key, entry) in live)
            {
                if (excess <= 0) break;
                entry.Retired = true;
                excess--;
                if (entry.Leases <= 0 && Remove(key, entry) is { } z) stop.Add(z);
            }
        }
        foreach (var z in stop) z.Dispose();
    }

    private void Retire(Func<ZygoteKey, bool>? byKey, Func<Entry, bool>? byEntry = null)
    {
        var stop = new List<Zygote>();
        lock (_gate)
        {
            foreach (var (key, entry) in _entries.ToList())
            {
                if (byKey is not null && !byKey(key)) continue;
                if (byEntry is not null && !byEntry(entry)) continue;
                // A parser known to run cold stays known; only zygotes are retired.
                if (entry.Starting.IsCompletedSuccessfully && entry.Starting.Result.Zygote is null && byKey is null) continue;
                entry.Retired = true;
                if (entry.Leases <= 0 && Remove(key, entry) is { } z) stop.Add(z);
            }
        }
        foreach (var z in stop) z.Dispose();
    }

    private Zygote? Remove(ZygoteKey key, Entry entry)
    {
        if (_entries.TryGetValue(key, out var current) && ReferenceEquals(current, entry)) _entries.Remove(key);
        return entry.Starting.IsCompletedSuccessfully ? entry.Starting.Result.Zygote : null;
    }

    private void Drop(ZygoteKey key, Entry entry)
    {
        _entries.Remove(key);
        if (entry.Leases <= 0 && entry.Starting.IsCompletedSuccessfully) entry.Starting.Result.Zygote?.Dispose();
    }

    public void Dispose()
    {
        List<Entry> all;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            all = [.. _entries.Values];
            _entries.Clear();
        }
        _sweeper.Dispose();
        foreach (var entry in all)
        {
            try
            {
                if (entry.Starting.Wait(TimeSpan.FromSeconds(5)) && entry.Starting.Result.Zygote is { } z) z.Dispose();
            }
            catch (AggregateException)
            {
            }
        }
    }
}
