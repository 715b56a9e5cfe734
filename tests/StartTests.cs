// `casparian start` through the native binary: sentinel and worker in one process over inproc:// with
// the store under CASPARIAN_HOME; --drain, --watch, SIGINT, and one start per home.
using System.Text.RegularExpressions;
using Xunit;

namespace Casparian.Tests;

public sealed class StartTests : IDisposable
{
    private readonly Cluster _c = new();

    public void Dispose() => _c.Dispose();

    private void Register() => Assert.StartsWith("registered parser e2e_csv 1.0", _c.Ok("parser", "register", _c.WriteBundle()).Stdout);

    [Fact]
    public void Start_Drain_ProcessesTheQueueThenPrintsEveryParquetFileWithItsRowsAndExitsZero()
    {
        Register();
        var inputs = _c.WriteInputs(5, rows: 4);
        _c.Ok("job", "add", "--parser", "e2e_csv", _c.Inputs);

        var r = Proc.Run(Repo.Binary, ["start", "--drain", "--slots", "2"], TimeSpan.FromSeconds(60), _c.Root,
            new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _c.Home, ["CASPARIAN_PYTHON"] = Cluster.Python });
        Assert.True(r.ExitCode == 0, r.ToString());

        string output = Path.Combine(_c.Home, "output");
        string[] err = r.Stderr.Split('\n');
        Assert.Matches($@"^casparian \S+: store {Regex.Escape(_c.Db)}, 2 slot\(s\), output under {Regex.Escape(output)}$", err[0]);
        // inproc://, not NetMQ's ipc:// (a loopback TCP port any local user could join); no keys needed.
        Assert.Matches($"^  sentinel on inproc://casparian-start-[0-9a-f]{{32}}; logs in {Regex.Escape(_c.Home)}/logs/casparian.log$", err[1]);
        Assert.False(Directory.Exists(Path.Combine(_c.Home, "keys")));

        string[] lines = r.Stdout.TrimEnd().Split('\n');
        Assert.Matches(@"^5 job\(s\) completed, 0 failed in this session \(\d+\.\d s\); store: 0 queued, 0 running, 5 completed, 0 failed$", lines[0]);
        Assert.Equal($"Parquet written under {output}:", lines[1]);
        for (int id = 1; id <= 5; id++)
            Assert.Matches($@"^  output/e2e_csv-in-00{id - 1}-[0-9a-f]{{16}}\.parquet +4 rows$", lines[1 + id]);
        Assert.Equal("  output: 5 file(s), 20 rows", lines[7]);
        Assert.Equal(8, lines.Length);

        var jobs = _c.Jobs();
        Assert.All(jobs, j => Assert.Equal("COMPLETED", j.State));
        foreach (var j in jobs)
        {
            var t = ParquetTable.Read(Path.Combine(output, "output", SinkTarget.SourceFileName("e2e_csv", j.Input)));
            Assert.Equal(inputs[j.Input].Select(x => (object?)x.Value), t.Columns["value"]);
        }
        // Nothing is left queued, so a second drain has nothing to do and says so.
        var again = Proc.Run(Repo.Binary, ["start", "--drain"], TimeSpan.FromSeconds(60), _c.Root,
            new Dictionary<string, string?> { ["CASPARIAN_HOME"] = _c.Home, ["CASPARIAN_PYTHON"] = Cluster.Python });
        Assert.True(again.ExitCode == 0, again.ToString());
        Assert.Matches(@"^0 job\(s\) completed, 0 failed in this session \(\d+\.\d s\); store: 0 queued, 0 running, 5 completed, 0 failed\n$", again.Stdout);
    }

    [Fact]
    public void Start_Watch_QueuesAFileCreatedAfterStartAndStopsOnSigint_ASecondStartOnTheHomeIsUnavailable()
    {
        Register();
        string watched = _c.File("drop");
        Directory.CreateDirectory(watched);
        var start = _c.Spawn("start", ["start", "--watch", watched, "--parser", "e2e_csv", "--slots", "2"]);
        _c.WaitUntil("start to watch the folder", TimeSpan.FromSeconds(30), () =>
            start.Stderr.Contains($"  watching {watched} for parser e2e_csv 1.0", StringComparison.Ordinal) || start.HasExited);
        Assert.False(start.HasExited, start.ToString());

        // One start per home: the second is refused at once, naming the home and the running one.
        var second = _c.Cli("start", "--drain");
        Assert.True(second.ExitCode == 4, second.ToString());
        Assert.Equal($"error: another 'casparian start' is running on {_c.Home} (pid {start.Pid}); stop it first, or give this one its own CASPARIAN_HOME",
            second.Stderr.TrimEnd());

        // A file that appears after start (written elsewhere, moved in whole).
        var inputs = _c.WriteInputs(1, rows: 5, dir: _c.File("staging"));
        string staged = inputs.Keys.Single();
        string dropped = Path.Combine(watched, Path.GetFileName(staged));
        File.Move(staged, dropped);
        _c.WaitUntil("the dropped file's job to complete", TimeSpan.FromSeconds(60), () =>
            _c.Jobs() is [{ State: "COMPLETED" } j] && j.Input == dropped);
        // The line is written before the job runs, but the test reads it off a pipe, so it may trail the store.
        _c.WaitUntil("start to log the queued file", TimeSpan.FromSeconds(30),
            () => start.Stderr.Contains("queued 1 new file(s) for e2e_csv 1.0", StringComparison.Ordinal));

        start.Signal(Posix.SigInt);
        Assert.True(start.WaitForExit(TimeSpan.FromSeconds(30)) == 0, start.ToString());
        Assert.StartsWith("1 job(s) completed, 0 failed in this session", start.Stdout);
        Assert.Contains("  output: 1 file(s), 5 rows", start.Stdout);
        var t = ParquetTable.Read(Path.Combine(_c.Home, "output", "output", SinkTarget.SourceFileName("e2e_csv", dropped)));
        Assert.Equal(inputs[staged].Select(x => (object?)x.Value), t.Columns["value"]);
        Assert.Single(_c.Jobs());
    }
}
