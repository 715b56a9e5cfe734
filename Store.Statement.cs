// A prepared statement driven through SQLitePCL directly, for the store's hot paths (transaction
// control, enqueue, claim, complete). ADO.NET's SqliteCommand looks every parameter up by name and
// builds a data reader on each execution; measured, that cost as much as SQLite's own work there.
using System.Text;
using Microsoft.Data.Sqlite;
using SQLitePCL;

namespace Casparian;

/// <summary>Bound by position (1-based, in the order the SQL names them); owned by the store's connection.</summary>
internal sealed class SqliteStatement : IDisposable
{
    private const int StackLimit = 1024;
    private readonly sqlite3 _db;
    private readonly sqlite3_stmt _stmt;

    /// <param name="parameters">The SQL's parameter names in order of first appearance: checked here, so binding by position cannot drift from the text.</param>
    public SqliteStatement(sqlite3 db, string sql, params string[] parameters)
    {
        _db = db;
        int rc = raw.sqlite3_prepare_v2(db, sql, out _stmt);
        if (rc != raw.SQLITE_OK) throw Error(rc);
        int count = raw.sqlite3_bind_parameter_count(_stmt);
        var names = Enumerable.Range(1, count).Select(i => raw.sqlite3_bind_parameter_name(_stmt, i).utf8_to_string()).ToArray();
        if (!names.SequenceEqual(parameters))
        {
            _stmt.Dispose();
            throw new InvalidOperationException($"statement parameters are [{string.Join(", ", names)}], the code binds [{string.Join(", ", parameters)}]: {sql}");
        }
    }

    public SqliteStatement Bind(int index, long value)
    {
        Check(raw.sqlite3_bind_int64(_stmt, index, value));
        return this;
    }

    public SqliteStatement Bind(int index, string? value)
    {
        Check(value switch
        {
            null => raw.sqlite3_bind_null(_stmt, index),
            // An empty span would bind NULL; the string overload passes a terminated empty string.
            "" => raw.sqlite3_bind_text(_stmt, index, ""),
            _ when Encoding.UTF8.GetMaxByteCount(value.Length) <= StackLimit => BindSmall(index, value),
            _ => raw.sqlite3_bind_text(_stmt, index, value),
        });
        return this;
    }

    private int BindSmall(int index, string value)
    {
        // SQLitePCL binds a span as SQLITE_TRANSIENT: SQLite copies it before this returns.
        Span<byte> utf8 = stackalloc byte[StackLimit];
        int n = Encoding.UTF8.GetBytes(value, utf8);
        return raw.sqlite3_bind_text(_stmt, index, utf8[..n]);
    }

    /// <summary>True when a row is ready to read, false when the statement is done.</summary>
    public bool Step()
    {
        int rc = raw.sqlite3_step(_stmt);
        if (rc == raw.SQLITE_ROW) return true;
        if (rc == raw.SQLITE_DONE) return false;
        throw Error(rc);
    }

    /// <summary>Readies the statement for the next run (bindings stay; every run binds all of them again).</summary>
    public void Reset() => raw.sqlite3_reset(_stmt);

    /// <summary>Runs to completion and resets; returns the rows changed.</summary>
    public int Execute()
    {
        try
        {
            while (Step()) { }
            return raw.sqlite3_changes(_db);
        }
        finally
        {
            Reset();
        }
    }

    public long Int64(int column) => raw.sqlite3_column_int64(_stmt, column);

    public int Int32(int column) => (int)raw.sqlite3_column_int64(_stmt, column);

    public string Text(int column) => raw.sqlite3_column_text(_stmt, column).utf8_to_string();

    private void Check(int rc)
    {
        if (rc != raw.SQLITE_OK) throw Error(rc);
    }

    private SqliteException Error(int rc) =>
        new($"SQLite Error {rc}: '{raw.sqlite3_errmsg(_db).utf8_to_string()}'.", rc, raw.sqlite3_extended_errcode(_db));

    public void Dispose() => _stmt.Dispose();
}
