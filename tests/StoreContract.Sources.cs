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
        Assert.True(store.AddRule(new RoutingRule(0, "drop", "*", "x", null, 0)) > second);
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
            Assert.Equal("crm_", store.LookupSources("p", "1.0", ["/in/a"])["/in/a"].Output!.TopicPrefix);

            // The same file routed again under another prefix: its job's prefix becomes the current output's.
            store.Enqueue(Job("/in/a") with { TopicPrefix = "erp_" });
            RunOne(store);
            Assert.Equal("erp_", store.GetOutput("p", "/in/a")!.TopicPrefix);
            Assert.Equal(["erp_"], store.OutputsNotFrom("p", "2.0").Where(o => o.SourcePath == "/in/a").Select(o => o.TopicPrefix));
        }
        using var reopened = Open();
        Assert.Equal(["crm_", ""], reopened.ListRules().Select(r => r.TopicPrefix));
    }
}
