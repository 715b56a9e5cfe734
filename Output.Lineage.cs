// Lineage (issue 13): every row a job writes says where it came from. Four columns after the parser's:
//   _job_id       int64  the job (DISPATCH's job id; `run`: the file's position, from 1)
//   _source       utf8   the source path as queued
//   _source_hash  utf8   the SHA-256 (hex) of the source's content
//   _parser       utf8   name@version of the parser
// and the footer's key-value metadata repeats them (casparian.job_id, casparian.source, …). The
// string columns hold one value per job, so their arrays are built once per job at the largest batch
// length seen and handed out as zero-copy slices.
using Apache.Arrow;
using Apache.Arrow.Types;

namespace Casparian;

/// <summary>
/// Where a job's rows come from: the values of the lineage columns, and the (parser, source) that names
/// the job's file in each dataset directory (<see cref="SinkTarget.SourceFileName"/>).
/// </summary>
internal sealed record OutputSource(string ParserName, string? ParserVersion, string Path, string ContentHash)
{
    /// <summary>name@version, or the name alone when the version is unknown (an older sentinel).</summary>
    public string Parser => ParserVersion is { Length: > 0 } v ? $"{ParserName}@{v}" : ParserName;
}

/// <summary>The lineage columns of one job: their fields, their footer metadata, and their arrays for a batch.</summary>
internal sealed class LineageColumns(ulong jobId, OutputSource? source) : IDisposable
{
    public const string JobId = "_job_id";
    public const string Source = "_source";
    public const string SourceHash = "_source_hash";
    public const string Parser = "_parser";

    public static readonly string[] Names = [JobId, Source, SourceHash, Parser];

    public const string JobIdKey = "casparian.job_id";
    public const string SourceKey = "casparian.source";
    public const string SourceHashKey = "casparian.source_hash";
    public const string ParserKey = "casparian.parser";

    private readonly string[] _values = [source?.Path ?? "", source?.ContentHash ?? "", source?.Parser ?? ""];
    private readonly StringArray?[] _cached = new StringArray?[3];

    public static bool IsReserved(string column) => System.Array.IndexOf(Names, column) >= 0;

    public static IEnumerable<Field> Fields() =>
    [
        new Field(JobId, Int64Type.Default, nullable: false),
        new Field(Source, StringType.Default, nullable: false),
        new Field(SourceHash, StringType.Default, nullable: false),
        new Field(Parser, StringType.Default, nullable: false),
    ];

    public void AddMetadata(Dictionary<string, string> metadata)
    {
        metadata[JobIdKey] = jobId.ToString(System.Globalization.CultureInfo.InvariantCulture);
        metadata[SourceKey] = _values[0];
        metadata[SourceHashKey] = _values[1];
        metadata[ParserKey] = _values[2];
    }

    /// <summary>Puts the four columns for a batch of <paramref name="length"/> rows into <paramref name="arrays"/> from <paramref name="at"/> on.</summary>
    public void Fill(IArrowArray[] arrays, int at, int length, ScratchArrays scratch)
    {
        arrays[at] = scratch.Constant(unchecked((long)jobId), length);
        for (int i = 0; i < _values.Length; i++) arrays[at + 1 + i] = Repeat(i, length);
    }

    private IArrowArray Repeat(int column, int length)
    {
        var cached = _cached[column];
        if (cached is null || cached.Length < length)
        {
            cached?.Dispose();
            var builder = new StringArray.Builder();
            builder.Reserve(length);
            for (int i = 0; i < length; i++) builder.Append(_values[column]);
            _cached[column] = cached = builder.Build();
        }
        return cached.Length == length ? cached : ArrowArrayFactory.Slice(cached, 0, length);
    }

    public void Dispose()
    {
        foreach (var a in _cached) a?.Dispose();
    }
}
