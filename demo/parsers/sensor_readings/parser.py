"""Weather-station readings in the older Handler style.

Each file starts with a header comment naming the station, then one reading per line as
`DATE TIME key=value …`. A sensor that failed writes ERR instead of a number; that reading is
kept with a null value rather than dropped. The handler publishes two tables: every reading,
and one summary row per station file.
"""
import datetime as dt

name = "sensor_readings"
version = "1.0.0"


def _number(text, kind):
    return None if text in ("ERR", "") else kind(text)


class Handler:
    def configure(self, ctx, config):
        self.ctx = ctx
        self.readings = ctx.register_topic("readings")
        self.stations = ctx.register_topic("stations")

    def execute(self, path):
        header, rows = {}, []
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                if line.startswith("#"):
                    header.update(pair.split("=", 1) for pair in line[1:].split() if "=" in pair)
                    continue
                day, time, *pairs = line.split()
                values = dict(pair.split("=", 1) for pair in pairs)
                rows.append({
                    "station": header.get("station"),
                    "ts": dt.datetime.fromisoformat(f"{day}T{time}"),
                    "temp_c": _number(values.get("temp", ""), float),
                    "humidity_pct": _number(values.get("humidity", ""), int),
                    "battery_v": _number(values.get("battery", ""), float),
                })
        failed = sum(1 for r in rows if r["temp_c"] is None)
        self.ctx.publish(self.readings, rows)
        self.ctx.publish(self.stations, [{
            "station": header.get("station"),
            "model": header.get("model"),
            "firmware": header.get("firmware"),
            "readings": len(rows),
            "failed_temp_readings": failed,
            "first_ts": rows[0]["ts"] if rows else None,
            "last_ts": rows[-1]["ts"] if rows else None,
        }])
