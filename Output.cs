// Parquet output (SPEC §7): one JobOutput per job streams each topic's Arrow batches into its own
// Parquet file and, on Commit, renames the finished files into place.
//
// Layout. Every (job, topic) has exactly one destination file with a deterministic name, so a retried
// job (on this machine or another, after a crash or kill -9) overwrites its own file instead of adding
// a second copy. Where the file goes is decided by the topic's sink (Output.Sinks.cs):
//   - no sink for the topic (always the case when DISPATCH has no sinks): {root}/{topic}/{name}
//   - a directory uri (parquet://NAME, a relative path, or file:///ABS inside an allowed root, not
//     ending in .parquet): the directory is a dataset and this job's file is {dir}/{name}
//   - a file uri (ending in .parquet): that file is the topic's whole dataset
// {name} is job-{id}.parquet, or {stem}.parquet when the JobOutput is given a file stem (dev mode,
// `casparian run`: one JobOutput per input file, named after it, so a rerun overwrites). A stem is
// sanitised (SinkTarget.SanitizeStem: ASCII letters, digits, '-', '_', '.', anything else '_', no
// leading '.', never empty, at most 200 characters); two inputs whose sanitised stems are equal
// (a/x.csv and b/x.csv) would write the same file, the later winning, so the caller must pass stems
// that are unique after sanitising and can check that up front with SanitizeStem.
//   - an sqlite://FILE?table=NAME uri: a table of an SQLite database under the root; its topic writer is
//     Output.Sqlite.cs's (rows staged, then swapped per (parser, source) in one transaction).
// Ordering (NewestWins, workers): a commit never replaces, or removes as superseded, a file whose footer
// names a later job of the same source; the footer check and the rename hold the directory's flock.
// Modes (SinkConfig.mode):
//   - append (default): directory: add/overwrite this job's file, leave every other file alone.
//     File uri: refused when the job starts (a Parquet file cannot be appended to, and appending would
//     duplicate rows on retry); use a directory uri or mode replace.
//   - replace: directory: after this job's file is in place, every other *.parquet directly in the
//     directory is deleted (the dataset becomes this job's output; concurrent replacers: last wins).
//     File uri: the file is overwritten.
//   - error: fail the job if the dataset already holds data from another job (directory: any *.parquet
//     other than this job's own file; file uri: the file exists and its footer names another job).
//     Checked when the job starts and again just before the rename. A retry never trips over its own
//     earlier output.
//
// Atomicity. A topic's rows go to ".{final}.tmp-{job}-{random}" in the destination directory (hidden,
// not *.parquet, so dataset readers skip it) and the finished file is fsynced and then renamed over the
// final name: a reader sees the old file or the complete new one, never a partial one. Then the
// directory is fsynced (and the parents of directories the topic created), so a committed file survives
// a power loss; mode replace syncs again after its deletions. Temp files of the same (job, topic) left
// by a killed attempt are deleted when the retry starts writing that topic.
// Dispose without Commit deletes this job's temp files. Topics commit one after another, so a failure
// inside Commit can leave some topics committed; the retry overwrites them.
//
// Memory. Batches go to ParquetSharp's Arrow FileWriter in buffered mode, where a row group's encoded,
// compressed pages are kept in memory until the group is flushed. We flush a topic's row group once
// it has taken RowGroupRows rows or RowGroupBytes of Arrow data (a larger batch is sliced, zero-copy),
// so the writer's memory per topic is a small multiple of RowGroupBytes (page buffers grow by doubling,
// and the native allocator keeps the previous group's pages a while), whatever the file size. Default
// 16 MiB: 2 GiB streamed through one job peaks at about 125 MB RSS for the whole process (64 MiB: 175).
// Nothing keeps a caller's batch after Write returns.
//
// Speed. Compression is the topic's own (its sink's "compression") or the `compression` setting, whose
// default Config.cs holds and BENCHMARKS.md justifies (OutputBench.Codecs). Dictionary encoding stays on, except for columns whose first batch looks
// nearly all distinct (ids, measurements, timestamps): there the writer would fill a dictionary, give
// up and re-encode, which cost about 40% of the write time for numeric data.
//
// Schema (Output.Schema.cs). A topic's schema is set by its first batch, with every column made
// nullable. Later batches must have the same column names (any order) and types, except where
// ArrowSchemas.Join finds a type holding both, each accepted either way round. They exist because the
// shim infers types per table (docs/types.md), so a parser that yields chunks can send one column with
// different types in different tables:
//   - null ↔ concrete (a column with no values in that batch is Arrow type null): null in the batch and
//     concrete in the topic → written as all-null of the topic's type; null in the topic and concrete in
//     the batch → the topic widens to that type.
//   - int64 ↔ float64 (whole numbers in one chunk, a 2.5 in the next): int64 in the topic and float64 in
//     the batch → the topic widens to float64; float64 in the topic and int64 in the batch → the batch's
//     column is cast to float64. Either way an int64 value becomes the nearest double: exact up to 2^53
//     in magnitude, rounded beyond (as pandas does when it mixes ints and floats).
//   - decimal128(P1, S1) ↔ decimal128(P2, S2): the widest scale with the widest integer part, if that
//     fits 38 digits; values are rescaled exactly.
//   - list<A> ↔ list<B>: a list of the join of A and B (list<null> from a chunk of empty lists joins any).
//   - JSON-annotated utf8 in the topic, plain utf8 in the batch: the topic drops the JSON annotation.
// Widening rewrites the rows written so far into a new temp file with the wider schema (a pass over
// that topic's data so far; memory stays bounded by a row group); a column sets off a rewrite only when
// its type widens, a bounded number of times (null → int64 → float64; decimals at most 38 steps). Any
// other pair of types (int32 vs int64, utf8 vs int64, timestamps of different units or time zones …)
// fails the job, naming the topic and every differing column.
//
// Lineage (on by default): every row gets int64 columns _job_id and _file_version_id, after the
// parser's columns; the footer's key-value metadata carries casparian.job_id and casparian.file_version_id.
//
// Threading: a JobOutput is used by one thread at a time (the job's bridge reader).
using System.Diagnostics;
using System.Globalization;
using Apache.Arrow;
using ParquetSharp;
using ParquetSharp.Arrow;

namespace Casparian;

/// <summary>Settings shared by every job of a worker or a <c>run</c>.</summary>
internal sealed record OutputOptions
{
    /// <summary>The output root (the worker's <c>--output</c>): relative sink uris and topics without a sink land here.</summary>
    public required string Root { get; init; }

    /// <summary>Directories an absolute <c>file:///…</c> sink may write into (the root is always allowed).</summary>
    public required IReadOnlyList<string> AllowedRoots { get; init; }

    /// <summary>Add <c>_job_id</c> and <c>_file_version_id</c> columns to every row.</summary>
    public required bool Lineage { get; init; }

    /// <summary>Most rows in one row group.</summary>
    public required long RowGroupRows { get; init; }

    /// <summary>Most Arrow bytes (uncompressed column data) in one row group: bounds the writer's memory per topic.</summary>
    public required long RowGroupBytes { get; init; }

    /// <summary>Parquet compression of a topic whose sink sets none (the <c>compression</c> setting).</summary>
    public required Compression Compression { get; init; }

    /// <summary>Most rows one job may send to quarantine, all topics together, before it fails (issue 14).</summary>
    public required long MaxQuarantineRows { get; init; }

    /// <summary>The fraction of a topic's rows a job may quarantine when the topic's contract sets no max_quarantine.</summary>
    public required double MaxQuarantine { get; init; }

    /// <summary>Where files bound for S3 sinks are written before their upload, one directory per destination.</summary>
    public required string Staging { get; init; }

    /// <summary>Endpoint, region and upload sizes for s3:// sinks.</summary>
    public required S3Settings S3 { get; init; }
}

/// <summary>One committed file. <see cref="Bytes"/> is its size on disk.</summary>
internal readonly record struct OutputArtifact(string Topic, string Uri, long Rows, long Bytes)
{
    /// <summary>Rows the topic's contract sent to quarantine (Output.Quarantine.cs).</summary>
    public long Quarantined { get; init; }
    /// <summary>The quarantine file, when the topic quarantined any rows.</summary>
    public string? QuarantineUri { get; init; }
    /// <summary>Quarantined rows per reason, "type:3,null:1".</summary>
    public string? QuarantineReasons { get; init; }
    /// <summary>Columns not in the declared schema, dropped, ','-separated.</summary>
    public string? DroppedColumns { get; init; }
    /// <summary>The topic's schema after this job (the registry's columns JSON, Output.Drift.cs).</summary>
    public string? Schema { get; init; }

    /// <summary>The receipt's artifact map (SPEC §2.4): topic, uri, rows, bytes; and our extensions when set.</summary>
    public Dictionary<string, string> ToReceipt()
    {
        var map = new Dictionary<string, string>
        {
            ["topic"] = Topic,
            ["uri"] = Uri,
            ["rows"] = Rows.ToString(CultureInfo.InvariantCulture),
            ["bytes"] = Bytes.ToString(CultureInfo.InvariantCulture),
        };
        if (Quarantined > 0) map[SentinelMetrics.QuarantinedArtifact] = Quarantined.ToString(CultureInfo.InvariantCulture);
        if (QuarantineUri is { } q) map[QuarantineUriKey] = q;
        if (QuarantineReasons is { } r) map[QuarantineReasonsKey] = r;
        if (DroppedColumns is { } d) map["dropped_columns"] = d;
        if (Schema is { } s) map[SchemaKey] = s;
        return map;
    }

    public const string QuarantineUriKey = "quarantine_uri";
    public const string QuarantineReasonsKey = "quarantine_reasons";
    public const string SchemaKey = "schema";
}

/// <summary>What Commit wrote: one artifact per topic that received at least one batch.</summary>
internal sealed record OutputResult(IReadOnlyList<OutputArtifact> Artifacts, long Rows, long Bytes, long Batches, long DurationMs)
{
    /// <summary>
    /// The receipt's metrics: rows, bytes (Parquet bytes on disk), batches, write_ms (from the output's
    /// creation to its commit), and quarantined (rows the contracts rejected) when there are any.
    /// </summary>
    public Dictionary<string, long> Metrics()
    {
        var metrics = new Dictionary<string, long>
        {
            ["rows"] = Rows,
            ["bytes"] = Bytes,
            ["batches"] = Batches,
            ["write_ms"] = DurationMs,
        };
        if (Artifacts.Sum(a => a.Quarantined) is > 0 and var q) metrics["quarantined"] = q;
        return metrics;
    }

    public List<Dictionary<string, string>> ReceiptArtifacts() => Artifacts.Select(a => a.ToReceipt()).ToList();
}

/// <summary>
/// A job's output failed in a way retrying will not fix. The user's doing (bad sink, schema mismatch,
/// existing data in mode error) is <see cref="ExitCode.BadInput"/>; a disk that failed under the
/// writer is <see cref="ExitCode.Unavailable"/>.
/// </summary>
internal sealed class OutputException(ExitCode code, string message, Exception? inner = null) : CasparianException(code, message, inner);

/// <summary>
/// The Parquet files of one job: <see cref="Write"/> each batch as it arrives, then <see cref="Commit"/>;
/// disposing without Commit leaves nothing behind. The file header comment defines layout, modes, schema rules.
/// </summary>
internal sealed partial class JobOutput : IDisposable
{
    private readonly OutputOptions _options;
    private readonly ulong _jobId;
    private readonly LineageColumns _lineage;
    // This job's file name in every dataset directory.
    private readonly string _fileName;
    private readonly Dictionary<string, SinkTarget> _sinks;
    // Topics whose sink names its own compression (a handful): searched linearly.
    private readonly List<(string Topic, Compression Codec)> _codecs = [];
    // Topics whose sink is an SQLite table (Output.Sqlite.cs).
    private readonly Dictionary<string, SqliteTarget> _tables;
    private readonly OutputSource? _source;
    // Topics with a schema contract (a handful): searched linearly.
    private readonly List<TopicContract> _contracts = [];
    // The registry's current schema of each topic (DISPATCH topic_schemas): checked at commit (Output.Drift.cs).
    private IReadOnlyList<TopicSchemaDef> _registered = [];
    // Topics in first-write order: a handful per job, searched linearly.
    private readonly List<ITopicWriter> _topics = [];
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly ArrowWriterProperties _arrowProperties;
    private S3Transfer? _s3;
    private long _batches;
    private bool _failed;
    private bool _committed;
    private bool _disposed;

    /// <summary>
    /// Resolves and checks every sink up front (a bad uri or mode error fails before the parser runs).
    /// <paramref name="sinks"/> is DISPATCH's list; empty means one dataset per topic under the root.
    /// <paramref name="fileStem"/> (dev mode: the input file's name without extension) names this job's
    /// file in each dataset directory <c>{stem}.parquet</c> instead of <c>job-{id}.parquet</c>, sanitised
    /// by <see cref="SinkTarget.SanitizeStem"/>. Jobs sharing an output directory must have distinct
    /// sanitised stems, or the later overwrites the earlier: the caller checks that before it starts.
    /// </summary>
    public JobOutput(OutputOptions options, ulong jobId, OutputSource? source, IReadOnlyList<SinkConfig> sinks, string? fileStem = null)
    {
        _options = options;
        _jobId = jobId;
        _lineage = new LineageColumns(jobId, source);
        _fileName = SinkTarget.DatasetFileName(jobId, source, fileStem);
        _source = source;
        _sinks = new Dictionary<string, SinkTarget>(StringComparer.Ordinal);
        _tables = new Dictionary<string, SqliteTarget>(StringComparer.Ordinal);
        foreach (var sink in sinks)
        {
            if (sink.Compression is { } codecName)
            {
                if (!ParquetCodecs.TryParse(codecName, out var codec)) throw OutputThrow.Sink_BadCompression(jobId, sink.Topic, codecName);
                _codecs.Add((sink.Topic, codec));
            }
            if (SqliteTarget.Is(sink.Uri))
            {
                var table = SqliteTarget.Resolve(options, jobId, sink.Topic, sink.Uri, sink.Mode);
                if (_sinks.ContainsKey(sink.Topic) || !_tables.TryAdd(sink.Topic, table)) throw OutputThrow.Sink_DuplicateTopic(jobId, sink.Topic);
                if (table.Mode == SinkMode.Error) table.CheckNoOtherData(jobId);
                continue;
            }
            var target = SinkTarget.Resolve(options, jobId, sink.Topic, sink.Uri, sink.Mode, _fileName);
            if (_tables.ContainsKey(sink.Topic) || !_sinks.TryAdd(sink.Topic, target)) throw OutputThrow.Sink_DuplicateTopic(jobId, sink.Topic);
            if (target.Mode == SinkMode.Error && target.Remote is null) target.CheckNoOtherData(jobId);
            else if (target.Mode == SinkMode.Error) target.CheckNoOtherObjects(S3, jobId);
            if (sink.SchemaDef is { } def) _contracts.Add(ContractOf(sink.Topic, def));
        }
        // The stored Arrow schema brings back exact types on read (timestamp time zones, null columns).
        _arrowProperties = new ArrowWriterPropertiesBuilder().StoreSchema().Build();
    }

    public ulong JobId => _jobId;

    /// <summary>The compression of <paramref name="topic"/>'s file: its sink's, else the worker's setting.</summary>
    private Compression CodecOf(string topic)
    {
        foreach (var (t, codec) in _codecs)
            if (t == topic) return codec;
        return _options.Compression;
    }

    /// <summary>The job's S3 client, made on first use by an S3 sink (or an S3 uri to supersede).</summary>
    internal S3Transfer S3 => _s3 ??= new S3Transfer(_options.S3, _jobId);

    /// <summary>
    /// Job ids order the jobs of one (parser, source): a commit never replaces output that a job with a
    /// higher id wrote, nor removes it as superseded (a store's ids grow with queue time, so the later
    /// queued job wins however the two race). Off for <c>casparian run</c>, whose ids are positions.
    /// </summary>
    public bool NewestWins { get; init; }

    /// <summary>
    /// Appends <paramref name="batch"/> to <paramref name="topic"/>'s file, creating it on the topic's
    /// first batch. The batch is not kept: the caller may dispose it as soon as this returns. After a
    /// Write throws, the job can only be disposed (Commit refuses: the file may hold part of the batch).
    /// </summary>
    public void Write(string topic, RecordBatch batch)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_committed) throw new InvalidOperationException($"job {_jobId}: Write after Commit");
        // Until it returns, a Write may have put part of the batch in the file: a failure poisons the job.
        bool ok = false;
        try
        {
            if (_contracts.Find(c => c.Topic == topic) is { Enforcer: not null } contract) WriteContracted(contract, batch);
            else Topic(topic).Write(batch);
            ok = true;
        }
        catch (ParquetException e)
        {
            throw OutputThrow.Write_Failed(_jobId, topic, e);
        }
        finally
        {
            _failed |= !ok;
        }
        _batches++;
    }

    /// <summary>
    /// Finishes every topic's file and renames it into place, then deletes the files of
    /// <paramref name="supersedes"/> (uris of the earlier output of the same parser for the same source)
    /// that this job did not just replace: a topic this job no longer writes loses the source's old rows.
    /// Call once; then dispose.
    /// </summary>
    public OutputResult Commit(IReadOnlyList<string>? supersedes = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_committed) throw new InvalidOperationException($"job {_jobId}: Commit called twice");
        if (_failed) throw new InvalidOperationException($"job {_jobId}: Commit after a failed Write; the job's output is incomplete, dispose it");
        _committed = true;
        CheckQuarantineFractions();
        var schemas = CheckDrift();
        var artifacts = new List<OutputArtifact>(_topics.Count);
        FaultPoint.Hit(FaultPoint.BeforeRename);
        for (int i = 0; i < _topics.Count; i++)
        {
            var t = _topics[i];
            try
            {
                if (t.Commit() is { } artifact) artifacts.Add(CommitQuarantine(artifact) with { Schema = schemas[i] });
            }
            catch (ParquetException e)
            {
                throw OutputThrow.Write_Failed(_jobId, t.Name, e);
            }
            FaultPoint.Hit(FaultPoint.AfterFirstRename);
        }
        FaultPoint.Hit(FaultPoint.BeforeSupersede);
        if (supersedes is { Count: > 0 })
        {
            // Kept: this job's files, and its quarantine files (also Parquet when the topic's sink is a table).
            string[] written = [.. artifacts.SelectMany(a => new[] { a.Uri, a.QuarantineUri }).OfType<string>()];
            string[] kept = [.. written.Where(u => !SqliteTarget.Is(u) && !S3Location.IsS3(u)).Select(u => new Uri(u).LocalPath)];
            RemoveSuperseded(_options, _jobId, supersedes, kept, NewestWins);
            SqliteTarget.RemoveSuperseded(_options, _jobId, _source, supersedes, [.. artifacts.Select(a => a.Uri)], NewestWins);
            RemoveSupersededObjects(supersedes, written);
        }
        FaultPoint.Hit(FaultPoint.AfterSupersede);
        _clock.Stop();
        return new OutputResult(artifacts, artifacts.Sum(a => a.Rows), artifacts.Sum(a => a.Bytes), _batches, _clock.ElapsedMilliseconds);
    }

    /// <summary>Closes the writers; without a successful Commit, deletes this job's temp files.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        for (int i = _contracts.Count - 1; i >= 0; i--) _contracts[i].Quarantine?.Dispose();
        for (int i = _topics.Count - 1; i >= 0; i--) _topics[i].Dispose();
        _s3?.Dispose();
        _lineage.Dispose();
        _arrowProperties.Dispose();
    }

    /// <summary>
    /// Deletes each superseded file this commit did not overwrite, then syncs its directory. Only a
    /// local *.parquet file inside the output root or an allowed root is touched (what a sink could
    /// name anyway); anything else in the list is ignored. Missing files are fine: a retry of a job
    /// killed after this step finds them gone. With <paramref name="newestWins"/>, a file whose footer
    /// names a later job is kept (that job superseded the same output first), the check and the delete
    /// made under the directory's lock (<see cref="DirectoryLock"/>).
    /// </summary>
    internal static void RemoveSuperseded(OutputOptions options, ulong jobId, IReadOnlyList<string> supersedes, IReadOnlyCollection<string> kept, bool newestWins = false)
    {
        var directories = new List<string>();
        foreach (string uri in supersedes)
        {
            if (SinkTarget.SupersededPath(options, uri) is not { } path || kept.Contains(path)) continue;
            try
            {
                if (!File.Exists(path)) continue;
                using (newestWins ? DirectoryLock.Take(Path.GetDirectoryName(path)!) : null)
                {
                    if (newestWins && SinkTarget.WrittenBy(path) is { } writer && writer > jobId) continue;
                    File.Delete(path);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw OutputThrow.Commit_Supersede(jobId, path, e);
            }
            string dir = Path.GetDirectoryName(path)!;
            if (!directories.Contains(dir)) directories.Add(dir);
        }
        foreach (string dir in directories)
        {
            int errno = DirectorySync.Flush(dir);
            if (errno != 0) throw OutputThrow.Commit_DirectorySync(jobId, "(superseded)", dir, errno);
        }
    }

    /// <summary>
    /// Deletes each superseded S3 object this commit did not overwrite, if it carries our job-id metadata
    /// (an object we wrote) and, under <see cref="NewestWins"/>, no later job's id; others, and objects
    /// already gone, are left alone.
    /// </summary>
    private void RemoveSupersededObjects(IReadOnlyList<string> supersedes, IReadOnlyCollection<string> kept)
    {
        foreach (string uri in supersedes)
        {
            if (SinkTarget.SupersededObject(uri) is not { } location || kept.Contains(location.Uri)) continue;
            if (S3.TryHead("(superseded)", location, out ulong? writer) && writer is { } id && !(NewestWins && id > _jobId)) S3.Delete("(superseded)", location);
        }
    }

    /// <summary>One topic's destination: a Parquet file (TopicWriter) or an SQLite table (SqliteTopicWriter).</summary>
    private interface ITopicWriter : IDisposable
    {
        string Name { get; }

        /// <summary>The parser's columns as written so far (null before the first batch): the schema registry's drift check reads it.</summary>
        Schema? Schema { get; }

        void Write(RecordBatch batch);

        /// <summary>Makes the topic's rows the current output; null when a later job's output is already there (<see cref="NewestWins"/>).</summary>
        OutputArtifact? Commit();
    }

    private ITopicWriter Topic(string name)
    {
        foreach (var t in _topics) if (t.Name == name) return t;
        if (_tables.TryGetValue(name, out var table))
        {
            var writer = new SqliteTopicWriter(this, name, table);
            _topics.Add(writer);
            return writer;
        }
        if (!_sinks.TryGetValue(name, out var target))
        {
            if (!Bridge.IsValidTopic(name)) throw OutputThrow.Topic_BadName(_jobId, name);
            target = SinkTarget.Resolve(_options, _jobId, name, "parquet://" + name, SinkMode.Append, _fileName);
        }
        var topic = new TopicWriter(this, name, target);
        _topics.Add(topic);
        return topic;
    }
}

internal static class OutputThrow
{
    public static OutputException Sink_BadCompression(ulong job, string topic, string codec) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}': compression '{codec}' is not {ParquetCodecs.Names}");
    public static OutputException Sink_DuplicateTopic(ulong job, string topic) =>
        new(ExitCode.BadInput, $"job {job}: two sinks for topic '{topic}'; give each topic one sink");
    public static OutputException Topic_BadName(ulong job, string topic) =>
        new(ExitCode.BadInput, $"job {job}: topic name '{topic}' is invalid; topic names match [a-z][a-z0-9_]* (at most {Bridge.MaxTopicLength} characters)");
    public static OutputException Sink_Scheme(ulong job, string topic, string uri) =>
        new(ExitCode.BadInput, $"job {job}: sink uri '{uri}' of topic '{topic}' is not supported; use parquet://NAME, a relative path, file:///ABSOLUTE/PATH, s3://BUCKET/PREFIX or sqlite://FILE.db?table=NAME");
    public static OutputException Sink_Empty(ulong job, string topic) =>
        new(ExitCode.BadInput, $"job {job}: sink uri of topic '{topic}' is empty; use parquet://NAME, a relative path, or file:///ABSOLUTE/PATH");
    public static OutputException Sink_ParentSegment(ulong job, string topic, string uri) =>
        new(ExitCode.BadInput, $"job {job}: sink uri '{uri}' of topic '{topic}' contains '..'; sinks may not climb out of their directory");
    public static OutputException Sink_AbsoluteParquet(ulong job, string topic, string uri) =>
        new(ExitCode.BadInput, $"job {job}: sink uri '{uri}' of topic '{topic}': parquet:// names a path under the output root; use file:///… for an absolute path");
    public static OutputException Sink_SqliteUnderS3(ulong job, string topic, string uri, string root) =>
        new(ExitCode.BadInput, $"job {job}: sink '{uri}' of topic '{topic}' is an SQLite file under the output root, which is {root}; an SQLite sink needs a local output root (give this worker a directory --output, or send the topic to an s3:// sink)");
    public static OutputException Sink_BadS3(ulong job, string topic, string uri, string why) =>
        new(ExitCode.BadInput, $"job {job}: sink uri '{uri}' of topic '{topic}' is not a valid S3 location: {why}; write s3://BUCKET/PREFIX");
    public static OutputException Sink_Host(ulong job, string topic, string uri) =>
        new(ExitCode.BadInput, $"job {job}: sink uri '{uri}' of topic '{topic}' names a host; only local paths are supported (file:///ABSOLUTE/PATH)");
    public static OutputException Sink_OutsideRoots(ulong job, string topic, string path, IEnumerable<string> roots) =>
        new(ExitCode.BadInput, $"job {job}: sink of topic '{topic}' points to {path}, outside the output root and the allowed roots ({string.Join(", ", roots)}); write under the output root or add an allowed root to the worker's configuration");
    public static OutputException Sink_SymlinkEscape(ulong job, string topic, string path, string real) =>
        new(ExitCode.BadInput, $"job {job}: sink of topic '{topic}' points to {path}, which through a symlink is really {real}, outside the output root and the allowed roots; remove the symlink or add its target to the worker's allowed roots");
    public static OutputException Sink_AppendToFile(ulong job, string topic, string uri) =>
        new(ExitCode.BadInput, $"job {job}: sink '{uri}' of topic '{topic}' names a single .parquet file, which mode append cannot add to; use a directory uri (parquet://NAME) to append, or mode replace");
    public static OutputException Sink_DataExists(ulong job, string topic, string path) =>
        new(ExitCode.BadInput, $"job {job}: sink of topic '{topic}' has mode error and {path} already holds data; remove it or use mode append or replace");
    public static OutputException Schema_Mismatch(ulong job, string topic, string detail) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}' got a table whose schema differs from the topic's earlier tables: {detail}; yield one schema per topic or route the table to another topic");
    public static OutputException Schema_DuplicateColumn(ulong job, string topic, string column) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}' got a table with two columns named '{column}'; column names must be unique");
    public static OutputException Schema_ReservedColumn(ulong job, string topic, string column) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}' has a column named '{column}', which lineage reserves; rename the column or turn lineage off");
    public static OutputException Schema_CannotFillNulls(ulong job, string topic, string column, string type) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}' column '{column}' is all null in a table, and nulls of type {type} cannot be filled in; send the column with its type");
    public static OutputException Contract_BadDef(ulong job, string topic, string why) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}' has an unusable schema_def: {why}; fix the topic's schema in the parser's TOPICS or the config's [topics.{topic}]");
    public static OutputException Contract_Frozen(ulong job, string topic, int count, IReadOnlyList<string> first) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}' has contract freeze and a table broke its schema in {count} value(s), first {string.Join("; ", first)}; fix the parser or the data, or use contract discard_row to quarantine such rows");
    public static OutputException Contract_RowCap(ulong job, string topic, long rows, long cap) =>
        new(ExitCode.BadInput, $"job {job}: {rows} rows quarantined (last in topic '{topic}'), over the cap of {cap} per job (max_quarantine_rows); fix the parser or the data, or raise max_quarantine_rows");
    public static OutputException Contract_Fraction(ulong job, string topic, long quarantined, long rows, double max, string reasons) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}' quarantined {quarantined} of {rows} rows ({reasons}), more than its max_quarantine of {max.ToString("0.###", CultureInfo.InvariantCulture)}; fix the parser or the data, or raise the topic's max_quarantine");
    public static OutputException Schema_Drift(ulong job, string topic, string column, string written, string current, long version) =>
        new(ExitCode.BadInput, $"job {job}: topic '{topic}' column '{column}' is {written} in this job but {current} in the topic's current schema (version {version}); under contract evolve only new columns and int64 → float64 may change, so every file of the topic stays readable together; make the parser write {current}, or write to a new topic");
    public static OutputException Commit_DirectorySync(ulong job, string topic, string directory, int errno) =>
        new(ExitCode.Unavailable, $"job {job}: topic '{topic}' was renamed into {directory} but syncing that directory to disk failed ({System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(errno)}, errno {errno}); the file may not survive a power loss; check the disk, then retry the job");
    public static OutputException Commit_Supersede(ulong job, string path, Exception e) =>
        new(ExitCode.Unavailable, $"job {job}: its output is in place but the earlier output {path} could not be removed ({e.Message}); check the directory's permissions, then retry the job", e);
    public static OutputException Write_Failed(ulong job, string topic, ParquetException e) =>
        new(ExitCode.Unavailable, $"job {job}: writing topic '{topic}' failed: {e.Message}", e);
}
