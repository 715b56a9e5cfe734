// uv.lock: read with Tomlyn into the pins `uv sync --frozen --no-dev` would install, installed by the
// real pip into a real venv, offline from a wheelhouse of wheels built here, with --require-hashes.
// (uv itself is not installable on the development machine: its path is not exercised here.)
using System.Security.Cryptography;
using Xunit;

namespace Casparian.Tests;

public sealed class UvLockTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _wheelhouse;
    private readonly string _tinypkgHash;

    public UvLockTests()
    {
        _wheelhouse = _dir.File("wheels");
        Directory.CreateDirectory(_wheelhouse);
        _tinypkgHash = FileSha256(Wheel.Build(_wheelhouse, "tinypkg", "1.0", "ANSWER = 42\n"));
    }

    public void Dispose() => _dir.Dispose();

    private static string FileSha256(string path) => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(path)));

    private const string Pypi = "https://pypi.org/simple";
    private const string Files = "https://files.pythonhosted.org/packages";

    /// <summary>
    /// A lock as `uv lock` writes it for a virtual project depending on tinypkg and, on Windows only, on
    /// colorama, with pytest as a dev dependency. Neither colorama's nor pytest's wheel is in the
    /// wheelhouse: a correct build needs neither.
    /// </summary>
    private static string ProjectLock(string tinypkgHash, string tinypkgName = "tinypkg") => $$"""
        version = 1
        revision = 2
        requires-python = ">=3.9"

        [[package]]
        name = "colorama"
        version = "0.4.6"
        source = { registry = "{{Pypi}}" }
        sdist = { url = "{{Files}}/d8/53/6f443c9a4a8358a93a6792e2acffb9d9d5cb0a5cfd8802644b7b1c9a02e4/colorama-0.4.6.tar.gz", hash = "sha256:08695f5cb7ed6e0531a20572697297273c47b8cae5a63ffc6d6ed5c201be6e44", size = 27697 }
        wheels = [
            { url = "{{Files}}/d1/d6/3965ed04c63042e047cb6a3e6ed1a63a35087b6a609aa3a15ed8ac56c221/colorama-0.4.6-py2.py3-none-any.whl", hash = "sha256:4f1d9991f5acc0ca119f9d443620b77f9d6b33703e51011c16baf57afb285fc6", size = 25335 },
        ]

        [[package]]
        name = "demo-parser"
        version = "0.1.0"
        source = { virtual = "." }
        dependencies = [
            { name = "colorama", marker = "sys_platform == 'win32'" },
            { name = "{{tinypkgName}}" },
        ]

        [package.dev-dependencies]
        dev = [
            { name = "pytest" },
        ]

        [package.metadata]
        requires-dist = [
            { name = "colorama", marker = "sys_platform == 'win32'", specifier = ">=0.4" },
            { name = "tinypkg", specifier = "==1.0" },
        ]

        [package.metadata.requires-dev]
        dev = [{ name = "pytest", specifier = ">=8" }]

        [[package]]
        name = "pytest"
        version = "8.3.3"
        source = { registry = "{{Pypi}}" }
        wheels = [
            { url = "{{Files}}/6b/77/7440a06a8ead44c7757a64362dd22df5760f9b12dc5f11b6188cd2fc27a0/pytest-8.3.3-py3-none-any.whl", hash = "sha256:a6853c7375b2663155079443d2e45de913a911a11d669df02a50814944db57b2", size = 342341 },
        ]

        [[package]]
        name = "tinypkg"
        version = "1.0"
        source = { registry = "{{Pypi}}" }
        sdist = { url = "{{Files}}/00/11/tinypkg-1.0.tar.gz", hash = "sha256:{{new string('a', 64)}}", size = 1024 }
        wheels = [
            { url = "{{Files}}/00/22/tinypkg-1.0-py3-none-any.whl", hash = "sha256:{{tinypkgHash}}", size = 900 },
        ]
        """;

    private EnvManager Manager(string? wheelhouse) =>
        new(Defaults.Venv(_dir.File("venvs")) with { Wheelhouse = wheelhouse, BasePython = Guest.Python });

    private static Task<EnvLease> Acquire(EnvManager m, string lockfile) =>
        m.AcquireAsync(Hashes.Sha256Hex(lockfile), lockfile, CancellationToken.None).WaitAsync(TimeSpan.FromMinutes(3));

    /// <summary>What the venvs directory holds besides its lock files: a failed build must leave no environment.</summary>
    private string[] EnvDirs() => Directory.Exists(_dir.File("venvs"))
        ? [.. Directory.GetDirectories(_dir.File("venvs")).Select(Path.GetFileName).Where(n => n != ".locks")!]
        : [];

    private static void AssertOneLine(string message) => Assert.DoesNotContain('\n', message);

    // ------------------------------------------------------------------------------------------
    // Reading the lock

    [Theory]
    [InlineData("version = 1\nrevision = 2\n", true)]            // what uv writes first
    [InlineData("# edited by hand\n\nversion = 1\n", true)]      // comments and blank lines before it
    [InlineData("version = 1\n[[package]\n", true)]              // damaged TOML is still a uv.lock: refused, never given to pip
    [InlineData("requests==2.31.0\nversion\n", false)]           // requirements text
    [InlineData("# only comments\n", false)]                      // an empty requirements file
    [InlineData("", false)]                                       // no lockfile content at all
    public void UvLock_Recognise_TellsALockFromRequirementsText(string text, bool expected) =>
        Assert.Equal(expected, UvLock.Recognise(text));

    [Fact]
    public void UvLock_Pins_AreWhatAFrozenSyncInstalls_WithTheirMarkers()
    {
        // project -> a; -> b on Windows; -> c[fast] on 3.10+; -> numpy forked by Python version.
        // a -> d on x86_64, b -> d always, c[fast] -> e. Dev dependency f and the unreferenced g are not pins.
        string lockText = """
            version = 1
            requires-python = ">=3.9"
            resolution-markers = ["python_full_version >= '3.10'", "python_full_version < '3.10'"]

            [[package]]
            name = "a"
            version = "1.0"
            source = { registry = "https://pypi.org/simple" }
            dependencies = [{ name = "d", marker = "platform_machine == 'x86_64'" }]
            wheels = [{ url = "https://x/a-1.0-py3-none-any.whl", hash = "sha256:1111111111111111111111111111111111111111111111111111111111111111", size = 1 }]

            [[package]]
            name = "b"
            version = "2.0"
            source = { registry = "https://pypi.org/simple" }
            dependencies = [{ name = "d" }]
            wheels = [{ url = "https://x/b-2.0-py3-none-any.whl", hash = "sha256:2222222222222222222222222222222222222222222222222222222222222222", size = 1 }]

            [[package]]
            name = "c"
            version = "3.0"
            source = { registry = "https://pypi.org/simple" }
            wheels = [{ url = "https://x/c-3.0-py3-none-any.whl", hash = "sha256:3333333333333333333333333333333333333333333333333333333333333333", size = 1 }]

            [package.optional-dependencies]
            fast = [{ name = "e" }]
            slow = [{ name = "g" }]

            [[package]]
            name = "d"
            version = "4.0"
            source = { registry = "https://pypi.org/simple" }
            wheels = [
                { url = "https://x/d-4.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", hash = "sha256:4444444444444444444444444444444444444444444444444444444444444444", size = 1 },
                { url = "https://x/d-4.0-cp311-cp311-win_amd64.whl", hash = "sha256:4545454545454545454545454545454545454545454545454545454545454545", size = 1 },
            ]

            [[package]]
            name = "e"
            version = "5.0"
            source = { registry = "https://pypi.org/simple" }
            wheels = [{ url = "https://x/e-5.0-py3-none-any.whl", hash = "sha256:5555555555555555555555555555555555555555555555555555555555555555", size = 1 }]

            [[package]]
            name = "f"
            version = "6.0"
            source = { registry = "https://pypi.org/simple" }
            wheels = [{ url = "https://x/f-6.0-py3-none-any.whl", hash = "sha256:6666666666666666666666666666666666666666666666666666666666666666", size = 1 }]

            [[package]]
            name = "g"
            version = "7.0"
            source = { registry = "https://pypi.org/simple" }
            wheels = [{ url = "https://x/g-7.0-py3-none-any.whl", hash = "sha256:7777777777777777777777777777777777777777777777777777777777777777", size = 1 }]

            [[package]]
            name = "numpy"
            version = "1.26.4"
            source = { registry = "https://pypi.org/simple" }
            resolution-markers = ["python_full_version < '3.10'"]
            wheels = [{ url = "https://x/numpy-1.26.4-cp39-cp39-manylinux_2_17_x86_64.whl", hash = "sha256:8888888888888888888888888888888888888888888888888888888888888888", size = 1 }]

            [[package]]
            name = "numpy"
            version = "2.1.0"
            source = { registry = "https://pypi.org/simple" }
            resolution-markers = ["python_full_version >= '3.10'"]
            wheels = [{ url = "https://x/numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.whl", hash = "sha256:9999999999999999999999999999999999999999999999999999999999999999", size = 1 }]

            [[package]]
            name = "proj"
            version = "0.1.0"
            source = { editable = "." }
            dependencies = [
                { name = "a" },
                { name = "b", marker = "sys_platform == 'win32'" },
                { name = "c", extra = ["fast"], marker = "python_full_version >= '3.10'" },
                { name = "numpy", version = "1.26.4", source = { registry = "https://pypi.org/simple" }, marker = "python_full_version < '3.10'" },
                { name = "numpy", version = "2.1.0", source = { registry = "https://pypi.org/simple" }, marker = "python_full_version >= '3.10'" },
            ]

            [package.dev-dependencies]
            dev = [{ name = "f" }]
            """;
        var pins = UvLock.Parse(lockText).Pins();
        Assert.Equal(
        [
            "a==1.0 always",
            "b==2.0 (sys_platform == 'win32')",
            "c==3.0 (python_full_version >= '3.10')",
            "d==4.0 (platform_machine == 'x86_64') or (sys_platform == 'win32')",
            "e==5.0 (python_full_version >= '3.10')",
            "numpy==1.26.4 (python_full_version < '3.10')",
            "numpy==2.1.0 (python_full_version >= '3.10')",
        ], pins.Select(p => $"{p.Package.Display} {p.Marker ?? "always"}"));

        UvLock.CheckForPip(pins);
        string[] lines = UvLock.Requirements(pins).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("# ", lines[0]);
        Assert.Equal("a==1.0 --hash=sha256:" + new string('1', 64), lines[1]);
        Assert.Equal("d==4.0 ; (platform_machine == 'x86_64') or (sys_platform == 'win32') --hash=sha256:" + new string('4', 64) + " --hash=sha256:" + string.Concat(Enumerable.Repeat("45", 32)), lines[4]);
        Assert.Equal(8, lines.Length);
    }

    [Fact]
    public void UvLock_PyProject_NamesTheProjectEntryOnly()
    {
        var lockData = UvLock.Parse(ProjectLock(_tinypkgHash));
        Assert.Equal("demo-parser", lockData.Project.Name);
        Assert.Equal("""
            # written by casparian for `uv sync --frozen` from the uv.lock beside it
            [project]
            name = "demo-parser"
            version = "0.1.0"
            requires-python = ">=3.9"

            """, lockData.PyProject());
    }

    [Theory]
    // Not TOML: the table-array header lacks its second bracket.
    [InlineData("version = 1\n[[package]\nname = \"x\"\n", "uv.lock is not valid TOML (line 2, column 10: Expected `]]` but was `]`); regenerate it with `uv lock`")]
    // A lock format this reader does not know.
    [InlineData("version = 2\n", "uv.lock has lock format version 2; Casparian reads version 1")]
    // No project entry: a workspace root without a project, or a script's lock.
    [InlineData("version = 1\n[[package]]\nname = \"a\"\nversion = \"1\"\nsource = { registry = \"https://pypi.org/simple\" }\n", "uv.lock has no single project entry")]
    // An edge to a package the lock does not hold.
    [InlineData("version = 1\n[[package]]\nname = \"p\"\nversion = \"0.1\"\nsource = { virtual = \".\" }\ndependencies = [{ name = \"ghost\" }]\n", "uv.lock: p==0.1 depends on ghost, which matches 0 [[package]] entries instead of one")]
    // A wheel without a sha256 hash cannot be installed with --require-hashes.
    [InlineData("version = 1\n[[package]]\nname = \"p\"\nversion = \"0.1\"\nsource = { virtual = \".\" }\ndependencies = [{ name = \"a\" }]\n[[package]]\nname = \"a\"\nversion = \"1\"\nsource = { registry = \"r\" }\nwheels = [{ url = \"https://x/a-1-py3-none-any.whl\", hash = \"md5:abc\" }]\n", "uv.lock: wheel a-1-py3-none-any.whl of package a has hash 'md5:abc'")]
    // A wheel "name" that would walk out of the wheelhouse.
    [InlineData("version = 1\n[[package]]\nname = \"p\"\nversion = \"0.1\"\nsource = { virtual = \".\" }\n[[package]]\nname = \"a\"\nversion = \"1\"\nsource = { registry = \"r\" }\nwheels = [{ path = \"..\\\\..\\\\evil.whl\", hash = \"sha256:" + "0000000000000000000000000000000000000000000000000000000000000000" + "\" }]\n", "is not a wheel file name")]
    // A package entry with a number for a name.
    [InlineData("version = 1\n[[package]]\nname = 7\n", "uv.lock: name of [[package]] #1 must be a string")]
    public void UvLock_Parse_RefusesInOneLine(string text, string message)
    {
        var e = Assert.Throws<InputException>(() => UvLock.Parse(text).Pins());
        Assert.Contains(message, e.Message);
        AssertOneLine(e.Message);
    }

    [Theory]
    // Only an sdist: environments install wheels, never build.
    [InlineData("sdist = { url = \"https://x/a-1.tar.gz\", hash = \"sha256:" + "0000000000000000000000000000000000000000000000000000000000000000" + "\", size = 1 }", "", "uv.lock pins a==1, which has only a source distribution")]
    // A git source: nothing a wheelhouse can hold under its name and hash.
    [InlineData("", "git", "uv.lock pins a==1 from a git source")]
    // uv's conflict marker: pip would read `extra` as empty and silently leave the package out.
    [InlineData("wheels = [{ url = \"https://x/a-1-py3-none-any.whl\", hash = \"sha256:" + "0000000000000000000000000000000000000000000000000000000000000000" + "\" }]", "conflict", "which depends on extras or dependency groups that pip cannot evaluate")]
    public void UvLock_CheckForPip_RefusesWhatPipCannotInstallOffline(string files, string twist, string message)
    {
        string source = twist == "git" ? "{ git = \"https://github.com/o/a?rev=main#0123abc\" }" : "{ registry = \"https://pypi.org/simple\" }";
        string marker = twist == "conflict" ? ", marker = \"extra == 'extra-4-proj-cpu'\"" : "";
        string text = $"version = 1\n[[package]]\nname = \"proj\"\nversion = \"0.1\"\nsource = {{ virtual = \".\" }}\ndependencies = [{{ name = \"a\"{marker} }}]\n" +
            $"[[package]]\nname = \"a\"\nversion = \"1\"\nsource = {source}\n{files}\n";
        var e = Assert.Throws<InputException>(() => UvLock.CheckForPip(UvLock.Parse(text).Pins()));
        Assert.Contains(message, e.Message);
        AssertOneLine(e.Message);
    }

    // ------------------------------------------------------------------------------------------
    // Building environments from it: real venv, real pip, no network

    [Fact]
    public async Task UvLock_Build_InstallsThePinsOfflineFromTheWheelhouseWithHashes()
    {
        string lockText = ProjectLock(_tinypkgHash);
        using var m = Manager(_wheelhouse);
        using var lease = await Acquire(m, lockText);
        Assert.False(lease.Cached);
        var run = Proc.Run(lease.InterpreterPath, ["-c", "import tinypkg, importlib.util as u; print(tinypkg.ANSWER, u.find_spec('colorama'), u.find_spec('pytest'))"]);
        Assert.True(run.ExitCode == 0, run.ToString());
        // tinypkg is in; colorama (Windows only) and pytest (dev) are not.
        Assert.Equal("42 None None", run.Stdout.Trim());

        string env = Path.Combine(_dir.File("venvs"), Hashes.Sha256Hex(lockText));
        Assert.Equal(lockText, File.ReadAllText(Path.Combine(env, EnvManager.LockfileName)));
        Assert.Equal(
            ["colorama==0.4.6 ; (sys_platform == 'win32') --hash=sha256:4f1d9991f5acc0ca119f9d443620b77f9d6b33703e51011c16baf57afb285fc6",
             $"tinypkg==1.0 --hash=sha256:{_tinypkgHash}"],
            File.ReadAllLines(Path.Combine(env, EnvManager.PinsFileName)).Skip(1));
    }

    [Fact]
    public async Task UvLock_Build_WheelWhoseHashDiffersFromTheLock_PipRefusesInOneLine()
    {
        string lockedHash = new('7', 64);
        string lockText = ProjectLock(lockedHash);
        using var m = Manager(_wheelhouse);
        var e = await Assert.ThrowsAsync<EnvException>(() => Acquire(m, lockText));
        AssertOneLine(e.Message);
        Assert.Equal(ExitCode.BadInput, e.Code);
        Assert.Equal($"building environment {Hashes.Short(Hashes.Sha256Hex(lockText))} failed: pip install exited 1: pip refused tinypkg-1.0-py3-none-any.whl " +
            $"from the wheelhouse {_wheelhouse}: its sha256 is {_tinypkgHash}, but uv.lock pins tinypkg==1.0 to {lockedHash}; " +
            "the wheelhouse holds another build than the one locked: put the locked wheel there or lock again against the wheelhouse", e.Message);
        Assert.Empty(EnvDirs());
    }

    [Fact]
    public async Task UvLock_Build_PackageMissingFromTheWheelhouse_OneLineBeforePip()
    {
        File.Delete(Path.Combine(_wheelhouse, "tinypkg-1.0-py3-none-any.whl"));
        string lockText = ProjectLock(_tinypkgHash);
        using var m = Manager(_wheelhouse);
        var e = await Assert.ThrowsAsync<EnvException>(() => Acquire(m, lockText));
        Assert.Equal(ExitCode.BadInput, e.Code);
        Assert.Equal($"cannot build environment {Hashes.Short(Hashes.Sha256Hex(lockText))}: uv.lock pins tinypkg==1.0, but the wheelhouse {_wheelhouse} " +
            "holds none of its 1 locked wheel(s) (tinypkg-1.0-py3-none-any.whl); add one", e.Message);
        Assert.Empty(EnvDirs());
    }

    [Fact]
    public async Task UvLock_Build_NoWheelhouseAndNoUv_OneLine()
    {
        using var m = Manager(wheelhouse: null);
        var e = await Assert.ThrowsAsync<EnvException>(() => Acquire(m, ProjectLock(_tinypkgHash)));
        AssertOneLine(e.Message);
        // The worker's setup, not the parser's lock, is what is missing.
        Assert.Equal(ExitCode.Unavailable, e.Code);
        Assert.Contains("from its uv.lock: without uv it installs offline from a wheelhouse, and none is set", e.Message);
        Assert.Empty(EnvDirs());
    }

    [Fact]
    public async Task UvLock_Build_DamagedLock_IsRefusedAndNeverReachesPip()
    {
        // The issue this fixes: pip read a uv.lock as requirements and said `Invalid requirement: 'version = 1'`.
        string damaged = ProjectLock(_tinypkgHash).Replace("[[package]]\nname = \"tinypkg\"", "[[package]\nname = \"tinypkg\"", StringComparison.Ordinal);
        using var m = Manager(_wheelhouse);
        var e = await Assert.ThrowsAsync<InputException>(() => Acquire(m, damaged));
        Assert.StartsWith("uv.lock is not valid TOML (line ", e.Message);
        Assert.DoesNotContain("Invalid requirement", e.Message);
        Assert.Empty(EnvDirs());
    }

    // ------------------------------------------------------------------------------------------
    // Through the binary: register a parser directory, queue a file, drain with a worker

    private string ParserDir(string name, string lockName, string lockText)
    {
        string dir = _dir.File(name);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "parser.py"), $"import tinypkg\nname = \"{name}\"\ndef parse(path):\n    return {{'answer': [tinypkg.ANSWER], 'line': [open(path).read().strip()]}}\n");
        File.WriteAllText(Path.Combine(dir, "pyproject.toml"), $"[project]\nname = \"demo-parser\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\ndependencies = [\"tinypkg==1.0\"]\n");
        File.WriteAllText(Path.Combine(dir, lockName), lockText);
        return dir;
    }

    private ProcessResult Cli(params string[] args) =>
        Proc.Run(Repo.Binary, args, TimeSpan.FromMinutes(3), _dir.Path, new Dictionary<string, string?>
        {
            ["CASPARIAN_HOME"] = _dir.File("home"),
            ["CASPARIAN_PYTHON"] = Cluster.Python,
            ["CASPARIAN_WHEELHOUSE"] = _wheelhouse,
            // No uv here anyway; a PATH without it keeps the test on the path it means to test.
            ["PATH"] = "/usr/bin:/bin",
        });

    [Theory]
    [InlineData("uv.lock")]
    [InlineData("requirements.txt")]
    public void UvLock_Worker_ParserWithALockfile_ImportsItsPackage(string lockName)
    {
        string lockText = lockName == "uv.lock" ? ProjectLock(_tinypkgHash) : "tinypkg==1.0\n";
        string parser = ParserDir("answer_" + lockName.Replace('.', '_'), lockName, lockText);
        File.WriteAllText(_dir.File("input.txt"), "hello\n");

        var register = Cli("parser", "register", parser);
        Assert.True(register.ExitCode == 0, register.ToString());
        Assert.Equal(0, Cli("job", "add", "--parser", Path.GetFileName(parser), _dir.File("input.txt")).ExitCode);
        var drain = Cli("start", "--drain");
        Assert.True(drain.ExitCode == 0, drain.ToString());

        var t = ParquetTable.Read(Assert.Single(Directory.GetFiles(Path.Combine(_dir.File("home"), "output", "output"), "*.parquet")));
        Assert.Equal([42L], t.Columns["answer"]);
        Assert.Equal(["hello"], t.Columns["line"]);
        string env = Path.Combine(_dir.File("home"), "venvs", Hashes.Sha256Hex(lockText));
        Assert.Equal(lockText, File.ReadAllText(Path.Combine(env, EnvManager.LockfileName)));
        Assert.Equal(lockName == "uv.lock", File.Exists(Path.Combine(env, EnvManager.PinsFileName)));
    }

    [Fact]
    public void UvLock_Register_DamagedLock_RefusedInOneLineWithExit3()
    {
        string parser = ParserDir("broken", "uv.lock", "version = 1\n[[package]\nname = \"x\"\n");
        var r = Cli("parser", "register", parser);
        Assert.Equal(3, r.ExitCode);
        Assert.Equal($"error: parser {parser}: uv.lock is not valid TOML (line 2, column 10: Expected `]]` but was `]`); regenerate it with `uv lock`", r.Stderr.TrimEnd());
    }
}
