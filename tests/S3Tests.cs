// Issue 18: output to S3-compatible object storage, through the native binary against a real S3 server
// on loopback (s3rver), every object checked by a second client (the AWS SDK for JavaScript) and read
// back as Parquet value by value. The end-to-end test is the README's "Run it on many machines": one
// sentinel, two workers with different CASPARIAN_HOMEs, one bucket.
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Xunit;

namespace Casparian.Tests;

public sealed class S3Tests : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(120);
    private readonly Cluster _c = new();
    private readonly S3Server _s3 = new();

    public void Dispose()
    {
        _c.Dispose();
        _s3.Dispose();
    }

    private const string Parser = "s3_csv";

    /// <summary>
    /// Three topics: "rows" and "lengths" with s3:// sinks in TOPICS, "stats" with none (so under the
    /// worker's output root); "stats" is skipped for a file containing "nostats".
    /// </summary>
    private string WriteParser()
    {
        string dir = _c.File(Parser);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "parser.py"), $$"""
            import csv
            import io

            name = "{{Parser}}"
            version = "1.0"

            TOPICS = {
                "rows": {"sink": "s3://{{S3Server.Bucket}}/warehouse/rows"},
                "lengths": {"sink": "s3://{{S3Server.Bucket}}/warehouse/lengths", "mode": "append"},
            }


            def parse(path):
                with open(path, newline="") as f:
                    text = f.read()
                rows = [{"file": int(r["file"]), "row": int(r["row"]), "value": r["value"]} for r in csv.DictReader(io.StringIO(text))]
                yield Output("rows", rows)
                yield Output("lengths", [{"file": r["file"], "row": r["row"], "length": len(r["value"])} for r in rows])
                if "nostats" not in text:
                    yield Output("stats", [{"file": rows[0]["file"], "count": len(rows)}])

            """);
        return dir;
    }

    private void Register(string dir) => Assert.StartsWith("registered parser", _c.Ok("parser", "register", dir).Stdout);

    private Daemon StartSentinel(string heartbeatTimeout = "3s")
    {
        // The operator's shell may export AWS credentials everywhere: the sentinel must not pass them on.
        var s = _c.Spawn("sentinel", ["sentinel", "--bind", _c.Address, "--heartbeat-timeout", heartbeatTimeout, "--retry-backoff", "0.1s"], env: _s3.WorkerEnvironment());
        _c.WaitUntil("the sentinel to listen", TimeSpan.FromSeconds(30), () => s.Stderr.Contains("listening", StringComparison.Ordinal));
        return s;
    }

    /// <summary>A worker with a home of its own whose output root is a prefix of the bucket.</summary>
    private Daemon StartWorker(string id, Dictionary<string, string?>? env = null, params string[] extra)
    {
        var e = _c.JoinEnvironment();
        foreach (var (k, v) in env ?? _s3.WorkerEnvironment()) e[k] = v;
        return _c.Spawn(id, ["worker", "--connect", _c.Address, "--output", $"s3://{S3Server.Bucket}/default", "--worker-id", id, "--slots", "2",
            "--heartbeat-interval", "0.2s", "--shutdown-grace", "10s", .. extra], home: HomeOf(id), env: e);
    }

    private string HomeOf(string worker) => _c.File("home-" + worker);

    private static void WaitJoined(Daemon sentinel, params string[] workers) =>
        Eventually.True(() => workers.All(w => sentinel.Stderr.Contains($"worker {w} joined", StringComparison.Ordinal)),
            TimeSpan.FromSeconds(30), $"workers {string.Join(", ", workers)} to join", sentinel.ToString);

    private static string Key(string prefix, string input) => $"{prefix}/{SinkTarget.SourceFileName(Parser, input)}";

    [Fact]
    public void S3_SentinelTwoWorkersOneBucket_ThreeTopicsOverTwentyFilesLandUnderTheirPrefixesAndEveryRowReadsBack()
    {
        Register(WriteParser());
        var inputs = _c.WriteInputs(20);
        var sentinel = StartSentinel();
        StartWorker("w-a");
        StartWorker("w-b");
        WaitJoined(sentinel, "w-a", "w-b");

        _c.Ok("job", "add", "--parser", Parser, _c.Inputs);
        _c.WaitForJobs(20, Patience);
        var jobs = _c.Jobs();
        Assert.All(jobs, j => Assert.True(j.State == "COMPLETED", $"job {j.Id}: {j.State} {j.Error}\n{_c.Diagnostics()}"));
        Assert.Equal(["w-a", "w-b"], jobs.Select(j => j.Worker!).Distinct().Order(StringComparer.Ordinal));

        // Every object under its topic's prefix, one per source and topic, nothing else in the bucket
        // (no temp or partial objects), each stamped with the job that wrote it.
        var all = _s3.List("");
        var expected = jobs.SelectMany(j => new[] { Key("warehouse/rows", j.Input), Key("warehouse/lengths", j.Input), Key("default/stats", j.Input) })
            .Order(StringComparer.Ordinal).ToList();
        Assert.Equal(expected, all.Select(o => o.Key));
        foreach (var j in jobs)
            foreach (string prefix in new[] { "warehouse/rows", "warehouse/lengths", "default/stats" })
                Assert.Equal(j.Id.ToString(CultureInfo.InvariantCulture), all.Single(o => o.Key == Key(prefix, j.Input)).JobId);

        // Every row read back through the second client, once.
        long total = 0;
        foreach (var j in jobs)
        {
            var want = inputs[j.Input];
            var rows = _s3.Read(Key("warehouse/rows", j.Input));
            Assert.Equal(want.Select(r => (object?)r.File), rows.Columns["file"]);
            Assert.Equal(want.Select(r => (object?)r.Row), rows.Columns["row"]);
            Assert.Equal(want.Select(r => (object?)r.Value), rows.Columns["value"]);
            Assert.All(rows.Columns["_job_id"], v => Assert.Equal(j.Id, v));
            Assert.All(rows.Columns["_source"], v => Assert.Equal(j.Input, v));
            var lengths = _s3.Read(Key("warehouse/lengths", j.Input));
            Assert.Equal(want.Select(r => (object?)(long)r.Value.Length), lengths.Columns["length"]);
            var stats = _s3.Read(Key("default/stats", j.Input));
            Assert.Equal([(object?)(long)want.Count], stats.Columns["count"]);
            total += rows.Rows;
        }
        Assert.Equal(60, total);

        // Nothing is left staged on either worker.
        foreach (string w in new[] { "w-a", "w-b" })
        {
            string staging = Path.Combine(HomeOf(w), "staging");
            Assert.Empty(Directory.Exists(staging) ? Directory.GetFiles(staging, "*", SearchOption.AllDirectories) : []);
        }

        // The credentials never appear in a log, in `job show`, or in the store (which holds what DISPATCH carries).
        var seen = new StringBuilder();
        seen.Append(_c.Diagnostics());
        foreach (var j in jobs) seen.Append(_c.Ok("job", "show", j.Id.ToString(CultureInfo.InvariantCulture)).Stdout);
        foreach (string w in new[] { "w-a", "w-b" })
            foreach (string log in Directory.GetFiles(Path.Combine(HomeOf(w), "logs"), "*", SearchOption.AllDirectories)) seen.Append(File.ReadAllText(log));
        Assert.Contains($"s3://{S3Server.Bucket}/warehouse/rows/", seen.ToString());
        Assert.DoesNotContain(S3Server.SecretKey, seen.ToString());
        Assert.DoesNotContain(S3Server.SecretKey, Encoding.Latin1.GetString(File.ReadAllBytes(_c.Db)));
    }

    [Fact]
    public void S3_ReprocessedSource_ReplacesItsObjectsAndATopicNoLongerWrittenLosesItsObjectAfterTheCommit()
    {
        Register(WriteParser());
        var inputs = _c.WriteInputs(3);
        var sentinel = StartSentinel();
        StartWorker("w-a");
        WaitJoined(sentinel, "w-a");
        _c.Ok("job", "add", "--parser", Parser, _c.Inputs);
        _c.WaitForJobs(3, Patience);

        // The source is edited: new values, and the marker that makes the parser skip topic "stats".
        string edited = inputs.Keys.Order(StringComparer.Ordinal).ElementAt(1);
        File.WriteAllText(edited, "file,row,value\n1,0,changed-a\n1,1,nostats\n");
        _c.Ok("job", "add", "--parser", Parser, _c.Inputs);
        _c.WaitForJobs(4, Patience);
        var jobs = _c.Jobs();
        Assert.All(jobs, j => Assert.True(j.State == "COMPLETED", $"job {j.Id}: {j.State} {j.Error}"));
        long rerun = jobs.Single(j => j.Id == 4).Id;

        // Still one object per source in rows, now holding the new rows only, written by the new job.
        var rows = _s3.List("warehouse/rows/");
        Assert.Equal(inputs.Keys.Select(i => Key("warehouse/rows", i)).Order(StringComparer.Ordinal), rows.Select(o => o.Key));
        Assert.Equal(rerun.ToString(CultureInfo.InvariantCulture), rows.Single(o => o.Key == Key("warehouse/rows", edited)).JobId);
        var values = rows.SelectMany(o => _s3.Read(o.Key).Columns["value"]).Cast<string>().ToList();
        Assert.Equal(values.Count, values.Distinct().Count());
        Assert.Equal(["changed-a", "nostats"], _s3.Read(Key("warehouse/rows", edited)).Columns["value"]);
        Assert.Equal(8, values.Count);
        // The new job wrote no stats for the edited source: its old stats object is gone, the others stay.
        Assert.Equal(inputs.Keys.Where(i => i != edited).Select(i => Key("default/stats", i)).Order(StringComparer.Ordinal), _s3.List("default/stats/").Select(o => o.Key));
    }

    [Fact]
    public void S3_WorkerKilledMidUpload_LeavesNoObjectAndTheRetryAbortsItsUploadAndLandsOnce()
    {
        const int Rows = 200_000;
        string dir = _c.File("s3_big");
        Directory.CreateDirectory(dir);
        // 64 hex digits of SHA-256 per row: incompressible, so the file is about 13 MB (three 5 MB parts).
        File.WriteAllText(Path.Combine(dir, "parser.py"), $$"""
            import hashlib

            name = "s3_big"
            version = "1.0"


            def parse(path):
                yield Output("big", [{"i": i, "h": hashlib.sha256(str(i).encode()).hexdigest()} for i in range({{Rows}})])

            """);
        Register(dir);
        string input = _c.File("one.txt");
        File.WriteAllText(input, "x");
        var sentinel = StartSentinel();
        string[] multipart = ["--s3-multipart-threshold", "5MB", "--s3-part-size", "5MB", "--s3-parts-in-flight", "1"];
        var env = _s3.WorkerEnvironment();
        env[FaultPoint.Variable] = S3Transfer.FaultAfterFirstPart;
        var doomed = StartWorker("w-doomed", env, multipart);
        WaitJoined(sentinel, "w-doomed");
        _c.Ok("job", "add", "--parser", "s3_big", input);

        doomed.WaitForExit(Patience);
        Assert.Contains($"fault point {S3Transfer.FaultAfterFirstPart}", doomed.Stderr);
        // Killed between two parts: no object, one upload the server still holds.
        Assert.Empty(_s3.List(""));
        Assert.Single(_s3.UnfinishedUploads());

        StartWorker("w-b", null, multipart);
        _c.WaitForJobs(1, Patience);
        var job = Assert.Single(_c.Jobs());
        Assert.True(job.State == "COMPLETED" && job.Worker == "w-b", $"{job}\n{_c.Diagnostics()}");
        Assert.Empty(_s3.UnfinishedUploads());
        var listed = Assert.Single(_s3.List(""));
        Assert.Equal($"default/big/{SinkTarget.SourceFileName("s3_big", input)}", listed.Key);
        Assert.True(listed.Size > 10L << 20, $"{listed.Size} bytes: not a multipart-sized file");
        var t = _s3.Read(listed.Key);
        Assert.Equal(Rows, t.Rows);
        foreach (int i in new[] { 0, 1, Rows / 2, Rows - 1 })
        {
            Assert.Equal((long)i, t.Columns["i"][i]);
            Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(Encoding.ASCII.GetBytes(i.ToString(CultureInfo.InvariantCulture)))), t.Columns["h"][i]);
        }
        Assert.Equal(Rows, t.Columns["i"].Distinct().Count());
    }

    [Fact]
    public void S3_BadCredentialsOrUnreachableEndpoint_OneClearLinePerJobAndTransientRetries()
    {
        Register(WriteParser());
        var sentinel = StartSentinel();
        var bad = StartWorker("w-bad", _s3.WorkerEnvironment(accessKey: "NOSUCHKEY"));
        WaitJoined(sentinel, "w-bad");
        _c.WriteInputs(2);
        _c.Ok("job", "add", "--parser", Parser, _c.Inputs);
        _c.WaitForJobs(2, Patience);
        foreach (var j in _c.Jobs())
        {
            Assert.True(j.State == "FAILED" && j.Retries == 3, $"job {j.Id}: {j.State} after {j.Retries} retries: {j.Error}");
            Assert.DoesNotContain('\n', j.Error!);
            // The first request refused: the look at the key's current object (newest wins) or the upload.
            Assert.Matches($"^job {j.Id}: (uploading topic '[a-z]+' to|reading) s3://{S3Server.Bucket}/", j.Error);
            // A HEAD's 403 has no body, so no error code: the status says it; an upload's names InvalidAccessKeyId.
            Assert.Contains("(HTTP 403)", j.Error);
            Assert.True(j.Error!.Contains("reading", StringComparison.Ordinal) || j.Error.Contains("InvalidAccessKeyId", StringComparison.Ordinal), j.Error);
            Assert.Contains("check s3_endpoint and the worker's AWS credentials", j.Error);
        }
        bad.Signal(Posix.SigTerm);
        bad.WaitForExit(TimeSpan.FromSeconds(30));

        var env = _s3.WorkerEnvironment();
        env["CASPARIAN_S3_ENDPOINT"] = $"http://127.0.0.1:{Cluster.FreePort()}";
        StartWorker("w-unreachable", env);
        WaitJoined(sentinel, "w-unreachable");
        _c.WriteInputs(1, dir: _c.File("more"));
        _c.Ok("job", "add", "--parser", Parser, _c.File("more"));
        _c.WaitForJobs(3, Patience);
        var job = _c.Jobs().Single(j => j.Id == 3);
        Assert.True(job.State == "FAILED" && job.Retries == 3, $"{job}");
        Assert.DoesNotContain('\n', job.Error!);
        Assert.Matches($"^job 3: (uploading topic '[a-z]+' to|reading) s3://{S3Server.Bucket}/", job.Error);
        Assert.Contains("Connection refused", job.Error);
        Assert.Empty(_s3.List(""));
        Assert.Empty(_s3.UnfinishedUploads());
    }

    [Fact]
    public void S3_RunWithAnS3OutputAndAProfileFile_WritesEachTopicUnderThePrefixOrItsSink()
    {
        string parser = WriteParser();
        var inputs = _c.WriteInputs(2);
        // The credentials from a profile in a shared credentials file this time, not the variables.
        string credentials = _c.File("aws-credentials");
        File.WriteAllText(credentials, $"[casparian]\naws_access_key_id = {S3Server.AccessKey}\naws_secret_access_key = {S3Server.SecretKey}\n");
        var env = _s3.WorkerEnvironment();
        env["AWS_ACCESS_KEY_ID"] = null;
        env["AWS_SECRET_ACCESS_KEY"] = null;
        env["AWS_PROFILE"] = "casparian";
        env["AWS_SHARED_CREDENTIALS_FILE"] = credentials;
        env["AWS_CONFIG_FILE"] = _c.File("no-aws-config");
        env["CASPARIAN_HOME"] = _c.Home;
        env["CASPARIAN_PYTHON"] = Cluster.Python;
        var r = Proc.Run(Repo.Binary, ["run", parser, _c.Inputs, "--output", $"s3://{S3Server.Bucket}/dev"], TimeSpan.FromSeconds(120), _c.Root, env);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(["dev/stats/in-000.parquet", "dev/stats/in-001.parquet", "warehouse/lengths/in-000.parquet", "warehouse/lengths/in-001.parquet",
            "warehouse/rows/in-000.parquet", "warehouse/rows/in-001.parquet"], _s3.List("").Select(o => o.Key));
        var first = inputs.OrderBy(i => i.Key, StringComparer.Ordinal).First().Value;
        Assert.Equal(first.Select(x => (object?)x.Value), _s3.Read("warehouse/rows/in-000.parquet").Columns["value"]);
        Assert.DoesNotContain(S3Server.SecretKey, r.Stdout + r.Stderr);
    }
}

public sealed class S3QuarantineTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly S3Server _s3 = new();

    public void Dispose()
    {
        _s3.Dispose();
        _dir.Dispose();
    }

    [Fact]
    public void S3_QuarantinedRows_GoToUnderscoreQuarantineBesideTheTopicInTheSameBucket()
    {
        string parser = _dir.File("s3_q.py");
        File.WriteAllText(parser, $$"""
            name = "s3_q"
            version = "1.0"

            TOPICS = {
                "sales": {"sink": "s3://{{S3Server.Bucket}}/w/sales", "schema": {"id": "int64"}, "contract": "discard_row", "max_quarantine": 0.9},
                "other": {"schema": {"id": "int64"}, "contract": "discard_row", "max_quarantine": 0.9},
            }


            def parse(path):
                yield Output("sales", [{"id": "1"}, {"id": "x"}])
                yield Output("other", [{"id": "2"}, {"id": "y"}, {"id": "z"}])

            """);
        string input = _dir.File("in.txt");
        File.WriteAllText(input, "x");
        var env = _s3.WorkerEnvironment();
        env["CASPARIAN_HOME"] = _dir.File("home");
        env["CASPARIAN_PYTHON"] = Cluster.Python;
        var r = Proc.Run(Repo.Binary, ["run", parser, input, "--output", $"s3://{S3Server.Bucket}/dev"], TimeSpan.FromSeconds(120), _dir.Path, env);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(["dev/_quarantine/other/in.parquet", "dev/other/in.parquet", "w/_quarantine/sales/in.parquet", "w/sales/in.parquet"], _s3.List("").Select(o => o.Key));
        Assert.Equal([(object?)1L], _s3.Read("w/sales/in.parquet").Columns["id"]);
        Assert.Equal(1, _s3.Read("w/_quarantine/sales/in.parquet").Rows);
        Assert.Equal([(object?)2L], _s3.Read("dev/other/in.parquet").Columns["id"]);
        Assert.Equal(2, _s3.Read("dev/_quarantine/other/in.parquet").Rows);
    }
}

public sealed class S3LocationTests
{
    [Theory]
    [InlineData("s3://lake", "lake", "")]
    [InlineData("s3://lake/", "lake", "")]
    [InlineData("s3://lake/a/b/", "lake", "a/b")]
    [InlineData("S3://my.bucket-1/x.parquet", "my.bucket-1", "x.parquet")]
    public void S3Location_Parse_TakesBucketAndKey(string uri, string bucket, string key)
    {
        var l = S3Location.TryParse(uri, out string why);
        Assert.True(l is not null, why);
        Assert.Equal(new S3Location(bucket, key), l);
    }

    [Theory]
    // Not s3.
    [InlineData("file:///tmp/x")]
    // Bucket too short.
    [InlineData("s3://ab/x")]
    // Upper case in the bucket.
    [InlineData("s3://Lake/x")]
    // A '..' segment.
    [InlineData("s3://lake/a/../b")]
    // An empty segment.
    [InlineData("s3://lake/a//b")]
    // A control character.
    [InlineData("s3://lake/a\nb")]
    public void S3Location_Parse_RefusesWithAReason(string uri)
    {
        Assert.Null(S3Location.TryParse(uri, out string why));
        Assert.NotEmpty(why);
    }

    [Fact]
    public void S3Location_OutputSetting_TakesAnS3UriAsGivenAndRefusesABadOneInOneLine()
    {
        using var dir = new TempDir();
        Dictionary<string, string?> Env(string output) => new() { ["CASPARIAN_HOME"] = dir.Path, ["CASPARIAN_OUTPUT"] = output };
        Assert.Equal("s3://lake/casparian", Config.Load(null, Env("s3://lake/casparian/"), dir.Path).Get(Config.Output));
        var e = Assert.Throws<InputException>(() => Config.Load(null, Env("s3://Lake/x"), dir.Path));
        Assert.Equal("bad value 's3://Lake/x' for environment variable CASPARIAN_OUTPUT: expected s3://BUCKET/PREFIX (bucket name 'Lake' is not 3 to 63 lower-case letters, digits, '.' and '-')", e.Message);
    }

    [Fact]
    public void S3Location_SinkUnderAnS3Root_ResolvesParquetAndRelativeUrisToPrefixes()
    {
        var options = Defaults.Output("s3://lake/root");
        var t = SinkTarget.Resolve(options, 7, "sales", "parquet://warehouse/sales", SinkMode.Append, "f.parquet");
        Assert.Equal("s3://lake/root/warehouse/sales/f.parquet", t.RemoteObject.Uri);
        Assert.StartsWith(options.Staging + "/", t.Directory);
        Assert.NotEqual(t.Directory, SinkTarget.Resolve(options, 7, "sales", "parquet://_quarantine/sales", SinkMode.Append, "f.parquet").Directory);
        var single = SinkTarget.Resolve(options, 7, "sales", "s3://other-bucket/one.parquet", SinkMode.Replace);
        Assert.True(single.SingleFile);
        Assert.Equal("s3://other-bucket/one.parquet", single.RemoteObject.Uri);
        var e = Assert.Throws<OutputException>(() => SinkTarget.Resolve(options, 7, "sales", "parquet://a/../b", SinkMode.Append));
        Assert.Contains("contains '..'", e.Message);
        e = Assert.Throws<OutputException>(() => SqliteTarget.Resolve(options, 7, "sales", "sqlite://x.db?table=t", SinkMode.Append));
        Assert.Contains("an SQLite sink needs a local output root", e.Message);
        Assert.Null(t.QuarantineUri("_quarantine"));
        Assert.Equal("s3://lake/root/_quarantine/sales", SinkTarget.Resolve(options, 7, "sales", "parquet://_quarantine/sales", SinkMode.Append).Remote!.Value.Uri);
        Assert.Equal("s3://other-bucket/_quarantine/sales", single.QuarantineUri("_quarantine"));
        e = Assert.Throws<OutputException>(() => SinkTarget.Resolve(options, 7, "sales", "s3://UPPER/x", SinkMode.Append));
        Assert.Contains("is not a valid S3 location: bucket name 'UPPER'", e.Message);
    }
}
