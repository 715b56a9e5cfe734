// The SQLite sink (issue 13): `sqlite://FILE.db?table=NAME`, FILE under the output root (checked as the
// Parquet sinks are: no '..', no absolute path, real path inside the root or an allowed root, the
// database file itself included, since SQLite writes through a symlink where a rename would replace it).
//
// Staging. A topic's rows go, batch by batch, into a hidden staging database next to the target,
// ".{file}.{table}.tmp-{job}-{random}" (no journal, no sync: a crash just leaves it for the retry to
// delete), whose one table "rows" has the topic's columns plus the lineage columns. Nothing touches the
// target until the job succeeds, so a long job holds no lock on a database other jobs and readers share.
//
// Commit, in ONE transaction on the target (WAL, synchronous FULL, BEGIN IMMEDIATE; the staging
// database ATTACHed): the table is created if missing (declared types from the first batch, below) or
// given any column it lacks; then by mode
//   append  (default) the rows of the same parser name for the same _source are deleted, and the
//           staged rows inserted: one current set of rows per (parser, source), many sources per table;
//   replace every row is deleted, then the staged rows inserted;
//   error   the job fails if the table holds a row of another job (checked when the job starts too).
// A reader sees the source's old rows or its new ones, never both and never neither. An index on
// _source keeps the delete a probe however many sources the table holds. With NewestWins (workers),
// rows of a later job for the same source make the commit a no-op: an older job never replaces them.
// A topic this job no longer writes loses the source's rows in the superseded table in a transaction of
// its own (RemoveSuperseded), as a Parquet file of such a topic is deleted after the renames.
//
// The lineage columns are always written to SQLite (even with lineage off): supersede needs _source
// and _parser. The receipt's artifact uri is "sqlite:///ABS/FILE.db?table=NAME", which the store keeps
// as the current output and DISPATCH sends back as `supersedes`.
//
// Types (SQLite columns are dynamically typed; the declared type is what tools show):
//   bool → INTEGER 0/1; ints → INTEGER (uint64 beyond 2^63−1 → TEXT digits); floats → REAL (NaN → NULL,
//   as SQLite stores it); utf8 (JSON too) → TEXT; binary → BLOB; decimal → TEXT (exact digits, declared
//   DECIMAL_TEXT so no numeric affinity rounds it); date → TEXT 'YYYY-MM-DD' (DATE); timestamp → TEXT
//   'YYYY-MM-DD HH:MM:SS.ffffff', with 'Z' when zoned (values in UTC) (TIMESTAMP); time → TEXT
//   'HH:MM:SS.ffffff' (TIME); duration → INTEGER in its unit (the shim's is microseconds); dictionary →
//   its value; list, struct, map → TEXT JSON; null → NULL. Each form is one SQLite's date and JSON
//   functions read.
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Apache.Arrow;
using Apache.Arrow.Types;
using Microsoft.Data.Sqlite;

namespace Casparian;

/// <summary>A topic's SQLite destination: table <see cref="Table"/> of the database file <see cref="DbPath"/>.</summary>
internal sealed record SqliteTarget(string Topic, string Uri, string DbPath, string Table, SinkMode Mode)
{
    public const string Scheme = "sqlite://";
    private const int MaxTableLength = 128;
    private const string StageTable = "rows";
    /// <summary>Seconds a commit waits for another writer of the same database before it fails.</summary>
    private const int BusySeconds = 60;

    public static bool Is(string uri) => uri.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase);

    /// <summary>The receipt's uri: <c>sqlite:///ABS/PATH?table=NAME</c>, the path percent-escaped.</summary>
    public string ArtifactUri => Scheme + new Uri(DbPath).AbsolutePath + "?table=" + Table;

    /// <summary>Staging files of this (job, topic) start with this, whichever attempt made them.</summary>
    public string TempPrefix(ulong jobId) => $".{Path.GetFileName(DbPath)}.{Table}.tmp-{jobId}-";

    /// <summary>Resolves <c>sqlite://FILE?table=NAME</c>: FILE relative to the output root, NAME an SQL identifier.</summary>
    public static SqliteTarget Resolve(OutputOptions options, ulong jobId, string topic, string uri, SinkMode mode)
    {
        // A database file is local: under an s3:// output root there is no directory to put it in.
        if (S3Location.IsS3(options.Root)) throw OutputThrow.Sink_SqliteUnderS3(jobId, topic, uri, options.Root);
        string rest = uri[Scheme.Length..];
        int q = rest.IndexOf('?');
        string file = q < 0 ? rest : rest[..q];
        string? table = q >= 0 && rest[(q + 1)..] is var query && query.StartsWith("table=", StringComparison.Ordinal) ? query["table=".Length..] : null;
        if (table is null || !IsTableName(table)) throw SqliteThrow.Sink_Table(jobId, topic, uri);
        if (file.StartsWith('/')) throw SqliteThrow.Sink_Absolute(jobId, topic, uri);
        if (file.Length == 0 || file.EndsWith('/')) throw SqliteThrow.Sink_NoFile(jobId, topic, uri);
        string path = SinkTarget.UnderRoot(jobId, topic, uri, SinkTarget.Normalize(options.Root), System.Uri.UnescapeDataString(file));
        CheckRealPath(options, jobId, topic, path);
        return new SqliteTarget(topic, uri, path, table, mode);
    }

    /// <summary>
    /// <see cref="SinkTarget.CheckRealPath"/> of the database file, and, when the file is a symlink,
    /// of where it finally leads even if that does not exist yet: SQLite would create the file there.
    /// </summary>
    internal static void CheckRealPath(OutputOptions options, ulong jobId, string topic, string path)
    {
        SinkTarget.CheckRealPath(options, jobId, topic, path);
        if (new FileInfo(path).LinkTarget is null) return;
        string final = File.ResolveLinkTarget(path, returnFinalTarget: true)?.FullName ?? path;
        SinkTarget.CheckRealPath(options, jobId, topic, path, RealPath.Of(final));
    }

    /// <summary>Letters, digits and '_', not starting with a digit, not SQLite's own sqlite_ prefix, at most 128 characters.</summary>
    private static bool IsTableName(string name) =>
        name.Length is > 0 and <= MaxTableLength && !char.IsAsciiDigit(name[0])
        && name.All(c => char.IsAsciiLetterOrDigit(c) || c == '_')
        && !name.StartsWith("sqlite_", StringComparison.OrdinalIgnoreCase);

    internal static string Quote(string identifier) => "\"" + identifier.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";

    /// <summary>A connection to <paramref name="path"/> that waits up to a minute for another writer and leaves no file open once disposed.</summary>
    internal static SqliteConnection Open(string path, bool create)
    {
        SqliteRuntime.EnsureInitialized();
        var cs = new SqliteConnectionStringBuilder
        {
            DataSource = path,
            Mode = create ? SqliteOpenMode.ReadWriteCreate : SqliteOpenMode.ReadWrite,
            Pooling = false,
            DefaultTimeout = BusySeconds,
        };
        var db = new SqliteConnection(cs.ToString());
        db.Open();
        Exec(db, $"PRAGMA busy_timeout = {BusySeconds * 1000}");
        return db;
    }

    internal static void Exec(SqliteConnection db, string sql, params (string Name, object Value)[] parameters)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        foreach (var (name, value) in parameters) cmd.Parameters.AddWithValue(name, value);
        cmd.ExecuteNonQuery();
    }

    internal static object? Scalar(SqliteConnection db, string sql, params (string Name, object Value)[] parameters)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        foreach (var (name, value) in parameters) cmd.Parameters.AddWithValue(name, value);
        return cmd.ExecuteScalar();
    }

    private static bool TableExists(SqliteConnection db, string schema, string table) =>
        Convert.ToInt64(Scalar(db, $"SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'table' AND name = $t COLLATE NOCASE", ("$t", table)), CultureInfo.InvariantCulture) > 0;

    /// <summary>Mode error: throws when the table already holds a row of another job.</summary>
    public void CheckNoOtherData(ulong jobId)
    {
        if (!File.Exists(DbPath)) return;
        try
        {
            using var db = Open(DbPath, create: false);
            CheckNoOtherData(db, jobId);
        }
        catch (SqliteException e)
        {
            throw SqliteThrow.Failed(jobId, Topic, DbPath, e);
        }
    }

    private void CheckNoOtherData(SqliteConnection db, ulong jobId)
    {
        if (!TableExists(db, "main", Table)) return;
        bool hasJobColumn = Columns(db, Table).Contains(LineageColumns.JobId, StringComparer.OrdinalIgnoreCase);
        string other = hasJobColumn ? $"SELECT 1 FROM {Quote(Table)} WHERE {LineageColumns.JobId} IS NOT $job LIMIT 1" : $"SELECT 1 FROM {Quote(Table)} LIMIT 1";
        if (Scalar(db, other, ("$job", (long)jobId)) is not null) throw OutputThrow.Sink_DataExists(jobId, Topic, $"table {Table} of {DbPath}");
    }

    private static List<string> Columns(SqliteConnection db, string table, string schema = "main")
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = $"SELECT name FROM pragma_table_info($t, $s)";
        cmd.Parameters.AddWithValue("$t", table);
        cmd.Parameters.AddWithValue("$s", schema);
        var names = new List<string>();
        using var r = cmd.ExecuteReader();
        while (r.Read()) names.Add(r.GetString(0));
        return names;
    }

    // Rows of parser NAME for a source: _parser is name@version (or the bare name when the version is unknown).
    private const string SameSource = $"{LineageColumns.Source} = $source AND ({LineageColumns.Parser} = $parser OR substr({LineageColumns.Parser}, 1, length($parser) + 1) = $parser || '@')";

    /// <summary>
    /// Moves the staged rows of <paramref name="stagePath"/> into the table in one transaction, by mode
    /// (file header). Returns false when NewestWins found a later job's rows for the source (nothing changed).
    /// </summary>
    public bool Commit(ulong jobId, OutputSource? source, string stagePath, IReadOnlyList<(string Name, string Declared)> columns, bool newestWins)
    {
        using var db = Open(DbPath, create: true);
        Exec(db, "PRAGMA journal_mode = WAL");
        Exec(db, "PRAGMA synchronous = FULL");
        Exec(db, "ATTACH DATABASE $stage AS stage", ("$stage", stagePath));
        try
        {
            using var tx = db.BeginTransaction(deferred: false);
            EnsureTable(db, columns);
            var key = new (string, object)[] { ("$source", source?.Path ?? ""), ("$parser", source?.ParserName ?? ""), ("$job", (long)jobId) };
            string table = Quote(Table);
            switch (Mode)
            {
                case SinkMode.Error:
                    CheckNoOtherData(db, jobId);
                    Exec(db, $"DELETE FROM {table} WHERE {LineageColumns.JobId} = $job", key);
                    break;
                case SinkMode.Replace:
                    Exec(db, $"DELETE FROM {table}");
                    break;
                default:
                    if (newestWins && Scalar(db, $"SELECT 1 FROM {table} WHERE {SameSource} AND {LineageColumns.JobId} > $job LIMIT 1", key) is not null) return false;
                    // Without a source (an older sentinel's DISPATCH) a job's rows are its own: a retry replaces them.
                    Exec(db, source is null ? $"DELETE FROM {table} WHERE {LineageColumns.JobId} = $job" : $"DELETE FROM {table} WHERE {SameSource}", key);
                    break;
            }
            string names = string.Join(", ", columns.Select(c => Quote(c.Name)));
            Exec(db, $"INSERT INTO {table} ({names}) SELECT {names} FROM stage.{StageTable}");
            tx.Commit();
            return true;
        }
        finally
        {
            Exec(db, "DETACH DATABASE stage");
        }
    }

    /// <summary>Creates the table (and its _source index) if missing; adds any staged column an existing table lacks.</summary>
    private void EnsureTable(SqliteConnection db, IReadOnlyList<(string Name, string Declared)> columns)
    {
        string table = Quote(Table);
        var have = Columns(db, Table);
        if (have.Count == 0)
            Exec(db, $"CREATE TABLE {table} ({string.Join(", ", columns.Select(c => $"{Quote(c.Name)} {c.Declared}".TrimEnd()))})");
        else
            foreach (var (name, declared) in columns)
                if (!have.Contains(name, StringComparer.OrdinalIgnoreCase)) Exec(db, $"ALTER TABLE {table} ADD COLUMN {Quote(name)} {declared}".TrimEnd());
        Exec(db, $"CREATE INDEX IF NOT EXISTS {Quote(Table + "__source")} ON {table} ({LineageColumns.Source})");
    }

    /// <summary>
    /// Deletes, from each superseded table this job did not write, the rows of this parser for this
    /// source (earlier jobs' only, with <paramref name="newestWins"/>). Only a table in a database under
    /// the output root or an allowed root is touched; any other uri is ignored, as is a missing file or table.
    /// </summary>
    public static void RemoveSuperseded(OutputOptions options, ulong jobId, OutputSource? source, IReadOnlyList<string> supersedes, IReadOnlyCollection<string> kept, bool newestWins)
    {
        if (source is null) return;
        foreach (string uri in supersedes)
        {
            if (!Is(uri) || kept.Contains(uri) || SupersededTable(options, uri) is not var (path, table) || !File.Exists(path)) continue;
            try
            {
                using var db = Open(path, create: false);
                using var tx = db.BeginTransaction(deferred: false);
                if (!TableExists(db, "main", table)) continue;
                Exec(db, $"DELETE FROM {Quote(table)} WHERE {SameSource}" + (newestWins ? $" AND {LineageColumns.JobId} < $job" : ""),
                    ("$source", source.Path), ("$parser", source.ParserName), ("$job", (long)jobId));
                tx.Commit();
            }
            catch (SqliteException e)
            {
                throw OutputThrow.Commit_Supersede(jobId, $"table {table} of {path}", e);
            }
        }
    }

    /// <summary>The database and table of an artifact uri, when it is one a sink could have written (under the root or an allowed root, no '..'); else null.</summary>
    private static (string Path, string Table)? SupersededTable(OutputOptions options, string uri)
    {
        string rest = uri[Scheme.Length..];
        int q = rest.IndexOf("?table=", StringComparison.Ordinal);
        if (q < 0 || !rest.StartsWith('/')) return null;
        string path = System.Uri.UnescapeDataString(rest[..q]);
        string table = rest[(q + "?table=".Length)..];
        if (!IsTableName(table) || SinkTarget.HasParentSegment(path)) return null;
        string full = SinkTarget.Normalize(path);
        string real = RealPath.Of(full);
        bool inside = SinkTarget.IsInside(real, RealPath.Of(options.Root)) || options.AllowedRoots.Any(a => SinkTarget.IsInside(real, RealPath.Of(a)));
        return inside ? (full, table) : null;
    }

    /// <summary>A staging database for this (job, topic), with a fresh name; deletes those a killed attempt left.</summary>
    public string NewStagePath(ulong jobId)
    {
        string dir = Path.GetDirectoryName(DbPath)!;
        string prefix = TempPrefix(jobId);
        foreach (var stale in Directory.EnumerateFiles(dir, prefix + "*"))
            if (Path.GetFileName(stale).Length == prefix.Length + SinkTarget.TempSuffixLength) TryDelete(stale);
        return Path.Combine(dir, prefix + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(SinkTarget.TempSuffixLength / 2)));
    }

    internal static void TryDelete(string path)
    {
        try { File.Delete(path); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}

internal sealed partial class JobOutput
{
    /// <summary>One topic into an SQLite table: rows staged in a database of their own, moved into the table on Commit.</summary>
    private sealed class SqliteTopicWriter(JobOutput job, string name, SqliteTarget target) : ITopicWriter
    {
        public string Name { get; } = name;

        /// <summary>The first batch's columns, all nullable (a table's columns are fixed by its first batch).</summary>
        public Schema? Schema { get; private set; }

        // The parser's columns in the order of the first batch, each with its declared SQLite type; then the lineage columns.
        private List<(string Name, string Declared)>? _columns;
        private SqliteConnection? _stage;
        private SqliteCommand? _insert;
        private string? _stagePath;
        private long _rows;

        private ulong JobId => job._jobId;

        public void Write(RecordBatch batch)
        {
            var fields = batch.Schema.FieldsList;
            for (int i = 0; i < fields.Count; i++)
            {
                // SQLite compares column names ignoring case, so _SOURCE would clash with _source too.
                if (LineageColumns.Names.Contains(fields[i].Name, StringComparer.OrdinalIgnoreCase)) throw SqliteThrow.Schema_ReservedColumn(JobId, Name, fields[i].Name);
                for (int j = 0; j < i; j++)
                    if (string.Equals(fields[j].Name, fields[i].Name, StringComparison.OrdinalIgnoreCase)) throw OutputThrow.Schema_DuplicateColumn(JobId, Name, fields[i].Name);
            }
            try
            {
                if (_columns is null)
                {
                    Start(fields);
                    Schema = ArrowSchemas.Nullable(batch.Schema);
                }
                int[] map = Map(fields);
                using var tx = _stage!.BeginTransaction();
                _insert!.Transaction = tx;
                var p = _insert.Parameters;
                int n = map.Length;
                for (int row = 0; row < batch.Length; row++)
                {
                    for (int c = 0; c < n; c++) p[c].Value = SqliteValues.Get(batch.Column(map[c]), row) ?? DBNull.Value;
                    _insert.ExecuteNonQuery();
                }
                tx.Commit();
                _rows += batch.Length;
            }
            catch (SqliteException e)
            {
                throw SqliteThrow.Failed(JobId, Name, _stagePath ?? target.DbPath, e);
            }
        }

        private void Start(IReadOnlyList<Field> fields)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(target.DbPath)!);
            SqliteTarget.CheckRealPath(job._options, JobId, Name, target.DbPath);
            _columns = [.. fields.Select(f => (f.Name, SqliteValues.Declared(JobId, Name, f)))];
            _columns.AddRange([(LineageColumns.JobId, "INTEGER"), (LineageColumns.Source, "TEXT"), (LineageColumns.SourceHash, "TEXT"), (LineageColumns.Parser, "TEXT")]);
            _stagePath = target.NewStagePath(JobId);
            _stage = SqliteTarget.Open(_stagePath, create: true);
            SqliteTarget.Exec(_stage, "PRAGMA journal_mode = OFF");
            SqliteTarget.Exec(_stage, "PRAGMA synchronous = OFF");
            int parserColumns = fields.Count;
            var source = job._source;
            SqliteTarget.Exec(_stage, $"CREATE TABLE rows ({string.Join(", ", _columns.Select(c => SqliteTarget.Quote(c.Name)))})");
            _insert = _stage.CreateCommand();
            _insert.CommandText = $"INSERT INTO rows VALUES ({string.Join(", ", Enumerable.Range(0, _columns.Count).Select(i => "$p" + i.ToString(CultureInfo.InvariantCulture)))})";
            for (int i = 0; i < _columns.Count; i++) _insert.Parameters.Add(new SqliteParameter("$p" + i.ToString(CultureInfo.InvariantCulture), DBNull.Value));
            // The lineage values are the same on every row of the job.
            _insert.Parameters[parserColumns].Value = (long)JobId;
            _insert.Parameters[parserColumns + 1].Value = source?.Path ?? "";
            _insert.Parameters[parserColumns + 2].Value = source?.ContentHash ?? "";
            _insert.Parameters[parserColumns + 3].Value = source?.Parser ?? "";
            _insert.Prepare();
        }

        /// <summary>The batch's column for each of the topic's (by name, any order); a column missing or new fails the job, as in Parquet. A null column takes the first concrete type, an INTEGER one REAL.</summary>
        private int[] Map(IReadOnlyList<Field> fields)
        {
            int n = _columns!.Count - LineageColumns.Names.Length;
            var map = new int[n];
            List<string>? problems = null;
            var seen = new bool[fields.Count];
            for (int i = 0; i < n; i++)
            {
                var (column, declared) = _columns[i];
                int j = -1;
                for (int k = 0; k < fields.Count; k++) if (fields[k].Name == column) { j = k; break; }
                if (j < 0) { (problems ??= []).Add($"column '{column}' is missing"); continue; }
                seen[j] = true;
                map[i] = j;
                string now = SqliteValues.Declared(JobId, Name, fields[j]);
                if (declared.Length == 0 || declared == "INTEGER" && now == "REAL") _columns[i] = (column, now);
            }
            for (int j = 0; j < fields.Count; j++)
                if (!seen[j]) (problems ??= []).Add($"column '{fields[j].Name}' is new");
            if (problems is not null) throw OutputThrow.Schema_Mismatch(JobId, Name, string.Join("; ", problems));
            return map;
        }

        public OutputArtifact? Commit()
        {
            _insert?.Dispose();
            _insert = null;
            _stage?.Dispose();
            _stage = null;
            // The database may have become a symlink since the job started: checked again before writing to it.
            SqliteTarget.CheckRealPath(job._options, JobId, Name, target.DbPath);
            long bytes = new FileInfo(_stagePath!).Length;
            bool committed;
            try
            {
                committed = target.Commit(JobId, job._source, _stagePath!, _columns!, job.NewestWins);
            }
            catch (SqliteException e)
            {
                throw SqliteThrow.Failed(JobId, Name, target.DbPath, e);
            }
            SqliteTarget.TryDelete(_stagePath!);
            _stagePath = null;
            return committed ? new OutputArtifact(Name, target.ArtifactUri, _rows, bytes) : null;
        }

        public void Dispose()
        {
            _insert?.Dispose();
            _insert = null;
            _stage?.Dispose();
            _stage = null;
            if (_stagePath is not null) SqliteTarget.TryDelete(_stagePath);
            _stagePath = null;
        }
    }
}

/// <summary>Arrow values as SQLite stores them (the mapping in Output.Sqlite.cs's header).</summary>
internal static class SqliteValues
{
    /// <summary>The declared type of a column of <paramref name="field"/>'s type; "" for an all-null column.</summary>
    public static string Declared(ulong jobId, string topic, Field field) => field.DataType switch
    {
        NullType => "",
        BooleanType or Int8Type or Int16Type or Int32Type or Int64Type or UInt8Type or UInt16Type or UInt32Type or UInt64Type or DurationType => "INTEGER",
        HalfFloatType or FloatType or DoubleType => "REAL",
        StringType or LargeStringType or StringViewType => "TEXT",
        // Before binary: Arrow's decimal types derive from FixedSizeBinaryType.
        Decimal128Type or Decimal256Type => "DECIMAL_TEXT",
        BinaryType or LargeBinaryType or BinaryViewType or FixedSizeBinaryType => "BLOB",
        Date32Type or Date64Type => "DATE",
        TimestampType => "TIMESTAMP",
        Time32Type or Time64Type => "TIME",
        DictionaryType d => Declared(jobId, topic, new Field(field.Name, d.ValueType, true)),
        ListType or LargeListType or FixedSizeListType or StructType or MapType => "TEXT",
        _ => throw SqliteThrow.Type_Unsupported(jobId, topic, field.Name, ArrowSchemas.Describe(field.DataType)),
    };

    /// <summary>Row <paramref name="i"/> of <paramref name="array"/> as long, double, string or byte[]; null for a null.</summary>
    public static object? Get(IArrowArray array, int i)
    {
        if (array.IsNull(i)) return null;
        switch (array)
        {
            case BooleanArray a: return a.GetValue(i) == true ? 1L : 0L;
            case Int8Array a: return (long)a.GetValue(i)!.Value;
            case Int16Array a: return (long)a.GetValue(i)!.Value;
            case Int32Array a: return (long)a.GetValue(i)!.Value;
            case Int64Array a: return a.GetValue(i)!.Value;
            case UInt8Array a: return (long)a.GetValue(i)!.Value;
            case UInt16Array a: return (long)a.GetValue(i)!.Value;
            case UInt32Array a: return (long)a.GetValue(i)!.Value;
            case UInt64Array a: return a.GetValue(i)!.Value is var u && u <= long.MaxValue ? (long)u : u.ToString(CultureInfo.InvariantCulture);
            case DurationArray a: return a.GetValue(i)!.Value;
            case HalfFloatArray a: return (double)a.GetValue(i)!.Value is var h && double.IsNaN(h) ? null : h;
            case FloatArray a: return (double)a.GetValue(i)!.Value is var g && double.IsNaN(g) ? null : g;
            // SQLite has no NaN: it would store NULL, and Microsoft.Data.Sqlite refuses to bind one.
            case DoubleArray a: return a.GetValue(i)!.Value is var d && double.IsNaN(d) ? null : d;
            case StringArray a: return a.GetString(i);
            case LargeStringArray a: return a.GetString(i);
            case StringViewArray a: return a.GetString(i);
            case Decimal128Array a: return a.GetString(i);
            case Decimal256Array a: return a.GetString(i);
            case BinaryArray a: return a.GetBytes(i).ToArray();
            case LargeBinaryArray a: return a.GetBytes(i).ToArray();
            case BinaryViewArray a: return a.GetBytes(i).ToArray();
            case Apache.Arrow.Arrays.FixedSizeBinaryArray a: return a.GetBytes(i).ToArray();
            case Date32Array a: return a.GetDateOnly(i)!.Value.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
            case Date64Array a: return a.GetDateOnly(i)!.Value.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
            case TimestampArray a:
                var ts = a.GetTimestamp(i)!.Value;
                bool zoned = ((TimestampType)a.Data.DataType).Timezone is { Length: > 0 };
                return ts.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss.ffffff", CultureInfo.InvariantCulture) + (zoned ? "Z" : "");
            case Time32Array a: return TimeSpan.FromMilliseconds(a.GetMilliSeconds(i)!.Value).ToString(@"hh\:mm\:ss\.ffffff", CultureInfo.InvariantCulture);
            case Time64Array a: return TimeSpan.FromMicroseconds(a.GetMicroSeconds(i)!.Value).ToString(@"hh\:mm\:ss\.ffffff", CultureInfo.InvariantCulture);
            case DictionaryArray a: return Get(a.Dictionary, Index(a.Indices, i));
            default:
                // Nested values (lists, structs, maps) as JSON text.
                var buffer = new System.Buffers.ArrayBufferWriter<byte>();
                using (var json = new Utf8JsonWriter(buffer)) WriteJson(json, array, i);
                return Encoding.UTF8.GetString(buffer.WrittenSpan);
        }
    }

    private static int Index(IArrowArray indices, int i) => indices switch
    {
        Int8Array a => a.GetValue(i)!.Value,
        Int16Array a => a.GetValue(i)!.Value,
        Int32Array a => a.GetValue(i)!.Value,
        Int64Array a => checked((int)a.GetValue(i)!.Value),
        UInt8Array a => a.GetValue(i)!.Value,
        UInt16Array a => a.GetValue(i)!.Value,
        UInt32Array a => checked((int)a.GetValue(i)!.Value),
        _ => throw new InvalidOperationException($"dictionary index type {indices.Data.DataType.Name}"),
    };

    private static void WriteJson(Utf8JsonWriter json, IArrowArray array, int i)
    {
        if (array.IsNull(i))
        {
            json.WriteNullValue();
            return;
        }
        switch (array)
        {
            case ListArray a: WriteItems(json, a.GetSlicedValues(i)); return;
            case LargeListArray a: WriteItems(json, a.GetSlicedValues(i)); return;
            case FixedSizeListArray a: WriteItems(json, a.GetSlicedValues(i)); return;
            case StructArray a:
                json.WriteStartObject();
                var fields = ((StructType)a.Data.DataType).Fields;
                for (int f = 0; f < fields.Count; f++)
                {
                    json.WritePropertyName(fields[f].Name);
                    WriteJson(json, a.Fields[f], i);
                }
                json.WriteEndObject();
                return;
        }
        if (array is BooleanArray flags)
        {
            json.WriteBooleanValue(flags.GetValue(i) == true);
            return;
        }
        switch (Get(array, i))
        {
            case long l: json.WriteNumberValue(l); break;
            case double d when double.IsFinite(d): json.WriteNumberValue(d); break;
            case double: json.WriteNullValue(); break;
            case byte[] b: json.WriteBase64StringValue(b); break;
            case string s: json.WriteStringValue(s); break;
            default: json.WriteNullValue(); break;
        }
    }

    private static void WriteItems(Utf8JsonWriter json, IArrowArray items)
    {
        json.WriteStartArray();
        for (int k = 0; k < items.Length; k++) WriteJson(json, items, k);
        json.WriteEndArray();
    }
}

internal static class SqliteThrow
{
    public static OutputException Sink_Table(ulong job, string topic, string uri) =>
        new(ExitCode.BadInput, $"job {job}: sink uri '{uri}' of topic '{topic}' needs a table: write sqlite://FILE.db?table=NAME, NAME of letters, digits and '_' (not starting with a digit or sqlite_, at most 128 characters)");
    public static OutputException Sink_Absolute(ulong job, string topic, string uri) =>
        new(ExitCode.BadInput, $"job {job}: sink uri '{uri}' of topic '{topic}': sqlite:// names a database file under the output root; write sqlite://FILE.db?table=NAME with a relative FILE");
    public static OutputException Sink_NoFile(ulong job, string topic, string uri) =>
        new(ExitCode.BadInput, $"job {job}: sink uri '{uri}' of topic '{topic}' names no database file; write sqlite://FILE.db?table=NAME");
    public static OutputException Schema_ReservedColumn(ulong job, string topic, string column) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}' has a column named '{column}', which the SQLite sink reserves: it always writes {string.Join(", ", LineageColumns.Names)} (SQLite ignores case in column names); rename the column");
    public static OutputException Type_Unsupported(ulong job, string topic, string column, string type) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}' column '{column}' is {type}, which the SQLite sink cannot store; convert it (to text, say) in the parser or use a Parquet sink");
    public static OutputException Failed(ulong job, string topic, string path, SqliteException e) =>
        new(ExitCode.Unavailable, $"job {job}: writing topic '{topic}' to SQLite database {path} failed: {e.Message}; check the file (another program holding a write lock for over a minute, a full disk, a file that is not a database), then retry the job", e);
}
