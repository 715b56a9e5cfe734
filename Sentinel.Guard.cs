// Connection floods (issue 11 §2.1). Every TCP connection the ROUTER accepts costs a file
// descriptor, and when the process runs out, NetMQ's I/O thread dies: AsyncIO reports the failed
// accept as a success with no socket, TcpListener.InCompleted dereferences it, and the exception
// on that thread ends the process. NetMQ offers no cap on accepted connections, so the sentinel
// keeps its own: every 20 ms it asks the kernel for the lowest free descriptor (open /dev/null and
// close it; the kernel always hands out the lowest), and once every descriptor below the cap is in use
// it unbinds the tcp:// endpoint, which closes every connection that endpoint accepted,
// then binds again a second later. Workers reconnect and identify again on their own (their jobs
// are requeued as for a restarted worker); the flood's sockets are gone. Start raises the soft
// descriptor limit to the hard one, so the cap is rarely near.
//
// Why not count /proc/self/fd: listing it costs the kernel about 8 us per open descriptor (a dentry
// built for each), so 50 counts a second cost a sentinel with 1,000 connections a third of a core,
// and the five sentinels of PostgresSentinelBench's process a fifth of the machine. The probe costs two
// system calls whatever the count. It sees the same danger: the process runs out only when every
// descriptor below the limit is taken, and the cap sits below the limit.
using System.Runtime.InteropServices;

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
        if (!OperatingSystem.IsLinux() || FileLimit.Current() is not { } limit || LowestFreeDescriptor() < 0) return;
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
        int lowest = LowestFreeDescriptor();
        if (lowest < _descriptorCap) return;
        Interlocked.Increment(ref _floodsShed);
        _unbound = Endpoint;
        _rebindAt = now + RebindAfterMs;
        _router.Unbind(Endpoint);
        _log.Warn($"every file descriptor below the cap of {_descriptorCap} is open (connection flood?): closed every connection to {Endpoint} and " +
                  $"stopped listening for {RebindAfterMs / 1000} s; workers reconnect and identify again");
    }

    private const int ReadOnly = 0, CloseOnExec = 0x80000, TooManyOpenFiles = 24;

    /// <summary>The descriptor the kernel would hand out next (the lowest free one); int.MaxValue when none is free; -1 when /dev/null cannot be opened.</summary>
    internal static int LowestFreeDescriptor()
    {
        int fd = Open("/dev/null", ReadOnly | CloseOnExec);
        if (fd < 0) return Marshal.GetLastPInvokeError() == TooManyOpenFiles ? int.MaxValue : -1;
        Close(fd);
        return fd;
    }

    [DllImport("libc", EntryPoint = "open", SetLastError = true)]
    private static extern int Open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", EntryPoint = "close")]
    private static extern int Close(int fd);
}
