// `store copy` (issue 16) between real stores: an SQLite file with rows of every kind copied into a
// new PostgreSQL database, then both read back through IJobStore.Export and compared row by row.
using Xunit;

namespace Casparian.Tests;

public sealed class StoreCopyTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private static readonly string[] Any = ["*"];

    [PgFact]
    public void StoreCopy_SqliteToPostgres_EveryRowOfEveryKindArrivesWithItsIds_AndNewIdsFollow()
    {
        using var sqlite = JobStores.Open(Defaults.Store(_dir.File("jobs.db")));
        sqlite.RegisterParser(new ParserRecord
        {
            Name = "p", Version = "1.0", Source = "def parse(p): pass\n", EnvHash = Hashes.SystemEnv, SourceHash = Hashes.Sha256Hex("s"),
            ArtifactHash = "a", Archive = [1, 2, 3], EntryModule = "parser.py", TopicsJson = """[{"topic":"t"}]""",
        });
        sqlite.RecordSources([new(new SourceStat("/in/0", 1, 2), "h0"), new(new SourceStat("/in/1", 3, 4), "h1")]);
        sqlite.RecordSources([new(new SourceStat("/in/0", 5, 6), "h0b")]);
        sqlite.EnqueueMany([.. Enumerable.Range(0, 12).Select(i => new NewJob("p", "1.0", $"/in/{i}", $"h{i}", i % 3))]);
        var claimed = sqlite.Claim("w", Any, 6);
        sqlite.Complete(claimed[0].Id, "w", new Dictionary<string, long> { ["rows"] = 7 }, [new() { ["topic"] = "t", ["uri"] = "file:///o.parquet" }], "parsed", out _);
        sqlite.Fail(claimed[1].Id, "w", "bad", transient: false);
        sqlite.Fail(claimed[2].Id, "w", "busy", transient: true);
        sqlite.Cancel(claimed[3].Id);
        sqlite.RecordQuarantine(claimed[0].Id, [new QuarantineCount("t", "type", 2)]);
        sqlite.RecordTopicSchema("t", """[{"name":"id","type":"int64"}]""", claimed[0].Id);

        string url = PgServer.Shared.NewDatabase();
        using var pg = JobStores.Open(Defaults.Store(url));
        var (parsers, jobs, sources, versions, outputs) = StoreCopy.Run(sqlite, pg);
        // Two paths recorded (one twice), one more by the completion: 3 sources with 4 versions.
        Assert.Equal((1, 12L, 3L, 4L, 1L), (parsers, jobs, sources, versions, outputs));

        var want = sqlite.Export(5).ToList();
        var got = pg.Export(5).ToList();
        Assert.Equal(1, want.Sum(r => r.Quarantine.Count));
        Assert.Equal(1, want.Sum(r => r.Schemas.Count));
        Assert.Equal(want.SelectMany(r => r.Jobs), got.SelectMany(r => r.Jobs));
        Assert.Equal(want.SelectMany(r => r.Sources), got.SelectMany(r => r.Sources));
        Assert.Equal(want.SelectMany(r => r.Versions), got.SelectMany(r => r.Versions));
        Assert.Equal(want.SelectMany(r => r.Outputs), got.SelectMany(r => r.Outputs));
        Assert.Equal(want.SelectMany(r => r.Quarantine), got.SelectMany(r => r.Quarantine));
        Assert.Equal(want.SelectMany(r => r.Schemas), got.SelectMany(r => r.Schemas));
        var (p1, p2) = (Assert.Single(want.SelectMany(r => r.Parsers)), Assert.Single(got.SelectMany(r => r.Parsers)));
        Assert.Equal(p1 with { Archive = null }, p2 with { Archive = null });
        Assert.Equal(p1.Archive, p2.Archive);
        Assert.Equal(sqlite.Counts(), pg.Counts());

        // New rows follow the copied ids; the copied queue is claimable in the same order.
        Assert.Equal(13, pg.Enqueue(new NewJob("p", "1.0", "/in/new", "hn")));
        Assert.Equal(sqlite.Claim("w2", Any, 20).Select(j => j.Id), pg.Claim("w2", Any, 20).Where(j => j.Id <= 12).Select(j => j.Id));
        // Copying again into the same store is refused.
        Assert.Contains("is not empty", Assert.Throws<InputException>(() => StoreCopy.Run(sqlite, pg)).Message);
        Assert.Contains("writes into a PostgreSQL store", Assert.Throws<InputException>(() => StoreCopy.Run(pg, sqlite)).Message);
    }
}
