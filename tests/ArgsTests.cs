using Xunit;

namespace Casparian.Tests;

public sealed class ArgsTests
{
    private static readonly Flag[] Flags =
    [
        new("--parser", "NAME", "parser to run"),
        new("--priority", "N", "higher runs first"),
        new("--force", null, "queue even if done"),
    ];

    private static Args Parse(params string[] argv) => Args.Parse("job add", "job add --parser NAME PATH…", Flags, argv);

    [Fact]
    public void Args_Parse_ValuesSwitchesAndPositionals()
    {
        var a = Parse("a.csv", "--parser", "sales", "--force", "--priority=-3", "b.csv");
        Assert.Equal("sales", a.Get("--parser"));
        Assert.True(a.Has("--force"));
        Assert.Equal(-3, a.GetInt("--priority", 0));
        Assert.Equal(["a.csv", "b.csv"], a.Positionals);
    }

    [Fact]
    public void Args_Parse_DoubleDashEndsFlags()
    {
        var a = Parse("--parser", "p", "--", "--force", "-x");
        Assert.False(a.Has("--force"));
        Assert.Equal(["--force", "-x"], a.Positionals);
    }

    [Fact]
    public void Args_Parse_NegativeNumberIsAValueNotAFlag()
    {
        Assert.Equal(-5, Parse("--priority", "-5").GetInt("--priority", 0));
        Assert.Equal(["-7"], Parse("-7").Positionals);
    }

    [Fact]
    public void Args_Parse_RepeatedFlagKeepsEveryValueAndGetReturnsLast()
    {
        var a = Parse("--parser", "a", "--parser", "b");
        Assert.Equal(["a", "b"], a.GetAll("--parser"));
        Assert.Equal("b", a.Get("--parser"));
    }

    public static TheoryData<string[], string> BadArgs => new()
    {
        // A flag the command does not declare.
        { ["--colour", "red"], "unknown flag --colour for 'casparian job add'; expected one of: --parser, --priority, --force" },
        // A value flag at the very end, its value missing.
        { ["--parser"], "flag --parser of 'casparian job add' needs a value: --parser NAME" },
        // A switch given a value.
        { ["--force=yes"], "flag --force of 'casparian job add' is a switch and takes no value" },
    };

    [Theory]
    [MemberData(nameof(BadArgs))]
    public void Args_Parse_RejectsBadFlags(string[] argv, string message)
    {
        var e = Assert.Throws<UsageException>(() => Parse(argv));
        Assert.Equal(message, e.Message);
        Assert.Equal(ExitCode.Usage, e.Code);
    }

    [Fact]
    public void Args_GetInt_RejectsOutOfRangeAndNonNumbers()
    {
        Assert.Equal("flag --priority of 'casparian job add' got 'high'; expected an integer from -100 to 100",
            Assert.Throws<UsageException>(() => Parse("--priority", "high").GetInt("--priority", 0, -100, 100)).Message);
        Assert.Throws<UsageException>(() => Parse("--priority", "101").GetInt("--priority", 0, -100, 100));
    }

    [Fact]
    public void Args_Require_NamesTheMissingFlag()
    {
        var e = Assert.Throws<UsageException>(() => Parse("a.csv").Require("--parser"));
        Assert.Equal("'casparian job add' needs --parser NAME (parser to run)", e.Message);
    }

    [Fact]
    public void Args_RequirePositionals_PrintsUsage()
    {
        var e = Assert.Throws<UsageException>(() => Parse("--parser", "p").RequirePositionals(1));
        Assert.Equal("'casparian job add' got 0 argument(s); usage: casparian job add --parser NAME PATH…", e.Message);
    }
}
