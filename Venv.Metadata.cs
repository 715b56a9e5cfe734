// The environments' metadata file and least-recently-used eviction (layout and locking: Venv.cs).
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Casparian;

internal sealed record VenvEntry
{
    [JsonPropertyName("env_hash")] public required string EnvHash { get; init; }
    [JsonPropertyName("created_at")] public required DateTimeOffset CreatedAt { get; init; }
    [JsonPropertyName("last_used")] public required DateTimeOffset LastUsed { get; set; }
    [JsonPropertyName("size_bytes")] public required long SizeBytes { get; init; }
}

/// <summary>{venvs}/.metadata.json: a small list (tens of entries), searched linearly.</summary>
internal sealed record VenvMetadata
{
    [JsonPropertyName("entries")] public List<VenvEntry> Entries { get; init => field = value ?? []; } = [];
}

[JsonSourceGenerationOptions(WriteIndented = true)]
[JsonSerializable(typeof(VenvMetadata))]
internal sealed partial class VenvJson : JsonSerializerContext;

internal sealed partial class EnvManager
{
    public const string MetadataFile = ".metadata.json";

    private string MetadataPath => Path.Combine(_root, MetadataFile);

    /// <summary>The metadata as on disk; an absent or unreadable file reads as empty (eviction re-learns what is there).</summary>
    public VenvMetadata ReadMetadata()
    {
        try
        {
            using var stream = File.OpenRead(MetadataPath);
            return JsonSerializer.Deserialize(stream, VenvJson.Default.VenvMetadata) ?? new VenvMetadata();
        }
        catch (FileNotFoundException) { return new VenvMetadata(); }
        catch (DirectoryNotFoundException) { return new VenvMetadata(); }
        catch (JsonException) { return new VenvMetadata(); }
    }

    /// <summary>
    /// Read-modify-write of the metadata under .locks/metadata.lock; written to a temp file and renamed
    /// over. Not fsynced: the file is advisory (eviction re-learns sizes from disk), the rename is what
    /// keeps readers from ever seeing half a file.
    /// </summary>
    private void UpdateMetadata(Action<VenvMetadata> change)
    {
        Directory.CreateDirectory(LocksDir);
        using var held = LockMetadata();
        var metadata = ReadMetadata();
        change(metadata);
        string temp = MetadataPath + ".tmp-" + Environment.ProcessId + "-" + Environment.CurrentManagedThreadId;
        using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write))
        {
            JsonSerializer.Serialize(stream, metadata, VenvJson.Default.VenvMetadata);
        }
        File.Move(temp, MetadataPath, overwrite: true);
    }

    private FileStream LockMetadata()
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            if (TryLock("metadata", exclusive: true) is { } held) return held;
            if (DateTime.UtcNow > deadline) throw VenvThrow.Metadata_LockTimeout(Path.Combine(LocksDir, "metadata.lock"));
            Thread.Sleep(Random.Shared.Next(5, 25));
        }
    }

    /// <summary>Marks an environment used now; adds its entry if a crash lost it.</summary>
    private void Touch(string hash)
    {
        var now = DateTimeOffset.UtcNow;
        UpdateMetadata(m =>
        {
            if (m.Entries.Find(e => e.EnvHash == hash) is { } entry) entry.LastUsed = now;
            else m.Entries.Add(new VenvEntry { EnvHash = hash, CreatedAt = now, LastUsed = now, SizeBytes = DirSize(EnvDir(hash)) });
        });
    }

    private List<string> Evict(string? keep)
    {
        if (!Directory.Exists(_root)) return [];
        Directory.CreateDirectory(LocksDir);
        var evicted = new List<string>();
        var trash = new List<string>();
        UpdateMetadata(m =>
        {
            // The disk is the truth: drop entries whose directory is gone, learn directories without one.
            m.Entries.RemoveAll(e => !Directory.Exists(EnvDir(e.EnvHash)));
            foreach (var dir in Directory.EnumerateDirectories(_root))
            {
                string name = Path.GetFileName(dir);
                if (!IsHash(name) || m.Entries.Exists(e => e.EnvHash == name)) continue;
                var seen = new DateTimeOffset(Directory.GetLastWriteTimeUtc(dir), TimeSpan.Zero);
                m.Entries.Add(new VenvEntry { EnvHash = name, CreatedAt = seen, LastUsed = seen, SizeBytes = DirSize(dir) });
            }

            long total = m.Entries.Sum(e => e.SizeBytes);
            foreach (var entry in m.Entries.OrderBy(e => e.LastUsed).ToList())
            {
                if (total <= options.MaxBytes) break;
                if (entry.EnvHash == keep) continue;
                // Never blocks: a held lock means a lease (or a build) somewhere, so the environment stays.
                using var exclusive = TryLock(entry.EnvHash, exclusive: true);
                if (exclusive is null) continue;
                trash.Add(Trash(EnvDir(entry.EnvHash), entry.EnvHash));
                m.Entries.Remove(entry);
                total -= entry.SizeBytes;
                evicted.Add(entry.EnvHash);
            }
        });

        // Leftovers of crashed processes: trash is never used again; a build dir whose lock we can take
        // has no builder any more.
        foreach (var dir in Directory.EnumerateDirectories(_root, ".trash-*")) trash.Add(dir);
        foreach (var dir in Directory.EnumerateDirectories(_root, ".build-*"))
        {
            string name = Path.GetFileName(dir);
            if (name.Length < ".build-".Length + 64 || !IsHash(name.Substring(".build-".Length, 64))) continue;
            using var exclusive = TryLock(name.Substring(".build-".Length, 64), exclusive: true);
            if (exclusive is not null) DeleteDir(dir);
        }
        foreach (var dir in trash.Distinct(StringComparer.Ordinal)) DeleteDir(dir);
        foreach (string hash in evicted) Evicted?.Invoke(EnvDir(hash));
        return evicted;
    }
}
