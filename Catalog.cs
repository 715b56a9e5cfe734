// Which files `job add` queues (issue 13, source identity). A file whose size and mtime match the
// catalog is taken to hold the content recorded for it and is not read again: that is what makes
// re-adding a folder of 100k unchanged files a matter of stat calls and catalog probes. Any other
// file is hashed. A file is skipped when its content is what the catalog holds and the parser version
// asked for already made the current output from that content, or has a job for it waiting or running;
// --force queues it anyway. Everything seen is recorded (new paths, new versions, new size/mtime).
namespace Casparian;

/// <summary>What <see cref="Catalog.Plan"/> decided: the files to queue (with their hashes), the unchanged ones it skipped, and how many new content versions it recorded.</summary>
internal sealed record SourcePlan(List<(string Path, string Hash)> ToQueue, List<string> Unchanged, int NewVersions);

internal static class Catalog
{
    /// <summary>Files past which <see cref="Stat"/> spreads its stat calls over the cores.</summary>
    private const int ParallelStat = 4096;

    /// <summary>
    /// Size and mtime of each file (one stat each), in order. A large list is statted in parallel
    /// chunks: the calls are independent, and at 100k files they are most of what an unchanged
    /// <c>job add</c> costs after the catalog lookup.
    /// </summary>
    public static List<SourceStat> Stat(IReadOnlyList<string> paths)
    {
        var stats = new SourceStat[paths.Count];
        int missing = int.MaxValue;
        void One(int i)
        {
            var info = new FileInfo(paths[i]);
            if (!info.Exists) InterlockedMin(ref missing, i);
            else stats[i] = new SourceStat(paths[i], info.Length, MtimeUs(info.LastWriteTimeUtc));
        }
        if (paths.Count < ParallelStat)
            for (int i = 0; i < paths.Count; i++) One(i);
        else
            Parallel.ForEach(System.Collections.Concurrent.Partitioner.Create(0, paths.Count, 1024), range =>
            {
                for (int i = range.Item1; i < range.Item2; i++) One(i);
            });
        // The first missing file in the caller's order, as a sequential walk would report it.
        if (missing != int.MaxValue) throw CliThrow.Input_NoSuchPath(paths[missing]);
        return [.. stats];
    }

    private static void InterlockedMin(ref int location, int value)
    {
        for (int seen = Volatile.Read(ref location); value < seen; seen = Volatile.Read(ref location))
            if (Interlocked.CompareExchange(ref location, value, seen) == seen) return;
    }

    public static long MtimeUs(DateTime utc) => (utc.Ticks - DateTime.UnixEpoch.Ticks) / 10;

    /// <summary>Decides, for <paramref name="parser"/>, which of <paramref name="files"/> to queue, and records what it saw in the catalog (unless <paramref name="record"/> is false: a dry run).</summary>
    /// <remarks>
    /// <paramref name="topicPrefix"/> is the routing rule's: an output made under another prefix is not this
    /// output (the file is queued again, and its job supersedes the other prefix's files), and a job pending
    /// under another prefix does not settle the file either.
    /// </remarks>
    public static SourcePlan Plan(IJobStore store, ParserRecord parser, IReadOnlyList<SourceStat> files, bool force, bool record = true, string topicPrefix = "")
    {
        var known = store.LookupSources(parser.Name, parser.Version, [.. files.Select(f => f.Path)], topicPrefix);
        var queue = new List<(string, string)>();
        var unchanged = new List<string>();
        var seen = new List<SourceObservation>();
        foreach (var file in files)
        {
            known.TryGetValue(file.Path, out var entry);
            bool sameStat = entry is not null && entry.Size >= 0 && entry.Size == file.Size && entry.MtimeUs == file.MtimeUs;
            string hash = sameStat ? entry!.ContentHash : Commands.HashFile(file.Path);
            if (!sameStat) seen.Add(new SourceObservation(file, hash));
            bool done = entry is not null && hash == entry.ContentHash
                && (entry.Pending || entry.Output is { } o && o.ParserVersion == parser.Version && o.ContentHash == hash && o.TopicPrefix == topicPrefix);
            if (done && !force) unchanged.Add(file.Path);
            else queue.Add((file.Path, hash));
        }
        int versions = seen.Count == 0 || !record ? 0 : store.RecordSources(seen);
        return new SourcePlan(queue, unchanged, versions);
    }
}
