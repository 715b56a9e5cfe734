// Parser bundles (SPEC §8): a parser directory, or a single .py file, becomes a deterministic ZIP and
// a source hash that is the store's identity of the parser. Workers extract bundles by that hash.
//
// What goes in:
//   - files with the extensions .py .json .yaml .yml .toml .txt .csv (case-insensitive), plus the
//     lockfile: the first of uv.lock, requirements.lock, requirements.txt found at the top level (a
//     uv.lock must parse: UvLock.cs; the pyproject.toml beside it rides along as any .toml does, but
//     environments are built from the lockfile alone: UvLock.PyProject says why);
//   - never, at any depth: hidden entries (name starting with '.': .git, .venv, .env secrets, editor
//     state), directories named __pycache__, node_modules, dist, build, and any directory holding a
//     pyvenv.cfg (a virtual environment, whatever its name); *.so and *.pyc fall out by extension;
//   - symlinks that would be included are refused: a bundle holds regular files only, so nothing
//     outside the directory can leak in and extraction never has to create links;
//   - at most MaxBytes of file content in total.
// The entry module is parser.py at the top level, else main.py, else the only top-level .py file
// (the Python shim applies the same rule to an archive).
using System.Buffers.Binary;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace Casparian;

/// <summary>One file of a bundle: its path inside the bundle ('/' separators) and its size in bytes.</summary>
internal readonly record struct BundleFile(string Path, long Size);

/// <summary>An extracted bundle: its directory ({root}/{source_hash}), the entry module's full path, the hash.</summary>
internal readonly record struct ExtractedBundle(string Directory, string EntryPath, string SourceHash);

/// <summary>
/// A parser ready to store or deploy. <see cref="EnvHash"/> is <see cref="LockfileHash"/> or "system";
/// <see cref="ArtifactHash"/> is DEPLOY's (SPEC §2.4) over the entry source and the lockfile.
/// </summary>
internal sealed partial record ParserBundle(
    string Name,
    string Version,
    string EntryModule,
    string EntrySource,
    byte[] Archive,
    string SourceHash,
    string LockfileContent,
    string? LockfileHash,
    string EnvHash,
    string ArtifactHash,
    IReadOnlyList<BundleFile> Files)
{
    /// <summary>Upper bound on the total content of a bundle, when made and when extracted.</summary>
    public const long MaxBytes = 50L * 1024 * 1024;

    public const string DefaultVersion = "0.0.0";

    internal static string Mib(long bytes) => (bytes / (1024.0 * 1024)).ToString("0.#", System.Globalization.CultureInfo.InvariantCulture) + " MiB";

    /// <summary>Lockfile names in order of preference; only the top level of a directory is searched.</summary>
    public static readonly string[] LockfileNames = ["uv.lock", "requirements.lock", "requirements.txt"];

    private static readonly string[] AllowedExtensions = [".py", ".json", ".yaml", ".yml", ".toml", ".txt", ".csv"];
    private static readonly string[] ExcludedDirectories = ["__pycache__", "node_modules", "dist", "build"];
    private static readonly string[] EntryNames = ["parser.py", "main.py"];

    // DOS time cannot go earlier; the same value for every entry makes the archive independent of mtimes.
    private static readonly DateTimeOffset FixedTime = new(1980, 1, 1, 0, 0, 0, TimeSpan.Zero);
    // Unix st_mode in the high 16 bits: a regular file, rw-r--r--, whatever the source permissions were.
    private const int RegularFileAttributes = 0x81A4 << 16;
    private const int UnixTypeMask = 0xF000;
    private const int UnixRegularFile = 0x8000;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Bundles a parser directory or a single .py file (see the file header for the rules).</summary>
    public static ParserBundle Load(string path)
    {
        string full = Path.GetFullPath(path);
        try
        {
            if (File.Exists(full)) return LoadFile(full);
            if (Directory.Exists(full)) return LoadDirectory(full);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw BundleThrow.Input_Unreadable(full, e);
        }
        throw BundleThrow.Input_NotFound(path);
    }

    private static ParserBundle LoadFile(string file)
    {
        string fileName = Path.GetFileName(file);
        if (!fileName.EndsWith(".py", StringComparison.Ordinal)) throw BundleThrow.Input_NotPython(file);
        if (HasControl(fileName)) throw BundleThrow.Input_ControlChar(Path.GetDirectoryName(file)!, fileName);
        long size = new FileInfo(file).Length;
        if (size > MaxBytes) throw BundleThrow.Input_TooLarge(file, size, [new BundleFile(fileName, size)]);
        var files = new List<(string Path, byte[] Content)> { (fileName, File.ReadAllBytes(file)) };
        return Create(files, fileName, lockfile: null, Path.GetFileNameWithoutExtension(file), file);
    }

    private static ParserBundle LoadDirectory(string dir)
    {
        string? lockfile = null;
        foreach (string candidate in LockfileNames)
            if (File.Exists(Path.Combine(dir, candidate))) { lockfile = candidate; break; }

        var found = new List<(string Rel, string Full, long Size)>();
        Walk(dir, dir, "", lockfile, found);
        long total = 0;
        foreach (var f in found) total += f.Size;
        if (total > MaxBytes)
            throw BundleThrow.Input_TooLarge(dir, total, [.. found.OrderByDescending(f => f.Size).Take(3).Select(f => new BundleFile(f.Rel, f.Size))]);

        var files = new List<(string Path, byte[] Content)>(found.Count);
        foreach (var f in found) files.Add((f.Rel, File.ReadAllBytes(f.Full)));
        files.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        string entry = ChooseEntry(files.Select(f => f.Path), $"parser directory {dir}");
        return Create(files, entry, lockfile, Path.GetFileName(dir), dir);
    }

    private static void Walk(string root, string dir, string prefix, string? lockfile, List<(string Rel, string Full, long Size)> into)
    {
        foreach (var info in new DirectoryInfo(dir).EnumerateFileSystemInfos())
        {
            string name = info.Name;
            if (name.StartsWith('.')) continue;
            string rel = prefix + name;
            if (info is DirectoryInfo sub)
            {
                if (Array.IndexOf(ExcludedDirectories, name) >= 0 || File.Exists(Path.Combine(sub.FullName, "pyvenv.cfg"))) continue;
                if (sub.LinkTarget is { } target) throw BundleThrow.Input_Symlink(root, rel, target);
                if (HasControl(name)) throw BundleThrow.Input_ControlChar(root, rel);
                Walk(root, sub.FullName, rel + "/", lockfile, into);
            }
            else if (info is FileInfo file)
            {
                bool isLockfile = prefix.Length == 0 && name == lockfile;
                if (!isLockfile && !HasAllowedExtension(name)) continue;
                if (file.LinkTarget is { } target) throw BundleThrow.Input_Symlink(root, rel, target);
                if (name.Contains('\\')) throw BundleThrow.Input_Backslash(root, rel);
                // Extraction refuses such a name (UnsafeName), so every job would fail: refused here, at register.
                if (HasControl(name)) throw BundleThrow.Input_ControlChar(root, rel);
                into.Add((rel, file.FullName, file.Length));
            }
        }
    }

    private static bool HasAllowedExtension(string name)
    {
        foreach (string ext in AllowedExtensions)
            if (name.EndsWith(ext, StringComparison.OrdinalIgnoreCase) && name.Length > ext.Length) return true;
        return false;
    }

    /// <summary>files: sorted by path; entry and lockfile: paths among them.</summary>
    private static ParserBundle Create(List<(string Path, byte[] Content)> files, string entry, string? lockfile, string fallbackName, string origin)
    {
        string entrySource = Decode(files.First(f => f.Path == entry).Content, Path.Combine(origin, entry));
        string lockfileContent = lockfile is null ? "" : Decode(files.First(f => f.Path == lockfile).Content, Path.Combine(origin, lockfile));
        string? lockfileHash = lockfile is null ? null : Hashes.Sha256Hex(lockfileContent);
        if (lockfile == UvLock.FileName) CheckUvLock(lockfileContent, origin);

        var (name, version) = ReadNameAndVersion(entrySource);
        if (name is not null && !ValidName().IsMatch(name)) throw BundleThrow.Input_BadName(origin, entry, name);
        if (version is not null && !ValidVersion().IsMatch(version)) throw BundleThrow.Input_BadVersion(origin, entry, version);

        return new ParserBundle(
            Name: name ?? NormaliseName(fallbackName),
            Version: version ?? DefaultVersion,
            EntryModule: entry,
            EntrySource: entrySource,
            Archive: BuildArchive(files),
            SourceHash: ComputeSourceHash(files),
            LockfileContent: lockfileContent,
            LockfileHash: lockfileHash,
            EnvHash: lockfileHash ?? Hashes.SystemEnv,
            ArtifactHash: Hashes.ArtifactHash(entrySource, lockfileContent),
            Files: [.. files.Select(f => new BundleFile(f.Path, f.Content.Length))]);
    }

    /// <summary>
    /// A uv.lock that no worker could build from is refused now, at registration, rather than once per
    /// job: it must parse and its edges must lead somewhere. Whether its wheels are in a worker's
    /// wheelhouse is the worker's to say.
    /// </summary>
    private static void CheckUvLock(string content, string origin)
    {
        try
        {
            if (!UvLock.Recognise(content)) throw UvLockThrow.Input_NoVersionLine();
            UvLock.Parse(content).Pins();
        }
        catch (InputException e)
        {
            throw BundleThrow.Input_BadUvLock(origin, e);
        }
    }

    private static string Decode(byte[] content, string file)
    {
        try { return StrictUtf8.GetString(content); }
        catch (DecoderFallbackException) { throw BundleThrow.Input_NotUtf8(file); }
    }

    /// <summary>The entry module among a bundle's paths: parser.py, else main.py, else the only top-level .py file.</summary>
    internal static string ChooseEntry(IEnumerable<string> paths, string origin)
    {
        var topLevel = paths.Where(p => !p.Contains('/') && p.EndsWith(".py", StringComparison.Ordinal)).ToList();
        foreach (string name in EntryNames)
            if (topLevel.Contains(name)) return name;
        if (topLevel.Count == 1) return topLevel[0];
        throw BundleThrow.Input_NoEntry(origin, topLevel);
    }

    // ---------------------------------------------------------------------------------------------
    // Name and version: read from the entry module's text, never by running it. A line counts when it
    // starts at column 0 (so assignments inside functions, classes and if-blocks are ignored) and is
    //   name|version|__version__ [: str] = "literal" | 'literal'   [# comment]
    // with a plain literal (no prefix, no escapes). The last such line wins, as it would in Python;
    // version beats __version__. Lines inside triple-quoted strings are skipped.

    internal static (string? Name, string? Version) ReadNameAndVersion(string source)
    {
        string? name = null, version = null, dunderVersion = null;
        string? openTripleQuote = null;
        foreach (string rawLine in source.TrimStart('\uFEFF').Split('\n'))
        {
            string line = rawLine.TrimEnd('\r');
            if (openTripleQuote is not null)
            {
                if (CountOf(line, openTripleQuote) % 2 == 1) openTripleQuote = null;
                continue;
            }
            var m = ModuleAssignment().Match(line);
            if (m.Success)
            {
                string value = m.Groups["dq"].Success ? m.Groups["dq"].Value : m.Groups["sq"].Value;
                switch (m.Groups["key"].Value)
                {
                    case "name": name = value; break;
                    case "version": version = value; break;
                    default: dunderVersion = value; break;
                }
                continue;
            }
            int dq = line.IndexOf("\"\"\"", StringComparison.Ordinal), sq = line.IndexOf("'''", StringComparison.Ordinal);
            string? first = dq < 0 ? (sq < 0 ? null : "'''") : (sq < 0 || dq < sq ? "\"\"\"" : "'''");
            if (first is not null && CountOf(line, first) % 2 == 1) openTripleQuote = first;
        }
        return (name, version ?? dunderVersion);
    }

    private static int CountOf(string line, string token)
    {
        int count = 0;
        for (int i = line.IndexOf(token, StringComparison.Ordinal); i >= 0; i = line.IndexOf(token, i + token.Length, StringComparison.Ordinal)) count++;
        return count;
    }

    [GeneratedRegex("""^(?<key>name|version|__version__)[ \t]*(?::[ \t]*str[ \t]*)?=[ \t]*(?:"(?<dq>[^"\\]*)"|'(?<sq>[^'\\]*)')[ \t]*(?:#.*)?$""")]
    private static partial Regex ModuleAssignment();

    /// <summary>A parser name: what job add --parser NAME[@VERSION] and worker capabilities can carry.</summary>
    [GeneratedRegex("^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")]
    internal static partial Regex ValidName();

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")]
    internal static partial Regex ValidVersion();

    /// <summary>A file stem or directory name made into a valid parser name: other characters become '_'.</summary>
    internal static string NormaliseName(string raw)
    {
        var sb = new StringBuilder(raw.Length + 1);
        foreach (char c in raw) sb.Append(char.IsAsciiLetterOrDigit(c) || c is '_' or '.' or '-' ? c : '_');
        if (sb.Length == 0 || !(char.IsAsciiLetter(sb[0]) || sb[0] == '_')) sb.Insert(0, '_');
        return sb.Length > 128 ? sb.ToString(0, 128) : sb.ToString();
    }

    // ---------------------------------------------------------------------------------------------
    // The archive. Entries in the order given (sorted by path), Deflate at CompressionLevel.Optimal,
    // every timestamp 1980-01-01 00:00:00, fixed attributes, no directory entries, no comment. The
    // archive is written to a seekable stream, so sizes go into the local headers (no data descriptors).
    // Equal content gives equal bytes for one build of the binary; across .NET versions the Deflate
    // output may differ, which is why identity is the source hash, never the archive bytes.

    private static byte[] BuildArchive(List<(string Path, byte[] Content)> files)
    {
        using var buffer = new MemoryStream();
        using (var zip = new ZipArchive(buffer, ZipArchiveMode.Create, leaveOpen: true, entryNameEncoding: Encoding.UTF8))
        {
            foreach (var (path, content) in files)
            {
                var entry = zip.CreateEntry(path, CompressionLevel.Optimal);
                entry.LastWriteTime = FixedTime;
                entry.ExternalAttributes = RegularFileAttributes;
                using var stream = entry.Open();
                stream.Write(content);
            }
        }
        return buffer.ToArray();
    }

    // source_hash: hex SHA-256 over the bundle's files sorted by path (ordinal, '/' separators), each
    // written as
    //   path (UTF-8, no NUL) | 0x00 | content length (u64 big-endian) | content
    // with nothing before, between or after. Part of the store's identity of a parser: never change it.
    private static string ComputeSourceHash(List<(string Path, byte[] Content)> sortedFiles)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Span<byte> length = stackalloc byte[8];
        ReadOnlySpan<byte> separator = [0];
        foreach (var (path, content) in sortedFiles)
        {
            hash.AppendData(Encoding.UTF8.GetBytes(path));
            hash.AppendData(separator);
            BinaryPrimitives.WriteUInt64BigEndian(length, (ulong)content.Length);
            hash.AppendData(length);
            hash.AppendData(content);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    // ---------------------------------------------------------------------------------------------
    // Extraction. {root}/{source_hash}/ only ever appears by renaming a complete, verified temp tree
    // ({root}/.tmp-…) into place, so an existing {source_hash} directory is complete and is reused as
    // is (the guest may since have added __pycache__ to it). Two processes extracting the same bundle
    // both build a temp tree; the first rename wins and the loser deletes its own.

    /// <summary>
    /// Extracts into {targetRoot}/{source_hash}/ (or reuses it) and returns that directory and the entry
    /// module. Refuses unsafe or unexpected entries (InputException naming the entry), and an archive
    /// whose content does not hash to <paramref name="expectedSourceHash"/> when one is given.
    /// </summary>
    public static ExtractedBundle Extract(byte[] archive, string targetRoot, string? expectedSourceHash = null)
    {
        var files = ReadArchive(archive);
        string hash = ComputeSourceHash(files);
        if (expectedSourceHash is not null && !string.Equals(expectedSourceHash, hash, StringComparison.OrdinalIgnoreCase))
            throw BundleThrow.Input_HashMismatch(expectedSourceHash, hash);
        string entry = ChooseEntry(files.Select(f => f.Path), $"parser archive {hash}");
        string root = Path.GetFullPath(targetRoot);
        string target = Path.Combine(root, hash);
        if (!Directory.Exists(target)) ExtractNew(files, hash, root, target);
        return new ExtractedBundle(target, Path.Combine(target, entry), hash);
    }

    private static void ExtractNew(List<(string Path, byte[] Content)> files, string hash, string root, string target)
    {
        string temp = Path.Combine(root, $".tmp-{hash[..16]}-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(temp);
            foreach (var (path, content) in files)
            {
                string full = Path.GetFullPath(Path.Combine(temp, path));
                // ReadArchive already refused every escaping name; this guards the invariant, not the input.
                if (!full.StartsWith(temp + Path.DirectorySeparatorChar, StringComparison.Ordinal)) throw BundleThrow.Input_BadEntry(path, "escapes the target directory");
                Directory.CreateDirectory(Path.GetDirectoryName(full)!);
                using var stream = new FileStream(full, FileMode.CreateNew, FileAccess.Write);
                stream.Write(content);
                stream.Flush(flushToDisk: true);
            }
            string onDisk = ComputeSourceHash(ReadTree(temp));
            if (onDisk != hash) throw BundleThrow.Failed_ExtractedHash(temp, hash, onDisk);
            try
            {
                Directory.Move(temp, target);
            }
            catch (IOException) when (Directory.Exists(target))
            {
                // Another extraction of the same hash won the race; its tree is equal by construction.
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw BundleThrow.Unavailable_Extract(root, e);
        }
        finally
        {
            try { if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }

    private static List<(string Path, byte[] Content)> ReadTree(string dir)
    {
        var files = new List<(string Path, byte[] Content)>();
        foreach (string file in Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories))
            files.Add((Path.GetRelativePath(dir, file).Replace(Path.DirectorySeparatorChar, '/'), File.ReadAllBytes(file)));
        files.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        return files;
    }

    /// <summary>
    /// Every file entry of an archive, validated and sorted by path. Directory entries (name ending in
    /// '/', empty) are checked and skipped; symlinks and other non-regular entries are refused.
    /// </summary>
    private static List<(string Path, byte[] Content)> ReadArchive(byte[] archive)
    {
        var files = new List<(string Path, byte[] Content)>();
        var paths = new HashSet<string>(StringComparer.Ordinal);
        long total = 0;
        try
        {
            using var zip = new ZipArchive(new MemoryStream(archive, writable: false), ZipArchiveMode.Read);
            foreach (var entry in zip.Entries)
            {
                string name = entry.FullName;
                bool isDirectory = name.EndsWith('/');
                if (UnsafeName(isDirectory ? name[..^1] : name) is { } reason) throw BundleThrow.Input_BadEntry(name, reason);
                int type = (entry.ExternalAttributes >> 16) & UnixTypeMask;
                if (isDirectory)
                {
                    if (entry.Length != 0) throw BundleThrow.Input_BadEntry(name, "is a directory entry with content");
                    continue;
                }
                // Zero when the archiver recorded no Unix mode (e.g. made on Windows): a plain file.
                if (type != 0 && type != UnixRegularFile) throw BundleThrow.Input_BadEntry(name, $"is not a regular file (Unix file type 0x{type:X4}, e.g. a symlink)");
                if (!paths.Add(name)) throw BundleThrow.Input_BadEntry(name, "appears twice");
                total += entry.Length;
                if (total > MaxBytes) throw BundleThrow.Input_BadArchive($"its content exceeds {ParserBundle.Mib(MaxBytes)}");
                var content = new byte[entry.Length];
                using (var stream = entry.Open())
                {
                    stream.ReadExactly(content);
                    if (stream.ReadByte() != -1) throw BundleThrow.Input_BadEntry(name, "holds more bytes than its header declares");
                }
                files.Add((name, content));
            }
        }
        catch (InvalidDataException e)
        {
            throw BundleThrow.Input_BadArchive(e.Message, e);
        }
        catch (EndOfStreamException e)
        {
            throw BundleThrow.Input_BadArchive("an entry holds fewer bytes than its header declares", e);
        }
        // A file "a" and a file "a/b.py" cannot both exist on disk.
        foreach (var (path, _) in files)
            for (int slash = path.IndexOf('/'); slash >= 0; slash = path.IndexOf('/', slash + 1))
                if (paths.Contains(path[..slash])) throw BundleThrow.Input_BadEntry(path, $"lies under '{path[..slash]}', which is a file");
        files.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        return files;
    }

    private static bool HasControl(string name)
    {
        foreach (char c in name) if (char.IsControl(c)) return true;
        return false;
    }

    /// <summary>Why an entry name could land outside the target directory or be ambiguous, or null.</summary>
    private static string? UnsafeName(string name)
    {
        if (name.Length == 0) return "has an empty name";
        if (name[0] == '/') return "is an absolute path";
        if (name.Length >= 2 && name[1] == ':' && char.IsAsciiLetter(name[0])) return "starts with a drive letter";
        if (name.Contains('\\')) return "contains a backslash";
        if (HasControl(name)) return "contains a control character";
        foreach (string segment in name.Split('/'))
        {
            if (segment.Length == 0) return "has an empty path segment";
            if (segment is "." or "..") return $"has a '{segment}' path segment";
        }
        return null;
    }
}

internal static class BundleThrow
{
    public static InputException Input_NotFound(string path) =>
        new($"parser {path} not found: give a parser directory or a .py file");
    public static InputException Input_NotPython(string file) =>
        new($"parser file {file} is not a .py file: give a .py file or a parser directory");
    public static InputException Input_Unreadable(string path, Exception e) =>
        new($"cannot read parser {path}: {e.Message}", e);
    public static InputException Input_TooLarge(string origin, long total, BundleFile[] largest) =>
        new($"parser {origin} holds {ParserBundle.Mib(total)} of bundle files, above the limit of {ParserBundle.Mib(ParserBundle.MaxBytes)} " +
            $"(largest: {string.Join(", ", largest.Select(f => $"{f.Path} {ParserBundle.Mib(f.Size)}"))}); keep data files outside the parser directory");
    public static InputException Input_Symlink(string root, string rel, string target) =>
        new($"parser directory {root} contains the symlink {rel} -> {target}; bundles hold regular files only: copy the file in or move the link out");
    public static InputException Input_Backslash(string root, string rel) =>
        new($"parser directory {root} contains {rel}, whose name has a backslash; rename it (bundle paths use '/' only)");
    public static InputException Input_ControlChar(string root, string rel) =>
        new($"parser {root}: the name of '{string.Concat(rel.Select(c => char.IsControl(c) ? $"\\x{(int)c:x2}" : c.ToString()))}' contains a control character (a newline, a tab, …); rename it");
    public static InputException Input_NotUtf8(string file) =>
        new($"parser file {file} is not valid UTF-8; save it as UTF-8");
    public static InputException Input_NoEntry(string origin, List<string> topLevel) =>
        new(topLevel.Count == 0
            ? $"{origin} has no top-level .py file; add parser.py (the entry module)"
            : $"{origin} has no parser.py or main.py and more than one top-level .py file ({string.Join(", ", topLevel)}); name the entry module parser.py");
    public static InputException Input_BadName(string origin, string entry, string name) =>
        new($"parser {origin}: name \"{name}\" in {entry} is not a valid parser name; use letters, digits, '_', '.', '-', starting with a letter or '_' (at most 128)");
    public static InputException Input_BadVersion(string origin, string entry, string version) =>
        new($"parser {origin}: version \"{version}\" in {entry} is not valid; use letters, digits, '.', '_', '+', '-', starting with a letter or digit (at most 64)");
    public static InputException Input_BadUvLock(string origin, InputException e) =>
        new($"parser {origin}: {e.Message}", e);
    public static InputException Input_BadArchive(string reason, Exception? e = null) =>
        new($"parser archive is not a valid bundle: {reason}", e);
    public static InputException Input_BadEntry(string entry, string reason) =>
        new($"parser archive entry '{entry}' {reason}; refusing to extract the bundle");
    public static InputException Input_HashMismatch(string expected, string actual) =>
        new($"parser archive has source hash {actual}, expected {expected}; the archive is corrupt or not the parser asked for");
    public static CasparianException Failed_ExtractedHash(string dir, string expected, string actual) =>
        new(ExitCode.Failed, $"extracted parser bundle in {dir} hashes to {actual}, expected {expected}; the disk did not keep what was written");
    public static UnavailableException Unavailable_Extract(string root, Exception e) =>
        new($"cannot extract a parser bundle into {root}: {e.Message}", e);
}

/// <summary>
/// Version order for "the latest version" of a parser: dot- or dash-separated parts compared
/// numerically when both are numbers (1.10 after 1.9), else ordinally; a release after its
/// pre-release (1.0 after 1.0-rc1, as SemVer orders them); more parts after fewer (1.0.1 after 1.0).
/// </summary>
internal static class ParserVersions
{
    public static int Compare(string a, string b)
    {
        // Build metadata (+…) does not order versions.
        string ca = a.Split('+')[0], cb = b.Split('+')[0];
        int dashA = ca.IndexOf('-'), dashB = cb.IndexOf('-');
        string coreA = dashA < 0 ? ca : ca[..dashA], coreB = dashB < 0 ? cb : cb[..dashB];
        int c = CompareParts(coreA.Split('.'), coreB.Split('.'));
        if (c != 0) return c;
        if (dashA < 0 || dashB < 0) return (dashA < 0 ? 1 : 0) - (dashB < 0 ? 1 : 0);
        c = CompareParts(ca[(dashA + 1)..].Split('.', '-'), cb[(dashB + 1)..].Split('.', '-'));
        return c != 0 ? c : string.CompareOrdinal(a, b);
    }

    private static int CompareParts(string[] a, string[] b)
    {
        for (int i = 0; i < Math.Min(a.Length, b.Length); i++)
        {
            bool na = ulong.TryParse(a[i], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out ulong x);
            bool nb = ulong.TryParse(b[i], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out ulong y);
            int c = na && nb ? x.CompareTo(y) : na ? -1 : nb ? 1 : string.CompareOrdinal(a[i], b[i]);
            if (c != 0) return c;
        }
        return a.Length.CompareTo(b.Length);
    }
}
