// Sources kept watched, for `start` (on its main loop) and the sentinel (on a thread of its own, with
// its own store connection). Each source gets an inotify watch (FileSystemWatcher) whose events only
// mark the source dirty; the pass itself (Sources.Scan.cs) runs on the caller's thread. A source is
// passed when it is dirty, while files in it are settling, and every rescan_interval regardless, the
// safety net for events inotify drops (queue overflow, network filesystems, a watch it could not add).
// The sources and rules are read from the store every few seconds, so `source add` and `rule add`
// reach a running sentinel or `start` without a restart.
namespace Casparian;

internal sealed record WatchSettings
{
    public required ScanSettings Scan { get; init; }
    /// <summary>Every source is passed at least this often, events or not.</summary>
    public required TimeSpan Rescan { get; init; }
    /// <summary>Sources and rules from the config file (and `start --watch`), added to the store's.</summary>
    public required SourceSet Declared { get; init; }
}

internal sealed class SourceWatch(IJobStore store, WatchSettings settings, TimeProvider clock) : IDisposable
{
    private static readonly TimeSpan ReloadEvery = TimeSpan.FromSeconds(2);

    private sealed class Slot(WatchSource source, ScanSettings scan) : IDisposable
    {
        public readonly SourceScan Scan = new(source, scan);
        public FileSystemWatcher? Watcher;
        public int Dirty = 1;
        public DateTimeOffset LastPass = DateTimeOffset.MinValue;
        public HashSet<string> LastMessages = [];
        public bool Passed;

        public void Dispose() => Watcher?.Dispose();
    }

    private readonly List<Slot> _slots = [];
    private SourceSet _set = SourceSet.Empty;
    private DateTimeOffset _loaded = DateTimeOffset.MinValue;
    private string? _loadError;

    public IReadOnlyList<WatchSource> Sources => [.. _slots.Select(s => s.Scan.Source)];

    /// <summary>The sources and rules in effect at the last reload.</summary>
    public SourceSet Set => _set;

    /// <summary>Every source has been passed, nothing in any is settling, and no event is pending.</summary>
    public bool Idle => _slots.TrueForAll(s => s.Passed && s.Scan.Idle && Volatile.Read(ref s.Dirty) == 0);

    /// <summary>Passes the sources that are due; returns lines worth telling the user.</summary>
    public List<string> Poll()
    {
        var messages = new List<string>();
        var now = clock.GetUtcNow();
        if (now - _loaded >= ReloadEvery) Reload(now, messages);
        var settlePoll = TimeSpan.FromTicks(Math.Clamp(settings.Scan.Settle.Ticks / 4, TimeSpan.TicksPerMillisecond * 100, TimeSpan.TicksPerSecond));
        foreach (var slot in _slots)
        {
            bool due = !slot.Passed || now - slot.LastPass >= settings.Rescan
                || (Volatile.Read(ref slot.Dirty) != 0 || !slot.Scan.Idle) && now - slot.LastPass >= settlePoll;
            if (!due) continue;
            Interlocked.Exchange(ref slot.Dirty, 0);
            slot.LastPass = now;
            ScanReport report;
            try
            {
                report = slot.Scan.Pass(store, _set.RulesOf(slot.Scan.Source.Name), now);
            }
            catch (StoreUnavailableException e)
            {
                // Busy (another writer held the lock past lock_timeout): the next pass takes the same files.
                Interlocked.Exchange(ref slot.Dirty, 1);
                messages.Add($"source {slot.Scan.Source.Name}: {e.Message}; scanning again shortly");
                continue;
            }
            slot.Passed = true;
            Tell(slot, report, messages);
        }
        return messages;
    }

    private static void Tell(Slot slot, ScanReport report, List<string> messages)
    {
        string name = report.Source.Name;
        foreach (var t in report.Rules.Where(t => t.Parser is not null && (t.Queued.Count > 0 || t.Unchanged.Count > 0)))
            messages.Add($"queued {t.Queued.Count} new file(s) for {t.Parser} (source {name}, rule {t.Rule.Label}: {t.Rule.Glob}" +
                (t.Rule.TopicPrefix.Length > 0 ? $", topics as {t.Rule.TopicPrefix}TOPIC)" : ")") +
                (t.Unchanged.Count > 0 ? $"; {t.Unchanged.Count} unchanged file(s) skipped" : ""));
        if (report.NewlyUnmatched > 0)
            messages.Add($"source {name}: {report.NewlyUnmatched} file(s) match no rule ('casparian source show {name}' lists them)");
        // Warnings that hold pass after pass (a parser not registered yet) are said once, until they change.
        var now = report.Messages.ToHashSet(StringComparer.Ordinal);
        messages.AddRange(report.Messages.Where(m => !slot.LastMessages.Contains(m)));
        slot.LastMessages = now;
    }

    private void Reload(DateTimeOffset now, List<string> messages)
    {
        _loaded = now;
        try
        {
            _set = SourceSet.Load(store, settings.Declared);
            _loadError = null;
        }
        catch (InputException e)
        {
            if (_loadError != e.Message) messages.Add(e.Message);
            _loadError = e.Message;
            return;
        }
        for (int i = _slots.Count - 1; i >= 0; i--)
        {
            var slot = _slots[i];
            if (_set.Find(slot.Scan.Source.Name) is { } s && s.Equals(slot.Scan.Source)) continue;
            slot.Dispose();
            _slots.RemoveAt(i);
        }
        foreach (var source in _set.Sources)
        {
            if (_slots.Exists(s => s.Scan.Source.Name == source.Name)) continue;
            var slot = new Slot(source, settings.Scan);
            slot.Watcher = Watch(slot, messages);
            _slots.Add(slot);
        }
    }

    private static FileSystemWatcher? Watch(Slot slot, List<string> messages)
    {
        var source = slot.Scan.Source;
        try
        {
            var w = new FileSystemWatcher(source.Dir)
            {
                IncludeSubdirectories = source.Recursive,
                NotifyFilter = NotifyFilters.FileName | NotifyFilters.DirectoryName | NotifyFilters.Size | NotifyFilters.LastWrite,
            };
            void Mark(object? sender, EventArgs e) => Interlocked.Exchange(ref slot.Dirty, 1);
            w.Created += Mark;
            w.Changed += Mark;
            w.Deleted += Mark;
            w.Renamed += Mark;
            w.Error += Mark;
            w.EnableRaisingEvents = true;
            return w;
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            messages.Add($"source {source.Name}: cannot watch {source.Dir} for changes ({e.Message}); it is rescanned periodically instead");
            return null;
        }
    }

    public void Dispose()
    {
        foreach (var slot in _slots) slot.Dispose();
        _slots.Clear();
    }

    /// <summary>
    /// The sentinel's watch: its own store connection on a thread of its own, polling until
    /// <paramref name="stop"/>. A store that is busy or failing costs a warning and a later try, never the sentinel.
    /// </summary>
    public static Thread RunInBackground(StoreOptions storeOptions, WatchSettings settings, RoleLog log, CancellationToken stop)
    {
        var thread = new Thread(() =>
        {
            IJobStore? store = null;
            SourceWatch? watch = null;
            string? lastError = null;
            try
            {
                while (!stop.IsCancellationRequested)
                {
                    try
                    {
                        store ??= JobStores.Open(storeOptions);
                        watch ??= new SourceWatch(store, settings, TimeProvider.System);
                        foreach (var line in watch.Poll()) log.Info(line);
                        lastError = null;
                    }
                    // Whatever goes wrong here (a damaged store, a bug) stops the watching for a while, never the sentinel.
                    catch (Exception e)
                    {
                        if (e.Message != lastError) log.Warn($"watching sources: {e.Message}; trying again");
                        lastError = e.Message;
                        watch?.Dispose();
                        watch = null;
                        store?.Dispose();
                        store = null;
                        stop.WaitHandle.WaitOne(TimeSpan.FromSeconds(5));
                    }
                    stop.WaitHandle.WaitOne(PollEvery);
                }
            }
            finally
            {
                watch?.Dispose();
                store?.Dispose();
            }
        }) { Name = "sources", IsBackground = true };
        thread.Start();
        return thread;
    }

    /// <summary>How often the owner calls <see cref="Poll"/>.</summary>
    public static readonly TimeSpan PollEvery = TimeSpan.FromMilliseconds(250);
}
