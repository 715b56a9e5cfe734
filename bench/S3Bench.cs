// S3 output (issue 18): uploading a finished topic file to a loopback S3 server (s3rver from npm,
// tests/s3/server.mjs) through S3Transfer, the worker's own upload path (multipart above the threshold,
// bounded parts in flight), next to a plain local copy of the same bytes. Upload2GB prints the
// process's peak RSS: memory must not grow with the file.
//   ./build.sh bench --filter '*S3Bench*'
// Needs node and `npm ci` in tests/s3 (./build.sh test installs both). A --check pass uses 32 MiB files.
using System.Diagnostics;
using System.Globalization;
using BenchmarkDotNet.Attributes;

namespace Casparian.Bench;

[Macro]
[MemoryDiagnoser]
[System.ComponentModel.Description("A finished Parquet file uploaded to s3rver on loopback by S3Transfer (multipart, 32 MiB parts, 4 in flight) vs File.Copy of the same bytes. Upload2GB prints the benchmark process's peak RSS.")]
public class S3Bench
{
    private const long Gib = 1L << 30;
    private const string Bucket = "bench";

    private string _dir = "";
    private string _file = "";
    private long _size;
    private Process? _server;
    private S3Settings _settings = null!;
    private long _baselineRssMb;

    private static long Size(long full) => Program.Checking ? 32L << 20 : full;

    [GlobalSetup(Targets = [nameof(Upload1GB), nameof(LocalCopy1GB)])]
    public void Setup() => Start(Size(Gib));

    [GlobalSetup(Target = nameof(Upload2GB))]
    public void Setup2GB()
    {
        Start(Size(2 * Gib));
        GC.Collect();
        _baselineRssMb = RssMb("VmRSS:");
    }

    private void Start(long size)
    {
        _dir = Directory.CreateTempSubdirectory("casparian-bench-s3-").FullName;
        _size = size;
        // Incompressible bytes, as a Parquet file of real data mostly is; written in 1 MiB pieces.
        _file = Path.Combine(_dir, "topic.parquet");
        var rng = new Random(42);
        var buffer = new byte[1 << 20];
        using (var f = File.Create(_file))
            for (long at = 0; at < size; at += buffer.Length)
            {
                rng.NextBytes(buffer);
                f.Write(buffer, 0, (int)Math.Min(buffer.Length, size - at));
            }
        _server = StartServer(Path.Combine(_dir, "s3"), out int port);
        // The worker's defaults (64 MiB threshold, 32 MiB parts, 4 in flight); a --check pass shrinks the
        // parts so its small file still goes up as a multipart upload.
        _settings = Defaults.Output(_dir).S3 with { Endpoint = $"http://127.0.0.1:{port}", PathStyle = true };
        if (Program.Checking) _settings = _settings with { MultipartThreshold = 8L << 20, PartSize = 5L << 20 };
        Environment.SetEnvironmentVariable("AWS_ACCESS_KEY_ID", "S3RVER");
        Environment.SetEnvironmentVariable("AWS_SECRET_ACCESS_KEY", "S3RVER");
        // Checked before every run, so --check proves the benchmarked upload lands whole.
        if (Upload() != size) throw new InvalidOperationException("the uploaded object's size differs from the file's");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        if (_server is { HasExited: false }) _server.Kill(entireProcessTree: true);
        _server?.WaitForExit(10_000);
        _server?.Dispose();
        Directory.Delete(_dir, recursive: true);
        if (_baselineRssMb > 0)
            Console.WriteLine($"// Upload2GB: peak RSS (VmHWM) {RssMb("VmHWM:")} MB; RSS after setup (runtime, BenchmarkDotNet) {_baselineRssMb} MB");
    }

    /// <summary>1 GiB file → one object (32 multipart parts, 4 in flight).</summary>
    [Benchmark]
    [Throughput(1, Gib)]
    [Target("≥ 300 MB/s to the loopback server")]
    public long Upload1GB() => Upload();

    /// <summary>The same bytes copied to another local file: what the disk alone allows.</summary>
    [Benchmark(Baseline = true)]
    [Throughput(1, Gib)]
    public long LocalCopy1GB()
    {
        string copy = Path.Combine(_dir, "copy.parquet");
        File.Copy(_file, copy, overwrite: true);
        long length = new FileInfo(copy).Length;
        File.Delete(copy);
        return length;
    }

    /// <summary>2 GiB through the same path: the memory check (peak RSS printed at cleanup).</summary>
    [Benchmark]
    [Throughput(1, 2 * Gib)]
    [Target("worker memory < 250 MB while uploading 2 GB (printed at cleanup)")]
    public long Upload2GB() => Upload();

    private long Upload()
    {
        using var s3 = new S3Transfer(_settings, 1);
        var target = new S3Location(Bucket, "topic/topic.parquet");
        s3.Upload("topic", _file, target);
        return s3.TryHead("topic", target, out _) ? _size : -1;
    }

    private static Process StartServer(string directory, out int port)
    {
        string scripts = Path.Combine(ShimBench.FindRoot(), "tests", "s3");
        if (!Directory.Exists(Path.Combine(scripts, "node_modules", "s3rver")))
            throw new InvalidOperationException($"s3rver is not installed; run `npm ci` in {scripts} (./build.sh test does)");
        Directory.CreateDirectory(directory);
        // stdin redirected and closed: a server left with a terminal's stdin is stopped (SIGTTIN) in a background job.
        var psi = new ProcessStartInfo("node") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = scripts };
        foreach (string a in new[] { "server.mjs", directory, Bucket }) psi.ArgumentList.Add(a);
        var process = Process.Start(psi)!;
        process.StandardInput.Close();
        process.ErrorDataReceived += (_, _) => { };
        process.BeginErrorReadLine();
        var read = process.StandardOutput.ReadLineAsync();
        if (!read.Wait(TimeSpan.FromSeconds(60)) || read.Result is not { } line || !line.StartsWith("listening ", StringComparison.Ordinal))
        {
            process.Kill(entireProcessTree: true);
            throw new InvalidOperationException("s3rver did not start within 60 s");
        }
        port = int.Parse(line[10..], CultureInfo.InvariantCulture);
        return process;
    }

    private static long RssMb(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key, StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024;
        return -1;
    }
}
