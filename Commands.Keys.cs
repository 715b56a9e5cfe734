// `casparian keys [rotate-token]`: what an operator needs to let a worker join (Keys.cs owns the files).
using System.Net;

namespace Casparian;

internal static partial class Commands
{
    private static readonly Command KeysCommand = new("keys", "print the sentinel's public key and the line a worker joins with; rotate-token replaces the join token",
        "keys [rotate-token] [--bind ADDR] [--home DIR]",
        Config.Flags(Config.Bind),
        args =>
        {
            var positionals = args.RequirePositionals(0, 1);
            if (positionals.Count == 1 && positionals[0] != "rotate-token") throw CliThrow.Usage_BadKeysAction(positionals[0]);
            var config = Config.Load(args);
            if (positionals.Count == 1)
            {
                SentinelKeys.RotateJoinToken(config.KeysDir);
                Console.Error.WriteLine("join token replaced; a running sentinel drops workers holding the old one within a second. Workers join with:");
            }
            var keys = SentinelKeys.LoadOrCreate(config.KeysDir);
            Console.Out.WriteLine($"sentinel public key: {keys.PublicKey}");
            Console.Out.WriteLine(JoinLine(config, keys));
            Console.Error.WriteLine($"(keys under {keys.Dir}; the admin token for DEPLOY is in {Path.Combine(keys.Dir, SentinelKeys.AdminTokenFile)})");
            return 0;
        });

    /// <summary>The exact command a worker on another machine runs; a wildcard bind is named by this host's name.</summary>
    internal static string JoinLine(Config config, SentinelKeys keys)
    {
        string bind = config.Get(Config.Bind);
        string connect = bind;
        int colon = bind.LastIndexOf(':');
        string host = bind["tcp://".Length..colon];
        if (host is "*" or "0.0.0.0" or "[::]" or "::") connect = $"tcp://{Dns.GetHostName()}:{bind[(colon + 1)..]}";
        // Z85 uses shell metacharacters (& > ( ) …) but never a single quote.
        return $"casparian worker --connect {connect} --sentinel-key '{keys.PublicKey}' --token {keys.JoinToken}";
    }
}
