// Quarantine (issue 14): the rows a topic's contract rejected, kept with the reason so nothing is lost
// and a fixed parser can be run over the same sources again. Per (job, topic) one Parquet file,
//   OUTPUT/_quarantine/TOPIC/{the job's file name}      (job-{id}.parquet, or the stem's under `run`)
// written and committed like the topic's own file (temp name, fsync, rename), with these columns:
//   _job_id   int64  the job
//   _source   utf8   the source path
//   _row      int64  the row's index among the rows the parser produced for the topic in this job
//   _column   utf8   the declared column that broke the contract
//   _reason   utf8   type | null | missing | range (ContractEnforcer.Code)
//   _message  utf8   what was wrong, readable (discard_row: every violation of the row, '; '-separated)
//   _raw      utf8   the row as the parser produced it, as a JSON object (all its columns)
// discard_row writes one quarantine row per rejected row; discard_value one per rejected value. The
// topic's receipt artifact carries quarantined_rows, quarantine_uri and the counts per reason, so the
// store can list them and the next job of the same (parser, source) supersedes the file with the
// topic's own. A topic that quarantines nothing deletes a quarantine file of its name left by an
// earlier run (`run` reuses names), so what is there always belongs to the current output.
using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Apache.Arrow;
using Apache.Arrow.Types;
using ArrowArray = Apache.Arrow.Array;

namespace Casparian;

internal sealed partial class JobOutput
{
    public const string QuarantineDirectory = "_quarantine";

    public static readonly Schema QuarantineSchema = new(
    [
        new Field("_job_id", Int64Type.Default, false),
        new Field("_source", StringType.Default, false),
        new Field("_row", Int64Type.Default, false),
        new Field("_column", StringType.Default, false),
        new Field("_reason", StringType.Default, false),
        new Field("_message", StringType.Default, false),
        new Field("_raw", StringType.Default, false),
    ], null);

    /// <summary>A topic's contract in this job: the enforcer (null under evolve), its limits and what it has rejected so far.</summary>
    private sealed class TopicContract(string topic, ContractEnforcer? enforcer, double maxFraction)
    {
        public string Topic { get; } = topic;
        public ContractEnforcer? Enforcer { get; } = enforcer;
        public double MaxFraction { get; } = maxFraction;
        public TopicWriter? Quarantine;
        public long Produced;
        public long Quarantined;
        // A handful of reasons and dropped names: lists searched linearly.
        public readonly List<(string Reason, long Rows)> Reasons = [];
        public readonly List<string> Dropped = [];

        public void Count(string reason)
        {
            int i = Reasons.FindIndex(r => r.Reason == reason);
            if (i < 0) Reasons.Add((reason, 1));
            else Reasons[i] = (reason, Reasons[i].Rows + 1);
        }

        /// <summary>"type:3,null:1": the receipt artifact's quarantine_reasons.</summary>
        public string ReasonsText => string.Join(",", Reasons.Select(r => $"{r.Reason}:{r.Rows.ToString(CultureInfo.InvariantCulture)}"));
    }

    /// <summary>
    /// Enforces <paramref name="contract"/>'s schema on <paramref name="batch"/>, writes what passes to the
    /// topic and what does not to its quarantine; throws when the contract is freeze and anything broke it,
    /// or when the job's quarantine passes the row cap.
    /// </summary>
    private void WriteContracted(TopicContract contract, RecordBatch batch)
    {
        var enforcer = contract.Enforcer!;
        using var scratch = new ScratchArrays();
        var outcome = enforcer.Apply(batch, scratch);
        foreach (string d in outcome.Dropped) if (!contract.Dropped.Contains(d)) contract.Dropped.Add(d);
        var violations = outcome.Violations;
        if (violations.Count > 0 && enforcer.Mode == ContractMode.Freeze)
            throw OutputThrow.Contract_Frozen(_jobId, contract.Topic, violations.Count, [.. violations.OrderBy(v => v.Row).ThenBy(v => v.Column).Take(3).Select(v => $"row {contract.Produced + v.Row}: {v.Message}")]);
        // A wrapper over arrays that belong to the batch or the scratch: not disposed.
        Topic(contract.Topic).Write(new RecordBatch(enforcer.Schema, outcome.Columns, outcome.Length));
        if (violations.Count > 0) Quarantine(contract, batch, outcome);
        contract.Produced += batch.Length;
        long total = _contracts.Sum(c => c.Quarantined);
        if (total > _options.MaxQuarantineRows) throw OutputThrow.Contract_RowCap(_jobId, contract.Topic, total, _options.MaxQuarantineRows);
    }

    private void Quarantine(TopicContract contract, RecordBatch batch, ContractOutcome outcome)
    {
        var enforcer = contract.Enforcer!;
        var ordered = new List<Violation>(outcome.Violations);
        ordered.Sort((a, b) => a.Row != b.Row ? a.Row.CompareTo(b.Row) : a.Column.CompareTo(b.Column));
        var jobIds = new Int64Array.Builder();
        var sources = new StringArray.Builder();
        var rows = new Int64Array.Builder();
        var columns = new StringArray.Builder();
        var reasons = new StringArray.Builder();
        var messages = new StringArray.Builder();
        var raws = new StringArray.Builder();
        string source = _source?.Path ?? "";
        void Add(int row, Violation first, string message)
        {
            string reason = ContractEnforcer.Code(first.Reason);
            jobIds.Append((long)_jobId);
            sources.Append(source);
            rows.Append(contract.Produced + row);
            columns.Append(enforcer.Columns[first.Column].Name);
            reasons.Append(reason);
            messages.Append(message);
            raws.Append(RawJson.Row(batch, row));
            contract.Count(reason);
            contract.Quarantined++;
        }
        if (enforcer.Mode == ContractMode.DiscardRow)
        {
            for (int k = 0; k < ordered.Count;)
            {
                int row = ordered[k].Row, end = k;
                while (end < ordered.Count && ordered[end].Row == row) end++;
                Add(row, ordered[k], end == k + 1 ? ordered[k].Message : string.Join("; ", ordered.GetRange(k, end - k).Select(v => v.Message)));
                k = end;
            }
        }
        else
        {
            foreach (var v in ordered) Add(v.Row, v, v.Message);
        }
        using var quarantined = new RecordBatch(QuarantineSchema,
            [jobIds.Build(), sources.Build(), rows.Build(), columns.Build(), reasons.Build(), messages.Build(), raws.Build()], rows.Length);
        contract.Quarantine ??= QuarantineWriter(contract.Topic);
        contract.Quarantine.Write(quarantined);
    }

    private TopicWriter QuarantineWriter(string topic)
    {
        var target = SinkTarget.Resolve(_options, _jobId, topic, QuarantineSink(topic), SinkMode.Append, _fileName);
        return new TopicWriter(this, $"{QuarantineDirectory}/{topic}", target, plain: true);
    }

    /// <summary>OUTPUT/_quarantine/TOPIC; for a topic whose sink is in S3, _quarantine/TOPIC beside that sink's prefix in its bucket.</summary>
    private string QuarantineSink(string topic) =>
        _sinks.TryGetValue(topic, out var sink) && sink.QuarantineUri(QuarantineDirectory) is { } remote ? remote : $"parquet://{QuarantineDirectory}/{topic}";

    /// <summary>Before anything is renamed: fails the job when a topic quarantined more than its fraction allows.</summary>
    private void CheckQuarantineFractions()
    {
        foreach (var c in _contracts)
            if (c.Produced > 0 && c.Quarantined > c.MaxFraction * c.Produced)
                throw OutputThrow.Contract_Fraction(_jobId, c.Topic, c.Quarantined, c.Produced, c.MaxFraction, c.ReasonsText);
    }

    /// <summary>Commits a topic's quarantine (or deletes a stale one of this job's name) and adds what it holds to the topic's artifact.</summary>
    private OutputArtifact CommitQuarantine(OutputArtifact artifact)
    {
        var contract = _contracts.Find(c => c.Topic == artifact.Topic);
        if (contract is null) return artifact;
        string? dropped = contract.Dropped.Count == 0 ? null : string.Join(",", contract.Dropped);
        if (contract.Quarantine is not { } writer)
        {
            var target = SinkTarget.Resolve(_options, _jobId, contract.Topic, QuarantineSink(contract.Topic), SinkMode.Append, _fileName);
            if (target.Remote is not null) S3.Delete(contract.Topic, target.RemoteObject);
            else if (File.Exists(target.FinalPath)) File.Delete(target.FinalPath);
            return artifact with { Quarantined = 0, DroppedColumns = dropped };
        }
        var q = writer.Commit();
        return artifact with { Quarantined = contract.Quarantined, QuarantineUri = q?.Uri, QuarantineReasons = contract.ReasonsText, DroppedColumns = dropped };
    }
}

/// <summary>Arrow values as JSON, for the quarantine's <c>_raw</c> and for violation messages.</summary>
internal static class RawJson
{
    private const int PreviewLength = 60;

    // One buffer and writer per thread, reset for each value or row: quarantining 100k rows must not
    // cost 100k writers. Row and Preview never nest.
    [ThreadStatic] private static ArrayBufferWriter<byte>? t_buffer;
    [ThreadStatic] private static Utf8JsonWriter? t_writer;

    private static Utf8JsonWriter Writer()
    {
        var buffer = t_buffer ??= new ArrayBufferWriter<byte>(256);
        buffer.Clear();
        if (t_writer is null) t_writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        else t_writer.Reset(buffer);
        return t_writer;
    }

    private static string Text(Utf8JsonWriter w)
    {
        w.Flush();
        return Encoding.UTF8.GetString(t_buffer!.WrittenSpan);
    }

    /// <summary>Row <paramref name="row"/> of <paramref name="batch"/> as a JSON object of every column.</summary>
    public static string Row(RecordBatch batch, int row)
    {
        var w = Writer();
        w.WriteStartObject();
        var fields = batch.Schema.FieldsList;
        for (int c = 0; c < fields.Count; c++)
        {
            w.WritePropertyName(fields[c].Name);
            Value(w, (ArrowArray)batch.Column(c), row);
        }
        w.WriteEndObject();
        return Text(w);
    }

    /// <summary>One value as JSON text, cut to about 60 characters: what a violation message quotes.</summary>
    public static string Preview(ArrowArray array, int row)
    {
        var w = Writer();
        Value(w, array, row);
        string text = Text(w);
        return text.Length <= PreviewLength ? text : text[..PreviewLength] + "…";
    }

    private static void Value(Utf8JsonWriter w, ArrowArray a, int i)
    {
        if (a.IsNull(i)) { w.WriteNullValue(); return; }
        switch (a)
        {
            case Int64Array x: w.WriteNumberValue(x.Values[i]); break;
            case Int32Array x: w.WriteNumberValue(x.Values[i]); break;
            case DoubleArray x when double.IsFinite(x.Values[i]): w.WriteNumberValue(x.Values[i]); break;
            case DoubleArray x: w.WriteStringValue(x.Values[i].ToString(CultureInfo.InvariantCulture)); break;
            case BooleanArray x: w.WriteBooleanValue(x.GetValue(i) == true); break;
            case StringArray x: w.WriteStringValue(x.GetString(i)); break;
            case BinaryArray x: w.WriteBase64StringValue(x.GetBytes(i)); break;
            case Date32Array x: w.WriteStringValue(DateOnly.FromDayNumber(DateOnly.FromDateTime(DateTime.UnixEpoch).DayNumber + x.Values[i]).ToString("yyyy-MM-dd", CultureInfo.InvariantCulture)); break;
            case TimestampArray x: w.WriteStringValue(x.GetTimestamp(i)?.ToString("o", CultureInfo.InvariantCulture)); break;
            case Decimal128Array x: w.WriteStringValue(DecimalText(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Int128>(x.Data.Buffers[1].Span)[x.Data.Offset + i], ((Decimal128Type)x.Data.DataType).Scale)); break;
            case ListArray x:
                w.WriteStartArray();
                var values = (ArrowArray)x.Values;
                for (int k = x.ValueOffsets[i]; k < x.ValueOffsets[i + 1]; k++) Value(w, values, k);
                w.WriteEndArray();
                break;
            default: w.WriteStringValue($"<{ArrowSchemas.Describe(a.Data.DataType)}>"); break;
        }
    }

    private static string DecimalText(Int128 unscaled, int scale)
    {
        string digits = Int128.Abs(unscaled).ToString(CultureInfo.InvariantCulture).PadLeft(scale + 1, '0');
        string text = scale == 0 ? digits : digits[..^scale] + "." + digits[^scale..];
        return unscaled < 0 ? "-" + text : text;
    }
}

internal sealed partial class JobOutput
{
    /// <summary>A sink's schema_def as this job enforces it; a bad one fails the job before the parser runs.</summary>
    private TopicContract ContractOf(string topic, string schemaDef)
    {
        SchemaContract declared;
        try
        {
            declared = SchemaContract.FromJson(schemaDef);
        }
        catch (Exception e) when (e is FormatException or JsonException or InvalidOperationException or KeyNotFoundException)
        {
            throw OutputThrow.Contract_BadDef(_jobId, topic, e.Message);
        }
        var mode = declared.Effective;
        if (mode != ContractMode.Evolve && declared.Columns is null)
            throw OutputThrow.Contract_BadDef(_jobId, topic, $"contract {SchemaContract.ModeName(mode)} without columns");
        var enforcer = mode == ContractMode.Evolve ? null : new ContractEnforcer(declared.Columns!, mode);
        return new TopicContract(topic, enforcer, declared.MaxQuarantine ?? _options.MaxQuarantine);
    }
}
