// The store commands (issue 16): `store migrate` brings a store to this build's schema, `store check`
// runs its consistency checks and shows who holds a lease, `store copy` moves every row of one store
// into a new PostgreSQL store. They work on both stores through IJobStore.
namespace Casparian;

internal static partial class Commands
{
    private static readonly Flag FromFlag = new("--from", "DB", "the store to copy: an SQLite file or a postgresql:// URL");
    private static readonly Flag ToFlag = new("--to", "DB", "the new, empty store to copy into: postgresql://USER[:PASS]@HOST[:PORT]/DB");

    private static readonly Command StoreMigrate = new("migrate", "create the store or bring its schema to this casparian's version",
        "store migrate [--db DB]", Config.Flags(Config.Db), args =>
        {
            args.RequirePositionals(0, 0);
            return WithStore(StoreFrom(args, create: true), store =>
            {
                Console.Out.WriteLine($"job store {store.Location}: {store.Check()[0]}");
                return 0;
            });
        });

    private static readonly Command StoreCheck = new("check", "check the store's consistency and show the sentinels' leases",
        "store check [--db DB]", Config.Flags(Config.Db), args =>
        {
            args.RequirePositionals(0, 0);
            return WithStore(StoreFrom(args, create: false), store =>
            {
                foreach (var line in store.Check()) Console.Out.WriteLine($"job store {store.Location}: {line}");
                var counts = store.Counts();
                Console.Out.WriteLine($"job store {store.Location}: ok; " + string.Join(", ", JobStates.All.Select(s => $"{Num(counts[s])} {s.Name().ToLowerInvariant()}")));
                return 0;
            });
        });

    private static readonly Command StoreCopyCommand = new("copy", "copy every job, parser and catalog row into a new PostgreSQL store",
        "store copy --from DB --to postgresql://… [--config FILE]", [FromFlag, ToFlag, .. Config.Flags()], args =>
        {
            args.RequirePositionals(0, 0);
            var config = Config.Load(args);
            string from = args.Require(FromFlag.Name), to = args.Require(ToFlag.Name);
            var fromOptions = StoreOptions(config, create: false) with { Db = from };
            var toOptions = StoreOptions(config, create: true) with { Db = to };
            if (string.Equals(from, to, StringComparison.Ordinal)) throw StoreCopyThrow.Input_SameStore(PostgresThrow.Redact(from));
            using var source = JobStores.Open(fromOptions);
            using var target = JobStores.Open(toOptions);
            var (parsers, jobs, sources, versions, outputs) = StoreCopy.Run(source, target);
            Console.Out.WriteLine($"copied {source.Location} to {target.Location}: {Num(parsers)} parser(s), {Num(jobs)} job(s), " +
                $"{Num(sources)} source(s) with {Num(versions)} version(s), {Num(outputs)} current output(s)");
            Console.Out.WriteLine($"point the sentinels, workers' commands and `job add` at it with --db {target.Location} (or CASPARIAN_DB); stop using {source.Location}");
            return 0;
        });

    private static readonly Command StoreGroup = Command.Group("store", "migrate, check and copy job stores (migrate|check|copy)", StoreMigrate, StoreCheck, StoreCopyCommand);
}
