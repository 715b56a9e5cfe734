// `casparian run PARSER INPUT`'s engine: dev mode. One parser over a file or a folder, no store and
// no sentinel; the parser's prints and logs appear in the terminal as they happen, and the tables go
// through the same Parquet output code as the worker's. The shell (Commands.Roles.cs) resolves the
// parser, inputs, interpreter and settings into DevRunOptions.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Apache.Arrow;

namespace Casparian;

/// <summary>One `casparian run`: what the shell resolved from argv and the settings.</summary>
internal sealed record DevRunOptions
{
    /// <summary>The parser directory or .py file, run in place.</summary>
    public required string ParserPath { get; init; }
    /// <summary>How messages name the parser: NAME, or NAME@VERSION when it declares a version.</summary>
    public required string ParserName { get; init; }
    public required IReadOnlyList<string> Inputs { get; init; }
    /// <summary>The folder the inputs' output names are relative to (see <see cref="DevRun.Stems"/>).</summary>
    public required string InputRoot { get; init; }
    public required string Interpreter { get; init; }
    public required string ShimPath { get; init; }
    public required OutputOptions Output { get; init; }
    public required BridgeOptions Bridge { get; init; }
    public required TimeSpan Timeout { get; init; }
    /// <summary>Topics to write (--topic); null writes every topic.</summary>
    public required IReadOnlySet<string>? Topics { get; init; }
    public required int Slots { get; init; }
    /// <summary>The parser's declared topics with the config file's [topics.NAME] overrides (Topics.cs).</summary>
    public required IReadOnlyList<SinkConfig> Sinks { get; init; }
    /// <summary>Warm guests for a folder; a single file always runs cold, attached to the terminal.</summary>
    public required WarmOptions Warm { get; init; }
}

internal static class DevRun
{
    /// <summary>One input's run. <see cref="Code"/> says whose fault a failure was: the parser's (Failed) or the user's output (BadInput).</summary>
    private sealed record FileResult(string Input, GuestResult? Guest, OutputResult? Output, string? Error, ExitCode Code, TimeSpan Elapsed, Dictionary<string, long> Skipped);

    /// <summary>Runs every input (up to Slots at once), prints the summary table and one line per failure; returns the exit code.</summary>
    public static int Run(DevRunOptions o, CancellationToken stop)
    {
        var inputs = o.Inputs;
        var terminal = new Terminal(prefix: inputs.Count > 1);
        Console.Error.WriteLine($"running {o.ParserName} on {inputs.Count} file(s) with {o.Interpreter}; output under {o.Output.Root}");

        string[] stems = Stems(inputs, o.InputRoot);
        var results = new FileResult[inputs.Count];
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = Math.Min(o.Slots, inputs.Count) };
        using var warm = new WarmGuests(inputs.Count > 1 ? o.Warm : o.Warm with { MaxZygotes = 0 }, line => terminal.Line("warm", GuestLogLevel.Stderr, line));
        Parallel.ForEachAsync(Enumerable.Range(0, inputs.Count), parallel, async (i, _) =>
        {
            results[i] = await RunOne(o, (ulong)(i + 1), inputs[i], stems[i], terminal, interactive: inputs.Count == 1, warm, stop);
        }).GetAwaiter().GetResult();

        Console.Out.Write(Summary(results, contracts: o.Sinks.Any(s => s.SchemaDef is not null)));
        int failed = results.Count(r => r.Error is not null);
        foreach (var r in results.Where(r => r.Error is not null))
            Console.Error.WriteLine($"error: {Text.FirstLine(r.Error!)}");
        if (stop.IsCancellationRequested) return (int)ExitCode.Interrupted;
        // The most telling code wins: a table the output refused (a schema mismatch, a bad sink) is the
        // user's to fix (3) where a parser that raised is work that failed (1).
        return failed == 0 ? 0 : (int)results.Where(r => r.Error is not null).Max(r => r.Code);
    }

    private static async Task<FileResult> RunOne(DevRunOptions o, ulong jobId, string input, string stem, Terminal terminal, bool interactive, WarmGuests warm, CancellationToken stop)
    {
        var clock = Stopwatch.StartNew();
        var skipped = new Dictionary<string, long>(StringComparer.Ordinal);
        try
        {
            var source = new OutputSource(o.ParserName, null, input, Commands.HashFile(input));
            var output = new JobOutput(o.Output, jobId, source, o.Sinks, stem);
            using var outputs = new DisposeLast(() => output.Dispose());
            var request = new GuestRequest
            {
                Interpreter = o.Interpreter,
                ShimPath = o.ShimPath,
                Parser = GuestParser.Path(o.ParserPath),
                FilePath = input,
                JobId = jobId,
                ParserName = o.ParserName,
                Timeout = o.Timeout,
                Interactive = interactive,
                // Only a terminal needs the guest in our process group; reading a pipe does not, and a
                // group of its own is killed whole at the end, children included (issue 11 item 13).
                TerminalGroup = !Console.IsInputRedirected,
                Options = o.Bridge,
                Warm = warm,
            };
            var sink = new TerminalSink(output, terminal, Path.GetFileName(input), o.Topics, skipped);
            GuestResult guest = await Bridge.RunAsync(request, sink, stop).ConfigureAwait(false);
            if (guest.WarmLost)
            {
                // The zygote died under this file: its output is dropped and it runs once more, cold.
                terminal.Line(Path.GetFileName(input), GuestLogLevel.Warning, "the warm guest's fork server died; running this file again on a cold guest");
                output.Dispose();
                output = new JobOutput(o.Output, jobId, source, o.Sinks, stem);
                sink = new TerminalSink(output, terminal, Path.GetFileName(input), o.Topics, skipped);
                guest = await Bridge.RunAsync(request with { Warm = null }, sink, stop).ConfigureAwait(false);
            }
            if (!guest.Succeeded)
            {
                if (sink.Refused is { } refused)
                    return new FileResult(input, guest, null, $"parser {o.ParserName} on {input}: {refused.Message}", refused.Code, clock.Elapsed, skipped);
                // The shim's messages already read "parser P on FILE: cause"; others get that form here.
                string error = guest.ErrorMessage ?? $"parser {o.ParserName} on {input}: {guest.Outcome}";
                if (guest.Traceback is { Length: > 0 } tb) terminal.Traceback(Path.GetFileName(input), tb);
                return new FileResult(input, guest, null, error, ExitCode.Failed, clock.Elapsed, skipped);
            }
            return new FileResult(input, guest, output.Commit(), null, ExitCode.Ok, clock.Elapsed, skipped);
        }
        catch (CasparianException e)
        {
            return new FileResult(input, null, null, $"parser {o.ParserName} on {input}: {e.Message}", e.Code, clock.Elapsed, skipped);
        }
    }

    /// <summary>$VIRTUAL_ENV's python, else the parser directory's .venv, else <paramref name="python"/> resolved to its real path.</summary>
    internal static string Interpreter(string parserPath, string python)
    {
        if (Environment.GetEnvironmentVariable("VIRTUAL_ENV") is { Length: > 0 } venv)
        {
            string p = Path.Combine(venv, "bin", "python");
            if (File.Exists(p)) return p;
            throw CliThrow.Input_BadVirtualEnv(venv, p);
        }
        string dir = Directory.Exists(parserPath) ? parserPath : Path.GetDirectoryName(parserPath)!;
        string local = Path.Combine(dir, ".venv", "bin", "python");
        // A venv's bin/python must be started by that path (not its target) for the venv to apply.
        if (File.Exists(local)) return local;
        return Python.ResolveReal(python);
    }

    /// <summary>
    /// Output file names: each input's path under the input folder without its extension
    /// ("2026/oct.csv" → "2026_oct"), so files of the same name in different folders do not
    /// overwrite each other; a name that still collides after sanitising gets "-2", "-3", ….
    /// </summary>
    /// <summary>`run --whatif`: what a run would do, resolved exactly as the run resolves it, and nothing run or written.</summary>
    internal static string WhatIf(string parserName, string parserPath, string interpreter, IReadOnlyList<string> inputs, string inputRoot,
        string outputRoot, IReadOnlyList<SinkConfig> sinks, IReadOnlyList<string> origins)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"parser {parserName} ({parserPath})");
        sb.AppendLine($"interpreter {interpreter}");
        sb.AppendLine($"output under {outputRoot}");
        string[] stems = Stems(inputs, inputRoot);
        sb.AppendLine($"{inputs.Count} file(s):");
        for (int i = 0; i < inputs.Count; i++) sb.AppendLine($"  {inputs[i]} -> {{topic}}/{SinkTarget.SanitizeStem(stems[i])}.parquet");
        if (sinks.Count == 0) sb.AppendLine("topics: none declared or configured; each topic the parser writes goes to OUTPUT/{topic}, mode append");
        else
        {
            var table = new Table("TOPIC", "SINK", "MODE", "FROM");
            for (int i = 0; i < sinks.Count; i++) table.Add(sinks[i].Topic, sinks[i].Uri, sinks[i].Mode.ToString().ToLowerInvariant(), origins[i]);
            sb.Append(table.Render());
            sb.AppendLine("other topics go to OUTPUT/{topic}, mode append");
        }
        sb.AppendLine("what if: nothing was run and nothing written");
        return sb.ToString();
    }

    internal static string[] Stems(IReadOnlyList<string> inputs, string root)
    {
        var used = new HashSet<string>(StringComparer.Ordinal);
        var stems = new string[inputs.Count];
        for (int i = 0; i < inputs.Count; i++)
        {
            string rel = Path.GetRelativePath(root, inputs[i]);
            string dir = Path.GetDirectoryName(rel) ?? "";
            string stem = SinkTarget.SanitizeStem(Path.Combine(dir, Path.GetFileNameWithoutExtension(rel)).Replace('/', '_'));
            string unique = stem;
            for (int n = 2; !used.Add(unique); n++) unique = $"{stem}-{n}";
            stems[i] = unique;
        }
        return stems;
    }

    /// <summary>The input file, or the folder's files (recursively, sorted, hidden ones skipped).</summary>
    internal static List<string> Inputs(string path)
    {
        if (File.Exists(path)) return [path];
        if (!Directory.Exists(path)) throw CliThrow.Input_NoInput(path);
        var files = Directory.EnumerateFiles(path, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.Hidden })
            .Where(f => !Path.GetFileName(f).StartsWith('.'))
            .Order(StringComparer.Ordinal)
            .ToList();
        if (files.Count == 0) throw CliThrow.Input_EmptyFolder(path);
        return files;
    }

    private static string Rel(string path) => Text.Rel(path, Directory.GetCurrentDirectory());

    /// <summary>The summary table; <paramref name="contracts"/> (a topic has a schema contract) adds the quarantined column.</summary>
    private static string Summary(FileResult[] results, bool contracts)
    {
        var table = new Table("file", "topic", "rows", "quarantined", "output", "time").AlignRight(2, 3, 5);
        foreach (var r in results)
        {
            string time = r.Elapsed.TotalSeconds.ToString("0.00", CultureInfo.InvariantCulture) + " s";
            if (r.Error is not null)
            {
                string cause = Text.FirstLine(r.Error);
                string prefix = $" on {r.Input}: ";
                int at = cause.IndexOf(prefix, StringComparison.Ordinal);
                table.Add(Rel(r.Input), "FAILED", "", "", at >= 0 ? cause[(at + prefix.Length)..] : cause, time);
                continue;
            }
            if (r.Output!.Artifacts.Count == 0 && r.Skipped.Count == 0) table.Add(Rel(r.Input), "(no tables)", "0", "", "", time);
            foreach (var a in r.Output.Artifacts)
                table.Add(Rel(r.Input), a.Topic, a.Rows.ToString(CultureInfo.InvariantCulture), a.Quarantined > 0 ? a.Quarantined.ToString(CultureInfo.InvariantCulture) : "-", S3Location.IsS3(a.Uri) ? a.Uri : Rel(new Uri(a.Uri).LocalPath), time);
            foreach (var (topic, n) in r.Skipped)
                table.Add(Rel(r.Input), topic, n.ToString(CultureInfo.InvariantCulture), "", "(not written: --topic)", time);
        }
        int ok = results.Count(r => r.Error is null);
        if (!contracts) table.DropColumn(3);
        return table.Render() + string.Create(CultureInfo.InvariantCulture, $"{ok} of {results.Length} file(s) succeeded\n");
    }

    /// <summary>Prints guest output live; with several files at once each line names its file.</summary>
    private sealed class Terminal(bool prefix)
    {
        private readonly Lock _lock = new();

        public void Line(string file, GuestLogLevel level, string text)
        {
            var stream = level == GuestLogLevel.Stdout ? Console.Out : Console.Error;
            string tag = level is GuestLogLevel.Stdout or GuestLogLevel.Stderr ? "" : JobLog.LevelName(level).TrimEnd() + ": ";
            lock (_lock)
            {
                foreach (var line in text.Split('\n'))
                    stream.WriteLine(prefix ? $"[{file}] {tag}{line}" : tag + line);
                stream.Flush();
            }
        }

        public void Traceback(string file, string traceback) => Line(file, GuestLogLevel.Stderr, traceback.TrimEnd());
    }

    private sealed class TerminalSink(JobOutput output, Terminal terminal, string file, IReadOnlySet<string>? topics, Dictionary<string, long> skipped) : IGuestSink
    {
        /// <summary>Why the output refused a table (the bridge keeps only the message), so the run's exit code can say whose fault it was.</summary>
        public CasparianException? Refused { get; private set; }

        public void Table(string topic, RecordBatch batch)
        {
            using (batch)
            {
                if (topics is not null && !topics.Contains(topic))
                {
                    skipped[topic] = skipped.GetValueOrDefault(topic) + batch.Length;
                    return;
                }
                try
                {
                    output.Write(topic, batch);
                }
                catch (CasparianException e)
                {
                    Refused ??= e;
                    throw;
                }
            }
        }

        public void Log(GuestLogLevel level, string text) => terminal.Line(file, level, text);
    }
}
