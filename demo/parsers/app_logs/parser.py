"""Application logs as JSON lines: one event per line, as services write them.

Timestamps carry their UTC offset and stay time-zone aware; fields that only some events have
(latency, user, status) become nullable columns. A line that is not JSON goes to `log_errors`
with its line number instead of failing the file. Events are yielded in chunks, so a large log
never has to fit in memory at once.
"""
import datetime as dt
import json

from casparian import Output

name = "app_logs"
version = "1.0.0"

TOPIC = "events"
CHUNK = 50_000


def _event(record):
    ts = dt.datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
    http = record.get("http") or {}
    return {
        "ts": ts,
        "level": record.get("level", "info").upper(),
        "service": record.get("service"),
        "message": record.get("msg", ""),
        "user_id": record.get("user_id"),
        "status": http.get("status"),
        "latency_ms": http.get("latency_ms"),
    }


def parse(path):
    events, errors = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                events.append(_event(json.loads(line.strip())))
            except (ValueError, KeyError, TypeError) as e:
                errors.append({"line": number, "error": f"{type(e).__name__}: {e}", "text": line.rstrip("\n")[:500]})
            if len(events) >= CHUNK:
                yield events
                events = []
    if events:
        yield events
    if errors:
        print(f"{len(errors)} line(s) could not be read; see the log_errors table")
        yield Output("log_errors", errors)
