// Parquet compression codecs by the names users write: the `compression` setting (the default for
// every topic) and a topic's own "compression" (TOPICS, [topics.NAME], DISPATCH sinks). One table,
// so the names a user may write, the error that lists them and what the footer shows agree.
using ParquetSharp;

namespace Casparian;

internal static class ParquetCodecs
{
    // Lz4 is LZ4_RAW in the file (ParquetSharp's Arrow writer), the LZ4 every current reader takes.
    private static readonly (string Name, Compression Codec)[] Table =
    [
        ("none", Compression.Uncompressed),
        ("snappy", Compression.Snappy),
        ("zstd", Compression.Zstd),
        ("lz4", Compression.Lz4),
        ("gzip", Compression.Gzip),
    ];

    /// <summary>"none, snappy, zstd, lz4 or gzip": for error messages and help.</summary>
    public static string Names { get; } = string.Join(", ", Table[..^1].Select(t => t.Name)) + " or " + Table[^1].Name;

    public static bool TryParse(string? text, out Compression codec)
    {
        foreach (var (name, c) in Table)
        {
            if (!string.Equals(name, text?.Trim(), StringComparison.OrdinalIgnoreCase)) continue;
            codec = c;
            return true;
        }
        codec = default;
        return false;
    }

    public static string Name(Compression codec)
    {
        foreach (var (name, c) in Table)
            if (c == codec) return name;
        return codec.ToString().ToLowerInvariant();
    }
}
