// One topic of a job: its temp file, its ParquetSharp Arrow writer, its schema and row-group budget, and
// the directory fsync that makes its commit durable (DirectorySync).
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Apache.Arrow;
using Apache.Arrow.Types;
using ParquetSharp;
using ParquetSharp.Arrow;
using ParquetSharp.Schema;

namespace Casparian;

internal sealed partial class JobOutput
{
    /// <summary><paramref name="plain"/>: no lineage columns (a quarantine file has its own).</summary>
    private sealed class TopicWriter(JobOutput job, string name, SinkTarget target, bool plain = false) : ITopicWriter
    {
        public string Name { get; } = name;

        /// <summary>The parser's columns as written so far (null before the first batch).</summary>
        public Schema? Schema => _schema;

        private bool Lineage => Options.Lineage && !plain;

        // The parser's columns (all nullable), in the order of the topic's first batch.
        private Schema? _schema;
        // What the file holds: _schema plus the lineage columns and our footer metadata.
        private Schema? _writerSchema;
        private WriterProperties? _properties;
        private FileWriter? _writer;
        private string? _tempPath;
        // The outermost directory Start created for this topic's file (null if it existed): Commit syncs up to its parent.
        private string? _created;
        private long _rows;
        private long _groupRows;
        private long _groupBytes;

        private ulong JobId => job._jobId;
        private OutputOptions Options => job._options;

        public void Write(RecordBatch batch)
        {
            CheckColumnNames(batch.Schema);
            int[] map;
            if (_schema is null)
            {
                _schema = ArrowSchemas.Nullable(batch.Schema);
                Start(batch);
                map = Enumerable.Range(0, batch.ColumnCount).ToArray();
            }
            else
            {
                map = Reconcile(batch.Schema);
            }

            using var scratch = new ScratchArrays();
            var fields = _schema.FieldsList;
            var arrays = new IArrowArray[_writerSchema!.FieldsList.Count];
            for (int i = 0; i < fields.Count; i++) arrays[i] = Conform(batch.Column(map[i]), fields[i], scratch);
            if (Lineage) job._lineage.Fill(arrays, fields.Count, batch.Length, scratch);
            WriteRows(arrays, batch.Length, ArrowSchemas.Bytes(batch));
            _rows += batch.Length;
        }

        /// <summary>
        /// Closes the file, makes it durable, applies the mode and renames it into place; null (and the
        /// temp file deleted) when the final file already holds a later job's output (NewestWins).
        /// </summary>
        public OutputArtifact? Commit()
        {
            _writer!.Close();
            _writer.Dispose();
            _writer = null;
            if (target.Remote is not null) return CommitRemote();
            // fsync before rename: after a crash the final name holds the complete file or the old one.
            using (var fs = new FileStream(_tempPath!, FileMode.Open, FileAccess.Write)) fs.Flush(flushToDisk: true);
            if (target.Mode == SinkMode.Error) target.CheckNoOtherData(JobId);
            // The directory may have become a symlink since it was created: checked again before the rename.
            SinkTarget.CheckRealPath(Options, JobId, Name, target.Directory);
            string final = target.FinalPath;
            // Under the directory's lock, a later job of the same source cannot rename between our look at the footer and our rename.
            using (job.NewestWins ? DirectoryLock.Take(target.Directory) : null)
            {
                if (job.NewestWins && SinkTarget.WrittenBy(final) is { } writer && writer > JobId)
                {
                    TryDelete(_tempPath!);
                    _tempPath = null;
                    return null;
                }
                File.Move(_tempPath!, final, overwrite: true);
            }
            _tempPath = null;
            SyncDirectories();
            if (target.Mode == SinkMode.Replace && !target.SingleFile && target.DeleteOtherData() > 0) Sync(target.Directory);
            return new OutputArtifact(Name, new Uri(final).AbsoluteUri, _rows, new FileInfo(final).Length);
        }

        /// <summary>
        /// An S3 sink: mode error checked again, then one PUT or CompleteMultipartUpload replaces the key
        /// in one step; mode replace deletes the prefix's other objects only after that. The staged file
        /// is deleted whatever happens (Dispose). Null when the object already names a later job
        /// (NewestWins): S3 has no lock to hold between that look and the upload, so two jobs of one
        /// source committing in the same instant can still end with the older's object, until the next run.
        /// </summary>
        private OutputArtifact? CommitRemote()
        {
            var s3 = job.S3;
            if (target.Mode == SinkMode.Error) target.CheckNoOtherObjects(s3, JobId);
            if (job.NewestWins && s3.TryHead(Name, target.RemoteObject, out ulong? writer) && writer > JobId) return null;
            long bytes = new FileInfo(_tempPath!).Length;
            s3.Upload(Name, _tempPath!, target.RemoteObject);
            TryDelete(_tempPath!);
            _tempPath = null;
            if (target.Mode == SinkMode.Replace && !target.SingleFile) target.DeleteOtherObjects(s3);
            return new OutputArtifact(Name, target.RemoteObject.Uri, _rows, bytes);
        }

        /// <summary>
        /// A rename survives a power loss only once its directory is fsynced, and a directory this topic
        /// created only once its parent is: syncs the file's directory and, up to the first directory that
        /// already existed, each one created for it.
        /// </summary>
        private void SyncDirectories()
        {
            string dir = target.Directory;
            Sync(dir);
            if (_created is not { } top) return;
            for (string d = dir; ; d = Path.GetDirectoryName(d)!)
            {
                Sync(Path.GetDirectoryName(d)!);
                if (d == top) break;
            }
        }

        private void Sync(string directory)
        {
            int errno = DirectorySync.Flush(directory);
            if (errno != 0) throw OutputThrow.Commit_DirectorySync(JobId, Name, directory, errno);
        }

        public void Dispose()
        {
            _writer?.Dispose();
            _writer = null;
            _properties?.Dispose();
            _properties = null;
            if (_tempPath is not null) TryDelete(_tempPath);
            _tempPath = null;
        }

        private void Start(RecordBatch first)
        {
            using (var builder = new WriterPropertiesBuilder())
            {
                builder.Compression(job.CodecOf(Name)).MaxRowGroupLength(Options.RowGroupRows);
                foreach (var column in ArrowSchemas.NearUniqueColumns(first)) builder.DisableDictionary(new ColumnPath([column]));
                _properties = builder.Build();
            }
            for (string? d = target.Directory; d is not null && !Directory.Exists(d); d = Path.GetDirectoryName(d)) _created = d;
            Directory.CreateDirectory(target.Directory);
            // A staging directory for S3 is the worker's own, not a destination a sink names.
            if (target.Remote is null) SinkTarget.CheckRealPath(Options, JobId, Name, target.Directory);
            // A killed earlier attempt of this job may have left its temp file; nobody else writes this prefix.
            // The exact length check keeps the temp files of a longer stem that happens to share the prefix.
            string prefix = target.TempPrefix(JobId);
            foreach (var stale in Directory.EnumerateFiles(target.Directory, prefix + "*"))
                if (Path.GetFileName(stale).Length == prefix.Length + SinkTarget.TempSuffixLength) TryDelete(stale);
            OpenWriter();
        }

        private void OpenWriter()
        {
            var fields = new List<Field>(_schema!.FieldsList);
            if (Lineage) fields.AddRange(LineageColumns.Fields());
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            if (_schema.HasMetadata) foreach (var (k, v) in _schema.Metadata) metadata[k] = v;
            job._lineage.AddMetadata(metadata);
            _writerSchema = new Schema(fields, metadata);
            _tempPath = Path.Combine(target.Directory, target.TempPrefix(JobId) + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(SinkTarget.TempSuffixLength / 2)));
            _writer = new FileWriter(_tempPath, _writerSchema, _properties!, job._arrowProperties);
            _groupRows = 0;
            _groupBytes = 0;
        }

        /// <summary>
        /// Buffers rows into the open row group, flushing it before it would pass the row or byte budget;
        /// a batch larger than the budget is written in zero-copy slices so no row group outgrows it.
        /// </summary>
        private void WriteRows(IArrowArray[] arrays, int length, long bytes)
        {
            if (length == 0) return;
            long maxRows = Math.Max(1, Options.RowGroupRows);
            long maxBytes = Math.Max(1, Options.RowGroupBytes);
            long pieces = Math.Max((bytes + maxBytes - 1) / maxBytes, (length + maxRows - 1) / maxRows);
            int step = (int)((length + pieces - 1) / pieces);
            for (int offset = 0; offset < length; offset += step)
            {
                int count = Math.Min(step, length - offset);
                long pieceBytes = bytes * count / length;
                if (_groupRows > 0 && (_groupRows + count > maxRows || _groupBytes + pieceBytes > maxBytes))
                {
                    _writer!.NewBufferedRowGroup();
                    _groupRows = 0;
                    _groupBytes = 0;
                }
                var piece = count == length ? arrays : arrays.Select(a => ArrowArrayFactory.Slice(a, offset, count)).ToArray();
                // A wrapper over borrowed arrays: not disposed here, the arrays belong to the caller or to scratch.
                _writer!.WriteBufferedRecordBatch(new RecordBatch(_writerSchema!, piece, count));
                _groupRows += count;
                _groupBytes += pieceBytes;
            }
        }

        private void CheckColumnNames(Schema schema)
        {
            var fields = schema.FieldsList;
            for (int i = 0; i < fields.Count; i++)
            {
                string n = fields[i].Name;
                if (Lineage && LineageColumns.IsReserved(n)) throw OutputThrow.Schema_ReservedColumn(JobId, Name, n);
                for (int j = 0; j < i; j++)
                    if (fields[j].Name == n) throw OutputThrow.Schema_DuplicateColumn(JobId, Name, n);
            }
        }

        /// <summary>
        /// Maps the topic's columns to <paramref name="incoming"/>'s (by name, any order) and widens the
        /// topic where a promotion asks for it; throws naming every column no promotion joins.
        /// </summary>
        private int[] Reconcile(Schema incoming)
        {
            var topic = _schema!.FieldsList;
            var fields = incoming.FieldsList;
            var map = new int[topic.Count];
            var seen = new bool[fields.Count];
            List<string>? problems = null;
            Field[]? widened = null;
            for (int i = 0; i < topic.Count; i++)
            {
                var want = topic[i];
                int j = i < fields.Count && fields[i].Name == want.Name ? i : IndexOf(fields, want.Name);
                if (j < 0)
                {
                    (problems ??= []).Add($"column '{want.Name}' ({ArrowSchemas.Describe(want.DataType)}) is missing");
                    continue;
                }
                seen[j] = true;
                map[i] = j;
                var have = fields[j].DataType;
                switch (ArrowSchemas.Promote(want.DataType, have))
                {
                    case Promotion.WidenTopic:
                        (widened ??= [.. topic])[i] = new Field(want.Name, ArrowSchemas.Join(want.DataType, have)!, true, want.HasMetadata ? want.Metadata : null);
                        break;
                    case Promotion.Mismatch:
                        (problems ??= []).Add($"column '{want.Name}' is {ArrowSchemas.Describe(want.DataType)} in the topic but {ArrowSchemas.Describe(have)} in this table");
                        break;
                    case Promotion.None when ArrowSchemas.IsJson(want) && !ArrowSchemas.IsJson(fields[j]):
                        // JSON so far, plain text now (dicts mixed with strings): the column stays text but loses its JSON annotation.
                        (widened ??= [.. topic])[i] = new Field(want.Name, want.DataType, true);
                        break;
                }
            }
            for (int j = 0; j < fields.Count; j++)
                if (!seen[j]) (problems ??= []).Add($"column '{fields[j].Name}' ({ArrowSchemas.Describe(fields[j].DataType)}) is new");
            if (problems is not null) throw OutputThrow.Schema_Mismatch(JobId, Name, string.Join("; ", problems));
            if (widened is not null) Widen(new Schema(widened, _schema.HasMetadata ? _schema.Metadata : null));
            return map;
        }

        /// <summary>A column in the topic's type <paramref name="want"/>, which Reconcile or Widen has made reachable by a promotion.</summary>
        private IArrowArray Conform(IArrowArray column, Field want, ScratchArrays scratch)
        {
            var promotion = ArrowSchemas.Promote(want.DataType, column.Data.DataType);
            Debug.Assert(promotion is Promotion.None or Promotion.FillNulls or Promotion.Cast, $"column '{want.Name}': {promotion} after Reconcile");
            return promotion == Promotion.None ? column
                : scratch.Convert(column, want.DataType) ?? throw OutputThrow.Schema_CannotFillNulls(JobId, Name, want.Name, ArrowSchemas.Describe(want.DataType));
        }

        private static int IndexOf(IReadOnlyList<Field> fields, string name)
        {
            for (int j = 0; j < fields.Count; j++) if (fields[j].Name == name) return j;
            return -1;
        }

        /// <summary>
        /// Some columns take a wider type (all null so far → a concrete type, int64 → float64): rewrites
        /// the rows written so far into a new temp file with that schema, streaming the old file batch by
        /// batch, then deletes the old one.
        /// </summary>
        private void Widen(Schema schema)
        {
            _writer!.Close();
            _writer.Dispose();
            _writer = null;
            string old = _tempPath!;
            _tempPath = null;
            try
            {
                _schema = schema;
                OpenWriter();
                var want = _writerSchema!.FieldsList;
                using var reader = new FileReader(old);
                using var stream = reader.GetRecordBatchReader();
                while (stream.ReadNextRecordBatchAsync().AsTask().GetAwaiter().GetResult() is { } batch)
                {
                    using (batch)
                    using (var scratch = new ScratchArrays())
                    {
                        var arrays = new IArrowArray[want.Count];
                        for (int i = 0; i < want.Count; i++) arrays[i] = Conform(batch.Column(i), want[i], scratch);
                        WriteRows(arrays, batch.Length, ArrowSchemas.Bytes(batch));
                    }
                }
            }
            finally
            {
                TryDelete(old);
            }
        }

        private static void TryDelete(string path)
        {
            try { File.Delete(path); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
    }
}

/// <summary>
/// fsync of a directory, which .NET has no API for (FileStream and File.OpenHandle refuse directories):
/// libc's open + fsync. The runtime maps the library name "libc" to the platform's C library (libc.so.6
/// on glibc) under the JIT and NativeAOT alike.
/// </summary>
internal static class DirectorySync
{
    // O_RDONLY | O_CLOEXEC, the same on x86-64 and arm64 Linux. No O_DIRECTORY: its value differs between
    // the two, and a read-only open of a directory needs no flag.
    private const int OpenFlags = 0x80000;
    private const int EINTR = 4, EBADF = 9, EACCES = 13, EINVAL = 22;

    /// <summary>
    /// Makes <paramref name="directory"/>'s entries (renames, creations, deletions) durable. Returns 0, or
    /// the errno of the failure. Like PostgreSQL, treats a directory that cannot be opened for reading
    /// (EACCES) or a file system that cannot sync directories (EINVAL, EBADF) as nothing to do.
    /// No-op off Linux (the flags above are Linux's).
    /// </summary>
    public static int Flush(string directory)
    {
        if (!OperatingSystem.IsLinux()) return 0;
        byte[] path = System.Text.Encoding.UTF8.GetBytes(directory + "\0");
        int fd, errno;
        do
        {
            fd = open(path, OpenFlags);
            errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
        }
        while (errno == EINTR);
        if (fd < 0) return errno == EACCES ? 0 : errno;
        try
        {
            int result;
            do
            {
                result = fsync(fd);
                errno = result < 0 ? Marshal.GetLastPInvokeError() : 0;
            }
            while (errno == EINTR);
            return errno is EINVAL or EBADF ? 0 : errno;
        }
        finally
        {
            _ = close(fd);
        }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int open(byte[] path, int flags);

    [DllImport("libc", SetLastError = true)]
    private static extern int fsync(int fd);

    [DllImport("libc")]
    private static extern int close(int fd);
}

/// <summary>
/// An exclusive flock(2) on a directory, held until disposed: orders the commits of jobs that rename
/// into (or delete from) the same dataset directory, on this machine or, where the file system passes
/// flock on (NFSv4, most cluster file systems), on others. Blocks until the lock is free; commits hold
/// it for a rename. Returns null off Linux, and where the directory cannot be opened for reading.
/// </summary>
internal sealed class DirectoryLock : IDisposable
{
    private const int OpenFlags = 0x80000; // O_RDONLY | O_CLOEXEC, as DirectorySync
    private const int LockExclusive = 2, Unlock = 8, EINTR = 4;
    private int _fd;

    private DirectoryLock(int fd) => _fd = fd;

    public static DirectoryLock? Take(string directory)
    {
        if (!OperatingSystem.IsLinux()) return null;
        byte[] path = System.Text.Encoding.UTF8.GetBytes(directory + "\0");
        int fd;
        do fd = open(path, OpenFlags);
        while (fd < 0 && Marshal.GetLastPInvokeError() == EINTR);
        if (fd < 0) return null;
        while (flock(fd, LockExclusive) < 0)
        {
            if (Marshal.GetLastPInvokeError() == EINTR) continue;
            // A file system without flock: nothing to order with; the commit goes ahead as before.
            _ = close(fd);
            return null;
        }
        return new DirectoryLock(fd);
    }

    public void Dispose()
    {
        if (_fd < 0) return;
        _ = flock(_fd, Unlock);
        _ = close(_fd);
        _fd = -1;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int open(byte[] path, int flags);

    [DllImport("libc", SetLastError = true)]
    private static extern int flock(int fd, int operation);

    [DllImport("libc")]
    private static extern int close(int fd);
}
