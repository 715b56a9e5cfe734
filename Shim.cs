// The guest shim (shim/*.py) rides inside the binary as embedded resources and is written out on
// first use to {root}/{version}-{contenthash8}/, so the native binary is all a user copies. Writing
// goes to a temp directory that is renamed into place: a reader never sees a half-written shim,
// and processes racing to extract it all end up using the one that won.
using System.Security.Cryptography;
using System.Text;

namespace Casparian;

internal static class Shim
{
    public const string EntryFile = "bridge_shim.py";
    /// <summary>The warm guests' fork server, beside the entry file.</summary>
    public const string ZygoteFile = "zygote.py";

    // Logical resource names are "shim/<file>" (casparian.csproj).
    private static readonly Lazy<(string Name, byte[] Content)[]> Files = new(Load);

    /// <summary>The versioned directory name, e.g. "0.1.0-1a2b3c4d": the version plus the first 8 hex of the content hash.</summary>
    public static string DirectoryName { get; } = $"{Program.Version}-{ContentHash()[..8]}";

    /// <summary>
    /// Path of bridge_shim.py under <paramref name="shimRoot"/> (HOME/shim: Config.ShimDir), extracting
    /// it first if it is missing or differs from the embedded copy. Safe under concurrent first use
    /// by several processes. Cheap enough to call per job (it compares about 60 KB), which also
    /// repairs a copy someone edited or truncated.
    /// </summary>
    public static string Ensure(string shimRoot)
    {
        string root = Path.GetFullPath(shimRoot);
        string dir = Path.Combine(root, DirectoryName);
        if (!Matches(dir)) Extract(root, dir);
        return Path.Combine(dir, EntryFile);
    }

    private static void Extract(string root, string dir)
    {
        Directory.CreateDirectory(root);
        string temp = Path.Combine(root, $".tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temp);
        try
        {
            foreach (var (name, content) in Files.Value) File.WriteAllBytes(Path.Combine(temp, name), content);
            for (int attempt = 0; ; attempt++)
            {
                try
                {
                    Directory.Move(temp, dir);
                    return;
                }
                catch (IOException) when (Directory.Exists(dir))
                {
                    // Another process got there first, or a damaged copy sits in the way.
                    if (Matches(dir)) return;
                    if (attempt > 0) throw;
                    string stale = Path.Combine(root, $".stale-{Guid.NewGuid():N}");
                    try { Directory.Move(dir, stale); }
                    catch (IOException) { continue; }
                    Directory.Delete(stale, recursive: true);
                }
            }
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    private static bool Matches(string dir)
    {
        foreach (var (name, content) in Files.Value)
        {
            string path = Path.Combine(dir, name);
            try
            {
                if (new FileInfo(path).Length != content.Length || !File.ReadAllBytes(path).AsSpan().SequenceEqual(content)) return false;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return false;
            }
        }
        return true;
    }

    private static (string, byte[])[] Load()
    {
        var assembly = typeof(Shim).Assembly;
        var files = new List<(string, byte[])>();
        foreach (string resource in assembly.GetManifestResourceNames().Order(StringComparer.Ordinal))
        {
            if (!resource.StartsWith("shim/", StringComparison.Ordinal)) continue;
            using var stream = assembly.GetManifestResourceStream(resource)!;
            using var copy = new MemoryStream();
            stream.CopyTo(copy);
            files.Add((resource["shim/".Length..], copy.ToArray()));
        }
        if (!files.Exists(f => f.Item1 == EntryFile))
            throw new InvalidOperationException($"the binary carries no shim/{EntryFile} resource (casparian.csproj embeds shim/*.py)");
        return [.. files];
    }

    private static string ContentHash()
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (name, content) in Files.Value)
        {
            hash.AppendData(Encoding.UTF8.GetBytes(name + "\0"));
            hash.AppendData(content);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}
