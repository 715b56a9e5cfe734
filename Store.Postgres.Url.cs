// postgresql://USER[:PASS]@HOST[:PORT]/DB[?sslmode=…&synchronous_commit=off] → an Npgsql data
// source. The password may also come from PGPASSWORD (Npgsql reads it), so it need not sit in a config
// file or a process list; messages name the store without it.
//
// synchronous_commit=off is the one durability trade the store offers, and only when the URL says so:
// a commit returns before its WAL reaches the disk (PostgreSQL's own setting, for this store's
// connections only), as SQLite's synchronous=NORMAL does. A crash of the database server or its
// machine may then lose the last fraction of a second of commits (at most 3 x wal_writer_delay): jobs
// claimed or concluded in it run again. Nothing is corrupted, and a sentinel's crash loses nothing.
using Npgsql;

namespace Casparian;

internal sealed record PostgresUrl(string Host, int Port, string Database, string? User, string? Password, string? SslMode, bool SynchronousCommit = true)
{
    /// <summary>How messages name the store: the URL without the password (with the durability trade, when made).</summary>
    public string Display => $"postgresql://{(User is null ? "" : Uri.EscapeDataString(User) + "@")}{Host}:{Port}/{Database}{(SynchronousCommit ? "" : "?synchronous_commit=off")}";

    public static bool IsPostgres(string db) =>
        db.StartsWith("postgresql://", StringComparison.OrdinalIgnoreCase) || db.StartsWith("postgres://", StringComparison.OrdinalIgnoreCase);

    public static PostgresUrl Parse(string db)
    {
        if (!Uri.TryCreate(db, UriKind.Absolute, out var uri) || uri.Host.Length == 0)
            throw PostgresThrow.Input_BadUrl(db, "it is not a URL with a host");
        string database = Uri.UnescapeDataString(uri.AbsolutePath.TrimStart('/'));
        if (database.Length == 0 || database.Contains('/'))
            throw PostgresThrow.Input_BadUrl(db, "it names no database (postgresql://USER[:PASS]@HOST[:PORT]/DB)");
        string? user = null, password = null;
        if (uri.UserInfo.Length > 0)
        {
            int colon = uri.UserInfo.IndexOf(':');
            user = Uri.UnescapeDataString(colon < 0 ? uri.UserInfo : uri.UserInfo[..colon]);
            if (colon >= 0) password = Uri.UnescapeDataString(uri.UserInfo[(colon + 1)..]);
        }
        string? sslMode = null;
        bool synchronousCommit = true;
        foreach (var pair in uri.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = pair.IndexOf('=');
            string key = eq < 0 ? pair : pair[..eq], value = eq < 0 ? "" : Uri.UnescapeDataString(pair[(eq + 1)..]);
            if (key == "sslmode") sslMode = value;
            else if (key == "synchronous_commit")
                synchronousCommit = value switch
                {
                    "on" => true,
                    "off" => false,
                    _ => throw PostgresThrow.Input_BadUrl(db, $"synchronous_commit={value} is not on or off"),
                };
            else throw PostgresThrow.Input_BadUrl(db, $"the option '{key}' is not supported (only sslmode and synchronous_commit)");
        }
        return new PostgresUrl(uri.Host.Trim('[', ']'), uri.IsDefaultPort || uri.Port < 0 ? 5432 : uri.Port, database, user, password, sslMode, synchronousCommit);
    }

    /// <summary>A data source for one store instance: small pool, the lock timeout as PostgreSQL's lock_timeout.</summary>
    public NpgsqlDataSource DataSource(TimeSpan lockTimeout)
    {
        var cs = new NpgsqlConnectionStringBuilder
        {
            Host = Host,
            Port = Port,
            Database = Database,
            Username = User,
            Password = Password,
            Timeout = 5,
            CommandTimeout = 60,
            MaxAutoPrepare = 64,
            AutoPrepareMinUsages = 2,
            MaxPoolSize = 4,
            ApplicationName = "casparian",
            Options = $"-c lock_timeout={(long)Math.Max(1, lockTimeout.TotalMilliseconds)}" + (SynchronousCommit ? "" : " -c synchronous_commit=off"),
        };
        if (SslMode is { } mode)
        {
            if (!Enum.TryParse<SslMode>(mode.Replace("-", ""), ignoreCase: true, out var ssl)) throw PostgresThrow.Input_BadUrl(Display, $"sslmode={mode} is not one of disable, allow, prefer, require, verify-ca, verify-full");
            cs.SslMode = ssl;
        }
        var builder = new NpgsqlSlimDataSourceBuilder(cs.ConnectionString);
        builder.EnableArrays();
        return builder.Build();
    }
}

internal static class PostgresThrow
{
    public static InputException Input_BadUrl(string db, string why) =>
        new($"job store '{Redact(db)}': {why}; give postgresql://USER[:PASS]@HOST[:PORT]/DB, or a file path for an SQLite store");

    /// <summary>The URL with any password replaced, for messages.</summary>
    public static string Redact(string db)
    {
        int scheme = db.IndexOf("://", StringComparison.Ordinal), at = db.LastIndexOf('@');
        if (scheme < 0 || at < scheme) return db;
        int colon = db.IndexOf(':', scheme + 3);
        return colon > 0 && colon < at ? db[..(colon + 1)] + "***" + db[at..] : db;
    }
}
