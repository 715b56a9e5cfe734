// `casparian run PARSER INPUT`: dev mode. One parser over a file or a folder, no store and no
// sentinel; the parser's prints and logs appear in the terminal as they happen, and the tables go
// through the same Parquet output code as the worker's.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Apache.Arrow;

namespace Casparian;

internal static class DevRun
{
    private static readonly Flag TopicFlag = new("--topic", "T", "write only this topic (repeatable); other tables are counted but not written");

    internal static readonly Command Command = new("run", "dev mode: one parser over a file or folder, no store",
        "run PARSER INPUT [--output DIR] [--topic T] [--slots N]",
        [TopicFlag, .. Config.Flags(Config.Output, Config.Slots, Config.Python, Config.Lineage, Config.JobTimeout, Config.ConnectTimeout, Config.IdleTimeout)],
        Run);

    private sealed record FileResult(string Input, GuestResult? Guest, OutputResult? Output, string? Error, TimeSpan Elapsed, Dictionary<string, long> Skipped);

    private static int Run(Args args)
    {
        var positionals = args.RequirePositionals(2, 2);
        var config = Config.Load(args);
        string parserPath = Path.GetFullPath(positionals[0]);
        string inputPath = Path.GetFullPath(positionals[1]);

        // Load validates the parser the way registration would (entry module, name, version) and
        // fails with one clear line; the guest then runs the files in place, so edits take effect at once.
        ParserBundle bundle = ParserBundle.Load(parserPath);
        string parserName = bundle.Version == ParserBundle.DefaultVersion ? bundle.Name : $"{bundle.Name}@{bundle.Version}";
        List<string> inputs = Inputs(inputPath);
        string interpreter = Interpreter(parserPath, config);
        string outputRoot = config.Describe(Config.Output).Source == SettingSource.Default
            ? Path.Combine(Directory.GetCurrentDirectory(), "output")
            : config.Get(Config.Output);
        HashSet<string>? topics = args.GetAll(TopicFlag.Name) is { Count: > 0 } t ? [.. t] : null;
        int slots = Math.Min(config.Get(Config.Slots), inputs.Count);
        string shim = Shim.Ensure(Path.Combine(config.HomeDir, "shim"));
        NativeParquet.Ensure(Path.Combine(config.HomeDir, "lib"));

        var outputOptions = new OutputOptions { Root = outputRoot, Lineage = config.Get(Config.Lineage) };
        var bridgeOptions = new BridgeOptions { ConnectTimeout = config.Get(Config.ConnectTimeout), IdleTimeout = config.Get(Config.IdleTimeout) };
        var terminal = new Terminal(prefix: inputs.Count > 1);
        Console.Error.WriteLine($"running {parserName} on {inputs.Count} file(s) with {interpreter}; output under {outputRoot}");

        using var signal = new ShutdownSignal();
        string[] stems = Stems(inputs, Directory.Exists(inputPath) ? inputPath : Path.GetDirectoryName(inputPath)!);
        var results = new FileResult[inputs.Count];
        var options = new ParallelOptions { MaxDegreeOfParallelism = slots };
        Parallel.ForEachAsync(Enumerable.Range(0, inputs.Count), options, async (i, _) =>
        {
            results[i] = await RunOne((ulong)(i + 1), inputs[i], stems[i], parserPath, parserName, interpreter, shim,
                outputOptions, bridgeOptions, config.Get(Config.JobTimeout), topics, terminal, interactive: inputs.Count == 1, signal.Token);
        }).GetAwaiter().GetResult();

        Console.Out.Write(Summary(results));
        int failed = results.Count(r => r.Error is not null);
        foreach (var r in results.Where(r => r.Error is not null))
            Console.Error.WriteLine($"error: {FirstLine(r.Error!)}");
        if (signal.Token.IsCancellationRequested) return (int)ExitCode.Interrupted;
        return failed == 0 ? 0 : (int)ExitCode.Failed;
    }

    private static async Task<FileResult> RunOne(ulong jobId, string input, string stem, string parserPath, string parserName, string interpreter, string shim,
        OutputOptions outputOptions, BridgeOptions bridgeOptions, TimeSpan timeout, HashSet<string>? topics, Terminal terminal, bool interactive,
        CancellationToken stop)
    {
        var clock = Stopwatch.StartNew();
        var skipped = new Dictionary<string, long>(StringComparer.Ordinal);
        try
        {
            using var output = new JobOutput(outputOptions, jobId, 0, [], stem);
            var request = new GuestRequest
            {
                Interpreter = interpreter,
                ShimPath = shim,
                Parser = GuestParser.Path(parserPath),
                FilePath = input,
                JobId = jobId,
                ParserName = parserName,
                Timeout = timeout,
                Interactive = interactive,
                Options = bridgeOptions,
            };
            var sink = new TerminalSink(output, terminal, Path.GetFileName(input), topics, skipped);
            GuestResult guest = await Bridge.RunAsync(request, sink, stop).ConfigureAwait(false);
            if (!guest.Succeeded)
            {
                // The shim's messages already read "parser P on FILE: cause"; others get that form here.
                string error = guest.ErrorMessage ?? $"parser {parserName} on {input}: {guest.Outcome}";
                if (guest.Traceback is { Length: > 0 } tb) terminal.Traceback(Path.GetFileName(input), tb);
                return new FileResult(input, guest, null, error, clock.Elapsed, skipped);
            }
            return new FileResult(input, guest, output.Commit(), null, clock.Elapsed, skipped);
        }
        catch (CasparianException e)
        {
            return new FileResult(input, null, null, $"parser {parserName} on {input}: {e.Message}", clock.Elapsed, skipped);
        }
    }

    /// <summary>$VIRTUAL_ENV's python, else the parser directory's .venv, else the configured python3 resolved to its real path.</summary>
    internal static string Interpreter(string parserPath, Config config)
    {
        if (Environment.GetEnvironmentVariable("VIRTUAL_ENV") is { Length: > 0 } venv)
        {
            string p = Path.Combine(venv, "bin", "python");
            if (File.Exists(p)) return p;
            throw new InputException($"VIRTUAL_ENV is {venv} but {p} does not exist; activate a working environment or unset VIRTUAL_ENV");
        }
        string dir = Directory.Exists(parserPath) ? parserPath : Path.GetDirectoryName(parserPath)!;
        string local = Path.Combine(dir, ".venv", "bin", "python");
        // A venv's bin/python must be started by that path (not its target) for the venv to apply.
        if (File.Exists(local)) return local;
        return Python.ResolveReal(config.Get(Config.Python));
    }

    /// <summary>
    /// Output file names: each input's path under the input folder without its extension
    /// ("2026/oct.csv" → "2026_oct"), so files of the same name in different folders do not
    /// overwrite each other; a name that still collides after sanitising gets "-2", "-3", ….
    /// </summary>
    internal static string[] Stems(List<string> inputs, string root)
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

    private static List<string> Inputs(string path)
    {
        if (File.Exists(path)) return [path];
        if (!Directory.Exists(path)) throw new InputException($"input {path} does not exist");
        var files = Directory.EnumerateFiles(path, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.Hidden })
            .Where(f => !Path.GetFileName(f).StartsWith('.'))
            .Order(StringComparer.Ordinal)
            .ToList();
        if (files.Count == 0) throw new InputException($"input folder {path} has no files");
        return files;
    }

    private static string Rel(string path)
    {
        string rel = Path.GetRelativePath(Directory.GetCurrentDirectory(), path);
        return rel.StartsWith("..", StringComparison.Ordinal) ? path : rel;
    }

    private static string Summary(FileResult[] results)
    {
        var rows = new List<string[]> { new[] { "file", "topic", "rows", "output", "time" } };
        foreach (var r in results)
        {
            string time = r.Elapsed.TotalSeconds.ToString("0.00", CultureInfo.InvariantCulture) + " s";
            if (r.Error is not null)
            {
                string cause = FirstLine(r.Error);
                string prefix = $" on {r.Input}: ";
                int at = cause.IndexOf(prefix, StringComparison.Ordinal);
                rows.Add([Rel(r.Input), "FAILED", "", at >= 0 ? cause[(at + prefix.Length)..] : cause, time]);
                continue;
            }
            if (r.Output!.Artifacts.Count == 0 && r.Skipped.Count == 0) rows.Add([Rel(r.Input), "(no tables)", "0", "", time]);
            foreach (var a in r.Output.Artifacts)
                rows.Add([Rel(r.Input), a.Topic, a.Rows.ToString(CultureInfo.InvariantCulture), Rel(new Uri(a.Uri).LocalPath), time]);
            foreach (var (topic, n) in r.Skipped)
                rows.Add([Rel(r.Input), topic, n.ToString(CultureInfo.InvariantCulture), "(not written: --topic)", time]);
        }
        int[] widths = Enumerable.Range(0, 5).Select(c => rows.Max(r => r[c].Length)).ToArray();
        var sb = new StringBuilder();
        foreach (var row in rows)
        {
            for (int c = 0; c < row.Length; c++)
            {
                bool right = c is 2 or 4;
                sb.Append(right ? row[c].PadLeft(widths[c]) : row[c].PadRight(widths[c]));
                sb.Append(c < row.Length - 1 ? "  " : "\n");
            }
        }
        int ok = results.Count(r => r.Error is null);
        sb.Append(CultureInfo.InvariantCulture, $"{ok} of {results.Length} file(s) succeeded\n");
        return sb.ToString();
    }

    private static string FirstLine(string text)
    {
        int nl = text.IndexOf('\n');
        return nl < 0 ? text : text[..nl];
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

    private sealed class TerminalSink(JobOutput output, Terminal terminal, string file, HashSet<string>? topics, Dictionary<string, long> skipped) : IGuestSink
    {
        public void Table(string topic, RecordBatch batch)
        {
            using (batch)
            {
                if (topics is null || topics.Contains(topic)) output.Write(topic, batch);
                else skipped[topic] = skipped.GetValueOrDefault(topic) + batch.Length;
            }
        }

        public void Log(GuestLogLevel level, string text) => terminal.Line(file, level, text);
    }
}
