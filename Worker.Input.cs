// The input as the guest parsed it (issue 11 item 7). The hash taken at `job add` describes the file
// then; the file may change before the job runs. The worker hashes the file while the guest reads it
// and checks that its size and modification time were the same before the hash began and after the
// guest ended: then the hash is of the bytes the guest read, and the receipt carries it
// (content_hash). If they differ, the file is hashed again: the same bytes (rewritten with the same
// content) are fine; different ones fail the run as transient, and the retry parses and hashes anew.
using System.Security.Cryptography;

namespace Casparian;

internal sealed class InputSnapshot
{
    private readonly string _path;
    private readonly (long Length, long WriteTicks)? _before;

    private InputSnapshot(string path)
    {
        _path = path;
        _before = Stat(path);
    }

    /// <summary>Notes the file's size and modification time now, before the guest or the hash reads it.</summary>
    public static InputSnapshot Take(string path) => new(path);

    /// <summary>The hex SHA-256 of the file's bytes, streamed (the page cache serves the guest and us alike).</summary>
    public async Task<string> HashAsync(CancellationToken cancel)
    {
        await using var file = new FileStream(_path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
        byte[] hash = await SHA256.HashDataAsync(file, cancel).ConfigureAwait(false);
        return Convert.ToHexStringLower(hash);
    }

    /// <summary>
    /// Whether the file still holds what <paramref name="parsedHash"/> says: its size and modification
    /// time are those of the snapshot, or, when they are not, hashing it again gives the same hash.
    /// </summary>
    public async Task<bool> UnchangedAsync(string parsedHash, CancellationToken cancel)
    {
        if (_before is { } b && Stat(_path) is { } now && now == b) return true;
        try
        {
            return await HashAsync(cancel).ConfigureAwait(false) == parsedHash;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static (long, long)? Stat(string path)
    {
        var info = new FileInfo(path);
        return info.Exists ? (info.Length, info.LastWriteTimeUtc.Ticks) : null;
    }
}

/// <summary>Whether an exception is the disk being full (ENOSPC, EDQUOT): a transient failure, worth a retry once space is freed.</summary>
internal static class DiskFull
{
    private const int Enospc = 28, Edquot = 122;

    public static bool Is(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
        {
            if (e is IOException && (e.HResult & 0xFFFF) is Enospc or Edquot) return true;
            // ParquetSharp reports Arrow's IOError as text: "... [errno 28] No space left on device".
            if (e.Message.Contains("No space left on device", StringComparison.Ordinal) ||
                e.Message.Contains("Disk quota exceeded", StringComparison.Ordinal)) return true;
        }
        return false;
    }
}
