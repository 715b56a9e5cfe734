// `casparian store copy` (issue 16): every row of one store into another, empty one, keeping ids, so a
// queue on SQLite moves to PostgreSQL with its parsers, jobs (in every state), file catalog,
// quarantine counts and schema registry. Rows
// travel in chunks (StoreRows), so a large store is never held whole in memory. A store reads its rows
// with Export and writes them with Import; Import refuses a store that holds anything already.
namespace Casparian;

/// <summary>One source's catalog row (Store.Catalog.cs), as stored.</summary>
internal readonly record struct SourceRow(string Path, string ContentHash, long Size, long MtimeUs, long UpdatedAtMs);

/// <summary>One row of a source's version history, with its id.</summary>
internal readonly record struct SourceVersionRow(long Id, string Path, string ContentHash, long Size, long SeenAtMs);

/// <summary>One current output, with the time it became current.</summary>
internal readonly record struct OutputRow(CurrentOutput Output, long UpdatedAtMs);

/// <summary>A chunk of a store's rows; each list may be empty.</summary>
internal sealed record StoreRows
{
    public List<ParserRecord> Parsers { get; init; } = [];
    public List<JobRecord> Jobs { get; init; } = [];
    public List<SourceRow> Sources { get; init; } = [];
    public List<SourceVersionRow> Versions { get; init; } = [];
    public List<OutputRow> Outputs { get; init; } = [];
    /// <summary>Quarantine counts (Store.Contracts.cs), by job.</summary>
    public List<(long JobId, QuarantineCount Count)> Quarantine { get; init; } = [];
    /// <summary>The schema registry's versions.</summary>
    public List<TopicSchemaVersion> Schemas { get; init; } = [];

    public int Count => Parsers.Count + Jobs.Count + Sources.Count + Versions.Count + Outputs.Count + Quarantine.Count + Schemas.Count;
}

internal static class StoreCopy
{
    /// <summary>Rows per chunk read and written.</summary>
    public const int Chunk = 5000;

    /// <summary>Copies every row of <paramref name="from"/> into the empty <paramref name="to"/>; returns how many of each kind.</summary>
    public static (int Parsers, long Jobs, long Sources, long Versions, long Outputs) Run(IJobStore from, IJobStore to)
    {
        int parsers = 0;
        long jobs = 0, sources = 0, versions = 0, outputs = 0;
        to.InTransaction(() =>
        {
            to.BeginImport();
            foreach (var rows in from.Export(Chunk))
            {
                to.Import(rows);
                parsers += rows.Parsers.Count;
                jobs += rows.Jobs.Count;
                sources += rows.Sources.Count;
                versions += rows.Versions.Count;
                outputs += rows.Outputs.Count;
            }
            to.EndImport();
            return 0;
        });
        return (parsers, jobs, sources, versions, outputs);
    }
}

internal static class StoreCopyThrow
{
    public static InputException Input_NotEmpty(string location, long jobs, long parsers) =>
        new($"job store {location} is not empty ({jobs} job(s), {parsers} parser(s)); `store copy` writes only into a new, empty store: give another database");
    public static InputException Input_CannotImport(string location) =>
        new($"job store {location} is an SQLite file; `store copy` writes into a PostgreSQL store (--to postgresql://…); an SQLite store is copied by copying its file while no sentinel runs");
    public static InputException Input_SameStore(string location) =>
        new($"`store copy` from {location} to itself: give a different --to");
}
