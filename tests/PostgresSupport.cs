// PostgreSQL in the tests (issue 16): the server is PgServer.cs (shared with bench/). One shared
// server serves the store tests, each in a database of its own; a test that restarts the server
// starts its own. The tests fail when no server can be started; CASPARIAN_TEST_PG=skip (set
// explicitly) makes PgFact tests skip instead.
using Xunit;

namespace Casparian.Tests;

/// <summary>A test that needs PostgreSQL: skipped only when CASPARIAN_TEST_PG=skip is set explicitly, failing otherwise.</summary>
public sealed class PgFactAttribute : FactAttribute
{
    public PgFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("CASPARIAN_TEST_PG") == "skip") Skip = "CASPARIAN_TEST_PG=skip";
    }
}

public sealed class PostgresJobStoreContractTests : JobStoreContract
{
    private readonly Lazy<string> _url = new(() => PgServer.Shared.NewDatabase());

    private protected override StoreOptions Fresh => Defaults.Store(_url.Value);

    private protected override IJobStore Open(StoreOptions options) => JobStores.Open(options);
}
