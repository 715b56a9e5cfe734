// Entry point: argv[0] picks the command (Commands.cs), the rest is parsed against the flags that
// command declares, and one catch maps every failure to a documented exit code with one line on
// stderr. The error convention for the whole tree: a failure the user can act on is a
// CasparianException carrying its exit code; each layer has at most one *Throw class whose helpers,
// named Kind_Reason, return the exception for the call site to throw (`throw CliThrow.Usage_…(…)`).
using System.Reflection;
using System.Text;

namespace Casparian;

/// <summary>Process exit codes: part of the public surface (SPEC §1), printed by <c>--help</c>.</summary>
internal enum ExitCode
{
    Ok = 0,
    /// <summary>The work ran and some of it failed (a job, a file).</summary>
    Failed = 1,
    /// <summary>Unknown command, unknown or malformed flag, missing argument.</summary>
    Usage = 2,
    /// <summary>A file, parser, store or config file named by the user is missing or invalid, or an output or environment the user configured refused the work.</summary>
    BadInput = 3,
    /// <summary>Something needed is absent or busy: python3, an address already bound, a locked store.</summary>
    Unavailable = 4,
    /// <summary>The job store is damaged (corrupt pages, failed integrity check, truncated to 0 bytes): restore it from a backup.</summary>
    StoreDamaged = 5,
    /// <summary>A bug: an exception nobody anticipated.</summary>
    Internal = 70,
    /// <summary>Interrupted before the work was done (SIGINT/SIGTERM during a one-shot command).</summary>
    Interrupted = 130,
}

/// <summary>A failure the user can act on; its message is printed as is after "error: ".</summary>
internal class CasparianException(ExitCode code, string message, Exception? inner = null) : Exception(message, inner)
{
    public ExitCode Code { get; } = code;
}

internal sealed class UsageException(string message) : CasparianException(ExitCode.Usage, message);

internal sealed class InputException(string message, Exception? inner = null) : CasparianException(ExitCode.BadInput, message, inner);

internal sealed class UnavailableException(string message, Exception? inner = null) : CasparianException(ExitCode.Unavailable, message, inner);

internal static class CliThrow
{
    public static UsageException Usage_NoSentinelKey(string connect) =>
        new($"worker: connecting to {connect} needs the sentinel's public key: --sentinel-key Z85 and --token TOKEN " +
            "(`casparian keys` on the sentinel's machine prints the whole command line), or --insecure for a plaintext link");
    public static UsageException Usage_BadKeysAction(string given) =>
        new($"keys: unknown action '{given}'; expected nothing (print the keys) or rotate-token");
    public static UsageException Usage_UnknownCommand(string given, string expected) =>
        new($"unknown command '{given}'; expected one of: {expected} (see 'casparian --help')");
    public static UsageException Usage_UnknownFlag(string command, string flag, IEnumerable<Flag> flags) =>
        new($"unknown flag {flag} for 'casparian {command}'; expected {Expected(flags)}");
    public static UsageException Usage_MissingValue(string command, Flag flag) =>
        new($"flag {flag.Name} of 'casparian {command}' needs a value: {flag.Name} {flag.Value}");
    public static UsageException Usage_SwitchWithValue(string command, string flag) =>
        new($"flag {flag} of 'casparian {command}' is a switch and takes no value");
    public static UsageException Usage_MissingFlag(string command, Flag flag) =>
        new($"'casparian {command}' needs {flag.Name} {flag.Value} ({flag.Help})");
    public static UsageException Usage_BadValue(string command, string flag, string value, string expected) =>
        new($"flag {flag} of 'casparian {command}' got '{value}'; expected {expected}");
    public static UsageException Usage_Positionals(string command, string synopsis, int given) =>
        new($"'casparian {command}' got {given} argument(s); usage: casparian {synopsis}");
    public static UsageException Usage_UnknownSubcommand(string path, string given, IEnumerable<Command> subcommands) =>
        new($"unknown subcommand '{given}' for 'casparian {path}'; expected one of: {string.Join(", ", subcommands.Select(s => s.Name))}");
    public static UsageException Usage_BadJobId(string command, string text) =>
        new($"'casparian {command}' got '{text}' as a job id; expected a positive integer (see 'casparian jobs')");
    public static UsageException Usage_WatchNeedsParser() =>
        new("'casparian start --watch DIR' needs --parser NAME: the parser the new files are for");
    public static UsageException Usage_ParserNeedsWatch() =>
        new("'casparian start --parser NAME' applies to watched folders; add --watch DIR");

    public static InputException Input_QuarantineGone(long job, string path) =>
        new($"job {job}'s quarantine file {path} is gone: a later job for the same source superseded it, or the output is on another machine; see 'casparian quarantine ls'");
    public static InputException Input_NoWatchedFolder(string dir) =>
        new($"watched folder {dir} does not exist; create it or fix --watch");
    public static InputException Input_NoSuchPath(string path) =>
        new($"no such file or folder: {path}; nothing was queued");
    public static InputException Input_UnreadableFolder(string path, Exception e) =>
        new($"cannot read folder {path}: {e.Message}; nothing was queued", e);
    public static InputException Input_Unreadable(string path, Exception e) =>
        new($"cannot read {path}: {e.Message}; nothing was queued", e);
    public static InputException Input_UnknownParser(string store, string name, string? version, IReadOnlyList<string> registered) =>
        version is not null && registered.Count > 0
            ? new($"parser {name} has no version {version} in {store}; registered: {string.Join(", ", registered)}; nothing was queued")
            : new($"unknown parser '{name}' in {store}; register it with 'casparian parser register DIR' (see 'casparian parser ls'); nothing was queued");
    public static InputException Input_ParserConflict(string name, string version, string storedHash, string newHash, string path) =>
        new($"parser {name} {version} is already registered with a different source " +
            $"(source hash {Hashes.Short(storedHash)}, now {Hashes.Short(newHash)}); bump the version in {path} and register again");
    public static InputException Input_NoInput(string path) =>
        new($"input {path} does not exist");
    public static InputException Input_EmptyFolder(string path) =>
        new($"input folder {path} has no files");
    public static InputException Input_BadVirtualEnv(string venv, string python) =>
        new($"VIRTUAL_ENV is {venv} but {python} does not exist; activate a working environment or unset VIRTUAL_ENV");
    public static UnavailableException Unavailable_StartRunning(string home, string owner) =>
        new($"another 'casparian start' is running on {home}{owner}; stop it first, or give this one its own CASPARIAN_HOME");

    private static string Expected(IEnumerable<Flag> flags)
    {
        var names = flags.Select(f => f.Name).ToArray();
        return names.Length == 0 ? "no flags" : "one of: " + string.Join(", ", names);
    }
}

/// <summary>A flag a command accepts. <see cref="Value"/> is the metavariable (e.g. "ADDR"), null for a switch.</summary>
internal readonly record struct Flag(string Name, string? Value, string Help)
{
    public bool IsSwitch => Value is null;
}

/// <summary>
/// A command or a group of subcommands. <see cref="Synopsis"/> is the usage line without the leading
/// "casparian ", e.g. "worker --connect ADDR --output DIR [--slots N]".
/// </summary>
internal sealed record Command(string Name, string Summary, string Synopsis, Flag[] Flags, Func<Args, int>? Run, Command[]? Subcommands = null)
{
    public static Command Group(string name, string summary, params Command[] subcommands) =>
        new(name, summary, name + " " + string.Join("|", subcommands.Select(s => s.Name)) + " …", [], null, subcommands);
}

/// <summary>argv after the command name, parsed against the command's declared flags.</summary>
internal sealed class Args
{
    private readonly Dictionary<string, List<string>> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _switches = new(StringComparer.Ordinal);
    private readonly Flag[] _flags;

    public string CommandPath { get; }
    public string Synopsis { get; }
    public List<string> Positionals { get; } = [];
    public bool HelpRequested { get; private set; }

    private Args(string commandPath, string synopsis, Flag[] flags)
    {
        CommandPath = commandPath;
        Synopsis = synopsis;
        _flags = flags;
    }

    public static Args Parse(string commandPath, string synopsis, Flag[] flags, ReadOnlySpan<string> argv)
    {
        var args = new Args(commandPath, synopsis, flags);
        bool flagsEnded = false;
        for (int i = 0; i < argv.Length; i++)
        {
            string a = argv[i];
            if (flagsEnded || a.Length < 2 || a[0] != '-')
            {
                args.Positionals.Add(a);
                continue;
            }
            if (a == "--")
            {
                flagsEnded = true;
                continue;
            }
            if (a is "-h" or "--help")
            {
                args.HelpRequested = true;
                continue;
            }
            int eq = a.IndexOf('=');
            string name = eq > 0 ? a[..eq] : a;
            int index = Array.FindIndex(flags, f => f.Name == name);
            if (index < 0)
            {
                // A lone "-5" is a value such as a negative priority, never a flag.
                if (a.Length > 1 && char.IsAsciiDigit(a[1])) { args.Positionals.Add(a); continue; }
                throw CliThrow.Usage_UnknownFlag(commandPath, name, flags);
            }
            Flag flag = flags[index];
            if (flag.IsSwitch)
            {
                if (eq > 0) throw CliThrow.Usage_SwitchWithValue(commandPath, name);
                args._switches.Add(name);
                continue;
            }
            string value;
            if (eq > 0) value = a[(eq + 1)..];
            else if (i + 1 < argv.Length) value = argv[++i];
            else throw CliThrow.Usage_MissingValue(commandPath, flag);
            if (!args._values.TryGetValue(name, out var list)) args._values[name] = list = [];
            list.Add(value);
        }
        return args;
    }

    public bool Has(string flag) => _switches.Contains(flag) || _values.ContainsKey(flag);

    /// <summary>The last value given for <paramref name="flag"/>, or null.</summary>
    public string? Get(string flag) => _values.TryGetValue(flag, out var list) ? list[^1] : null;

    /// <summary>Every value of a repeatable flag, in order.</summary>
    public IReadOnlyList<string> GetAll(string flag) => _values.TryGetValue(flag, out var list) ? list : [];

    public string Require(string flag)
    {
        string? value = Get(flag);
        if (value is null) throw CliThrow.Usage_MissingFlag(CommandPath, FlagNamed(flag));
        return value;
    }

    public int GetInt(string flag, int fallback, int min = int.MinValue, int max = int.MaxValue)
    {
        string? text = Get(flag);
        if (text is null) return fallback;
        if (!int.TryParse(text, System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out int value) || value < min || value > max)
            throw CliThrow.Usage_BadValue(CommandPath, flag, text, $"an integer from {min} to {max}");
        return value;
    }

    public double GetSeconds(string flag, double fallback, double min = 0, double max = double.MaxValue)
    {
        string? text = Get(flag);
        if (text is null) return fallback;
        if (!double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double value) || !(value >= min && value <= max))
            throw CliThrow.Usage_BadValue(CommandPath, flag, text, $"seconds from {min} to {max}");
        return value;
    }

    /// <summary>Checks the number of positional arguments and returns them.</summary>
    public List<string> RequirePositionals(int min, int max = int.MaxValue)
    {
        if (Positionals.Count < min || Positionals.Count > max) throw CliThrow.Usage_Positionals(CommandPath, Synopsis, Positionals.Count);
        return Positionals;
    }

    private Flag FlagNamed(string name)
    {
        foreach (var f in _flags) if (f.Name == name) return f;
        throw new InvalidOperationException($"flag {name} is not declared by 'casparian {CommandPath}'");
    }
}

internal static class Program
{
    public static string Version =>
        typeof(Program).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "0.0.0";

    internal static int Main(string[] args)
    {
        try
        {
            return Run(args);
        }
        catch (CasparianException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return (int)e.Code;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"error: internal: {e.GetType().Name}: {e.Message} (this is a bug; please report it with the command you ran)");
            if (Environment.GetEnvironmentVariable("CASPARIAN_DEBUG") == "1") Console.Error.WriteLine(e);
            return (int)ExitCode.Internal;
        }
    }

    internal static int Run(ReadOnlySpan<string> argv)
    {
        if (argv.Length == 0)
        {
            Console.Error.Write(Help());
            return (int)ExitCode.Usage;
        }
        if (argv[0] is "-h" or "--help" or "help")
        {
            Console.Out.Write(Help());
            return 0;
        }
        var commands = Commands.All;
        Command? command = argv[0] is "--version" or "-V" ? Commands.VersionCommand : Find(commands, argv[0]);
        if (command is null) throw CliThrow.Usage_UnknownCommand(argv[0], string.Join(", ", commands.Select(c => c.Name)));
        string path = command.Name;
        argv = argv[1..];
        while (command.Subcommands is { } subs)
        {
            if (argv.Length == 0)
            {
                Console.Error.Write(CommandHelp(path, command));
                return (int)ExitCode.Usage;
            }
            if (argv[0] is "-h" or "--help")
            {
                Console.Out.Write(CommandHelp(path, command));
                return 0;
            }
            Command? sub = Find(subs, argv[0]);
            if (sub is null) throw CliThrow.Usage_UnknownSubcommand(path, argv[0], subs);
            command = sub;
            path += " " + sub.Name;
            argv = argv[1..];
        }

        var args = Args.Parse(path, command.Synopsis, command.Flags, argv);
        if (args.HelpRequested)
        {
            Console.Out.Write(CommandHelp(path, command));
            return 0;
        }
        return command.Run!(args);
    }

    private static Command? Find(Command[] commands, string name)
    {
        foreach (var c in commands) if (c.Name == name) return c;
        return null;
    }

    internal static string Help()
    {
        var sb = new StringBuilder();
        sb.Append("casparian ").Append(Version).AppendLine(": turns files into trustworthy tables with Python parsers.");
        sb.AppendLine();
        sb.AppendLine("usage: casparian COMMAND [FLAGS] [ARGS]   ('casparian COMMAND --help' for its flags)");
        sb.AppendLine();
        sb.AppendLine("commands:");
        foreach (var c in Commands.All) sb.Append("  ").Append(c.Name.PadRight(10)).Append(' ').AppendLine(c.Summary);
        sb.AppendLine();
        sb.AppendLine("exit codes:");
        sb.AppendLine("  0    success");
        sb.AppendLine("  1    the work ran and some of it failed (a job, a file)");
        sb.AppendLine("  2    usage: unknown command, unknown or malformed flag, missing argument");
        sb.AppendLine("  3    bad input: a file, parser, store, config file, output or lockfile that is missing or invalid");
        sb.AppendLine("  4    unavailable: python3 missing, address in use, store locked or in use by another sentinel");
        sb.AppendLine("  5    the job store is damaged (corrupt, fails its integrity check, or truncated to 0 bytes)");
        sb.AppendLine("  70   internal error (a bug; set CASPARIAN_DEBUG=1 for the stack trace)");
        sb.AppendLine("  130  interrupted before the work was done");
        return sb.ToString();
    }

    internal static string CommandHelp(string path, Command command)
    {
        var sb = new StringBuilder();
        sb.Append("usage: casparian ").AppendLine(command.Subcommands is null ? command.Synopsis : path + " " + string.Join("|", command.Subcommands.Select(s => s.Name)) + " …");
        sb.AppendLine();
        sb.AppendLine(command.Summary);
        if (command.Subcommands is { } subs)
        {
            sb.AppendLine();
            sb.AppendLine("subcommands:");
            foreach (var s in subs) sb.Append("  ").Append(s.Synopsis.PadRight(40)).Append(' ').AppendLine(s.Summary);
        }
        if (command.Flags.Length > 0)
        {
            sb.AppendLine();
            sb.AppendLine("flags:");
            static string Left(Flag f) => f.IsSwitch ? f.Name : f.Name + " " + f.Value;
            int width = command.Flags.Max(f => Left(f).Length);
            foreach (var f in command.Flags) sb.Append("  ").Append(Left(f).PadRight(width)).Append("  ").AppendLine(f.Help);
        }
        return sb.ToString();
    }
}
