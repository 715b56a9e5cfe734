// The shell (SPEC §1): every command's argv → Config → option records, handed to a role (Sentinel,
// Worker) or to the engine of a local command (Start.cs, Run.cs); the one shutdown signal; the log
// sinks; and what the commands share. The roles never see argv, Config or this file's flags.
//
//   Commands.cs          the command list, `config`, `version`, the shared helpers below
//   Commands.Roles.cs    sentinel, worker, start, run
//   Commands.Jobs.cs     parser register|ls, job add|show|retry|cancel, jobs
//   Commands.Options.cs  settings → option records: the only place an option record is filled
//   Commands.Keys.cs     keys [rotate-token]: the sentinel's public key, the worker line, token rotation
//   Commands.Sources.cs  source add|ls|rm|show, rule add|ls|rm|test, scan
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace Casparian;

internal static partial class Commands
{
    /// <summary>The roles and command groups, in the order --help lists them.</summary>
    // A property, not a field: the commands are fields of the partial files, whose initialisation
    // order across files C# leaves unspecified.
    public static Command[] All => [SentinelCommand, WorkerCommand, StartCommand, RunCommand, ParserGroup, JobGroup, JobsCommand, QuarantineGroup, TopicGroup, SourceGroup, RuleGroup, ScanCommand, StoreGroup, StatusCommand, KeysCommand, ConfigCommand, VersionCommand];

    public static readonly Command VersionCommand = new("version", "print the version and build", "version", [], _ =>
    {
        string mode = RuntimeFeature.IsDynamicCodeSupported ? "jit" : "native-aot";
        Console.Out.WriteLine($"casparian {Program.Version} (protocol v{Header.Version}, {mode}, {RuntimeInformation.RuntimeIdentifier})");
        return 0;
    });

    private static readonly Command ConfigCommand = new("config", "print every setting's effective value and where it came from",
        "config [--config FILE]", Config.Flags([.. Config.All]), args =>
        {
            args.RequirePositionals(0, 0);
            var config = Config.Load(args);
            Console.Out.Write(config.Render());
            Console.Out.Write(SourcesText(config));
            return 0;
        });

    // ---- what the commands share ---------------------------------------------------------------

    /// <summary>Rows per transaction when queueing: keeps the write lock short for a running sentinel.</summary>
    private const int EnqueueChunk = 5000;

    internal readonly record struct QueueResult(int Queued, int Skipped, long FirstId, long LastId);

    /// <summary>
    /// Queues <paramref name="files"/> (path, content hash) for <paramref name="parser"/>, in chunks of
    /// one transaction each, leaving out every file <paramref name="skip"/> says is done already.
    /// </summary>
    internal static QueueResult Queue(IJobStore store, ParserRecord parser, IReadOnlyList<(string Path, string Hash)> files, int priority,
        Func<string, bool>? skip, string topicPrefix = "")
    {
        var jobs = new List<NewJob>(files.Count);
        int skipped = 0;
        foreach (var (file, hash) in files)
        {
            if (skip?.Invoke(hash) == true) { skipped++; continue; }
            jobs.Add(new NewJob(parser.Name, parser.Version, file, hash, priority, topicPrefix));
        }
        long first = 0, last = 0;
        for (int i = 0; i < jobs.Count; i += EnqueueChunk)
        {
            var chunk = jobs.GetRange(i, Math.Min(EnqueueChunk, jobs.Count - i));
            long id = store.EnqueueMany(chunk);
            if (first == 0) first = id;
            last = id + chunk.Count - 1;
        }
        return new QueueResult(jobs.Count, skipped, first, last);
    }

    /// <summary>
    /// As <see cref="Queue"/>, each file under its own topic prefix: a backfill or a replay re-parses a file
    /// under the prefix its current output was made with (issue 19), so the new rows replace the old in place.
    /// </summary>
    internal static QueueResult QueueUnderPrefixes(IJobStore store, ParserRecord parser, IReadOnlyList<(string Path, string Hash, string Prefix)> files, int priority)
    {
        int queued = 0;
        long first = 0, last = 0;
        foreach (var byPrefix in files.GroupBy(f => f.Prefix))
        {
            var r = Queue(store, parser, [.. byPrefix.Select(f => (f.Path, f.Hash))], priority, skip: null, byPrefix.Key);
            if (r.Queued == 0) continue;
            queued += r.Queued;
            if (first == 0) first = r.FirstId;
            last = r.LastId;
        }
        return new QueueResult(queued, 0, first, last);
    }

    /// <summary>NAME or NAME@VERSION, given to <paramref name="flag"/> of <paramref name="command"/>.</summary>
    internal static (string Name, string? Version) ParserSpec(string command, Flag flag, string spec)
    {
        int at = spec.IndexOf('@');
        string name = at < 0 ? spec : spec[..at];
        string? version = at < 0 ? null : spec[(at + 1)..];
        if (name.Length == 0 || version is { Length: 0 }) throw CliThrow.Usage_BadValue(command, flag.Name, spec, "NAME or NAME@VERSION");
        return (name, version);
    }

    /// <summary>The registered parser NAME[@VERSION] (the latest version when none is given), or a message naming what is registered.</summary>
    internal static ParserRecord FindParser(IJobStore store, string name, string? version) =>
        store.GetParser(name, version)
        ?? throw CliThrow.Input_UnknownParser(store.Location, name, version, [.. store.ListParsers().Where(p => p.Name == name).Select(p => p.Version)]);

    internal static string HashFile(string path)
    {
        try
        {
            // A 1 MiB buffer: SHA256.HashData reads 4 KiB at a time, one system call each on a plain
            // File.OpenRead (about 37 ms of a 30 MB input's hash went to those calls).
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
            return Convert.ToHexStringLower(SHA256.HashData(stream));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw CliThrow.Input_Unreadable(path, e);
        }
    }

    /// <summary>
    /// Files to queue, in order: each file as given, each folder's files recursively sorted; hidden
    /// entries skipped. A folder's file whose name is not valid UTF-8 cannot be opened by the name .NET
    /// decodes (its bad bytes become U+FFFD), so it goes to <paramref name="undecodable"/> instead and
    /// the others are still queued.
    /// </summary>
    internal static List<string> ExpandInputs(IEnumerable<string> paths, List<string>? undecodable = null)
    {
        var files = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var walk = new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = false };
        foreach (string p in paths)
        {
            string full = Path.GetFullPath(p);
            List<string> found;
            if (File.Exists(full)) found = [full];
            else if (Directory.Exists(full))
            {
                try
                {
                    found = [.. Directory.EnumerateFiles(full, "*", walk)];
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    throw CliThrow.Input_UnreadableFolder(full, e);
                }
                found.Sort(StringComparer.Ordinal);
            }
            else throw CliThrow.Input_NoSuchPath(p);
            foreach (string f in found)
            {
                if (f.Contains('\uFFFD') && !File.Exists(f))
                {
                    undecodable?.Add(f);
                    continue;
                }
                if (seen.Add(f)) files.Add(f);
            }
        }
        return files;
    }
}

/// <summary>
/// SIGINT/SIGTERM for long-running commands: the first signal cancels <see cref="Token"/> so the role
/// stops cleanly; a second one gets the default action (the process ends at once).
/// </summary>
internal sealed class ShutdownSignal : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly PosixSignalRegistration[] _registrations;

    public ShutdownSignal(Action<string>? log = null)
    {
        _registrations = [Register(PosixSignal.SIGINT, log), Register(PosixSignal.SIGTERM, log)];
    }

    public CancellationToken Token => _cts.Token;

    private PosixSignalRegistration Register(PosixSignal signal, Action<string>? log) =>
        PosixSignalRegistration.Create(signal, context =>
        {
            if (_cts.IsCancellationRequested) return;
            context.Cancel = true;
            log?.Invoke($"{signal} received; stopping (send it again to exit at once)");
            _cts.Cancel();
        });

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _cts.Dispose();
    }
}

/// <summary>
/// A role's log: one line per event, "2026-11-23T11:09:08.123Z SOURCE: text", to the writer the shell
/// chose (stderr, or `start`'s log file). Kinds that can repeat at message rate (malformed messages,
/// late conclusions) are rate-limited per kind: a few lines per window, then a count.
/// Thread-safe; the writer must be too (TextWriter.Synchronized) when roles share it.
/// </summary>
internal sealed class RoleLog(TextWriter writer, string source, bool quiet, TimeProvider clock)
{
    private const int LinesPerWindow = 5;
    private static readonly TimeSpan Window = TimeSpan.FromSeconds(10);
    private readonly Dictionary<string, (DateTimeOffset Start, int Lines, int Suppressed)> _limits = new(StringComparer.Ordinal);

    /// <summary>A log that writes nothing (tests that do not look at it).</summary>
    public static RoleLog None { get; } = new(TextWriter.Null, "", quiet: true, TimeProvider.System);

    public void Info(string text)
    {
        if (!quiet) Write("", text);
    }

    public void Warn(string text) => Write("warning: ", text);

    /// <summary>A warning of a kind that can repeat at message rate.</summary>
    public void Limited(string kind, string text)
    {
        var now = clock.GetUtcNow();
        int suppressed = 0;
        bool write;
        lock (_limits)
        {
            _limits.TryGetValue(kind, out var l);
            if (now - l.Start >= Window)
            {
                suppressed = l.Suppressed;
                l = (now, 0, 0);
            }
            write = l.Lines < LinesPerWindow;
            if (write) l.Lines++;
            else l.Suppressed++;
            _limits[kind] = l;
        }
        if (suppressed > 0) Write("warning: ", $"{suppressed} more '{kind}' warning(s) suppressed");
        if (write) Write("warning: ", text);
    }

    private void Write(string level, string text) =>
        writer.WriteLine($"{clock.GetUtcNow().UtcDateTime.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture)} {source}: {level}{text}");
}

/// <summary>A plain text table: columns padded to their widest cell (right-aligned where asked), the last one left ragged.</summary>
internal sealed class Table(params string[] headers)
{
    private readonly List<string[]> _rows = [headers];
    private readonly HashSet<int> _right = [];

    /// <summary>Right-aligns these columns (numbers, times).</summary>
    public Table AlignRight(params int[] columns)
    {
        _right.UnionWith(columns);
        return this;
    }

    public void Add(params string[] cells) => _rows.Add(cells);

    /// <summary>Leaves out column <paramref name="column"/> (one the caller turned out not to need).</summary>
    public void DropColumn(int column)
    {
        for (int r = 0; r < _rows.Count; r++) _rows[r] = [.. _rows[r][..column], .. _rows[r][(column + 1)..]];
        var right = _right.Where(i => i != column).Select(i => i > column ? i - 1 : i).ToList();
        _right.Clear();
        _right.UnionWith(right);
    }

    public string Render()
    {
        int n = _rows[0].Length;
        var widths = new int[n];
        foreach (var row in _rows)
            for (int i = 0; i < n; i++) widths[i] = Math.Max(widths[i], row[i].Length);
        var sb = new StringBuilder();
        foreach (var row in _rows)
        {
            for (int i = 0; i < n; i++)
            {
                if (_right.Contains(i)) sb.Append(row[i].PadLeft(widths[i]));
                else if (i < n - 1) sb.Append(row[i].PadRight(widths[i]));
                else sb.Append(row[i]);
                if (i < n - 1) sb.Append("  ");
            }
            sb.AppendLine();
        }
        return sb.ToString();
    }
}

/// <summary>One-line forms of messages and paths, for terminals and logs.</summary>
internal static class Text
{
    /// <summary>The first line of a message whose other lines (a traceback) are shown elsewhere or not at all.</summary>
    public static string FirstLine(string text)
    {
        int nl = text.IndexOf('\n');
        return nl < 0 ? text : text[..nl];
    }

    /// <summary>
    /// A log line's summary of a possibly multi-line error: its first line, or the last line of a bare
    /// Python traceback (which names the exception); " …" marks that lines were left out.
    /// </summary>
    public static string Headline(string text)
    {
        var lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (lines.Length <= 1) return text.Trim();
        return (lines[0].StartsWith("Traceback", StringComparison.Ordinal) ? lines[^1] : lines[0]) + " …";
    }

    /// <summary>At most <paramref name="max"/> characters of <paramref name="text"/>, " …" marking a cut: for text a peer chooses.</summary>
    public static string Clip(string text, int max) => text.Length <= max ? text : text[..max] + " …";

    /// <summary>
    /// <paramref name="text"/> with its control characters written as escapes (\n, \u001b): text a peer
    /// chooses, quoted in a message, stays on one line and cannot drive the terminal.
    /// </summary>
    public static string Escaped(string text)
    {
        if (!text.Any(char.IsControl)) return text;
        var sb = new System.Text.StringBuilder(text.Length + 8);
        foreach (char c in text)
        {
            if (!char.IsControl(c)) sb.Append(c);
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (c == '\t') sb.Append("\\t");
            else sb.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:x4}");
        }
        return sb.ToString();
    }

    /// <summary><paramref name="path"/> relative to <paramref name="root"/> when it lies under it, else as given.</summary>
    public static string Rel(string path, string root)
    {
        string rel = Path.GetRelativePath(root, path);
        return rel.StartsWith("..", StringComparison.Ordinal) ? path : rel;
    }
}
