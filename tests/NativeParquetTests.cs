// One file to ship: the native binary copied alone into an empty directory, with a fresh
// CASPARIAN_HOME, installs ParquetSharp's native library from inside itself and runs real jobs.
using System.Security.Cryptography;
using Xunit;

namespace Casparian.Tests;

public sealed class NativeParquetTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _binary;

    public NativeParquetTests()
    {
        // Only the binary: no ParquetSharpNative.so beside it, in the working directory or on a library path.
        _binary = _dir.File("bin/casparian");
        Directory.CreateDirectory(Path.GetDirectoryName(_binary)!);
        File.Copy(Repo.Binary, _binary);
        File.WriteAllText(_dir.File("parser.py"), Parser);
        File.WriteAllText(_dir.File("people.csv"), "name,age\nAna,31\nBo,7\n");
    }

    public void Dispose() => _dir.Dispose();

    // Prints the Parquet library its parent (the casparian process) has mapped, so the test sees which
    // file was really loaded.
    private const string Parser = """
        import csv, os
        def parse(path):
            with open(f"/proc/{os.getppid()}/maps") as maps:
                libs = sorted({line.split()[-1] for line in maps if line.rstrip().endswith("ParquetSharpNative.so")})
            print("loaded:" + "|".join(libs))
            rows = list(csv.DictReader(open(path)))
            return {"name": [r["name"] for r in rows], "age": [int(r["age"]) for r in rows]}
        """;

    /// <summary>The library the tests themselves load (NuGet's runtime asset): what the binary must install, byte for byte.</summary>
    private static readonly byte[] NuGetLibrary = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "ParquetSharpNative.so"));

    private static string Sha256(byte[] data) => Convert.ToHexStringLower(SHA256.HashData(data));

    private ProcessResult Casparian(string home, params string[] args) =>
        Proc.Run(_binary, args, TimeSpan.FromMinutes(3), workingDirectory: _dir.Path,
            environment: new Dictionary<string, string?> { ["CASPARIAN_HOME"] = home, ["LD_LIBRARY_PATH"] = null, ["VIRTUAL_ENV"] = null });

    private ProcessResult RunJob(string home, string output) => Casparian(home, "run", "parser.py", "people.csv", "--output", output);

    /// <summary>The home's library directory (Config.LibDir, HOME/lib).</summary>
    private static string LibDir(string home) => Config.Defaults(home).LibDir;

    /// <summary>The installed library: {LibDir}/{sha256[..16]}/ParquetSharpNative.so.</summary>
    private static string Installed(string home) => Path.Combine(LibDir(home), Sha256(NuGetLibrary)[..16], "ParquetSharpNative.so");

    private void AssertJobWrote(string output)
    {
        var t = ParquetTable.Read(Path.Combine(_dir.Path, output, "output", "people.parquet"));
        Assert.Equal(2, t.Rows);
        Assert.Equal(["Ana", "Bo"], t.Columns["name"]);
        Assert.Equal([31L, 7L], t.Columns["age"]);
    }

    private static void AssertInstalledIntact(string home)
    {
        Assert.Equal(Sha256(NuGetLibrary), Sha256(File.ReadAllBytes(Installed(home))));
        // Nothing but the library: no temp file of an extraction left behind, no second copy.
        Assert.Equal([Installed(home)], Directory.GetFiles(LibDir(home), "*", SearchOption.AllDirectories));
    }

    [Fact]
    public void NativeParquet_BinaryAlone_RunsAJobOnAFreshHome()
    {
        string home = _dir.File("home");
        Assert.Equal(["casparian"], Directory.GetFiles(Path.GetDirectoryName(_binary)!).Select(Path.GetFileName));
        Assert.Empty(Directory.GetFiles(_dir.Path, "ParquetSharpNative*", SearchOption.AllDirectories));

        var first = RunJob(home, "out1");
        Assert.True(first.ExitCode == 0, first.ToString());
        AssertJobWrote("out1");
        AssertInstalledIntact(home);
        // The process loaded the copy it installed, not a library found elsewhere.
        Assert.Contains($"loaded:{Installed(home)}\n", first.Stdout);

        var second = RunJob(home, "out2");
        Assert.True(second.ExitCode == 0, second.ToString());
        AssertJobWrote("out2");
        Assert.Contains($"loaded:{Installed(home)}\n", second.Stdout);
        AssertInstalledIntact(home);
    }

    [Fact]
    public async Task NativeParquet_ManyProcessesOnAFreshHome_AllRunAndOneGoodCopyRemains()
    {
        string home = _dir.File("home");
        var runs = await Task.WhenAll(Enumerable.Range(0, 4).Select(i => Task.Run(() => RunJob(home, $"out{i}"))));
        for (int i = 0; i < runs.Length; i++)
        {
            Assert.True(runs[i].ExitCode == 0, runs[i].ToString());
            AssertJobWrote($"out{i}");
        }
        AssertInstalledIntact(home);
    }

    [Theory]
    [InlineData("truncated")]   // a copy cut short (a crash of an older, non-atomic copy; a full disk)
    [InlineData("flipped")]     // same size, one byte changed: only the hash can tell
    [InlineData("empty")]       // an empty file where the library should be
    public void NativeParquet_DamagedCopy_IsReplacedAndTheJobRuns(string damage)
    {
        string home = _dir.File("home");
        Assert.Equal(0, RunJob(home, "out0").ExitCode);
        string lib = Installed(home);
        switch (damage)
        {
            case "truncated":
                using (var f = new FileStream(lib, FileMode.Open)) f.SetLength(f.Length / 2);
                break;
            case "flipped":
                using (var f = new FileStream(lib, FileMode.Open))
                {
                    f.Position = f.Length / 3;
                    int b = f.ReadByte();
                    f.Position--;
                    f.WriteByte((byte)(b ^ 0xFF));
                }
                break;
            default:
                File.WriteAllBytes(lib, []);
                break;
        }
        Assert.NotEqual(Sha256(NuGetLibrary), Sha256(File.ReadAllBytes(lib)));

        var r = RunJob(home, "out1");
        Assert.True(r.ExitCode == 0, r.ToString());
        AssertJobWrote("out1");
        AssertInstalledIntact(home);
    }

    [Theory]
    [InlineData("version")]
    [InlineData("config")]
    [InlineData("--help")]
    [InlineData("jobs")]        // a job command: reads the store, writes no Parquet
    public void NativeParquet_CommandsThatWriteNoParquet_DoNotInstallIt(string command)
    {
        string home = _dir.File("home");
        var r = Casparian(home, command);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.False(Directory.Exists(LibDir(home)));
    }

    [Fact]
    public void NativeParquet_LibraryDirectoryNotWritable_OneLineAndExit4()
    {
        string home = _dir.File("home");
        Directory.CreateDirectory(home);
        // A file where the lib directory should be: creating it fails for root too (chmod would not).
        File.WriteAllText(LibDir(home), "");
        var r = RunJob(home, "out");
        Assert.Equal(4, r.ExitCode);
        string[] lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith($"error: cannot install ParquetSharp's native library in {LibDir(home)}", lines[0]);
        Assert.Contains("make CASPARIAN_HOME writable", lines[0]);
        Assert.False(Directory.Exists(_dir.File("out")));
    }
}
