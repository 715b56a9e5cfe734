# Casparian guest shim: runs one parser over one file inside the parser's Python and streams what
# it returns to the worker over the bridge socket (SPEC section 3; the wire is documented in
# Bridge.cs). Standard library only at top level; pyarrow, pandas and numpy are used when the
# parser's environment has them.
#
#   python bridge_shim.py [--parser-path FILE_OR_DIR | --parser-archive ZIP]
#
# Environment: BRIDGE_SOCKET, BRIDGE_FILE_PATH, BRIDGE_JOB_ID, BRIDGE_FILE_VERSION_ID, and without
# a flag BRIDGE_PLUGIN_CODE (base64 source). Extensions: BRIDGE_PARSER_NAME (shown in messages),
# BRIDGE_MAX_MESSAGE_BYTES (default 100 MiB), BRIDGE_INTERACTIVE=1 (dev mode: stay in the
# terminal's process group so breakpoint() can read stdin), BRIDGE_LOG_LEVEL (root logging level,
# default INFO).
#
# The parser (SPEC section 4) is `parse(path)` or `class Handler`; see run_parser. `Output` and
# `TransientError` are importable as `from casparian import Output, TransientError` (a module this
# shim registers; nothing is added to builtins), are also pre-set as globals of the parser module
# so a parser may use them without an import, and are recognised by class name, so a parser that
# defines its own `class Output` (name, data) or `class TransientError(Exception)` to run without
# Casparian works the same.
#
# Exit codes: 0 success (after an end-of-stream frame), 1 permanent failure, 2 transient failure
# (TransientError, MemoryError, sys.exit(2)). A failure sends one error frame first: its first line names the
# parser, the input file and the cause; the lines after it are the traceback, if any. A guest whose
# worker dies (the bridge closes before the guest is done) kills its process group and exits 1.
import _thread
import argparse
import base64
import gc
import importlib.util
import io
import logging
import os
import re
import signal
import socket
import struct
import sys
import threading
import traceback
import types

_HERE = os.path.dirname(os.path.abspath(__file__))
# Loaded under a private name so a parser's own module called arrow_ipc still imports.
_spec = importlib.util.spec_from_file_location("_casparian_arrow_ipc", os.path.join(_HERE, "arrow_ipc.py"))
arrow_ipc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = arrow_ipc
_spec.loader.exec_module(arrow_ipc)
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    del sys.path[0]

END = 0
ERROR = 0xFFFFFFFF
LOG = 0xFFFFFFFE
MAX_LOG = 64 << 10
MAX_ERROR = 1 << 20
STDOUT, STDERR, DEBUG, INFO, WARNING, ERROR_LEVEL = range(6)
TOPIC_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
ENTRY_RULE = "parser.py, else main.py, else the only top-level .py file"
EXPECTED = (
    "a table (pyarrow Table or RecordBatch, pandas DataFrame, an object with to_arrow(), a dict of "
    "equal-length lists, a list of row dicts), Output(topic, table), an iterable of those, or None"
)


class TransientError(Exception):
    """Raise from a parser when a retry may succeed (resource busy, service down): exit code 2."""


class Output:
    """Routes a table to a named topic: `yield Output("errors", rows)`."""
    __slots__ = ("name", "data")

    def __init__(self, name, data):
        self.name = name
        self.data = data

    def __repr__(self):
        return "Output(%r, <%s>)" % (self.name, type(self.data).__name__)


casparian = types.ModuleType("casparian", "What a Casparian parser may import: Output and TransientError.")
casparian.Output = Output
casparian.TransientError = TransientError
sys.modules.setdefault("casparian", casparian)


class ParserError(Exception):
    """A problem with the parser or its input, already worded for the user (no traceback needed
    unless `detail` carries one)."""

    def __init__(self, cause, detail=None):
        super().__init__(cause)
        self.detail = detail


class BrokenStream(Exception):
    """An exception while a table message was half written: the stream cannot carry an error frame."""


def _is_named(obj, name):
    return any(c.__name__ == name for c in type(obj).__mro__)


def _is_output(obj):
    return type(obj).__name__ == "Output" and hasattr(obj, "name") and hasattr(obj, "data")


def _split_utf8(data, limit):
    """Chunks of at most `limit` bytes, never splitting a UTF-8 sequence."""
    if len(data) <= limit:
        return [data]
    chunks = []
    start = 0
    while len(data) - start > limit:
        end = start + limit
        while end > start and (data[end] & 0xC0) == 0x80:
            end -= 1
        chunks.append(data[start:end])
        start = end
    chunks.append(data[start:])
    return chunks


# ---------------------------------------------------------------------------------------------
# The socket. One lock orders whole frames; a log line produced by the writing thread itself while
# a table message is half sent (a __str__ that prints) waits in `deferred` until the message ends.

class Channel:
    def __init__(self, sock, max_message):
        self.sock = sock
        self.max_message = max_message
        self.lock = threading.RLock()
        self.in_message = False
        self.deferred = []
        self.broken = False

    def _send(self, data):
        if self.broken:
            return
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.broken = True
            raise BrokenStream("the worker closed the bridge socket (%s)" % e) from None

    def log(self, level, lines):
        frames = []
        for line in lines:
            for chunk in _split_utf8(line.encode("utf-8", "replace"), MAX_LOG):
                frames.append(struct.pack(">IBI", LOG, level, len(chunk)))
                frames.append(chunk)
        data = b"".join(frames)
        with self.lock:
            if self.in_message:
                self.deferred.append(data)
            else:
                self._send(data)

    def error(self, text):
        data = _split_utf8(text.encode("utf-8", "replace"), MAX_ERROR)[0]
        with self.lock:
            self._send(struct.pack(">II", ERROR, len(data)) + data)

    def end(self):
        with self.lock:
            self._send(struct.pack(">I", END))

    def table(self, messages):
        """Sends each (N, chunks) message; planning ran before the first chunk, so an exception
        after the length prefix means a corrupt stream (BrokenStream)."""
        for size, chunks in messages:
            with self.lock:
                self.in_message = True
                try:
                    self._send(struct.pack(">I", size))
                    sent = 0
                    try:
                        for chunk in chunks:
                            n = memoryview(chunk).nbytes
                            sent += n
                            self._send(chunk)
                        if sent != size:
                            raise AssertionError("message announced %d bytes, encoded %d" % (size, sent))
                    except BrokenStream:
                        raise
                    except BaseException as e:
                        self.broken = True
                        raise BrokenStream("%s: %s" % (type(e).__name__, e)) from e
                finally:
                    self.in_message = False
                    deferred, self.deferred = self.deferred, []
                    for data in deferred:
                        self._send(data)


class LogStream(io.TextIOBase):
    """sys.stdout / sys.stderr: complete lines become log frames as they are written; flush()
    sends a partial line (input() flushes its prompt, so pdb's prompt shows)."""

    def __init__(self, channel, level, fd):
        super().__init__()
        self._channel = channel
        self._level = level
        self._fd = fd
        self._pending = ""
        self._lock = threading.Lock()
        self.buffer = _ByteLogStream(self)

    encoding = "utf-8"
    errors = "replace"

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        # The real descriptor: the worker drains it too, so subprocess(stdout=sys.stdout) works.
        return self._fd

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        with self._lock:
            if "\n" not in s:
                self._pending += s
                if len(self._pending) < MAX_LOG:
                    return len(s)
                lines = [self._pending]
                self._pending = ""
            else:
                lines = (self._pending + s).split("\n")
                self._pending = lines.pop()
            self._channel.log(self._level, lines)
        return len(s)

    def flush(self):
        with self._lock:
            if self._pending:
                pending, self._pending = self._pending, ""
                self._channel.log(self._level, [pending])


class _ByteLogStream(io.RawIOBase):
    """sys.stdout.buffer: bytes written here are decoded as UTF-8 and logged as text."""

    def __init__(self, text):
        super().__init__()
        self._text = text

    def writable(self):
        return True

    def write(self, b):
        self._text.write(bytes(b).decode("utf-8", "replace"))
        return len(b)

    def flush(self):
        self._text.flush()


class LogHandler(logging.Handler):
    """Root handler: each record one log frame at its level."""

    def __init__(self, channel):
        super().__init__()
        self._channel = channel
        self.setFormatter(_Formatter())

    def emit(self, record):
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        n = record.levelno
        level = DEBUG if n < logging.INFO else INFO if n < logging.WARNING else WARNING if n < logging.ERROR else ERROR_LEVEL
        try:
            self._channel.log(level, [text])
        except Exception:
            pass


class _Formatter(logging.Formatter):
    def format(self, record):
        text = super().format(record)
        return text if record.name == "root" or self._fmt != "%(message)s" else record.name + ": " + text


def _install_logging(channel):
    """Routes the root logger to `channel`; returns the handler. A zygote installs it once with no
    channel yet and each warm child points it at its own (_attach_logging): creating a handler in a
    fresh child costs about half a millisecond."""
    handler = LogHandler(channel)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(os.environ.get("BRIDGE_LOG_LEVEL", "INFO").upper())

    # basicConfig would do nothing once the root has a handler; honour its level and format.
    def basic_config(**kwargs):
        if "level" in kwargs:
            root.setLevel(kwargs["level"])
        if "format" in kwargs or "datefmt" in kwargs:
            handler.setFormatter(logging.Formatter(kwargs.get("format"), kwargs.get("datefmt"), kwargs.get("style", "%")))

    logging.basicConfig = basic_config
    return handler


def _attach_logging(handler, channel):
    handler._channel = channel
    logging.getLogger().setLevel(os.environ.get("BRIDGE_LOG_LEVEL", "INFO").upper())


# ---------------------------------------------------------------------------------------------
# Loading the parser.

def entry_module(names, where):
    """The entry rule shared with parser bundles: parser.py, else main.py, else the only
    top-level .py file."""
    py = sorted(n for n in names if n.endswith(".py"))
    for preferred in ("parser.py", "main.py"):
        if preferred in py:
            return preferred
    if len(py) == 1:
        return py[0]
    found = ", ".join(py) if py else "no .py files"
    raise ParserError("no entry module in %s: expected %s (found: %s)" % (where, ENTRY_RULE, found))


def _module_name(entry):
    stem = os.path.splitext(os.path.basename(entry))[0]
    return stem if stem.isidentifier() else "parser"


def _exec_module(name, source, filename):
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as e:
        where = "%s line %s" % (e.filename or filename, e.lineno) if e.lineno else (e.filename or filename)
        raise ParserError("syntax error in %s: %s" % (where, e.msg)) from None
    except ValueError as e:  # e.g. source with NUL bytes
        raise ParserError("cannot compile %s: %s" % (filename, e)) from None
    module = types.ModuleType(name)
    module.__file__ = filename
    module.Output = Output
    module.TransientError = TransientError
    sys.modules[name] = module
    if not os.path.isfile(filename):
        import linecache
        text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    try:
        exec(code, module.__dict__)
    except (MemoryError, SystemExit, KeyboardInterrupt):
        raise
    except BaseException as e:
        if _is_named(e, "TransientError"):
            raise
        raise ParserError("importing the parser raised %s: %s" % (type(e).__name__, e), _traceback(e)) from None
    return module


def load_parser(parser_path, parser_archive, code_b64):
    if parser_archive is not None:
        import zipfile
        try:
            with zipfile.ZipFile(parser_archive) as z:
                names = [n for n in z.namelist() if "/" not in n.rstrip("/")]
                entry = entry_module(names, parser_archive)
                source = z.read(entry)
        except FileNotFoundError:
            raise ParserError("parser archive not found: %s" % parser_archive) from None
        except (zipfile.BadZipFile, OSError) as e:
            raise ParserError("parser archive %s is not a readable ZIP file: %s" % (parser_archive, e)) from None
        sys.path.insert(0, parser_archive)
        return _exec_module(_module_name(entry), source, os.path.join(parser_archive, entry))
    if parser_path is not None:
        path = os.path.abspath(parser_path)
        if os.path.isdir(path):
            try:
                names = [n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))]
            except OSError as e:
                raise ParserError("cannot list parser directory %s: %s" % (path, e.strerror)) from None
            path = os.path.join(path, entry_module(names, path))
        elif not os.path.exists(path):
            raise ParserError("parser not found: %s" % path)
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as e:
            raise ParserError("cannot read parser %s: %s" % (path, e.strerror)) from None
        sys.path.insert(0, os.path.dirname(path))
        return _exec_module(_module_name(path), source, path)
    if code_b64 is None:
        raise ParserError("no parser given: set BRIDGE_PLUGIN_CODE or pass --parser-path / --parser-archive")
    try:
        source = base64.b64decode(code_b64, validate=True)
    except ValueError as e:
        raise ParserError("BRIDGE_PLUGIN_CODE is not valid base64: %s" % e) from None
    name = _module_name(os.environ.get("BRIDGE_PARSER_NAME") or "parser")
    return _exec_module(name, source, "<parser %s>" % (os.environ.get("BRIDGE_PARSER_NAME") or name))


# ---------------------------------------------------------------------------------------------
# Running it. Whatever the parser returns or yields goes through emit(); row dicts yielded one by
# one are gathered into tables of up to BATCH_ROWS rows.

def check_topic(name):
    if not isinstance(name, str) or not TOPIC_RE.match(name):
        raise ParserError("invalid topic name %r: topic names match [a-z][a-z0-9_]*" % (name,))
    return name


class Emitter:
    def __init__(self, channel):
        self.channel = channel
        self.rows = []
        self.rows_topic = None

    def publish(self, table, topic):
        """One table to one topic (Output, ctx.publish, gathered rows)."""
        if table is None or isinstance(table, (dict, list)) and not table:
            return
        messages = arrow_ipc.table_messages(table, topic, self.channel.max_message)
        if messages is None:
            raise ParserError("published %s to topic %r; expected a table: %s" % (type(table).__name__, topic, EXPECTED))
        self.channel.table(messages)

    def emit(self, result, topic):
        if result is None:
            return
        if _is_output(result):
            self.flush_rows()
            self.publish(result.data, check_topic(result.name))
            return
        if arrow_ipc.is_row(result):
            self.add_row(result, topic)
            return
        if isinstance(result, dict):
            self.flush_rows()
            self.publish(result, topic)
            return
        messages = arrow_ipc.table_messages(result, topic, self.channel.max_message)
        if messages is not None:
            self.flush_rows()
            self.channel.table(messages)
            return
        if isinstance(result, (str, bytes, bytearray)) or not hasattr(result, "__iter__"):
            raise ParserError("returned %s; expected %s" % (type(result).__name__, EXPECTED))
        for item in result:
            self.emit(item, topic)
        self.flush_rows()

    def add_row(self, row, topic):
        if self.rows and self.rows_topic != topic:
            self.flush_rows()
        self.rows.append(row)
        self.rows_topic = topic
        if len(self.rows) >= arrow_ipc.BATCH_ROWS:
            self.flush_rows()

    def flush_rows(self):
        if self.rows:
            rows, self.rows = self.rows, []
            self.publish(rows, self.rows_topic)


class Context:
    """What a Handler's configure(ctx, config) receives."""

    def __init__(self, emitter, job_id, file_id, file_path):
        self._emitter = emitter
        self._topics = []
        self.job_id = job_id
        self.file_id = file_id
        self.file_path = file_path

    def register_topic(self, name, **_options):
        self._topics.append(check_topic(name))
        return len(self._topics) - 1

    def publish(self, handle, table):
        if isinstance(handle, int) and 0 <= handle < len(self._topics):
            topic = self._topics[handle]
        elif isinstance(handle, str):
            topic = check_topic(handle)
        else:
            raise ParserError("publish() got handle %r; use the value register_topic() returned" % (handle,))
        self._emitter.flush_rows()
        self._emitter.publish(table, topic)


def run_parser(module, emitter, job_id, file_id, file_path):
    """Runs the parser and sends what it returns; returns that result, so the caller decides when it
    is freed."""
    topic = check_topic(getattr(module, "TOPIC", "output"))
    parse = getattr(module, "parse", None)
    handler = getattr(module, "Handler", None)
    if callable(parse):
        result = parse(file_path)
        emitter.emit(result, topic)
    elif isinstance(handler, type):
        instance = handler()
        ctx = Context(emitter, job_id, file_id, file_path)
        if callable(getattr(instance, "configure", None)):
            instance.configure(ctx, {})
        if callable(getattr(instance, "consume", None)):
            result = instance.consume(types.SimpleNamespace(path=file_path, file_id=file_id, job_id=job_id))
        elif callable(getattr(instance, "execute", None)):
            result = instance.execute(file_path)
        else:
            raise ParserError("class Handler has neither consume(event) nor execute(path)")
        emitter.emit(result, topic)
    else:
        raise ParserError("defines neither parse(path) nor class Handler")
    emitter.flush_rows()
    return result


def _leave_to_exit(result):
    """Leaves what the parser returned to the process's exit instead of freeing it object by object:
    500k row dicts take about 0.1 s to free, and the worker waits for a cold guest's exit code after
    its end of stream. A reference cycle in the collector's permanent generation keeps it: reference
    counting never reaches zero and no collection, the one at exit included, looks at it, so the OS
    takes the memory back. The exit is otherwise Python's own: atexit handlers run, threads the parser
    left running are waited for, module globals are torn down."""
    if result is None:
        return
    keep = [result]
    keep.append(keep)
    gc.freeze()


def check_input(path):
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ParserError("input file is not readable: %s" % (e.strerror or e)) from None


def _traceback(e):
    """The traceback without the shim's own frames."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb)).rstrip("\n")


def _parser_display(parser_path, parser_archive):
    name = os.environ.get("BRIDGE_PARSER_NAME")
    if name:
        return name
    target = parser_archive or parser_path
    return os.path.basename(os.path.normpath(target)) if target else "<source>"


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that exits 1 (a permanent failure) on a bad argument: its default exit 2 is what
    this shim uses for a transient failure, and a wrong command line is not worth retrying."""

    def error(self, message):
        self.exit(1, "casparian shim: %s; usage: bridge_shim.py [--parser-path P | --parser-archive Z]\n" % message)


def _parse_args(argv):
    parser = _ArgumentParser(prog="bridge_shim.py", add_help=False, allow_abbrev=False)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--parser-path", help="a parser .py file or directory, loaded in place")
    where.add_argument("--parser-archive", help="a bundled parser ZIP")
    args = parser.parse_args(argv)
    return args.parser_path, args.parser_archive


def _watch_worker(sock, finishing):
    """Ends this guest when the worker's end of the bridge closes first. The worker never writes to
    the socket and closes it only after killing the guest, so an end-of-file before the guest is
    finishing means the worker died (kill -9, crash) and can no longer kill its guests; left alone they
    would run their parser to the end, its output lost. The whole group goes when the guest leads one,
    so what the parser spawned goes too."""
    try:
        sock.recv(1)
    except OSError:
        pass
    if finishing.is_set():
        return
    try:
        if os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
    except OSError:
        pass
    os._exit(1)


def main(argv, warm=None):
    """Runs the guest. `warm` is given by the fork server (zygote.py) in a child it forked: the
    parser is already imported, and raw stdout/stderr become log frames there."""
    if os.environ.get("BRIDGE_INTERACTIVE") != "1":
        try:
            os.setpgid(0, 0)  # one process group: the worker kills it whole, children included
        except OSError:
            pass
    parser_path, parser_archive = warm.parse_args(argv) if warm is not None else _parse_args(argv)
    try:
        socket_path = os.environ["BRIDGE_SOCKET"]
        file_path = os.environ["BRIDGE_FILE_PATH"]
    except KeyError as e:
        sys.stderr.write("casparian shim: %s is not set; the shim is started by the Casparian worker\n" % e)
        return 1
    job_id = int(os.environ.get("BRIDGE_JOB_ID") or 0)
    file_id = int(os.environ.get("BRIDGE_FILE_VERSION_ID") or 0)
    max_message = int(os.environ.get("BRIDGE_MAX_MESSAGE_BYTES") or arrow_ipc.DEFAULT_MAX_MESSAGE)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as e:
        sys.stderr.write("casparian shim: cannot connect to %s: %s\n" % (socket_path, e))
        return 1

    finishing = threading.Event()
    # A bare thread: threading.Thread.start() waits until the new thread has run, a scheduler round
    # trip that a warm child would pay on every job. Like a daemon thread, it does not hold up the exit.
    _thread.start_new_thread(_watch_worker, (sock, finishing))
    channel = Channel(sock, max_message)
    if warm is not None:
        warm.attach(channel)
    real_stdout, real_stderr = sys.stdout, sys.stderr
    sys.stdout = LogStream(channel, STDOUT, 1)
    sys.stderr = LogStream(channel, STDERR, 2)
    if warm is not None:
        _attach_logging(warm.log_handler, channel)
    else:
        _install_logging(channel)
    display = _parser_display(parser_path, parser_archive)
    sys.argv = [parser_archive or parser_path or display]
    code = 0
    try:
        if warm is not None:
            module = warm.module
        else:
            module = load_parser(parser_path, parser_archive, os.environ.get("BRIDGE_PLUGIN_CODE"))
        check_input(file_path)
        result = None
        try:
            result = run_parser(module, Emitter(channel), job_id, file_id, file_path)
        except SystemExit as e:
            if e.code == 2:  # exit code 2 is a transient failure (README, docs/bridge.md): retried
                raise TransientError("called sys.exit(2), a transient failure") from None
            if e.code not in (None, 0):
                raise ParserError("called sys.exit(%r)" % (e.code,)) from None
        finishing.set()
        sys.stdout.flush()
        sys.stderr.flush()
        if warm is not None:
            warm.drain()
        channel.end()
        if channel.broken:
            raise BrokenStream("the worker closed the bridge socket")
        if warm is None:  # a warm child ends with os._exit: nothing is freed there anyway
            _leave_to_exit(result)
    except BrokenStream as e:
        code = 1
        real_stderr.write("casparian shim: %s on %s: %s\n" % (display, file_path, e))
        if e.__cause__ is not None:
            real_stderr.write(_traceback(e.__cause__) + "\n")
    except BaseException as e:
        finishing.set()
        transient = isinstance(e, MemoryError) or _is_named(e, "TransientError") or (isinstance(e, SystemExit) and e.code == 2)
        code = 2 if transient else 1
        if isinstance(e, (ParserError, arrow_ipc.TableError)):
            text = "parser %s on %s: %s" % (display, file_path, e)
            if getattr(e, "detail", None):
                text += "\n" + e.detail
        else:
            text = "parser %s on %s: %s: %s\n%s" % (display, file_path, type(e).__name__, e, _traceback(e))
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            if warm is not None:
                warm.drain()
            channel.error(text)
        except BrokenStream:
            real_stderr.write(text + "\n")
    finally:
        sys.stdout, sys.stderr = real_stdout, real_stderr
        try:
            sock.close()
        except OSError:
            pass
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
