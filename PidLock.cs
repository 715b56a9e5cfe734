// One process at a time: `start` per home, and a sentinel (or `start`) per store file. An advisory
// lock (flock, through FileShare.None) on a .lock file, released by the kernel when the process dies,
// so a crash never leaves a stale lock. The holder's pid goes to a .pid file beside it, not into the
// lock file: .NET reads a file under a shared flock, which the holder's exclusive one refuses, so
// nobody else could read it there.
using System.Globalization;

namespace Casparian;

internal sealed class PidLock(FileStream file) : IDisposable
{
    /// <summary>
    /// Takes the lock at <paramref name="lockPath"/> or throws <paramref name="refused"/>'s exception,
    /// given " (pid N)" naming the holder when its pid file says, else "".
    /// </summary>
    public static PidLock Acquire(string lockPath, string pidPath, Func<string, Exception> refused)
    {
        FileStream file;
        try
        {
            file = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            string owner = "";
            try { owner = $" (pid {File.ReadAllText(pidPath).Trim()})"; }
            catch (IOException) { }
            throw refused(owner);
        }
        try
        {
            File.WriteAllText(pidPath, Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
        }
        catch
        {
            file.Dispose();
            throw;
        }
        return new PidLock(file);
    }

    public void Dispose() => file.Dispose();
}
