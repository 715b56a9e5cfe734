// Black-box tests of the published native binary: what a user sees at the command line.
using Xunit;

namespace Casparian.Tests;

public sealed class CliTests
{
    [Fact]
    public void Cli_Help_ListsEveryCommandAndExitCodes()
    {
        var r = Proc.Casparian("--help");
        Assert.True(r.ExitCode == 0, r.ToString());
        foreach (var name in new[] { "sentinel", "worker", "start", "run", "parser", "job", "jobs", "status", "keys", "config", "version" })
            Assert.Contains($"  {name} ", r.Stdout);
        Assert.Contains("exit codes:", r.Stdout);
        Assert.Empty(r.Stderr);
    }

    [Fact]
    public void Cli_NoArguments_PrintsHelpToStderrAndExits2()
    {
        var r = Proc.Casparian();
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("usage: casparian COMMAND", r.Stderr);
    }

    [Fact]
    public void Cli_Version_IsNativeAndReportsProtocol()
    {
        var r = Proc.Casparian("version");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Matches(@"^casparian \d+\.\d+\.\d+ \(protocol v4, native-aot, linux-x64\)\r?\n$", r.Stdout);
        Assert.Equal(r.Stdout, Proc.Casparian("--version").Stdout);
    }

    [Fact]
    public void Cli_UnknownCommand_OneLineAndExit2()
    {
        var r = Proc.Casparian("frobnicate");
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("error: unknown command 'frobnicate'; expected one of: sentinel, worker, start, run, parser, job, jobs, quarantine, topic, source, rule, scan, store, status, keys, config, version (see 'casparian --help')",
            r.Stderr.TrimEnd());
        Assert.Empty(r.Stdout);
    }

    [Fact]
    public void Cli_UnknownFlag_OneLineAndExit2()
    {
        var r = Proc.Casparian("version", "--verbose");
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("error: unknown flag --verbose for 'casparian version'; expected no flags", r.Stderr.TrimEnd());
    }

    [Fact]
    public void Cli_CommandHelp_ExitsZero()
    {
        var r = Proc.Casparian("version", "--help");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.StartsWith("usage: casparian version", r.Stdout);
    }
}
