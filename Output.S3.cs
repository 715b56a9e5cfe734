// S3 sinks (issue 18): a topic's file is written to a local temp file exactly as for a local sink, then
// uploaded to s3://BUCKET/KEY under the same deterministic per-(parser, source) name.
//
// Why this is atomic: S3 makes an object visible only when its single PutObject or its
// CompleteMultipartUpload succeeds, and overwriting a key replaces the object in one step. A reader
// listing the prefix sees the source's old object or its new one, never both and never a partial one.
// Objects of topics the new job no longer writes are deleted after every new object is in place.
//
// Uploading: one PUT up to s3_multipart_threshold; above it a multipart upload of s3_part_size parts with
// at most s3_parts_in_flight of them in flight, each part read by the SDK from the file at its offset,
// so memory is bounded by the parts in flight, not the file. A failure aborts the multipart upload (no
// object, no parts left behind) and is transient: the job is retried with the store's backoff. A worker
// killed mid-upload cannot abort; the retry of the job lists the key's unfinished uploads and aborts them
// before it starts its own.
//
// Credentials come only from the worker's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// AWS_SESSION_TOKEN) or a profile file (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials);
// never from DISPATCH, the config file or a flag, and no message here includes them.
using System.Globalization;
using Amazon;
using Amazon.Runtime;
using Amazon.Runtime.CredentialManagement;
using Amazon.S3;
using Amazon.S3.Model;

namespace Casparian;

/// <summary>An object or a prefix in a bucket: <c>s3://Bucket/Key</c>. Key has no leading or trailing '/'.</summary>
internal readonly record struct S3Location(string Bucket, string Key)
{
    public const string Scheme = "s3://";

    public static bool IsS3(string uri) => uri.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase);

    public string Uri => Key.Length == 0 ? $"{Scheme}{Bucket}" : $"{Scheme}{Bucket}/{Key}";

    /// <summary>The location <paramref name="relative"/> (a '/'-separated path, no '..') below this one.</summary>
    public S3Location Child(string relative)
    {
        string rest = relative.Trim('/');
        return rest.Length == 0 ? this : new(Bucket, Key.Length == 0 ? rest : $"{Key}/{rest}");
    }

    /// <summary>
    /// s3://BUCKET[/KEY]: a bucket name of 3 to 63 lower-case letters, digits, '.' and '-'; a key of
    /// printable characters without '.' or '..' segments or empty segments ('//'). Null with the reason otherwise.
    /// </summary>
    public static S3Location? TryParse(string uri, out string why)
    {
        why = "";
        if (!IsS3(uri)) { why = "it is not an s3:// uri"; return null; }
        string rest = uri[Scheme.Length..];
        int slash = rest.IndexOf('/');
        string bucket = slash < 0 ? rest : rest[..slash];
        string key = slash < 0 ? "" : rest[(slash + 1)..].TrimEnd('/');
        if (bucket.Length is < 3 or > 63 || !bucket.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c is '.' or '-'))
        {
            why = $"bucket name '{bucket}' is not 3 to 63 lower-case letters, digits, '.' and '-'";
            return null;
        }
        if (key.Any(c => char.IsControl(c)) || key.Length > 900)
        {
            why = "the key holds a control character or is longer than 900 characters";
            return null;
        }
        if (key.Length > 0 && key.Split('/').Any(s => s is "" or "." or ".."))
        {
            why = "the key has an empty, '.' or '..' segment";
            return null;
        }
        return new S3Location(bucket, key);
    }
}

/// <summary>The worker's S3 settings (Config: s3_*). Credentials are not here: they never pass through settings.</summary>
internal sealed record S3Settings
{
    /// <summary>An S3-compatible endpoint (http://HOST:PORT); empty for AWS itself.</summary>
    public required string Endpoint { get; init; }
    public required string Region { get; init; }
    /// <summary>Address buckets as ENDPOINT/BUCKET rather than BUCKET.ENDPOINT (most self-hosted servers need it).</summary>
    public required bool PathStyle { get; init; }
    /// <summary>Files larger than this go up as a multipart upload; smaller ones in one PUT.</summary>
    public required long MultipartThreshold { get; init; }
    public required long PartSize { get; init; }
    public required int PartsInFlight { get; init; }
}

/// <summary>A failed S3 operation: transient (the worker reports the job for a retry with backoff).</summary>
internal sealed class S3Exception(string message, Exception? inner = null) : CasparianException(ExitCode.Unavailable, message, inner);

/// <summary>
/// One S3 client for a job's uploads and deletes: created on first use, disposed with the job's output.
/// Every failure becomes an <see cref="S3Exception"/> naming the job, the topic and the object.
/// </summary>
internal sealed class S3Transfer(S3Settings settings, ulong jobId) : IDisposable
{
    /// <summary>Object metadata naming the job that wrote the object (mode error tells a retry's own object by it).</summary>
    public const string JobIdMetadata = "casparian-job-id";

    /// <summary>Killed here, the worker leaves a multipart upload with one part stored (FaultPoint).</summary>
    public const string FaultAfterFirstPart = "upload-after-first-part";

    private AmazonS3Client? _client;

    private AmazonS3Client Client => _client ??= Connect(settings, jobId);

    /// <summary>A client for <paramref name="settings"/> with the worker's own credentials.</summary>
    public static AmazonS3Client Connect(S3Settings settings, ulong jobId)
    {
        var config = new AmazonS3Config
        {
            ForcePathStyle = settings.PathStyle,
            // Retries inside one upload are few: the job as a whole is retried with the store's backoff.
            MaxErrorRetry = 2,
            Timeout = TimeSpan.FromMinutes(5),
            // Checksums only where the operation requires one: a trailing checksum needs aws-chunked
            // encoding, which not every S3-compatible server speaks.
            RequestChecksumCalculation = RequestChecksumCalculation.WHEN_REQUIRED,
            ResponseChecksumValidation = ResponseChecksumValidation.WHEN_REQUIRED,
        };
        if (settings.Endpoint.Length > 0)
        {
            config.ServiceURL = settings.Endpoint;
            config.AuthenticationRegion = settings.Region;
        }
        else
        {
            config.RegionEndpoint = RegionEndpoint.GetBySystemName(settings.Region);
        }
        return new AmazonS3Client(Credentials(jobId), config);
    }

    /// <summary>
    /// AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), else the profile AWS_PROFILE
    /// (default "default") in the shared credentials and config files. Nothing else: no instance
    /// metadata probing, which would stall a worker off EC2 for seconds per job.
    /// </summary>
    private static AWSCredentials Credentials(ulong jobId)
    {
        string? id = Environment.GetEnvironmentVariable("AWS_ACCESS_KEY_ID");
        string? secret = Environment.GetEnvironmentVariable("AWS_SECRET_ACCESS_KEY");
        if (id is { Length: > 0 } && secret is { Length: > 0 })
            return Environment.GetEnvironmentVariable("AWS_SESSION_TOKEN") is { Length: > 0 } token
                ? new SessionAWSCredentials(id, secret, token)
                : new BasicAWSCredentials(id, secret);
        string profile = Environment.GetEnvironmentVariable("AWS_PROFILE") is { Length: > 0 } p ? p : "default";
        if (new CredentialProfileStoreChain().TryGetAWSCredentials(profile, out var credentials)) return credentials;
        throw S3Throw.NoCredentials(jobId, profile);
    }

    /// <summary>
    /// Uploads <paramref name="file"/> to <paramref name="target"/>, replacing any object there in one
    /// step. Unfinished multipart uploads to the same key (a killed earlier attempt) are aborted first.
    /// </summary>
    public void Upload(string topic, string file, S3Location target)
    {
        long size = new FileInfo(file).Length;
        try
        {
            if (size <= settings.MultipartThreshold) Put(file, target);
            else UploadMultipart(topic, file, size, target).GetAwaiter().GetResult();
        }
        catch (Exception e) when (IsS3Failure(e))
        {
            throw S3Throw.Upload(jobId, topic, target, e);
        }
    }

    private void Put(string file, S3Location target)
    {
        var request = new PutObjectRequest { BucketName = target.Bucket, Key = target.Key, FilePath = file, UseChunkEncoding = false, ContentType = "application/vnd.apache.parquet" };
        request.Metadata.Add(JobIdMetadata, jobId.ToString(CultureInfo.InvariantCulture));
        Client.PutObjectAsync(request).GetAwaiter().GetResult();
    }

    private async Task UploadMultipart(string topic, string file, long size, S3Location target)
    {
        await AbortUnfinished(target).ConfigureAwait(false);
        var initiate = new InitiateMultipartUploadRequest { BucketName = target.Bucket, Key = target.Key, ContentType = "application/vnd.apache.parquet" };
        initiate.Metadata.Add(JobIdMetadata, jobId.ToString(CultureInfo.InvariantCulture));
        string uploadId = (await Client.InitiateMultipartUploadAsync(initiate).ConfigureAwait(false)).UploadId;
        try
        {
            long partSize = settings.PartSize;
            int parts = checked((int)((size + partSize - 1) / partSize));
            var etags = new PartETag[parts];
            using var slots = new SemaphoreSlim(Math.Max(1, settings.PartsInFlight));
            using var failed = new CancellationTokenSource();
            int done = 0;
            var tasks = new List<Task>(parts);
            for (int i = 0; i < parts && !failed.IsCancellationRequested; i++)
            {
                try { await slots.WaitAsync(failed.Token).ConfigureAwait(false); }
                catch (OperationCanceledException) { break; }
                int number = i + 1;
                long offset = i * partSize;
                tasks.Add(Task.Run(async () =>
                {
                    try
                    {
                        var response = await Client.UploadPartAsync(new UploadPartRequest
                        {
                            BucketName = target.Bucket,
                            Key = target.Key,
                            UploadId = uploadId,
                            PartNumber = number,
                            FilePath = file,
                            FilePosition = offset,
                            PartSize = Math.Min(partSize, size - offset),
                            UseChunkEncoding = false,
                        }, failed.Token).ConfigureAwait(false);
                        etags[number - 1] = new PartETag(number, response.ETag);
                        if (Interlocked.Increment(ref done) == 1) FaultPoint.Hit(FaultAfterFirstPart);
                    }
                    catch
                    {
                        // No new parts once one failed; the ones in flight end with the cancellation.
                        await failed.CancelAsync().ConfigureAwait(false);
                        throw;
                    }
                    finally
                    {
                        slots.Release();
                    }
                }));
            }
            var all = Task.WhenAll(tasks);
            try
            {
                await all.ConfigureAwait(false);
            }
            catch when (all.Exception is { } e)
            {
                // The part that failed, not the ones its failure cancelled.
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerExceptions.FirstOrDefault(x => x is not OperationCanceledException) ?? e.InnerExceptions[0]);
            }
            await Client.CompleteMultipartUploadAsync(new CompleteMultipartUploadRequest
            {
                BucketName = target.Bucket,
                Key = target.Key,
                UploadId = uploadId,
                PartETags = [.. etags],
            }).ConfigureAwait(false);
        }
        catch
        {
            await Abort(target, uploadId).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Best effort: a server that cannot abort now still expires the upload by its lifecycle rule.</summary>
    private async Task Abort(S3Location target, string uploadId)
    {
        try
        {
            await Client.AbortMultipartUploadAsync(new AbortMultipartUploadRequest { BucketName = target.Bucket, Key = target.Key, UploadId = uploadId }).ConfigureAwait(false);
        }
        catch (Exception e) when (IsS3Failure(e)) { }
    }

    /// <summary>Aborts the unfinished multipart uploads to exactly this key: what killed attempts of this (parser, source) left.</summary>
    private async Task AbortUnfinished(S3Location target)
    {
        ListMultipartUploadsResponse list;
        try
        {
            list = await Client.ListMultipartUploadsAsync(new ListMultipartUploadsRequest { BucketName = target.Bucket, Prefix = target.Key }).ConfigureAwait(false);
        }
        catch (AmazonS3Exception e) when (e.ErrorCode == "NotImplemented")
        {
            return;
        }
        foreach (var upload in list.MultipartUploads ?? [])
            if (upload.Key == target.Key) await Abort(target, upload.UploadId).ConfigureAwait(false);
    }

    /// <summary>The *.parquet objects directly under <paramref name="prefix"/> (not in sub-prefixes), hidden names skipped.</summary>
    public List<S3Location> DataObjects(string topic, S3Location prefix)
    {
        var found = new List<S3Location>();
        var request = new ListObjectsV2Request { BucketName = prefix.Bucket, Prefix = prefix.Key.Length == 0 ? "" : prefix.Key + "/", Delimiter = "/" };
        try
        {
            while (true)
            {
                var page = Client.ListObjectsV2Async(request).GetAwaiter().GetResult();
                foreach (var o in page.S3Objects ?? [])
                {
                    string name = o.Key[(o.Key.LastIndexOf('/') + 1)..];
                    if (name.EndsWith(".parquet", StringComparison.Ordinal) && !name.StartsWith('.')) found.Add(new(prefix.Bucket, o.Key));
                }
                if (page.IsTruncated != true) return found;
                request.ContinuationToken = page.NextContinuationToken;
            }
        }
        catch (Exception e) when (IsS3Failure(e))
        {
            throw S3Throw.List(jobId, topic, prefix, e);
        }
    }

    /// <summary>Whether the object exists, and the job id its metadata names (null if none).</summary>
    public bool TryHead(string topic, S3Location location, out ulong? writer)
    {
        writer = null;
        try
        {
            var head = Client.GetObjectMetadataAsync(location.Bucket, location.Key).GetAwaiter().GetResult();
            if (ulong.TryParse(head.Metadata[JobIdMetadata], NumberStyles.None, CultureInfo.InvariantCulture, out ulong id)) writer = id;
            return true;
        }
        catch (AmazonS3Exception e) when (e.StatusCode == System.Net.HttpStatusCode.NotFound)
        {
            return false;
        }
        catch (Exception e) when (IsS3Failure(e))
        {
            throw S3Throw.List(jobId, topic, location, e);
        }
    }

    /// <summary>Deletes an object; one already gone is fine (S3 deletes are idempotent).</summary>
    public void Delete(string topic, S3Location location)
    {
        try
        {
            Client.DeleteObjectAsync(location.Bucket, location.Key).GetAwaiter().GetResult();
        }
        catch (Exception e) when (IsS3Failure(e))
        {
            throw S3Throw.Delete(jobId, topic, location, e);
        }
    }

    private static bool IsS3Failure(Exception e) =>
        e is AmazonServiceException or AmazonClientException or HttpRequestException or IOException or TaskCanceledException or OperationCanceledException;

    public void Dispose()
    {
        _client?.Dispose();
        _client = null;
    }
}

internal static class S3Throw
{
    private const string Check = "check s3_endpoint and the worker's AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE); the job is retried";

    public static S3Exception NoCredentials(ulong job, string profile) =>
        new($"job {job}: no S3 credentials on this worker: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set and there is no profile '{profile}' in the AWS credentials files; set them in the worker's environment; the job is retried");
    public static S3Exception Upload(ulong job, string topic, S3Location target, Exception e) =>
        new($"job {job}: uploading topic '{topic}' to {target.Uri} failed: {Cause(e)}; {Check}", e);
    public static S3Exception List(ulong job, string topic, S3Location target, Exception e) =>
        new($"job {job}: reading {target.Uri} for topic '{topic}' failed: {Cause(e)}; {Check}", e);
    public static S3Exception Delete(ulong job, string topic, S3Location target, Exception e) =>
        new($"job {job}: its output is in place but the earlier object {target.Uri} of topic '{topic}' could not be deleted: {Cause(e)}; {Check}", e);

    /// <summary>One line: the service's error code and HTTP status when it answered, else what failed on the way.</summary>
    private static string Cause(Exception e)
    {
        string text = e switch
        {
            AmazonServiceException s when s.ErrorCode is { Length: > 0 } code => $"{code} (HTTP {(int)s.StatusCode}): {s.Message}",
            _ when e.InnerException is { } inner && e.Message.Length == 0 => inner.Message,
            _ => e.InnerException is { } inner ? $"{e.Message} ({inner.Message})" : e.Message,
        };
        return Text.FirstLine(text);
    }
}

/// <summary>The S3 side of a sink: resolution of s3:// uris (and of root-relative ones under an s3:// root) and the mode checks on a prefix.</summary>
internal sealed partial record SinkTarget
{
    /// <summary>
    /// For an S3 sink, the dataset prefix (or, <see cref="SingleFile"/>, the object itself); then
    /// <see cref="Directory"/> is the local staging directory the file is written in before its upload.
    /// </summary>
    public S3Location? Remote { get; init; }

    /// <summary>The object this job's file becomes.</summary>
    public S3Location RemoteObject => SingleFile ? Remote!.Value : Remote!.Value.Child(FileName);

    /// <summary>The output root as an S3 prefix when <c>output</c> is an s3:// uri, else null.</summary>
    public static S3Location? RemoteRoot(OutputOptions options) =>
        S3Location.IsS3(options.Root) ? S3Location.TryParse(options.Root, out _) : null;

    /// <summary>
    /// An S3 target: <paramref name="location"/> is a single object when it ends in .parquet (and the uri
    /// not in '/'), else a dataset prefix holding this job's <paramref name="fileName"/>. Staged under
    /// STAGING/{first 16 hex of SHA-256 of the location}, one directory per destination prefix, so two
    /// writers of one job (topics, a topic and its quarantine) never share a temp file's name.
    /// </summary>
    private static SinkTarget ResolveS3(OutputOptions options, ulong jobId, string topic, string uri, SinkMode mode, string? fileName, S3Location location)
    {
        bool singleFile = location.Key.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase) && !uri.EndsWith('/');
        if (singleFile && mode == SinkMode.Append) throw OutputThrow.Sink_AppendToFile(jobId, topic, uri);
        string staging = Path.Combine(options.Staging, Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(location.Uri)))[..16]);
        return singleFile
            ? new SinkTarget(topic, uri, staging, location.Key[(location.Key.LastIndexOf('/') + 1)..], mode, SingleFile: true) { Remote = location }
            : new SinkTarget(topic, uri, staging, fileName ?? DatasetFileName(jobId, null, null), mode, SingleFile: false) { Remote = location };
    }

    private static S3Location ParseS3(ulong jobId, string topic, string uri) =>
        S3Location.TryParse(uri, out string why) ?? throw OutputThrow.Sink_BadS3(jobId, topic, uri, why);

    /// <summary>Mode error on S3: another job's object under this job's key, or any other data object in the prefix.</summary>
    public void CheckNoOtherObjects(S3Transfer s3, ulong jobId)
    {
        var own = RemoteObject;
        if (s3.TryHead(Topic, own, out ulong? writer) && writer != jobId) throw OutputThrow.Sink_DataExists(jobId, Topic, own.Uri);
        if (SingleFile) return;
        foreach (var other in s3.DataObjects(Topic, Remote!.Value))
            if (other != own) throw OutputThrow.Sink_DataExists(jobId, Topic, other.Uri);
    }

    /// <summary>Mode replace on S3: deletes every data object directly in the prefix except this job's; after the upload.</summary>
    public void DeleteOtherObjects(S3Transfer s3)
    {
        var own = RemoteObject;
        foreach (var other in s3.DataObjects(Topic, Remote!.Value))
            if (other != own) s3.Delete(Topic, other);
    }

    /// <summary>
    /// For an s3:// sink, where its topic's quarantine goes: <c>_quarantine/TOPIC</c> beside the dataset
    /// prefix (or beside the single object), in the same bucket, as OUTPUT/_quarantine/TOPIC lies beside
    /// OUTPUT/TOPIC. Null for any other sink, including a root-relative one under an s3:// root, whose
    /// quarantine is ROOT/_quarantine/TOPIC like a local root's.
    /// </summary>
    public string? QuarantineUri(string quarantineDirectory)
    {
        if (Remote is not { } remote || !S3Location.IsS3(Uri)) return null;
        string key = remote.Key;
        int slash = key.LastIndexOf('/');
        var parent = new S3Location(remote.Bucket, slash < 0 ? "" : key[..slash]);
        return parent.Child($"{quarantineDirectory}/{Topic}").Uri;
    }

    /// <summary>
    /// A superseded uri that is an object a sink could have written: s3://, a visible *.parquet name, and
    /// carrying our job-id metadata (checked by the caller before it deletes). Else null.
    /// </summary>
    public static S3Location? SupersededObject(string uri)
    {
        if (S3Location.TryParse(uri, out _) is not { } location || location.Key.Length == 0) return null;
        string name = location.Key[(location.Key.LastIndexOf('/') + 1)..];
        return name.EndsWith(".parquet", StringComparison.Ordinal) && !name.StartsWith('.') ? location : null;
    }
}
