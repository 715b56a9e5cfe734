// Where Casparian keeps its state. Everything lives under one home directory so that a local
// install is one folder to inspect, back up or delete.
namespace Casparian;

internal static class Paths
{
    /// <summary>$CASPARIAN_HOME, else ~/.casparian.</summary>
    public static string Home =>
        Environment.GetEnvironmentVariable("CASPARIAN_HOME") is { Length: > 0 } home
            ? Path.GetFullPath(home)
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".casparian");

    /// <summary>The embedded job store (sentinel, start, and the job/parser commands).</summary>
    public static string Db => Path.Combine(Home, "casparian.db");

    /// <summary>Content-addressed Python environments: {Venvs}/{env_hash}/.</summary>
    public static string Venvs => Path.Combine(Home, "venvs");

    /// <summary>The guest shim, written out of the binary on first use: {Shim}/{version}-{hash}/.</summary>
    public static string Shim => Path.Combine(Home, "shim");

    /// <summary>Extracted parser bundles by source hash: {Parsers}/{source_hash}/.</summary>
    public static string Parsers => Path.Combine(Home, "parsers");

    /// <summary>Default Parquet output root.</summary>
    public static string Output => Path.Combine(Home, "output");

    /// <summary>Per-job guest logs.</summary>
    public static string Logs => Path.Combine(Home, "logs");

    /// <summary>Worker state: its persistent id.</summary>
    public static string Worker => Path.Combine(Home, "worker");
}
