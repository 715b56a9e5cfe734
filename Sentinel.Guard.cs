// Connection floods (issue 11 §2.1). Every TCP connection the ROUTER accepts costs a file
// descriptor, and when the process runs out, NetMQ's I/O thread dies: AsyncIO reports the failed
// accept as a success with no socket, TcpListener.InCompleted dereferences it, and the exception
// on that thread ends the process. NetMQ offers no cap on accepted connections, so the sentinel
// keeps its own: it counts its open descriptors (/proc/self/fd) a few times a second, and above
// the cap it unbinds the tcp:// endpoint, which closes every connection that endpoint accepted,
// then binds again a second later. Workers reconnect and identify again on their own (their jobs
// are requeued as for a restarted worker); the flood's sockets are gone. Start raises the soft
// descriptor limit to the hard one, so the cap is rarely near.
namespace Casparian;

internal sealed partial class Sentinel
{
    /// <summary>Descriptors kept free below the limit: the store, logs and NetMQ's own need some.</summary>
    private const int ReservedDescriptors = 64;
    private const long GuardEveryMs = 20;
    private const long RebindAfterMs = 1000;

    private long _descriptorCap;
    private long _nextGuard;
    private long _rebindAt;
    private string? _unbound;

    /// <summary>Times the tcp:// endpoint was closed to shed a connection flood (thread-safe read).</summary>
    public long FloodsShed => Interlocked.Read(ref _floodsShed);
    private long _floodsShed;

    /// <summary>Sets the cap from the descriptor limit: half of it when small, all but a reserve when large.</summary>
    private void ArmGuard()
    {
        if (!OperatingSystem.IsLinux() || !Directory.Exists("/proc/self/fd") || FileLimit.Current() is not { } limit) return;
        long l = (long)Math.Min(limit, int.MaxValue);
        _descriptorCap = Math.Max(l / 2, l - 1024 - ReservedDescriptors);
    }

    private void GuardConnections(long now)
    {
        if (_descriptorCap == 0 || now < _nextGuard) return;
        _nextGuard = now + GuardEveryMs;
        if (_unbound is { } endpoint)
        {
            if (now < _rebindAt) return;
            try
            {
                _router.Bind(endpoint);
                _unbound = null;
                _log.Info($"listening again on {endpoint}");
            }
            catch (NetMQ.NetMQException e)
            {
                _rebindAt = now + RebindAfterMs;
                _log.Limited("flood", $"cannot bind {endpoint} again yet ({e.ErrorCode}); retrying in {RebindAfterMs / 1000} s");
            }
            return;
        }
        int open = OpenDescriptors();
        if (open < _descriptorCap) return;
        Interlocked.Increment(ref _floodsShed);
        _unbound = Endpoint;
        _rebindAt = now + RebindAfterMs;
        _router.Unbind(Endpoint);
        _log.Warn($"{open} open files, at the cap of {_descriptorCap} (connection flood?): closed every connection to {Endpoint} and " +
                  $"stopped listening for {RebindAfterMs / 1000} s; workers reconnect and identify again");
    }

    private static int OpenDescriptors()
    {
        int n = 0;
        foreach (var _ in Directory.EnumerateFileSystemEntries("/proc/self/fd")) n++;
        return n;
    }
}
