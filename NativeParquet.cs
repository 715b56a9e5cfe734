// ParquetSharp's native library inside the native binary, so `casparian` is the only file a host needs.
//
// No registry here offers a static build of ParquetSharpNative (NuGet ships only the shared object;
// Debian packages no Arrow or Parquet C++ library), so it cannot be linked in the way SQLite is. The AOT
// publish embeds it instead, gzip-compressed, as the resource native/ParquetSharpNative.so/{sha256}.gz
// (casparian.csproj). The commands that write Parquet (run, start, worker) call Ensure where they
// extract the shim (Commands.Options.cs ExecutorOptions, and `run`), which installs and loads it under
// Config.LibDir (HOME/lib):
//
//   {LibDir}/{sha256[..16]}/ParquetSharpNative.so         the library; its directory names its content
//   {LibDir}/{sha256[..16]}/.ParquetSharpNative.so.tmp-*  an extraction in progress (or a crashed one)
//
// Every process opens the installed file, checks its SHA-256 against the resource's name and loads
// that very open file (/proc/self/fd/N), so what is loaded is what was checked, even if someone swaps
// the file in between. A missing, truncated or damaged copy is replaced: decompressed to a temp file in
// the same directory, checked, fsynced and renamed over the old one, then the directory is fsynced.
// Processes that race all write identical bytes and rename atomically, so no lock is needed and a
// reader never sees half a file; one that had already loaded the old inode keeps it mapped.
// Directories of other builds' libraries are left alone: another casparian binary may still use them.
//
// Under the JIT (tests, bench) the resource is absent and Ensure does nothing: ParquetSharp loads the
// NuGet package's runtime asset.
using System.IO.Compression;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Casparian;

internal static class NativeParquet
{
    /// <summary>The name ParquetSharp's P/Invokes ask for.</summary>
    public const string LibraryName = "ParquetSharpNative";
    public const string FileName = "ParquetSharpNative.so";

    private const string ResourcePrefix = "native/ParquetSharpNative.so/";
    private const string ResourceSuffix = ".gz";
    private static readonly TimeSpan StaleTemp = TimeSpan.FromHours(1);

    private static readonly Lock Gate = new();
    private static IntPtr _handle;

    /// <summary>
    /// Installs the embedded library under <paramref name="libRoot"/> (<see cref="Config.LibDir"/>) if it
    /// is missing or damaged, loads it and routes ParquetSharp's P/Invokes to it. Call before the first
    /// ParquetSharp call; later calls return at once. Does nothing without the resource (JIT builds).
    /// Throws <see cref="UnavailableException"/> when the library cannot be written or loaded.
    /// </summary>
    public static void Ensure(string libRoot)
    {
        lock (Gate)
        {
            if (_handle != IntPtr.Zero) return;
            if (Resource() is not { } resource) return;
            string sha256 = resource[ResourcePrefix.Length..^ResourceSuffix.Length];
            string path = Path.Combine(Path.GetFullPath(libRoot), sha256[..16], FileName);
            IntPtr handle = LoadVerified(path, sha256, final: false);
            if (handle == IntPtr.Zero)
            {
                Extract(resource, sha256, path);
                handle = LoadVerified(path, sha256, final: true);
            }
            _handle = handle;
            NativeLibrary.SetDllImportResolver(typeof(ParquetSharp.ParquetFileWriter).Assembly,
                static (name, _, _) => name == LibraryName ? _handle : IntPtr.Zero);
        }
    }

    private static string? Resource()
    {
        foreach (string name in typeof(NativeParquet).Assembly.GetManifestResourceNames())
            if (name.StartsWith(ResourcePrefix, StringComparison.Ordinal) && name.EndsWith(ResourceSuffix, StringComparison.Ordinal))
                return name;
        return null;
    }

    /// <summary>
    /// Loads <paramref name="path"/> if its content hashes to <paramref name="sha256"/>. Otherwise zero
    /// (it is to be extracted again), or, when <paramref name="final"/> (it was just extracted), an error.
    /// </summary>
    private static IntPtr LoadVerified(string path, string sha256, bool final)
    {
        FileStream file;
        try
        {
            file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1 << 20);
        }
        catch (Exception e) when (!final && e is IOException or UnauthorizedAccessException)
        {
            return IntPtr.Zero;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw NativeThrow.Unavailable_Unreadable(path, e);
        }
        using (file)
        {
            if (Convert.ToHexStringLower(SHA256.HashData(file)) != sha256)
            {
                if (final) throw NativeThrow.Unavailable_ChangedUnderUs(path);
                return IntPtr.Zero;
            }
            // The descriptor just hashed, not the path: a file renamed over it since is not what gets loaded.
            string descriptor = $"/proc/self/fd/{file.SafeFileHandle.DangerousGetHandle()}";
            try
            {
                return NativeLibrary.Load(descriptor);
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                throw NativeThrow.Unavailable_Load(path, e);
            }
        }
    }

    private static void Extract(string resource, string sha256, string path)
    {
        string dir = Path.GetDirectoryName(path)!;
        string temp = Path.Combine(dir, $".{FileName}.tmp-{Environment.ProcessId}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}");
        try
        {
            Directory.CreateDirectory(dir);
            RemoveStaleTemps(dir);
            using (var output = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 20))
            {
                using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                using var input = typeof(NativeParquet).Assembly.GetManifestResourceStream(resource)!;
                using var gzip = new GZipStream(input, CompressionMode.Decompress);
                byte[] buffer = new byte[1 << 20];
                int n;
                while ((n = gzip.Read(buffer)) > 0)
                {
                    hash.AppendData(buffer, 0, n);
                    output.Write(buffer, 0, n);
                }
                string actual = Convert.ToHexStringLower(hash.GetHashAndReset());
                if (actual != sha256) throw NativeThrow.Unavailable_CorruptResource(resource, actual);
                output.Flush(flushToDisk: true);
            }
            File.Move(temp, path, overwrite: true);
            DirectorySync.Flush(dir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw NativeThrow.Unavailable_NotWritable(dir, e);
        }
        finally
        {
            TryDelete(temp);
        }
    }

    /// <summary>Temp files a crashed extraction left; an hour is far beyond any live extraction.</summary>
    private static void RemoveStaleTemps(string dir)
    {
        foreach (var file in new DirectoryInfo(dir).EnumerateFiles($".{FileName}.tmp-*"))
            if (DateTime.UtcNow - file.LastWriteTimeUtc > StaleTemp) TryDelete(file.FullName);
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}

internal static class NativeThrow
{
    public static UnavailableException Unavailable_NotWritable(string dir, Exception e) =>
        new($"cannot install ParquetSharp's native library in {dir}: {e.Message.TrimEnd('.')}; make CASPARIAN_HOME writable or point it (--home) at a directory that is", e);
    public static UnavailableException Unavailable_Unreadable(string path, Exception e) =>
        new($"cannot read ParquetSharp's native library {path}, just extracted: {e.Message}; fix the permissions under CASPARIAN_HOME or point it (--home) elsewhere", e);
    public static UnavailableException Unavailable_Load(string path, Exception e) =>
        new($"cannot load ParquetSharp's native library {path}: {e.Message}; a home on a noexec mount cannot hold libraries: point CASPARIAN_HOME (--home) elsewhere", e);
    public static UnavailableException Unavailable_ChangedUnderUs(string path) =>
        new($"ParquetSharp's native library {path} was changed right after it was extracted; is another program writing under CASPARIAN_HOME?");
    public static UnavailableException Unavailable_CorruptResource(string resource, string actual) =>
        new($"the binary's resource {resource} decompresses to content with sha256 {actual}; the binary is damaged: rebuild or download it again");
}
