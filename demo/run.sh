#!/usr/bin/env bash
# The demo end to end, as a newcomer would do it by hand: register the three demo parsers, queue
# the sensor files by hand and let a watched folder with two routing rules queue the sales and log
# files, process them with the local sentinel and worker, and show the Parquet files.
# It uses its own home (demo/.home, wiped first) so it always starts clean and touches nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./casparian
[ -x "$bin" ] || { echo "demo: $bin is missing; run ./build.sh first" >&2; exit 2; }
export CASPARIAN_HOME="$PWD/demo/.home"
rm -rf "$CASPARIAN_HOME"

run() { printf '\n$ %s\n' "$*"; "$@"; }
run "$bin" parser register demo/parsers/sales_csv
run "$bin" parser register demo/parsers/app_logs
run "$bin" parser register demo/parsers/sensor_readings
run "$bin" job add --parser sensor_readings demo/data/sensors

# A watched folder of mixed files, as exports land in practice: two rules route the CSVs and the JSON
# logs to their parsers; the stray notes file matches no rule and is listed as unmatched, not dropped.
incoming="$CASPARIAN_HOME/incoming"
mkdir -p "$incoming/logs"
cp demo/data/sales/*.csv "$incoming/"
cp demo/data/logs/*.jsonl "$incoming/logs/"
printf 'exported by the till, 2026-10\n' > "$incoming/notes.txt"
run "$bin" source add incoming "$incoming" --recursive
run "$bin" rule add incoming '**/*.csv' sales_csv
run "$bin" rule add incoming '**/*.jsonl' app_logs
run "$bin" rule test incoming
run "$bin" start --drain
run "$bin" source show incoming
run "$bin" jobs
