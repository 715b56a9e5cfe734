# Casparian warm guest: a fork server ("zygote") for one parser in one interpreter. It imports the
# shim and the parser once, then forks one child per job; each child runs exactly what a cold guest
# runs (bridge_shim.main: same socket, frames, logs, limits, exit codes), starting from this
# process's clean post-import state, so nothing one job does reaches the next. Standard library only.
#
#   python zygote.py CONTROL_SOCKET [--parser-path P | --parser-archive Z]
#
# The control link is a Unix socket the worker listens on in a private directory; this process
# connects once. Line-delimited JSON, at most MAX_LINE bytes a line:
#   zygote -> worker, once:  {"ready": PID}  or  {"cold": "why this parser cannot run warm"}
#   worker -> zygote:        {"id": N, "env": {NAME: VALUE or null}, "cwd": DIR or null, "argv": [...]}
#   zygote -> worker:        {"id": N, "pid": CHILD}  or  {"id": N, "error": TEXT}
#                            {"id": N, "exit": CODE}   (128 + signal when the child was killed)
# A child is forked ahead of its job (the spare, class Spares): the request line is written to its
# pipe, its pid reported, and then the next spare forked, so the fork is off the job's path. A spare's
# pid is reported only once it has a job; {"exit"} lines are only for jobs.
# When the worker's end closes (it stopped, or was killed), the zygote kills every child's process
# group (the idle spare's too) and exits. Each child leads its own process group (the worker kills the group to end a job)
# and dies with the zygote (PR_SET_PDEATHSIG), and its bridge watcher ends it if the worker dies.
#
# A parser runs cold instead when its module sets WARM = False, when importing it fails (the cold
# guest then reports the error exactly as it always does), or when it started a thread at import
# (fork copies only the forking thread, so such a parser would break in the child).
import gc
import json
import os
import select
import signal
import socket
import sys
import _thread
import threading
import time
import traceback

MAX_LINE = 1 << 20
_PR_SET_PDEATHSIG = 1

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import bridge_shim as shim  # noqa: E402  (after the path: the shim sits beside this file)
if sys.path and sys.path[0] == _HERE:
    del sys.path[0]


def _send(sock, obj):
    sock.sendall(json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n")


def _libc():
    """Loaded once in the zygote, so a child pays nothing for it."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


_LIBC = _libc()


def _die_with_parent():
    """The child gets SIGKILL when the zygote dies (the zygote is single-threaded, so its one thread
    is the parent the kernel watches). Linux only; elsewhere the bridge watcher still ends it."""
    try:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Warm:
    """What bridge_shim.main needs from a warm child: the preloaded parser, its arguments as the
    zygote parsed them, and the raw descriptors 1 and 2 turned into log lines, as the worker's pipe
    pumps do for a cold guest (subprocess and C-level output keep reaching the job's log)."""

    def __init__(self, module, argv, parsed, log_handler):
        self.module = module
        self.log_handler = log_handler
        self._argv = argv
        self._parsed = parsed
        self._done = []

    def parse_args(self, argv):
        """The zygote's own parse when the job's arguments are the ones it was started with (always,
        from the worker): building an ArgumentParser in a fresh child costs about a millisecond."""
        return self._parsed if list(argv) == self._argv else shim._parse_args(argv)

    def attach(self, channel):
        for fd, level in ((1, shim.STDOUT), (2, shim.STDERR)):
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)
            done = _thread.allocate_lock()
            done.acquire()
            # Bare threads, as the shim's watcher: no wait for each to start.
            _thread.start_new_thread(_forward, (r, level, channel, done))
            self._done.append(done)

    def drain(self):
        """Called before the end or error frame: closes this process's ends of the pipes and sends
        what is left. Something the parser spawned may still hold them; that is not waited for long."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        for done in self._done:
            done.acquire(timeout=1.0)


def _forward(fd, level, channel, done):
    pending = b""
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            while len(pending) >= shim.MAX_LOG:
                lines.append(pending[:shim.MAX_LOG])
                pending = pending[shim.MAX_LOG:]
            if lines:
                channel.log(level, [line.rstrip(b"\r").decode("utf-8", "replace") for line in lines])
        if pending:
            channel.log(level, [pending.rstrip(b"\r").decode("utf-8", "replace")])
    except (OSError, shim.BrokenStream):
        pass
    finally:
        os.close(fd)
        done.release()


def _cold_reason(module):
    if getattr(module, "WARM", True) is False:
        return "the parser sets WARM = False"
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        return "importing the parser started thread(s) %s, which a fork would not copy" % ", ".join(sorted(others))
    return None


def _spare(inbox, control, wake, warm):
    """A child forked ahead of its job: it does everything that does not depend on the job, then
    blocks until the zygote writes it a request line (or closes the pipe: then it exits unused)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wake:
            os.close(fd)
        control.close()
        _die_with_parent()
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(inbox, 65536)
            if not chunk:
                os._exit(0)
            line += chunk
        os.close(inbox)
        request = json.loads(line)
        for name, value in (request.get("env") or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if request.get("cwd"):
            os.chdir(request["cwd"])
        code = shim.main(list(request.get("argv") or []), warm=warm)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        try:
            sys.__stderr__.write("casparian zygote child: " + traceback.format_exc())
        except Exception:
            pass
    finally:
        try:
            sys.__stdout__.flush()
            sys.__stderr__.flush()
        except Exception:
            pass
        os._exit(code if isinstance(code, int) and 0 <= code <= 255 else 1)


class Spares:
    """The one idle child forked ahead (its pid and the write end of its request pipe). A request is
    handed to it, its pid reported, and only then is the next one forked, so the fork is off the
    request's path. Every spare is forked from the zygote's clean state, never from a used child."""

    def __init__(self, control, wake, make_warm):
        self._control = control
        self._wake = wake
        self._make_warm = make_warm
        self.pid = 0
        self._inbox = -1
        self._died_at = None

    def fork(self):
        """Forks the next spare; OSError when fork fails (then there is none)."""
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            raise
        if pid == 0:
            os.close(w)
            _spare(r, self._control, self._wake, self._make_warm())
        os.close(r)
        try:
            os.setpgid(pid, pid)  # also done by the child; whichever runs first wins the race
        except OSError:
            pass
        self.pid, self._inbox = pid, w

    def hand(self, line):
        """Gives the request to the spare and returns its pid, forking one first if there is none.
        A spare that died idle (its pipe is broken) is replaced by a fresh fork, so no request is lost."""
        for _ in range(2):
            if not self.pid:
                self.fork()
            pid, w = self.pid, self._inbox
            self.pid, self._inbox = 0, -1
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(w, view):]
                return pid
            except BrokenPipeError:
                continue
            finally:
                os.close(w)
        raise OSError("two spare children died before taking the request")

    def died(self, pid):
        """The reaper saw `pid` exit: True when it was the idle spare (then it is replaced, unless the
        one before it also died idle within a second: then the next request forks on demand)."""
        if pid != self.pid:
            return False
        os.close(self._inbox)
        self.pid, self._inbox = 0, -1
        now = time.monotonic()
        again = self._died_at is None or now - self._died_at > 1.0
        self._died_at = now
        if again:
            try:
                self.fork()
            except OSError:
                pass
        return True

    def kill(self):
        if self.pid:
            for target in (-self.pid, self.pid):
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError:
                    pass


def _reap(control, children, spares):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if spares.died(pid):
            continue
        job = children.pop(pid, None)
        if job is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        _send(control, {"id": job, "exit": code if code >= 0 else 128 - code})


def _kill_all(children):
    for pid in list(children):
        for target in (-pid, pid):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass


def serve(control, module, argv, parsed, log_handler):
    children = {}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    spares = Spares(control, (wake_r, wake_w), lambda: Warm(module, argv, parsed, log_handler))
    buffer = b""
    try:
        try:
            spares.fork()
        except OSError:
            pass  # the first request forks on demand
        while True:
            readable, _, _ = select.select([control, wake_r], [], [])
            if wake_r in readable:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                _reap(control, children, spares)
            if control not in readable:
                continue
            try:
                data = control.recv(65536)
            except ConnectionError:
                return
            if not data:
                return
            buffer += data
            if len(buffer) > MAX_LINE and b"\n" not in buffer:
                return
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                job = json.loads(line)["id"]
                try:
                    pid = spares.hand(line + b"\n")
                except OSError as e:
                    _send(control, {"id": job, "error": "fork failed: %s" % e})
                    continue
                children[pid] = job
                _send(control, {"id": job, "pid": pid})
                try:
                    spares.fork()
                except OSError:
                    pass  # the next request forks on demand
    finally:
        spares.kill()
        _kill_all(children)


def main(argv):
    if len(argv) < 1:
        sys.stderr.write("usage: zygote.py CONTROL_SOCKET [--parser-path P | --parser-archive Z]\n")
        return 2
    try:
        os.setpgid(0, 0)  # out of the terminal's group: Ctrl-C reaches the worker, which stops us
    except OSError:
        pass
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.connect(argv[0])
    job_argv = argv[1:]
    try:
        parser_path, parser_archive = parsed = shim._parse_args(job_argv)
        module = shim.load_parser(parser_path, parser_archive, None)
        reason = _cold_reason(module)
    except BaseException as e:  # the cold guest reports it as it always does
        reason = "importing the parser failed: %s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    # Classes the parser sees (TransientError, Output, ...) are named as in a cold guest, where the
    # shim runs as __main__, so tracebacks and reprs read the same warm and cold.
    for value in list(vars(shim).values()):
        if isinstance(value, type) and value.__module__ == shim.__name__:
            value.__module__ = "__main__"
    if reason is not None:
        _send(control, {"cold": reason})
        return 0
    # Logging goes to the job's channel from here on (the parser's import-time output went to our stderr).
    try:
        log_handler = shim._install_logging(None)
    except ValueError as e:  # BRIDGE_LOG_LEVEL names no level: the cold guest reports it as it always does
        _send(control, {"cold": "logging could not be set up: %s" % e})
        return 0
    # Everything imported so far moves to the collector's permanent generation: a child's collections
    # then never walk (and so never copy-on-write) the pages it shares with the zygote.
    gc.collect()
    gc.freeze()
    _send(control, {"ready": os.getpid()})
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        serve(control, module, job_argv, parsed, log_handler)
    except (OSError, ValueError, KeyError) as e:
        sys.stderr.write("casparian zygote: %s: %s\n" % (type(e).__name__, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
