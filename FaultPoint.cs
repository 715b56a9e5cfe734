// Crash points for the tests that kill a worker with SIGKILL between the steps of a commit (issue 13:
// "kill -9 at each step"). With CASPARIAN_FAULT_POINT naming a point, the process kills itself with
// SIGKILL when it reaches it: no finally block, no flush, exactly what kill -9 from outside does, but at
// a known instant instead of a racy one. Unset (always, outside those tests) a point costs one
// comparison with null. Not a setting: nothing in Config, nothing a user is meant to set.
namespace Casparian;

internal static class FaultPoint
{
    public const string Variable = "CASPARIAN_FAULT_POINT";

    /// <summary>Every topic's file is written and synced under its temp name; nothing renamed yet.</summary>
    public const string BeforeRename = "commit-before-rename";
    /// <summary>The first topic's file is renamed into place, the others not yet.</summary>
    public const string AfterFirstRename = "commit-after-first-rename";
    /// <summary>Every topic is in place; the earlier output of topics this job no longer writes is still there.</summary>
    public const string BeforeSupersede = "commit-before-supersede";
    /// <summary>The dataset is final; the receipt has not been sent, so the store still holds the earlier job as current.</summary>
    public const string AfterSupersede = "commit-after-supersede";

    private static readonly string? Armed = Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } v ? v : null;

    public static void Hit(string point)
    {
        if (Armed is null || !string.Equals(Armed, point, StringComparison.Ordinal)) return;
        Console.Error.WriteLine($"fault point {point}: killing this process (SIGKILL)");
        System.Diagnostics.Process.GetCurrentProcess().Kill();
    }
}
