using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Xunit;

namespace Casparian.Tests;

public sealed class VenvTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _wheelhouse;

    public VenvTests()
    {
        _wheelhouse = _dir.File("wheels");
        Directory.CreateDirectory(_wheelhouse);
        Wheel.Build(_wheelhouse, "demo_pkg", "1.0", "VALUE = 42\n");
    }

    public void Dispose() => _dir.Dispose();

    private string Venvs => _dir.File("venvs");

    private EnvManager Manager(long maxBytes = long.MaxValue) =>
        new(Defaults.Venv(Venvs) with { Wheelhouse = _wheelhouse, MaxBytes = maxBytes, BasePython = Guest.Python });

    private static string Hash(string lockfile) => Hashes.Sha256Hex(lockfile);

    private static readonly TimeSpan Liveness = TimeSpan.FromMinutes(3);

    private static Task<EnvLease> Acquire(EnvManager m, string lockfile) =>
        m.AcquireAsync(Hash(lockfile), lockfile, CancellationToken.None).WaitAsync(Liveness);

    /// <summary>Parses .metadata.json (it must be valid JSON with every field typed) and returns its hashes.</summary>
    private string[] MetadataHashes()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Venvs, ".metadata.json")));
        var hashes = new List<string>();
        foreach (var e in doc.RootElement.GetProperty("entries").EnumerateArray())
        {
            hashes.Add(e.GetProperty("env_hash").GetString()!);
            e.GetProperty("created_at").GetDateTimeOffset();
            e.GetProperty("last_used").GetDateTimeOffset();
            Assert.True(e.GetProperty("size_bytes").GetInt64() > 0);
        }
        Assert.Empty(Directory.GetFiles(Venvs, ".metadata.json.tmp-*"));
        return [.. hashes.Order(StringComparer.Ordinal)];
    }

    /// <summary>What the venvs directory holds besides .locks and the metadata: only ready environments.</summary>
    private string[] EnvDirs() =>
        [.. Directory.GetDirectories(Venvs).Select(Path.GetFileName).Where(n => n != ".locks").Order(StringComparer.Ordinal)!];

    [Fact]
    public async Task Venv_Acquire_BuildsOfflineFromWheelhouseThenCached()
    {
        const string lockfile = "demo-pkg==1.0\n";
        using var m = Manager();
        string env = Path.Combine(Venvs, Hash(lockfile));
        using (var lease = await Acquire(m, lockfile))
        {
            Assert.False(lease.Cached);
            Assert.Equal(Path.Combine(env, "bin", "python"), lease.InterpreterPath);
            var run = Proc.Run(lease.InterpreterPath, ["-c", "import demo_pkg, sys; print(demo_pkg.VALUE); print(sys.prefix)"]);
            Assert.True(run.ExitCode == 0, run.ToString());
            Assert.Equal(["42", env], run.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        }
        Assert.Equal(lockfile, File.ReadAllText(Path.Combine(env, "casparian.lock")));
        // Built in a temp directory and renamed: no script may still point at the build path.
        foreach (var script in Directory.GetFiles(Path.Combine(env, "bin")).Where(f => new FileInfo(f).LinkTarget is null))
            Assert.DoesNotContain(".build-", File.ReadAllText(script));
        var pip = Proc.Run(Path.Combine(env, "bin", "pip"), ["--version"]);
        Assert.True(pip.ExitCode == 0, pip.ToString());
        Assert.Contains($"{env}/lib/", pip.Stdout);
        Assert.Equal([Hash(lockfile)], EnvDirs());
        Assert.Equal([Hash(lockfile)], MetadataHashes());

        using (var again = await Acquire(m, lockfile))
            Assert.True(again.Cached);
        // A fresh manager (a restarted worker) finds it too.
        using (var other = Manager())
        using (var third = await other.AcquireAsync(Hash(lockfile), null, CancellationToken.None))
            Assert.True(third.Cached);
        Assert.Equal(1, m.Builds);
    }

    [Fact]
    public async Task Venv_Acquire_ConcurrentSameEnv_BuildsOnceAcrossManagers()
    {
        // Two managers on one directory stand for two worker processes: each lock is its own open file
        // description, so flock treats them exactly as it treats separate processes.
        const string lockfile = "# concurrent\ndemo-pkg==1.0\n";
        using var first = Manager();
        using var second = Manager();
        var leases = await Task.WhenAll(Enumerable.Range(0, 6).Select(i => Acquire(i % 2 == 0 ? first : second, lockfile)));
        try
        {
            Assert.Equal(1, first.Builds + second.Builds);
            Assert.Single(leases.Select(l => l.InterpreterPath).Distinct());
            Assert.Contains(leases, l => !l.Cached);
            Assert.Equal([Hash(lockfile)], EnvDirs());
            Assert.Equal([Hash(lockfile)], MetadataHashes());
        }
        finally
        {
            foreach (var l in leases) l.Dispose();
        }
    }

    [Fact]
    public async Task Venv_Acquire_FailedBuild_LeavesNothingAndSaysWhy()
    {
        const string lockfile = "no-such-pkg==9.9\n";
        using var m = Manager();
        var e = await Assert.ThrowsAsync<EnvException>(() => Acquire(m, lockfile));
        Assert.Contains($"building environment {Hash(lockfile)[..12]} failed", e.Message);
        Assert.Contains("pip install exited 1", e.Message);
        Assert.Contains("no-such-pkg", e.Message);
        Assert.Contains(_wheelhouse, e.Message);
        // A lockfile pinning what the wheelhouse lacks is the user's to fix.
        Assert.Equal(ExitCode.BadInput, e.Code);
        Assert.Empty(EnvDirs());
        Assert.Equal(0, m.Builds);
        // The failure is not remembered: fixing the wheelhouse and asking again builds it.
        Wheel.Build(_wheelhouse, "no_such_pkg", "9.9", "");
        using var lease = await Acquire(m, lockfile);
        Assert.False(lease.Cached);
    }

    [Fact]
    public async Task Venv_Dispose_KillsABuildInProgressAndLeavesNothing()
    {
        var m = Manager();
        var acquire = Acquire(m, "# cancelled\ndemo-pkg==1.0\n");
        m.Dispose();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => acquire);
        Assert.Empty(EnvDirs());
        Assert.Equal(0, m.Builds);
    }

    [Fact]
    public async Task Venv_Acquire_EmptyLockfile_GivesBareEnvironment()
    {
        using var m = Manager();
        using var lease = await Acquire(m, "");
        var run = Proc.Run(lease.InterpreterPath, ["-c", "import sys; print(sys.prefix != sys.base_prefix)"]);
        Assert.Equal("True", run.Stdout.Trim());
        Assert.Equal([Hash("")], MetadataHashes());
    }

    [Fact]
    public async Task Venv_Acquire_System_IsTheWorkersInterpreter()
    {
        using var m = Manager();
        using var lease = await m.AcquireAsync("system", null, CancellationToken.None);
        Assert.Equal(Guest.Python, lease.InterpreterPath);
        Assert.True(lease.Cached);
        Assert.False(Directory.Exists(Venvs));
    }

    [Theory]
    [InlineData("abc", null, "is invalid")]                                     // not a sha256
    [InlineData("../../etc/passwd", null, "is invalid")]                        // a path, not a hash
    [InlineData("E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", null, "is invalid")] // upper case
    [InlineData("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "x\n", "hashes to")] // lockfile of another hash
    [InlineData("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", null, "no lockfile")] // missing, nothing to build from
    public async Task Venv_Acquire_Refuses(string hash, string? lockfile, string message)
    {
        using var m = Manager();
        var e = await Assert.ThrowsAsync<EnvException>(() => m.AcquireAsync(hash, lockfile, CancellationToken.None));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public async Task Venv_Evict_LeastRecentlyUsedFirst()
    {
        string a = "# a\n", b = "# b\n", c = "# c\n";
        using (var m = Manager())
        {
            foreach (var lockfile in new[] { a, b, c, a }) (await Acquire(m, lockfile)).Dispose();
        }
        Assert.Equal(new[] { Hash(a), Hash(b), Hash(c) }.Order(StringComparer.Ordinal), MetadataHashes());
        long total = Directory.GetDirectories(Venvs).Where(d => !d.EndsWith(".locks", StringComparison.Ordinal)).Sum(DirSize);
        // One byte over budget: exactly the least recently used (b; a was used again after c) goes.
        using var tight = Manager(maxBytes: total - 1);
        Assert.Equal([Hash(b)], tight.Evict());
        Assert.Equal(new[] { Hash(a), Hash(c) }.Order(StringComparer.Ordinal), EnvDirs());
        Assert.Equal(new[] { Hash(a), Hash(c) }.Order(StringComparer.Ordinal), MetadataHashes());
        Assert.Empty(tight.Evict());
    }

    [Fact]
    public async Task Venv_Evict_NeverEvictsALeasedEnvironment()
    {
        string a = "# leased\n", b = "# free\n";
        using var m = Manager();
        (await Acquire(m, b)).Dispose();
        using (var leased = await Acquire(m, a))
        {
            using var nothingFits = Manager(maxBytes: 0);
            Assert.Equal([Hash(b)], nothingFits.Evict());
            Assert.Equal([Hash(a)], EnvDirs());
            Assert.Equal([Hash(a)], MetadataHashes());
            // Still usable while leased, and the budget does not take it from under the job.
            Assert.Equal(0, Proc.Run(leased.InterpreterPath, ["-c", "pass"]).ExitCode);
            Assert.Empty(nothingFits.Evict());
        }
        using var after = Manager(maxBytes: 0);
        Assert.Equal([Hash(a)], after.Evict());
        Assert.Empty(EnvDirs());
    }

    [Fact]
    public async Task Venv_Build_EvictsAutomaticallyButKeepsWhatItBuilt()
    {
        string x = "# x\n", y = "# y\n";
        using var m = Manager(maxBytes: 1);
        using (var lx = await Acquire(m, x))
            Assert.Equal([Hash(x)], EnvDirs());
        using var ly = await Acquire(m, y);
        Assert.Equal([Hash(y)], EnvDirs());
        Assert.Equal([Hash(y)], MetadataHashes());
        Assert.Equal(0, Proc.Run(ly.InterpreterPath, ["-c", "pass"]).ExitCode);
    }

    [Fact]
    public async Task Venv_Evict_ClearsLeftoversOfCrashedBuilds()
    {
        using var m = Manager();
        (await Acquire(m, "# keep\n")).Dispose();
        string crashedBuild = Path.Combine(Venvs, $".build-{Hash("# crashed\n")}-0123456789ab");
        string crashedTrash = Path.Combine(Venvs, $".trash-{Hash("# gone\n")}-0123456789ab");
        Directory.CreateDirectory(Path.Combine(crashedBuild, "bin"));
        Directory.CreateDirectory(crashedTrash);
        Assert.Empty(m.Evict());
        Assert.Equal([Hash("# keep\n")], EnvDirs());
    }

    private static long DirSize(string dir) =>
        new DirectoryInfo(dir).EnumerateFiles("*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint }).Sum(f => f.Length);
}

/// <summary>A minimal pure-Python wheel (PEP 427): the package, METADATA, WHEEL and a RECORD with hashes.</summary>
internal static class Wheel
{
    public static string Build(string dir, string name, string version, string initPy)
    {
        string distInfo = $"{name}-{version}.dist-info";
        var files = new List<(string Path, byte[] Data)>
        {
            ($"{name}/__init__.py", Encoding.UTF8.GetBytes(initPy)),
            ($"{distInfo}/METADATA", Encoding.UTF8.GetBytes($"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")),
            ($"{distInfo}/WHEEL", Encoding.UTF8.GetBytes("Wheel-Version: 1.0\nGenerator: casparian-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")),
        };
        var record = new StringBuilder();
        foreach (var (path, data) in files)
            record.Append(path).Append(",sha256=").Append(Convert.ToBase64String(SHA256.HashData(data)).TrimEnd('=').Replace('+', '-').Replace('/', '_')).Append(',').Append(data.Length).Append('\n');
        record.Append(distInfo).Append("/RECORD,,\n");
        files.Add(($"{distInfo}/RECORD", Encoding.UTF8.GetBytes(record.ToString())));

        string wheel = Path.Combine(dir, $"{name}-{version}-py3-none-any.whl");
        using var zip = ZipFile.Open(wheel, ZipArchiveMode.Create);
        foreach (var (path, data) in files)
        {
            using var s = zip.CreateEntry(path).Open();
            s.Write(data);
        }
        return wheel;
    }
}
