#!/usr/bin/env bash
# The demo end to end, as a newcomer would do it by hand: register the three demo parsers, queue
# their sample files, process them with the local sentinel and worker, and show the Parquet files.
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
run "$bin" job add --parser sales_csv demo/data/sales
run "$bin" job add --parser app_logs demo/data/logs
run "$bin" job add --parser sensor_readings demo/data/sensors
run "$bin" start --drain
run "$bin" jobs
