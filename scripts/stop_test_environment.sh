#!/usr/bin/env bash
# Stop what scripts/start_test_environment.sh started: SIGTERM (the server drains and keeps
# its results), then SIGKILL after 30 s for whatever still runs.
set -euo pipefail
cd "$(dirname "$0")/.."

LOG_DIR="${LOG_DIR:-logs}"
PID_FILE="$LOG_DIR/test_environment.pid"
if [ ! -f "$PID_FILE" ]; then
    echo "nothing to stop ($PID_FILE does not exist)"
    exit 0
fi
pids="$(cat "$PID_FILE")"
for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
for _ in $(seq 1 60); do
    alive=""
    for pid in $pids; do
        if kill -0 "$pid" 2>/dev/null; then alive="$alive $pid"; fi
    done
    [ -z "$alive" ] && break
    sleep 0.5
done
for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
rm -f "$PID_FILE"
echo "stopped"
