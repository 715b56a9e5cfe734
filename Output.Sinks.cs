// Where a topic's file goes (SPEC §7): sink uri resolution and the per-mode checks on the destination.
// A sentinel must not be able to make a worker write anywhere it likes, so every resolved path is
// checked to lie inside the output root or a configured allowed root, and '..' is refused outright
// rather than normalised away. The check is made twice: on the text, and on the real path (every
// symlink on the way resolved, RealPath), since a symlink inside the root can point anywhere. The real
// path is checked when the job starts, again when the topic's directory is created, and again just
// before the finished file is renamed into place.
using System.Runtime.InteropServices;
using ParquetSharp;

namespace Casparian;

/// <summary>
/// A topic's resolved destination: <see cref="FileName"/> inside <see cref="Directory"/>.
/// <see cref="SingleFile"/> when the uri named a .parquet file rather than a dataset directory.
/// </summary>
internal sealed partial record SinkTarget(string Topic, string Uri, string Directory, string FileName, SinkMode Mode, bool SingleFile)
{
    public const string JobIdKey = LineageColumns.JobIdKey;

    public string FinalPath => Path.Combine(Directory, FileName);

    /// <summary>Hex digits after <see cref="TempPrefix"/>: a temp file's name is exactly prefix + this many.</summary>
    public const int TempSuffixLength = 12;

    /// <summary>Most characters of a sanitised file stem: the temp name adds 47 and a file name holds 255 bytes.</summary>
    public const int MaxStemLength = 200;

    /// <summary>Temp files of this (job, topic) start with this, whichever attempt made them.</summary>
    public string TempPrefix(ulong jobId) => $".{FileName}.tmp-{jobId}-";

    /// <summary>
    /// The destination file of a directory dataset: <c>{stem}.parquet</c> with the stem sanitised (dev mode),
    /// else the (parser, source) name <see cref="SourceFileName"/>, else <c>job-{id}.parquet</c>.
    /// Deterministic each way, so a retry, a rerun or a later job for the same source overwrites it.
    /// </summary>
    public static string DatasetFileName(ulong jobId, OutputSource? source, string? fileStem) =>
        fileStem is not null ? SanitizeStem(fileStem) + ".parquet"
        : source is not null ? SourceFileName(source.ParserName, source.Path)
        : $"job-{jobId}.parquet";

    /// <summary>Characters of the parser name and of the source's file name in <see cref="SourceFileName"/>.</summary>
    private const int NamePartLength = 60;

    /// <summary>
    /// One name per (parser name, source path), whatever the parser version or job:
    /// <c>{parser}-{file name}-{first 16 hex of SHA-256(path)}.parquet</c>, the first two sanitised and
    /// cut to 60 characters (readable), the hash telling apart sources with the same file name.
    /// Every job of a parser for a source renames its file over the previous one's (issue 13).
    /// </summary>
    public static string SourceFileName(string parserName, string sourcePath)
    {
        static string Part(string s) => SanitizeStem(s.Length > NamePartLength ? s[..NamePartLength] : s);
        string key = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(sourcePath)))[..16];
        return $"{Part(parserName)}-{Part(Path.GetFileNameWithoutExtension(sourcePath))}-{key}.parquet";
    }

    /// <summary>
    /// The local path of a superseded file's uri, when it is one a sink could have written: a file://
    /// uri of a visible *.parquet file, no '..', inside the output root or an allowed root. Else null.
    /// </summary>
    public static string? SupersededPath(OutputOptions options, string uri)
    {
        if (!System.Uri.TryCreate(uri, UriKind.Absolute, out var parsed) || !parsed.IsFile || !parsed.IsLoopback && parsed.Host.Length > 0) return null;
        string path = parsed.LocalPath;
        if (HasParentSegment(path) || !path.EndsWith(".parquet", StringComparison.Ordinal) || Path.GetFileName(path).StartsWith('.')) return null;
        string full = Normalize(path);
        if (IsInside(full, Normalize(options.Root))) return full;
        foreach (var allowed in options.AllowedRoots)
            if (IsInside(full, Normalize(allowed))) return full;
        return null;
    }

    /// <summary>
    /// The stem as it appears in file names: every character outside ASCII letters, digits, '-', '_' and
    /// '.' becomes '_' (so no '/', no control or non-ASCII characters), a leading '.' becomes '_' (dataset
    /// readers skip hidden files), empty becomes "_", and it is cut to <see cref="MaxStemLength"/>
    /// characters. Different stems can sanitise alike ("a b", "a_b"): callers compare sanitised stems.
    /// </summary>
    public static string SanitizeStem(string stem)
    {
        if (stem.Length == 0) return "_";
        return string.Create(Math.Min(stem.Length, MaxStemLength), stem, static (span, stem) =>
        {
            for (int i = 0; i < span.Length; i++)
            {
                char c = stem[i];
                span[i] = char.IsAsciiLetterOrDigit(c) || c is '-' or '_' || (c == '.' && i > 0) ? c : '_';
            }
        });
    }

    /// <summary>
    /// Resolves <paramref name="uri"/>: <c>parquet://NAME</c> or a relative path under the root (a
    /// prefix below it when the root is s3://); <c>file:///ABS</c> or <c>/ABS</c> only inside the root
    /// or an allowed root; <c>s3://BUCKET/PREFIX</c> as given (Output.S3.cs). A path ending in
    /// <c>.parquet</c> is a single file, anything else a dataset directory, whose file for this job is
    /// <see cref="DatasetFileName"/>.
    /// </summary>
    public static SinkTarget Resolve(OutputOptions options, ulong jobId, string topic, string uri, SinkMode mode, string? fileName = null)
    {
        if (S3Location.IsS3(uri)) return ResolveS3(options, jobId, topic, uri, mode, fileName, ParseS3(jobId, topic, uri));
        // Under an s3:// output root, parquet://NAME and relative uris name prefixes below it (Output.S3.cs).
        if (RemoteRoot(options) is { } remoteRoot && !uri.StartsWith("file://", StringComparison.OrdinalIgnoreCase) && !Path.IsPathRooted(uri))
        {
            string rel = uri.StartsWith("parquet://", StringComparison.OrdinalIgnoreCase) ? uri["parquet://".Length..] : uri;
            if (rel.StartsWith('/')) throw OutputThrow.Sink_AbsoluteParquet(jobId, topic, uri);
            if (uri.Contains("://", StringComparison.Ordinal) && !uri.StartsWith("parquet://", StringComparison.OrdinalIgnoreCase)) throw OutputThrow.Sink_Scheme(jobId, topic, uri);
            if (rel.Trim().Length == 0) throw OutputThrow.Sink_Empty(jobId, topic);
            if (HasParentSegment(rel)) throw OutputThrow.Sink_ParentSegment(jobId, topic, uri);
            return ResolveS3(options, jobId, topic, uri, mode, fileName, ParseS3(jobId, topic, remoteRoot.Child(rel).Uri));
        }
        string root = Normalize(options.Root);
        string path;
        if (uri.StartsWith("parquet://", StringComparison.OrdinalIgnoreCase))
        {
            string rel = uri["parquet://".Length..];
            if (rel.StartsWith('/')) throw OutputThrow.Sink_AbsoluteParquet(jobId, topic, uri);
            path = UnderRoot(jobId, topic, uri, root, rel);
        }
        else if (uri.StartsWith("file://", StringComparison.OrdinalIgnoreCase))
        {
            string rest = uri["file://".Length..];
            if (rest.StartsWith("localhost/", StringComparison.OrdinalIgnoreCase)) rest = rest["localhost".Length..];
            if (!rest.StartsWith('/')) throw OutputThrow.Sink_Host(jobId, topic, uri);
            path = Absolute(options, jobId, topic, uri, root, System.Uri.UnescapeDataString(rest));
        }
        else if (uri.Contains("://", StringComparison.Ordinal))
        {
            throw OutputThrow.Sink_Scheme(jobId, topic, uri);
        }
        else if (Path.IsPathRooted(uri))
        {
            path = Absolute(options, jobId, topic, uri, root, uri);
        }
        else
        {
            path = UnderRoot(jobId, topic, uri, root, uri);
        }

        bool singleFile = path.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase) && !uri.EndsWith('/');
        if (singleFile && mode == SinkMode.Append) throw OutputThrow.Sink_AppendToFile(jobId, topic, uri);
        CheckRealPath(options, jobId, topic, singleFile ? Path.GetDirectoryName(path)! : path);
        return singleFile
            ? new SinkTarget(topic, uri, Path.GetDirectoryName(path)!, Path.GetFileName(path), mode, SingleFile: true)
            : new SinkTarget(topic, uri, path, fileName ?? DatasetFileName(jobId, null, null), mode, SingleFile: false);
    }

    internal static string UnderRoot(ulong jobId, string topic, string uri, string root, string relative)
    {
        if (relative.Trim().Length == 0) throw OutputThrow.Sink_Empty(jobId, topic);
        if (HasParentSegment(relative)) throw OutputThrow.Sink_ParentSegment(jobId, topic, uri);
        string full = Normalize(Path.Combine(root, relative));
        // Unreachable after the '..' check; kept so no future parsing change can leave the root.
        if (!IsInside(full, root)) throw OutputThrow.Sink_OutsideRoots(jobId, topic, full, [root]);
        return full;
    }

    private static string Absolute(OutputOptions options, ulong jobId, string topic, string uri, string root, string path)
    {
        if (HasParentSegment(path)) throw OutputThrow.Sink_ParentSegment(jobId, topic, uri);
        string full = Normalize(path);
        if (IsInside(full, root)) return full;
        foreach (var allowed in options.AllowedRoots)
            if (IsInside(full, Normalize(allowed))) return full;
        throw OutputThrow.Sink_OutsideRoots(jobId, topic, full, options.AllowedRoots.Prepend(options.Root).Select(Normalize));
    }

    /// <summary>
    /// Refuses a destination directory whose real path (symlinks resolved) is outside the real paths of
    /// the output root and the allowed roots. The parts of a path that do not exist yet are taken as
    /// written: they hold no symlink ('..' was refused before), and the directory is checked again once
    /// it is created.
    /// </summary>
    public static void CheckRealPath(OutputOptions options, ulong jobId, string topic, string directory, string? real = null)
    {
        real ??= RealPath.Of(directory);
        if (!S3Location.IsS3(options.Root) && IsInside(real, RealPath.Of(options.Root))) return;
        foreach (var allowed in options.AllowedRoots)
            if (IsInside(real, RealPath.Of(allowed))) return;
        throw OutputThrow.Sink_SymlinkEscape(jobId, topic, directory, real);
    }

    internal static bool HasParentSegment(string path)
    {
        foreach (var segment in path.Split('/', '\\'))
            if (segment == "..") return true;
        return false;
    }

    internal static string Normalize(string path) => Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));

    internal static bool IsInside(string path, string root) =>
        path == root || (path.StartsWith(root, StringComparison.Ordinal) && (root.EndsWith('/') || path[root.Length] == '/'));

    /// <summary>
    /// Mode error: throws when the destination already holds another job's data (a retry's own file is
    /// fine; an earlier job's file for the same source under this job's name is another job's data).
    /// </summary>
    public void CheckNoOtherData(ulong jobId)
    {
        if (File.Exists(FinalPath) && WrittenBy(FinalPath) != jobId) throw OutputThrow.Sink_DataExists(jobId, Topic, FinalPath);
        if (SingleFile) return;
        foreach (var file in OtherDataFiles()) throw OutputThrow.Sink_DataExists(jobId, Topic, file);
    }

    /// <summary>Mode replace on a directory: deletes every *.parquet in it except this job's file; returns how many it found.</summary>
    public int DeleteOtherData()
    {
        var files = OtherDataFiles();
        foreach (var file in files)
        {
            try { File.Delete(file); }
            catch (FileNotFoundException) { }
        }
        return files.Count;
    }

    private List<string> OtherDataFiles()
    {
        if (!System.IO.Directory.Exists(Directory)) return [];
        return System.IO.Directory.EnumerateFiles(Directory, "*.parquet")
            .Where(f => !Path.GetFileName(f).StartsWith('.') && Path.GetFileName(f) != FileName)
            .ToList();
    }

    /// <summary>The job id in a Parquet file's footer (written by JobOutput), or null if absent or unreadable.</summary>
    public static ulong? WrittenBy(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            using var reader = new ParquetFileReader(path);
            return reader.FileMetaData.KeyValueMetadata.TryGetValue(JobIdKey, out var text) && ulong.TryParse(text, out var id) ? id : null;
        }
        catch (Exception e) when (e is ParquetException or IOException)
        {
            return null;
        }
    }
}

/// <summary>
/// A path with every symlink resolved, as the kernel will follow it: libc realpath(3) on the deepest
/// part that exists, the rest appended as written. .NET resolves one link at a time only
/// (FileSystemInfo.ResolveLinkTarget), not the links among a path's parent directories.
/// </summary>
internal static class RealPath
{
    public static string Of(string path)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        string rest = "";
        for (string? at = full; at is not null; at = Path.GetDirectoryName(at))
        {
            if (Resolve(at) is { } real) return rest.Length == 0 ? real : Path.Join(real, rest);
            rest = rest.Length == 0 ? Path.GetFileName(at) : Path.Join(Path.GetFileName(at), rest);
        }
        return full;
    }

    private static string? Resolve(string path)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return Directory.Exists(path) || File.Exists(path) ? path : null;
        IntPtr resolved = realpath(System.Text.Encoding.UTF8.GetBytes(path + "\0"), IntPtr.Zero);
        if (resolved == IntPtr.Zero) return null;
        try { return Marshal.PtrToStringUTF8(resolved); }
        finally { free(resolved); }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern IntPtr realpath(byte[] path, IntPtr resolved);

    [DllImport("libc")]
    private static extern void free(IntPtr pointer);
}
