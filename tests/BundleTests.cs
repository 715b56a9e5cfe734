using System.IO.Compression;
using System.Text;
using Xunit;

namespace Casparian.Tests;

public sealed class BundleTests
{
    private static readonly DateTimeOffset Dos1980 = new(1980, 1, 1, 0, 0, 0, TimeSpan.Zero);

    /// <summary>Writes files (path with '/' separators → text) under <paramref name="root"/>.</summary>
    private static string Tree(string root, params (string Path, string Content)[] files)
    {
        foreach (var (path, content) in files)
        {
            string full = Path.Combine(root, path);
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            File.WriteAllText(full, content);
        }
        return root;
    }

    private static string[] EntryNames(byte[] archive)
    {
        using var zip = new ZipArchive(new MemoryStream(archive), ZipArchiveMode.Read);
        return [.. zip.Entries.Select(e => e.FullName)];
    }

    /// <summary>A zip made by hand, entry names taken as given (the shape an attacker controls).</summary>
    private static byte[] CraftedZip(params (string Name, string Content, int UnixMode)[] entries)
    {
        using var buffer = new MemoryStream();
        using (var zip = new ZipArchive(buffer, ZipArchiveMode.Create, leaveOpen: true))
        {
            foreach (var (name, content, mode) in entries)
            {
                var entry = zip.CreateEntry(name);
                entry.ExternalAttributes = mode << 16;
                using var s = entry.Open();
                s.Write(Encoding.UTF8.GetBytes(content));
            }
        }
        return buffer.ToArray();
    }

    private const int RegularFile = 0x81A4;

    private static readonly (string, string)[] TwoModules =
    [
        ("parser.py", "from helper import double\nname = \"doubler\"\nversion = \"1.2.0\"\n\ndef parse(path):\n    return double(21)\n"),
        ("helper.py", "def double(x):\n    return 2 * x\n"),
    ];

    // ---- determinism (SPEC §8) ------------------------------------------------------------------

    [Fact]
    public void Bundle_Archive_IsByteIdentical_WhenLoadedTwice()
    {
        using var dir = new TempDir();
        Tree(dir.Path, TwoModules);
        Tree(dir.Path, ("pkg/schema.json", "{}"), ("uv.lock", MinimalUvLock));
        var a = ParserBundle.Load(dir.Path);
        var b = ParserBundle.Load(dir.Path);
        Assert.Equal(a.Archive, b.Archive);
        Assert.Equal(a.SourceHash, b.SourceHash);
    }

    [Fact]
    public void Bundle_Archive_IsByteIdentical_AfterTouchingMtimesAndPermissions()
    {
        using var dir = new TempDir();
        Tree(dir.Path, TwoModules);
        Tree(dir.Path, ("pkg/data.csv", "a,b\n1,2\n"));
        var before = ParserBundle.Load(dir.Path);
        foreach (string file in Directory.EnumerateFiles(dir.Path, "*", SearchOption.AllDirectories))
        {
            File.SetLastWriteTimeUtc(file, new DateTime(2031, 5, 6, 7, 8, 9, DateTimeKind.Utc));
            if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherExecute);
        }
        var after = ParserBundle.Load(dir.Path);
        Assert.Equal(before.Archive, after.Archive);
        Assert.Equal(before.SourceHash, after.SourceHash);
    }

    [Fact]
    public void Bundle_Archive_IsByteIdentical_WhenFilesAreCreatedInAnotherOrder()
    {
        (string, string)[] files =
        [
            ("parser.py", "import b\n"), ("b.py", "B = 1\n"), ("z/a.json", "[1]"), ("a/z.txt", "z"), ("a/b/c.yaml", "c: 1"), ("a.csv", "x\n1\n"),
        ];
        using var one = new TempDir();
        using var two = new TempDir();
        foreach (var f in files) Tree(one.Path, f);
        foreach (var f in files.Reverse()) Tree(two.Path, f);
        var a = ParserBundle.Load(one.Path);
        var b = ParserBundle.Load(two.Path);
        Assert.Equal(a.Archive, b.Archive);
        Assert.Equal(a.SourceHash, b.SourceHash);
    }

    [Fact]
    public void Bundle_Archive_HasSortedEntriesWith1980TimestampsAndFixedAttributes()
    {
        using var dir = new TempDir();
        Tree(dir.Path, ("parser.py", "x = 1\n"), ("b/x.py", ""), ("a.txt", "a"), ("b.json", "{}"), ("a/y.py", "y = 2\n"));
        var bundle = ParserBundle.Load(dir.Path);
        using var zip = new ZipArchive(new MemoryStream(bundle.Archive), ZipArchiveMode.Read);
        string[] names = [.. zip.Entries.Select(e => e.FullName)];
        Assert.Equal(["a.txt", "a/y.py", "b.json", "b/x.py", "parser.py"], names);
        Assert.Equal(names.Order(StringComparer.Ordinal), names);
        foreach (var e in zip.Entries)
        {
            Assert.Equal(Dos1980.DateTime, e.LastWriteTime.DateTime);
            Assert.Equal(0x81A4 << 16, e.ExternalAttributes);
        }
        Assert.Equal(names, bundle.Files.Select(f => f.Path));
        Assert.Equal([1, 6, 2, 0, 6], bundle.Files.Select(f => f.Size));
    }

    [Fact]
    public void Bundle_Archive_ReadsInPythonZipfileWithoutDescriptorsOrExtraFields()
    {
        using var dir = new TempDir();
        Tree(dir.Path, TwoModules);
        var bundle = ParserBundle.Load(dir.Path);
        string zipPath = dir.File("bundle.zip");
        File.WriteAllBytes(zipPath, bundle.Archive);
        const string Script = """
            import sys, zipfile
            with zipfile.ZipFile(sys.argv[1]) as z:
                for i in z.infolist():
                    print(i.filename, i.date_time, i.compress_type, i.flag_bits & 8, len(i.extra), z.read(i) == open(sys.argv[2] + '/' + i.filename, 'rb').read())
            """;
        var r = Proc.Run(Guest.Python, ["-c", Script, zipPath, dir.Path]);
        Assert.True(r.ExitCode == 0, r.ToString());
        // compress_type 8 = Deflate; no data descriptor (flag bit 3); no extra field.
        Assert.Equal("helper.py (1980, 1, 1, 0, 0, 0) 8 0 0 True\nparser.py (1980, 1, 1, 0, 0, 0) 8 0 0 True\n", r.Stdout);
    }

    // ---- what goes in -------------------------------------------------------------------------

    [Fact]
    public void Bundle_Load_SkipsExcludedDirectoriesHiddenEntriesAndVenvsAtAnyDepth()
    {
        using var dir = new TempDir();
        Tree(dir.Path,
            ("parser.py", "import pkg.helper\n"),
            ("pkg/helper.py", "H = 1\n"),
            ("pkg/data/schema.json", "{}"),
            (".venv/lib/site.py", "bad"),
            ("pkg/.venv/lib/site.py", "bad"),
            ("__pycache__/parser.cpython-311.py", "bad"),
            ("pkg/__pycache__/helper.py", "bad"),
            ("pkg/node_modules/x/index.json", "bad"),
            ("node_modules/y.json", "bad"),
            ("sub/dist/out.py", "bad"),
            ("sub/build/lib.py", "bad"),
            ("dist/w.txt", "bad"),
            ("build/w.txt", "bad"),
            (".git/config.txt", "bad"),
            ("pkg/deep/.git/x.txt", "bad"),
            ("myenv/pyvenv.cfg", "home = /usr/bin"),
            ("myenv/lib/python3.11/site-packages/m.py", "bad"),
            (".hidden.py", "bad"),
            ("pkg/.secrets.json", "bad"),
            ("native.so", "bad"),
            ("pkg/helper.pyc", "bad"));
        var bundle = ParserBundle.Load(dir.Path);
        Assert.Equal(["parser.py", "pkg/data/schema.json", "pkg/helper.py"], bundle.Files.Select(f => f.Path));
        Assert.Equal(["parser.py", "pkg/data/schema.json", "pkg/helper.py"], EntryNames(bundle.Archive));
    }

    [Fact]
    public void Bundle_Load_IncludesOnlyAllowedExtensions()
    {
        using var dir = new TempDir();
        Tree(dir.Path,
            ("parser.py", ""), ("a.json", ""), ("b.yaml", ""), ("c.yml", ""), ("d.toml", ""), ("e.txt", ""), ("f.csv", ""), ("G.CSV", ""),
            ("README.md", ""), ("run.sh", ""), ("data.parquet", ""), ("Makefile", ""), ("poetry.lock", ""), ("x.pyi", ""), ("notes.txt.bak", ""));
        var bundle = ParserBundle.Load(dir.Path);
        Assert.Equal(["G.CSV", "a.json", "b.yaml", "c.yml", "d.toml", "e.txt", "f.csv", "parser.py"], bundle.Files.Select(f => f.Path));
    }

    [Fact]
    public void Bundle_Load_RefusesSymlinksThatWouldBeIncluded()
    {
        using var outside = new TempDir();
        using var dir = new TempDir();
        Tree(outside.Path, ("secret.py", "S = 1\n"));
        Tree(dir.Path, ("parser.py", ""));
        File.CreateSymbolicLink(dir.File("linked.py"), outside.File("secret.py"));
        var e = Assert.Throws<InputException>(() => ParserBundle.Load(dir.Path));
        Assert.Contains("symlink linked.py", e.Message);

        File.Delete(dir.File("linked.py"));
        Directory.CreateSymbolicLink(dir.File("pkg"), outside.Path);
        e = Assert.Throws<InputException>(() => ParserBundle.Load(dir.Path));
        Assert.Contains("symlink pkg", e.Message);
    }

    [Fact]
    public void Bundle_Load_IgnoresSymlinksInsideExcludedDirectoriesAndWithOtherExtensions()
    {
        using var dir = new TempDir();
        Tree(dir.Path, ("parser.py", ""), (".venv/pyvenv.cfg", ""));
        Directory.CreateDirectory(dir.File(".venv/bin"));
        File.CreateSymbolicLink(dir.File(".venv/bin/python.py"), "/usr/bin/python3");
        File.CreateSymbolicLink(dir.File("python"), "/usr/bin/python3");
        Assert.Equal(["parser.py"], ParserBundle.Load(dir.Path).Files.Select(f => f.Path));
    }

    [Fact]
    public void Bundle_Load_RefusesMoreThanTheSizeLimit()
    {
        using var dir = new TempDir();
        Tree(dir.Path, ("parser.py", ""));
        using (var big = File.Create(dir.File("huge.csv"))) big.SetLength(ParserBundle.MaxBytes + 1);
        var e = Assert.Throws<InputException>(() => ParserBundle.Load(dir.Path));
        Assert.Contains("huge.csv", e.Message);
        Assert.Contains("limit of 50 MiB", e.Message);
    }

    [Fact]
    public void Bundle_Load_MissingPathAndNonPythonFileAreInputErrors()
    {
        using var dir = new TempDir();
        Assert.Contains("not found", Assert.Throws<InputException>(() => ParserBundle.Load(dir.File("nope"))).Message);
        File.WriteAllText(dir.File("parser.txt"), "");
        Assert.Contains("not a .py file", Assert.Throws<InputException>(() => ParserBundle.Load(dir.File("parser.txt"))).Message);
        File.WriteAllBytes(dir.File("bad.py"), [0x78, 0xFF, 0xFE]);
        Assert.Contains("not valid UTF-8", Assert.Throws<InputException>(() => ParserBundle.Load(dir.File("bad.py"))).Message);
    }

    // ---- lockfile and hashes ----------------------------------------------------------------------

    /// <summary>The smallest uv.lock registration accepts (it must parse): a project with no dependencies.</summary>
    private const string MinimalUvLock = "version = 1\nrequires-python = \">=3.9\"\n\n[[package]]\nname = \"p\"\nversion = \"0.1.0\"\nsource = { virtual = \".\" }\n";

    private static string LockfileText(string name) => name == "uv.lock" ? MinimalUvLock : "content of " + name;

    [Theory]
    [InlineData("uv.lock,requirements.lock,requirements.txt", "uv.lock")]
    [InlineData("requirements.lock,requirements.txt", "requirements.lock")]
    [InlineData("requirements.txt", "requirements.txt")]
    [InlineData("uv.lock,requirements.txt", "uv.lock")]
    public void Bundle_Load_PicksTheFirstLockfileInOrder(string present, string expected)
    {
        using var dir = new TempDir();
        Tree(dir.Path, ("parser.py", "def parse(p): pass\n"));
        foreach (string name in present.Split(',')) Tree(dir.Path, (name, LockfileText(name)));
        var bundle = ParserBundle.Load(dir.Path);
        Assert.Equal(LockfileText(expected), bundle.LockfileContent);
        Assert.Equal(Hashes.Sha256Hex(LockfileText(expected)), bundle.LockfileHash);
        Assert.Equal(bundle.LockfileHash, bundle.EnvHash);
        Assert.Equal(Hashes.ArtifactHash(bundle.EntrySource, bundle.LockfileContent), bundle.ArtifactHash);
        Assert.Contains(expected, bundle.Files.Select(f => f.Path));
        // A second .lock file is not a bundle file; requirements.txt is one by its extension anyway.
        if (expected == "uv.lock" && present.Contains("requirements.lock")) Assert.DoesNotContain("requirements.lock", bundle.Files.Select(f => f.Path));
    }

    [Fact]
    public void Bundle_Load_LockfileHashIsSha256OfTheContent()
    {
        using var dir = new TempDir();
        Tree(dir.Path, ("parser.py", "pass\n"), ("requirements.lock", "hello world"));
        var bundle = ParserBundle.Load(dir.Path);
        Assert.Equal("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9", bundle.LockfileHash);
        Assert.Equal("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9", bundle.EnvHash);
    }

    [Fact]
    public void Bundle_Load_WithoutLockfileUsesTheSystemEnvironment()
    {
        using var dir = new TempDir();
        Tree(dir.Path, ("parser.py", "pass\n"), ("sub/uv.lock", "not top level"), ("sub/requirements.txt", "nested"));
        var bundle = ParserBundle.Load(dir.Path);
        Assert.Equal("", bundle.LockfileContent);
        Assert.Null(bundle.LockfileHash);
        Assert.Equal("system", bundle.EnvHash);
        Assert.Equal(Hashes.Sha256Hex("pass\n"), bundle.ArtifactHash);
        Assert.Equal(["parser.py", "sub/requirements.txt"], bundle.Files.Select(f => f.Path));
    }

    [Fact]
    public void Bundle_SourceHash_MatchesTheDocumentedEncoding()
    {
        // sha256 over: "parser.py" 00 <u64 BE 9> "print(1)\n" "pkg/util.py" 00 <u64 BE 6> "X = 1\n", computed in Python.
        using var dir = new TempDir();
        Tree(dir.Path, ("pkg/util.py", "X = 1\n"), ("parser.py", "print(1)\n"));
        var bundle = ParserBundle.Load(dir.Path);
        Assert.Equal("a31d58fddeb7bbab76c0580229a9e1c014544f0dead27be0f88fd54eade99560", bundle.SourceHash);
        Assert.Equal(bundle.SourceHash, ParserBundle.Extract(bundle.Archive, dir.File("extracted")).SourceHash);
    }

    [Fact]
    public void Bundle_SourceHash_ChangesWithAnyPathOrByte()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        using var c = new TempDir();
        Tree(a.Path, ("parser.py", "x = 1\n"), ("d.json", "{}"));
        Tree(b.Path, ("parser.py", "x = 2\n"), ("d.json", "{}"));
        Tree(c.Path, ("parser.py", "x = 1\n"), ("e.json", "{}"));
        var hashes = new[] { a, b, c }.Select(d => ParserBundle.Load(d.Path).SourceHash).ToArray();
        Assert.Equal(3, hashes.Distinct().Count());
    }

    // ---- name and version -----------------------------------------------------------------------

    [Theory]
    // plain double and single quotes
    [InlineData("name = \"sales\"\nversion = \"1.0.0\"\n", "sales", "1.0.0")]
    [InlineData("name='sales'\nversion='2'\n", "sales", "2")]
    // annotated, with trailing comments
    [InlineData("name: str = \"sales\"  # the parser\nversion: str = '3.1' # bump me\n", "sales", "3.1")]
    // __version__ when version is absent; version beats __version__ wherever it appears
    [InlineData("__version__ = \"0.9\"\n", null, "0.9")]
    [InlineData("version = \"1.0\"\n__version__ = \"0.9\"\n", null, "1.0")]
    // the last module-level assignment wins, as in Python
    [InlineData("name = \"a\"\nname = \"b\"\n", "b", null)]
    // none present
    [InlineData("import os\n\ndef parse(path):\n    return None\n", null, null)]
    // inside a function, a class or an if-block: indented, so ignored
    [InlineData("def parse(path):\n    name = \"inner\"\n    version = \"9\"\n", null, null)]
    [InlineData("class Handler:\n    name = \"inner\"\n", null, null)]
    [InlineData("if True:\n\tname = \"inner\"\n", null, null)]
    // inside a module docstring or a triple-quoted string: ignored, and the scan resumes after it
    [InlineData("\"\"\"Docs.\nname = \"doc\"\n\"\"\"\nname = \"real\"\n", "real", null)]
    [InlineData("X = '''\nversion = '5'\n'''\nversion = '6'\n", null, "6")]
    [InlineData("\"\"\"one line\"\"\"\nname = \"after\"\n", "after", null)]
    // commented out, not a plain literal, or a different variable: ignored
    [InlineData("# name = \"commented\"\n", null, null)]
    [InlineData("name = f\"x{1}\"\nversion = str(1)\n", null, null)]
    [InlineData("name = \"a\\\"b\"\n", null, null)]
    [InlineData("names = \"a\"\nmy_version = \"2\"\n", null, null)]
    // CRLF line endings and a UTF-8 byte-order mark
    [InlineData("\uFEFFname = \"bom\"\r\nversion = \"1\"\r\n", "bom", "1")]
    public void Bundle_ReadNameAndVersion_ReadsModuleLevelLiterals(string source, string? name, string? version)
    {
        Assert.Equal((name, version), ParserBundle.ReadNameAndVersion(source));
    }

    [Fact]
    public void Bundle_Load_FallsBackToFileStemOrDirectoryNameAndDefaultVersion()
    {
        using var dir = new TempDir();
        string parserDir = Path.Combine(dir.Path, "my parser-2");
        Tree(parserDir, ("main.py", "def parse(p):\n    name = 'inner'\n"));
        Tree(dir.Path, ("2024 report.py", "pass\n"));
        var fromDir = ParserBundle.Load(parserDir);
        Assert.Equal(("my_parser-2", "0.0.0"), (fromDir.Name, fromDir.Version));
        var fromFile = ParserBundle.Load(dir.File("2024 report.py"));
        Assert.Equal(("_2024_report", "0.0.0"), (fromFile.Name, fromFile.Version));
    }

    [Theory]
    [InlineData("app_logs")]
    [InlineData("sales_csv")]
    [InlineData("sensor_readings")]
    public void Bundle_Load_ReadsTheDemoParsersDeclaredNameAndVersion(string parser)
    {
        var bundle = ParserBundle.Load(Path.Combine(Repo.Root, "demo", "parsers", parser));
        Assert.Equal((parser, "1.0.0", "parser.py"), (bundle.Name, bundle.Version, bundle.EntryModule));
    }

    [Fact]
    public void Bundle_Load_EntryNameBeatsDirectoryName()
    {
        using var dir = new TempDir();
        Tree(dir.Path, TwoModules);
        var bundle = ParserBundle.Load(dir.Path);
        Assert.Equal(("doubler", "1.2.0"), (bundle.Name, bundle.Version));
    }

    [Theory]
    [InlineData("name = \"has space\"\n", "not a valid parser name")]
    [InlineData("name = \"a@b\"\n", "not a valid parser name")]
    [InlineData("name = \"\"\n", "not a valid parser name")]
    [InlineData("version = \"1 0\"\n", "version \"1 0\"")]
    public void Bundle_Load_RefusesInvalidDeclaredNameOrVersion(string source, string expected)
    {
        using var dir = new TempDir();
        Tree(dir.Path, ("parser.py", source));
        var e = Assert.Throws<InputException>(() => ParserBundle.Load(dir.Path));
        Assert.Contains(expected, e.Message);
        Assert.Contains("parser.py", e.Message);
    }

    // ---- entry rule -------------------------------------------------------------------------------

    [Theory]
    [InlineData("parser.py,main.py,other.py", "parser.py")]
    [InlineData("main.py,other.py", "main.py")]
    [InlineData("only.py", "only.py")]
    [InlineData("only.py,pkg/parser.py,pkg/main.py", "only.py")]
    public void Bundle_Load_ChoosesTheEntryModule(string files, string expected)
    {
        using var dir = new TempDir();
        foreach (string f in files.Split(',')) Tree(dir.Path, (f, $"# {f}\n"));
        var bundle = ParserBundle.Load(dir.Path);
        Assert.Equal(expected, bundle.EntryModule);
        Assert.Equal($"# {expected}\n", bundle.EntrySource);
    }

    [Fact]
    public void Bundle_Load_AmbiguousEntryNamesTheDirectoryAndTheCandidates()
    {
        using var dir = new TempDir();
        Tree(dir.Path, ("a.py", ""), ("b.py", ""), ("pkg/parser.py", ""));
        var e = Assert.Throws<InputException>(() => ParserBundle.Load(dir.Path));
        Assert.Contains(dir.Path, e.Message);
        Assert.Contains("a.py, b.py", e.Message);
        Assert.Contains("parser.py", e.Message);
    }

    [Fact]
    public void Bundle_Load_DirectoryWithoutTopLevelPythonIsAnInputError()
    {
        using var dir = new TempDir();
        Tree(dir.Path, ("pkg/mod.py", ""), ("data.csv", ""));
        var e = Assert.Throws<InputException>(() => ParserBundle.Load(dir.Path));
        Assert.Contains("no top-level .py file", e.Message);
    }

    [Fact]
    public void Bundle_Load_SingleFileIsABundleOfThatFile()
    {
        using var dir = new TempDir();
        Tree(dir.Path, ("sales_parser.py", "version = '4.0'\ndef parse(p): pass\n"), ("uv.lock", "ignored"), ("other.py", "ignored"));
        var bundle = ParserBundle.Load(dir.File("sales_parser.py"));
        Assert.Equal("sales_parser", bundle.Name);
        Assert.Equal("4.0", bundle.Version);
        Assert.Equal("sales_parser.py", bundle.EntryModule);
        Assert.Equal([new BundleFile("sales_parser.py", 35)], bundle.Files);
        Assert.Equal(["sales_parser.py"], EntryNames(bundle.Archive));
        Assert.Equal("system", bundle.EnvHash);
        Assert.Null(bundle.LockfileHash);
    }

    // ---- extraction -------------------------------------------------------------------------------

    [Fact]
    public void Bundle_Extract_RoundTripIsImportableByPython()
    {
        using var src = new TempDir();
        using var target = new TempDir();
        Tree(src.Path, TwoModules);
        Tree(src.Path, ("conf/settings.json", "{\"k\": 1}"));
        var bundle = ParserBundle.Load(src.Path);

        var extracted = ParserBundle.Extract(bundle.Archive, target.Path, bundle.SourceHash);
        Assert.Equal(Path.Combine(target.Path, bundle.SourceHash), extracted.Directory);
        Assert.Equal(Path.Combine(extracted.Directory, "parser.py"), extracted.EntryPath);
        Assert.Equal(bundle.SourceHash, extracted.SourceHash);
        foreach (var f in bundle.Files)
            Assert.Equal(File.ReadAllBytes(Path.Combine(src.Path, f.Path)), File.ReadAllBytes(Path.Combine(extracted.Directory, f.Path)));

        var r = Proc.Run(Guest.Python, ["-c", "import sys; sys.path.insert(0, sys.argv[1]); import parser; print(parser.parse('x'), parser.name)", extracted.Directory]);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal("42 doubler\n", r.Stdout);
    }

    [Fact]
    public void Bundle_Extract_ReusesAnExistingExtraction()
    {
        using var src = new TempDir();
        using var target = new TempDir();
        Tree(src.Path, TwoModules);
        var bundle = ParserBundle.Load(src.Path);
        var first = ParserBundle.Extract(bundle.Archive, target.Path);
        // What the guest leaves behind (bytecode caches) stays: the directory is not rebuilt.
        Tree(first.Directory, ("__pycache__/marker.txt", "left by a run"));
        var second = ParserBundle.Extract(bundle.Archive, target.Path);
        Assert.Equal(first, second);
        Assert.True(File.Exists(Path.Combine(second.Directory, "__pycache__/marker.txt")));
        Assert.Equal([bundle.SourceHash], Directory.EnumerateFileSystemEntries(target.Path).Select(Path.GetFileName));
    }

    [Fact]
    public void Bundle_Extract_ConcurrentExtractionsYieldOneCompleteDirectory()
    {
        using var src = new TempDir();
        using var target = new TempDir();
        Tree(src.Path, TwoModules);
        for (int i = 0; i < 50; i++) Tree(src.Path, ($"pkg/m{i:00}.py", new string('x', 1000 * i)));
        var bundle = ParserBundle.Load(src.Path);
        string root = Path.Combine(target.Path, "parsers");

        using var start = new Barrier(4);
        var results = new ExtractedBundle[4];
        var errors = new Exception?[4];
        var threads = Enumerable.Range(0, 4).Select(i => new Thread(() =>
        {
            start.SignalAndWait();
            try { results[i] = ParserBundle.Extract(bundle.Archive, root); }
            catch (Exception e) { errors[i] = e; }
        })).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) Assert.True(t.Join(TimeSpan.FromSeconds(60)));

        Assert.All(errors, Assert.Null);
        Assert.All(results, r => Assert.Equal(Path.Combine(root, bundle.SourceHash), r.Directory));
        Assert.Equal([bundle.SourceHash], Directory.EnumerateFileSystemEntries(root).Select(Path.GetFileName));
        var onDisk = Directory.EnumerateFiles(results[0].Directory, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(results[0].Directory, f)).Order(StringComparer.Ordinal);
        Assert.Equal(bundle.Files.Select(f => f.Path), onDisk);
    }

    [Theory]
    // climbs out of the target
    [InlineData("../evil.py", "'..' path segment")]
    // absolute path
    [InlineData("/abs.py", "absolute path")]
    // climbs out through a subdirectory
    [InlineData("sub/../../x.py", "'..' path segment")]
    // stays inside but is not canonical
    [InlineData("sub/../x.py", "'..' path segment")]
    [InlineData("./x.py", "'.' path segment")]
    [InlineData("a//x.py", "empty path segment")]
    // Windows forms
    [InlineData("C:/x.py", "drive letter")]
    [InlineData("..\\evil.py", "backslash")]
    public void Bundle_Extract_RefusesEscapingEntriesAndWritesNothing(string entryName, string reason)
    {
        using var dir = new TempDir();
        string root = Path.Combine(dir.Path, "a", "root");
        byte[] zip = CraftedZip(("parser.py", "pass\n", RegularFile), (entryName, "EVIL = 1\n", RegularFile));

        var e = Assert.Throws<InputException>(() => ParserBundle.Extract(zip, root));
        Assert.Contains($"'{entryName}'", e.Message);
        Assert.Contains(reason, e.Message);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path, "*", SearchOption.AllDirectories));
        Assert.False(File.Exists("/abs.py"));
    }

    [Theory]
    // a symlink entry (S_IFLNK), whose content would be its target
    [InlineData("link.py", 0xA1FF, "not a regular file")]
    // a directory-typed entry without the trailing slash
    [InlineData("dir", 0x41ED, "not a regular file")]
    public void Bundle_Extract_RefusesUnexpectedEntryTypes(string name, int mode, string reason)
    {
        using var dir = new TempDir();
        byte[] zip = CraftedZip(("parser.py", "pass\n", RegularFile), (name, "/etc/passwd", mode));
        var e = Assert.Throws<InputException>(() => ParserBundle.Extract(zip, dir.Path));
        Assert.Contains($"'{name}'", e.Message);
        Assert.Contains(reason, e.Message);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path));
    }

    [Fact]
    public void Bundle_Extract_RefusesDuplicateAndCollidingEntries()
    {
        using var dir = new TempDir();
        byte[] twice = CraftedZip(("parser.py", "a", RegularFile), ("parser.py", "b", RegularFile));
        Assert.Contains("appears twice", Assert.Throws<InputException>(() => ParserBundle.Extract(twice, dir.Path)).Message);
        byte[] colliding = CraftedZip(("parser.py", "a", RegularFile), ("pkg", "file", RegularFile), ("pkg/m.py", "b", RegularFile));
        Assert.Contains("'pkg/m.py' lies under 'pkg'", Assert.Throws<InputException>(() => ParserBundle.Extract(colliding, dir.Path)).Message);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path));
    }

    [Fact]
    public void Bundle_Extract_AcceptsForeignArchivesWithDirectoryEntriesAndNoUnixMode()
    {
        // The shape Python's zipfile or a Windows archiver makes: directory entries, attributes 0.
        using var dir = new TempDir();
        byte[] zip = CraftedZip(("pkg/", "", 0x41ED), ("pkg/m.py", "M = 1\n", 0), ("main.py", "import pkg.m\n", 0));
        var extracted = ParserBundle.Extract(zip, dir.Path);
        Assert.Equal(Path.Combine(extracted.Directory, "main.py"), extracted.EntryPath);
        Assert.Equal("M = 1\n", File.ReadAllText(Path.Combine(extracted.Directory, "pkg/m.py")));
    }

    [Fact]
    public void Bundle_Extract_RefusesAWrongExpectedHashAndGarbage()
    {
        using var src = new TempDir();
        using var target = new TempDir();
        Tree(src.Path, TwoModules);
        var bundle = ParserBundle.Load(src.Path);
        string wrong = new('0', 64);
        var e = Assert.Throws<InputException>(() => ParserBundle.Extract(bundle.Archive, target.Path, wrong));
        Assert.Contains(wrong, e.Message);
        Assert.Contains(bundle.SourceHash, e.Message);
        Assert.Contains("not a valid bundle", Assert.Throws<InputException>(() => ParserBundle.Extract([1, 2, 3, 4], target.Path)).Message);
        Assert.Empty(Directory.EnumerateFileSystemEntries(target.Path));
    }

    [Fact]
    public void Bundle_Extract_ArchiveWithoutEntryModuleIsRefused()
    {
        using var dir = new TempDir();
        byte[] zip = CraftedZip(("a.py", "", RegularFile), ("b.py", "", RegularFile));
        var e = Assert.Throws<InputException>(() => ParserBundle.Extract(zip, dir.Path));
        Assert.Contains("a.py, b.py", e.Message);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path));
    }

    [Theory]
    // Numeric parts compare as numbers, not text.
    [InlineData("1.10", "1.9", 1)]
    [InlineData("10.0", "9.9.9", 1)]
    // More parts after fewer.
    [InlineData("1.0.1", "1.0", 1)]
    // A release after its pre-release; pre-releases in order.
    [InlineData("1.0", "1.0-rc1", 1)]
    [InlineData("1.0-rc2", "1.0-rc1", 1)]
    // Build metadata does not order; equal otherwise.
    [InlineData("2.0", "2.0", 0)]
    public void ParserVersions_Compare_OrdersByVersionNotText(string a, string b, int sign)
    {
        Assert.Equal(sign, Math.Sign(ParserVersions.Compare(a, b)));
        Assert.Equal(-sign, Math.Sign(ParserVersions.Compare(b, a)));
    }
}
