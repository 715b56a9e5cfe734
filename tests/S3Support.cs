// A real S3-protocol server on loopback for the S3 tests and the upload benchmark: s3rver (npm) over a
// throwaway directory, started by tests/s3/server.mjs, and a second client (the AWS SDK for JavaScript,
// tests/s3/client.mjs) that checks what the workers uploaded without sharing any code with them.
using System.Globalization;
using System.Text;
using Xunit.Sdk;

namespace Casparian.Tests;

/// <summary>One object as the second client lists it.</summary>
internal readonly record struct S3Listed(string Key, long Size, string JobId);

internal sealed class S3Server : IDisposable
{
    /// <summary>The one account s3rver knows: the access key id is checked, the secret is not (s3rver does not verify SigV4 signatures).</summary>
    public const string AccessKey = "S3RVER";
    public const string SecretKey = "S3RVER";
    public const string Bucket = "lake";

    private static readonly string Scripts = Path.Combine(Repo.Root, "tests", "s3");
    private readonly TempDir _dir = new();
    private readonly Daemon _server;

    public string DataDir => _dir.File("data");
    public int Port { get; }
    public string Endpoint => $"http://127.0.0.1:{Port}";

    public S3Server()
    {
        if (!Directory.Exists(Path.Combine(Scripts, "node_modules", "s3rver")))
            throw new InvalidOperationException($"s3rver is not installed; run `npm ci` in {Scripts} (./build.sh test does)");
        Directory.CreateDirectory(DataDir);
        _server = new Daemon("s3rver", ["server.mjs", DataDir, Bucket], new Dictionary<string, string?>(), Scripts, program: "node");
        try
        {
            Eventually.True(() => _server.Stdout.Contains("listening ", StringComparison.Ordinal) || _server.HasExited, TimeSpan.FromSeconds(60), "s3rver to listen", _server.ToString);
            string line = _server.Stdout.Split('\n').FirstOrDefault(l => l.StartsWith("listening ", StringComparison.Ordinal))
                ?? throw new XunitException($"s3rver did not start\n{_server}");
            Port = int.Parse(line[10..].Trim(), CultureInfo.InvariantCulture);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>What a worker needs to reach the bucket: the endpoint and path style as settings, the credentials as AWS's variables.</summary>
    public Dictionary<string, string?> WorkerEnvironment(string accessKey = AccessKey) => new()
    {
        ["AWS_ACCESS_KEY_ID"] = accessKey,
        ["AWS_SECRET_ACCESS_KEY"] = SecretKey,
        ["AWS_PROFILE"] = null,
        ["AWS_SESSION_TOKEN"] = null,
        ["CASPARIAN_S3_ENDPOINT"] = Endpoint,
        ["CASPARIAN_S3_PATH_STYLE"] = "true",
    };

    /// <summary>Every object under <paramref name="prefix"/>, by the second client, sorted by key.</summary>
    public List<S3Listed> List(string prefix)
    {
        string stdout = Client("list", Bucket, prefix);
        return [.. stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split('\t'))
            .Select(p => new S3Listed(p[0], long.Parse(p[1], CultureInfo.InvariantCulture), p[2]))
            .OrderBy(o => o.Key, StringComparer.Ordinal)];
    }

    /// <summary>Downloads an object with the second client and reads it back as Parquet.</summary>
    public ParquetTable Read(string key)
    {
        string file = _dir.File("download-" + Guid.NewGuid().ToString("N") + ".parquet");
        Client("get", Bucket, key, file);
        try { return ParquetTable.Read(file); }
        finally { File.Delete(file); }
    }

    /// <summary>Multipart uploads the server still holds (started, neither completed nor aborted), from s3rver's own store.</summary>
    public string[] UnfinishedUploads()
    {
        string dir = Path.Combine(DataDir, Bucket, "._S3rver_uploads");
        return Directory.Exists(dir) ? Directory.GetDirectories(dir) : [];
    }

    private string Client(params string[] args)
    {
        var env = new Dictionary<string, string?>
        {
            ["S3_ENDPOINT"] = Endpoint,
            ["AWS_ACCESS_KEY_ID"] = AccessKey,
            ["AWS_SECRET_ACCESS_KEY"] = SecretKey,
            // The SDK's notice that node 20 will go out of support: not a failure.
            ["NODE_NO_WARNINGS"] = "1",
        };
        var r = Proc.Run("node", ["client.mjs", .. args], TimeSpan.FromSeconds(60), Scripts, env);
        if (r.ExitCode != 0) throw new XunitException($"node client.mjs {string.Join(' ', args)}: {r}");
        return r.Stdout;
    }

    public void Dispose()
    {
        _server.Dispose();
        _dir.Dispose();
    }
}
