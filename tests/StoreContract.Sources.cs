// The store's contract for sources, routing rules and unmatched files (issue 19): part of
// JobStoreContract, so every backend (SQLite here, PostgreSQL in its own subclass) runs these too.
using Xunit;

namespace Casparian.Tests;

public abstract partial class JobStoreContract
{
    [Fact]
    public void Store_AddSource_KeepsEveryFieldAndRefusesASecondOfTheSameName()
    {
        using (var store = Open())
        {
            Assert.True(store.AddSource(new WatchSource("drop", "/data/drop", Recursive: true, ["**/*.tmp", "old/**"])));
            Assert.True(store.AddSource(new WatchSource("alpha", "/data/alpha", Recursive: false, [])));
            Assert.False(store.AddSource(new WatchSource("drop", "/elsewhere", Recursive: false, [])));
        }
        using var reopened = Open();
        Assert.Equal(
            [new WatchSource("alpha", "/data/alpha", false, []), new WatchSource("drop", "/data/drop", true, ["**/*.tmp", "old/**"])],
            reopened.ListSources());
    }

    [Fact]
    public void Store_AddRule_NumbersRulesInOrderAndKeepsAnOptionalVersion()
    {
        using var store = Open();
        store.AddSource(new WatchSource("drop", "/data/drop", true, []));
        long first = store.AddRule(new RoutingRule(0, "drop", "**/*.csv", "sales", null, 0));
        long second = store.AddRule(new RoutingRule(99, "drop", "**/*.jsonl", "logs", "2.1.0", -5));
        Assert.True(second > first);
        Assert.Equal(
            [new RoutingRule(first, "drop", "**/*.csv", "sales", null, 0), new RoutingRule(second, "drop", "**/*.jsonl", "logs", "2.1.0", -5)],
            store.ListRules());
        Assert.True(store.RemoveRule(first));
        Assert.False(store.RemoveRule(first));
        Assert.Equal([second], store.ListRules().Select(r => r.Id));
        // Ids are not reused: a rule added after a removal gets a new one.
        long third = store.AddRule(new RoutingRule(0, "drop", "*", "x", null, 0));
        Assert.True(third > second);
        // Not even the highest one's, once removed: `rule rm ID` in a script never hits a newer rule.
        Assert.True(store.RemoveRule(third));
        Assert.True(store.AddRule(new RoutingRule(0, "drop", "*", "x", null, 0)) > third);
    }

    [Fact]
    public void Store_SetUnmatched_ReplacesTheSourcesListAndLeavesOtherSourcesAlone()
    {
        using var store = Open();
        store.SetUnmatched("a", [("/d/a/x.bin", 3), ("/d/a/y.bin", 4)]);
        store.SetUnmatched("b", [("/d/b/z.bin", 5)]);
        Assert.Equal([("/d/a/x.bin", 3L), ("/d/a/y.bin", 4L)], store.ListUnmatched("a").Select(u => (u.Path, u.Size)));
        Assert.Equal(Clock.GetUtcNow().ToUnixTimeMilliseconds(), store.ListUnmatched("a")[0].SeenAt.ToUnixTimeMilliseconds());
        store.SetUnmatched("a", [("/d/a/y.bin", 4)]);
        Assert.Equal(["/d/a/y.bin"], store.ListUnmatched("a").Select(u => u.Path));
        Assert.Equal(["/d/b/z.bin"], store.ListUnmatched("b").Select(u => u.Path));
        store.SetUnmatched("a", []);
        Assert.Empty(store.ListUnmatched("a"));
        Assert.Empty(store.ListUnmatched("none"));
    }

    [Fact]
    public void Store_RemoveSource_TakesItsRulesAndUnmatchedFilesWithIt()
    {
        using var store = Open();
        store.AddSource(new WatchSource("a", "/d/a", false, []));
        store.AddSource(new WatchSource("b", "/d/b", false, []));
        store.AddRule(new RoutingRule(0, "a", "*.csv", "p", null, 0));
        long kept = store.AddRule(new RoutingRule(0, "b", "*.csv", "p", null, 0));
        store.SetUnmatched("a", [("/d/a/x", 1)]);
        store.SetUnmatched("b", [("/d/b/x", 1)]);
        Assert.True(store.RemoveSource("a"));
        Assert.False(store.RemoveSource("a"));
        Assert.Equal(["b"], store.ListSources().Select(s => s.Name));
        Assert.Equal([kept], store.ListRules().Select(r => r.Id));
        Assert.Empty(store.ListUnmatched("a"));
        Assert.Single(store.ListUnmatched("b"));
    }
    [Fact]
    public void Store_TopicPrefix_IsKeptOnTheRule_CarriedByTheJobToItsClaim_AndOntoTheCurrentOutput()
    {
        using (var store = Open())
        {
            store.AddSource(new WatchSource("drop", "/data/drop", true, []));
            long crm = store.AddRule(new RoutingRule(0, "drop", "crm/*.csv", "p", null, 0) { TopicPrefix = "crm_" });
            long plain = store.AddRule(new RoutingRule(0, "drop", "*.csv", "p", null, 0));
            Assert.Equal([("crm_", crm), ("", plain)], store.ListRules().Select(r => (r.TopicPrefix, r.Id)));

            long id = store.Enqueue(Job("/in/a") with { TopicPrefix = "crm_" });
            store.Enqueue(Job("/in/b"));
            Assert.Equal("crm_", store.Get(id)!.TopicPrefix);
            var claimed = store.Claim("w", Any, 2);
            Assert.Equal([(id, "crm_"), (id + 1, "")], claimed.Select(j => (j.Id, j.TopicPrefix)));
            foreach (var j in claimed) Assert.True(store.Complete(j.Id, "w", NoMetrics, Artifact("crm_t", $"file:///out/{j.Id}.parquet"), null, out _));
            Assert.Equal("crm_", store.GetOutput("p", "/in/a")!.TopicPrefix);
            Assert.Equal("", store.GetOutput("p", "/in/b")!.TopicPrefix);
            Assert.Equal("crm_", store.LookupSources("p", "1.0", ["/in/a"], "")["/in/a"].Output!.TopicPrefix);

            // The same file routed again under another prefix: its job's prefix becomes the current output's.
            store.Enqueue(Job("/in/a") with { TopicPrefix = "erp_" });
            RunOne(store);
            Assert.Equal("erp_", store.GetOutput("p", "/in/a")!.TopicPrefix);
            Assert.Equal(["erp_"], store.OutputsNotFrom("p", "2.0").Where(o => o.SourcePath == "/in/a").Select(o => o.TopicPrefix));
        }
        using var reopened = Open();
        Assert.Equal(["crm_", ""], reopened.ListRules().Select(r => r.TopicPrefix));
    }

    [Fact]
    public void Store_LookupSources_PendingCountsOnlyAJobUnderTheAskedTopicPrefix()
    {
        using var store = Open();
        var a = new SourceStat("/in/a", 1, 1);
        store.RecordSources([new(a, "hash-/in/a")]);
        store.Enqueue(Job("/in/a") with { TopicPrefix = "a_" });
        Assert.True(store.LookupSources("p", "1.0", ["/in/a"], "a_")["/in/a"].Pending);
        Assert.False(store.LookupSources("p", "1.0", ["/in/a"], "b_")["/in/a"].Pending);
        Assert.False(store.LookupSources("p", "1.0", ["/in/a"], "")["/in/a"].Pending);

        // What the scan decides from it: a rule with prefix b_ still queues the file (same size and mtime, so
        // the catalog's hash is taken and no file is read); the rule whose job is pending does not.
        var parser = new ParserRecord { Name = "p", Version = "1.0", Source = "", EnvHash = "system", SourceHash = "s", ArtifactHash = "x" };
        Assert.Equal(["/in/a"], Catalog.Plan(store, parser, [a], force: false, record: false, topicPrefix: "b_").ToQueue.Select(q => q.Path));
        Assert.Equal(["/in/a"], Catalog.Plan(store, parser, [a], force: false, record: false, topicPrefix: "a_").Unchanged);

        // The a_ job completes: it is the current output, so under a_ the file is done; a b_ job queued now is
        // pending under b_ only, even though the current output (a_) is from this version and content.
        var claimed = Assert.Single(store.Claim("w", Any, 1));
        Assert.True(store.Complete(claimed.Id, "w", NoMetrics, Artifact("a_t", "file:///out/a_t/1.parquet"), null, out _));
        Assert.Equal(["/in/a"], Catalog.Plan(store, parser, [a], force: false, record: false, topicPrefix: "a_").Unchanged);
        store.Enqueue(Job("/in/a") with { TopicPrefix = "b_" });
        Assert.True(store.LookupSources("p", "1.0", ["/in/a"], "b_")["/in/a"].Pending);
        Assert.Equal(["/in/a"], Catalog.Plan(store, parser, [a], force: false, record: false, topicPrefix: "b_").Unchanged);
        Assert.Equal(["/in/a"], Catalog.Plan(store, parser, [a], force: false, record: false, topicPrefix: "c_").ToQueue.Select(q => q.Path));
    }

    [Fact]
    public void Store_SourceStatsUnder_ReturnsTheFolderAndItsSubfoldersButNotASiblingWithTheSamePrefix()
    {
        using var store = Open();
        store.RecordSources([
            new(new SourceStat("/data/in/a.csv", 10, 1_000_001), "h1"),
            new(new SourceStat("/data/in/sub/deep/b.csv", 20, 2_000_002), "h2"),
            // Siblings whose paths start with "/data/in": a longer name, and names sorting just around "/data/in/".
            new(new SourceStat("/data/in2/c.csv", 30, 3), "h3"),
            new(new SourceStat("/data/in-x/d.csv", 40, 4), "h4"),
            new(new SourceStat("/data/in.bak", 50, 5), "h5"),
            new(new SourceStat("/data/in", 60, 6), "h6"),
            new(new SourceStat("/data/in0/f.csv", 80, 8), "h8"),
            new(new SourceStat("/data/other/e.csv", 70, 7), "h7"),
        ]);
        static List<(string, long, long)> Under(IJobStore store, string dir) =>
            [.. store.SourceStatsUnder(dir).OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => (e.Key, e.Value.Size, e.Value.MtimeUs))];
        (string, long, long)[] expected = [("/data/in/a.csv", 10, 1_000_001), ("/data/in/sub/deep/b.csv", 20, 2_000_002)];
        Assert.Equal(expected, Under(store, "/data/in"));
        // A trailing '/' names the same folder.
        Assert.Equal(expected, Under(store, "/data/in/"));
        Assert.Equal([("/data/in2/c.csv", 30L, 3L)], Under(store, "/data/in2"));
        Assert.Empty(store.SourceStatsUnder("/data/none"));

        // A changed size and mtime is what the next read returns.
        store.RecordSources([new(new SourceStat("/data/in/a.csv", 11, 1_500_000), "h1b")]);
        Assert.Equal((11L, 1_500_000L), store.SourceStatsUnder("/data/in")["/data/in/a.csv"]);
    }
}
