// The control link's credentials (issue 11; docs/protocol.md "Authentication"), kept under
// HOME/keys/ (mode 0700):
//
//   sentinel.secret  Z85 CURVE secret key, 0600   the sentinel's identity: workers pin its public key
//   sentinel.public  Z85 CURVE public key, 0644   what `casparian keys` prints for --sentinel-key
//   join.token       random, 0600                 a worker proves it may join (IDENTIFY auth_token)
//   admin.token      random, 0600                 a client proves it may DEPLOY (DEPLOY auth_token)
//
// CURVE makes the link private and proves the sentinel to the worker. NetMQ does not expose a
// client's CURVE public key to the server (no ZAP), so workers prove themselves with the join token,
// which only ever travels inside the encrypted link.
using System.Security.Cryptography;
using System.Text;
using NetMQ;

namespace Casparian;

internal sealed class SentinelKeys
{
    public const string SecretFile = "sentinel.secret";
    public const string PublicFile = "sentinel.public";
    public const string JoinTokenFile = "join.token";
    public const string AdminTokenFile = "admin.token";

    private const UnixFileMode DirMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
    private const UnixFileMode SecretMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
    private const UnixFileMode PublicMode = SecretMode | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
    private const UnixFileMode NotOwner = UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.GroupExecute
        | UnixFileMode.OtherRead | UnixFileMode.OtherWrite | UnixFileMode.OtherExecute;

    private string _joinToken;
    private DateTime _joinTokenWritten;

    private SentinelKeys(string dir, NetMQCertificate certificate, string joinToken, string adminToken, bool created)
    {
        Dir = dir;
        Certificate = certificate;
        _joinToken = joinToken;
        _joinTokenWritten = File.GetLastWriteTimeUtc(Path.Combine(dir, JoinTokenFile));
        AdminToken = adminToken;
        Created = created;
    }

    public string Dir { get; }
    /// <summary>The CURVE server key pair.</summary>
    public NetMQCertificate Certificate { get; }
    public string PublicKey => Certificate.PublicKeyZ85;
    public string AdminToken { get; }
    /// <summary>The join token as last read; <see cref="RefreshJoinToken"/> picks up a rotation.</summary>
    public string JoinToken => _joinToken;
    /// <summary>True when this load created the key pair (first start): the caller tells how workers join.</summary>
    public bool Created { get; }

    /// <summary>Loads the keys under <paramref name="dir"/>, creating what is missing. Refuses secrets others can read.</summary>
    public static SentinelKeys LoadOrCreate(string dir)
    {
        EnsureDir(dir);
        string secretPath = Path.Combine(dir, SecretFile);
        bool created = false;
        NetMQCertificate certificate;
        if (File.Exists(secretPath))
        {
            string secret = ReadSecret(secretPath);
            try
            {
                certificate = NetMQCertificate.CreateFromSecretKey(secret);
            }
            catch (Exception e) when (e is ArgumentException or FormatException or IndexOutOfRangeException)
            {
                throw KeysThrow.Key_Bad(secretPath, e);
            }
        }
        else
        {
            certificate = new NetMQCertificate();
            WriteAtomically(secretPath, certificate.SecretKeyZ85!, SecretMode);
            created = true;
        }
        string publicPath = Path.Combine(dir, PublicFile);
        if (created || !File.Exists(publicPath)) WriteAtomically(publicPath, certificate.PublicKeyZ85, PublicMode);
        string join = LoadOrCreateToken(Path.Combine(dir, JoinTokenFile));
        string admin = LoadOrCreateToken(Path.Combine(dir, AdminTokenFile));
        return new SentinelKeys(dir, certificate, join, admin, created);
    }

    /// <summary>Replaces the join token; a running sentinel notices within a second and drops workers holding the old one.</summary>
    public static string RotateJoinToken(string dir)
    {
        EnsureDir(dir);
        string token = Tokens.New();
        WriteAtomically(Path.Combine(dir, JoinTokenFile), token, SecretMode);
        return token;
    }

    /// <summary>Re-reads the join token if its file changed; true when the token is now different.</summary>
    public bool RefreshJoinToken()
    {
        string path = Path.Combine(Dir, JoinTokenFile);
        DateTime written;
        try
        {
            written = File.GetLastWriteTimeUtc(path);
            if (written == _joinTokenWritten) return false;
            string token = ReadSecret(path);
            _joinTokenWritten = written;
            if (token == _joinToken) return false;
            _joinToken = token;
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CasparianException)
        {
            // A rotation half-seen (or a file removed by hand) keeps the token we have; it is read again next time.
            return false;
        }
    }

    /// <summary>The public key under <paramref name="dir"/>, if a sentinel there has one (a worker on the same home uses it).</summary>
    public static string? ReadPublicKey(string dir) => ReadIfPresent(Path.Combine(dir, PublicFile));

    /// <summary>The join token under <paramref name="dir"/>, if present and readable.</summary>
    public static string? ReadJoinToken(string dir) => ReadIfPresent(Path.Combine(dir, JoinTokenFile));

    private static string? ReadIfPresent(string path)
    {
        try
        {
            return File.ReadAllText(path).Trim() is { Length: > 0 } text ? text : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    // Unix modes are the protection here; on Windows the home directory's ACL is.
    private static void EnsureDir(string dir)
    {
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(dir);
            return;
        }
        if (!Directory.Exists(dir)) Directory.CreateDirectory(dir, DirMode);
        else if ((File.GetUnixFileMode(dir) & NotOwner) != 0) File.SetUnixFileMode(dir, DirMode);
    }

    private static string LoadOrCreateToken(string path)
    {
        if (File.Exists(path)) return ReadSecret(path);
        string token = Tokens.New();
        WriteAtomically(path, token, SecretMode);
        return token;
    }

    private static string ReadSecret(string path)
    {
        if (!OperatingSystem.IsWindows() && File.GetUnixFileMode(path) is var mode && (mode & NotOwner) != 0) throw KeysThrow.Secret_Exposed(path, mode);
        string text = File.ReadAllText(path).Trim();
        return text.Length > 0 ? text : throw KeysThrow.Secret_Empty(path);
    }

    /// <summary>Written to a temp file created with its final mode, then renamed: never readable by others, never half-written.</summary>
    private static void WriteAtomically(string path, string text, UnixFileMode mode)
    {
        string temp = $"{path}.{Environment.ProcessId}.tmp";
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = mode;
        using (var f = new FileStream(temp, options))
            f.Write(Encoding.ASCII.GetBytes(text + "\n"));
        // The umask may have narrowed the create mode; the public key is meant to be readable.
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(temp, mode);
        File.Move(temp, path, overwrite: true);
    }
}

internal static class Tokens
{
    /// <summary>32 random bytes, hex: safe in a shell line, a TOML string and an environment variable.</summary>
    public static string New() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));

    /// <summary>Compares in constant time for equal lengths, so timing does not reveal a prefix.</summary>
    public static bool Matches(string? given, string expected) =>
        given is not null && CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(given), Encoding.UTF8.GetBytes(expected));
}

/// <summary>Z85 CURVE public keys as given by the user (--sentinel-key).</summary>
internal static class CurveKeys
{
    public const int Z85Length = 40;

    public static bool TryDecode(string z85, out byte[] key)
    {
        key = [];
        if (z85.Length != Z85Length) return false;
        try
        {
            key = NetMQCertificate.FromPublicKey(z85).PublicKey;
            return key.Length == 32;
        }
        catch (Exception e) when (e is ArgumentException or FormatException or IndexOutOfRangeException)
        {
            return false;
        }
    }
}

internal static class KeysThrow
{
    public static InputException Secret_Exposed(string path, UnixFileMode mode) =>
        new($"{path} is readable by others (mode {Convert.ToString((int)mode, 8)}); run: chmod 600 {path}");
    public static InputException Secret_Empty(string path) =>
        new($"{path} is empty; delete it and a new one is created at the next start (workers then need the new value)");
    public static InputException Key_Bad(string path, Exception e) =>
        new($"{path} does not hold a Z85 CURVE secret key ({e.Message}); delete it to create a new key pair (workers then need the new public key)", e);
}
