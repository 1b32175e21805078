#!/usr/bin/env bash
# Start the trainer simulator and a rollout server on 127.0.0.1, for trying an agent by hand.
#
#   scripts/start_test_environment.sh [module:agent]      # default: the calculator
#   MOCK_TRAINER_PORT=9001 ROLLOUT_SERVER_PORT=9000 LOG_DIR=logs   (the defaults)
#
# Logs and traces go under $LOG_DIR, the two process ids to $LOG_DIR/test_environment.pid.
# Refuses to start when that file exists or a port is in use; waits until both answer
# GET /health (60 s at most). Stop with scripts/stop_test_environment.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

AGENT="${1:-${ROLLOUT_AGENT:-rollout.examples.calculator:agent}}"
MOCK_TRAINER_PORT="${MOCK_TRAINER_PORT:-9001}"
ROLLOUT_SERVER_PORT="${ROLLOUT_SERVER_PORT:-9000}"
LOG_DIR="${LOG_DIR:-logs}"
PID_FILE="$LOG_DIR/test_environment.pid"

if [ -f "$PID_FILE" ]; then
    echo "error: already running (process ids in $PID_FILE); stop it with scripts/stop_test_environment.sh" >&2
    exit 1
fi
# The project's interpreter itself (not a 'uv run' wrapper), so the ids are the servers'.
PYTHON="$(uv run --frozen python -c 'import sys; print(sys.executable)')"

port_in_use() {
    "$PYTHON" -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)' "$1"
}
for port in "$MOCK_TRAINER_PORT" "$ROLLOUT_SERVER_PORT"; do
    if port_in_use "$port"; then
        echo "error: port $port is in use; set MOCK_TRAINER_PORT / ROLLOUT_SERVER_PORT" >&2
        exit 1
    fi
done

mkdir -p "$LOG_DIR"
"$PYTHON" -m rollout.testing --host 127.0.0.1 --port "$MOCK_TRAINER_PORT" \
    >"$LOG_DIR/mock_trainer.log" 2>&1 &
echo $! >"$PID_FILE"
"$PYTHON" -m rollout serve -m "$AGENT" --host 127.0.0.1 --port "$ROLLOUT_SERVER_PORT" \
    --store "sqlite:$LOG_DIR/store.db" --log "$LOG_DIR/traces" >"$LOG_DIR/rollout_server.log" 2>&1 &
echo $! >>"$PID_FILE"

healthy() {
    "$PYTHON" -c 'import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2).read()
except Exception:
    sys.exit(1)' "http://127.0.0.1:$1/health"
}
for _ in $(seq 1 120); do
    if healthy "$MOCK_TRAINER_PORT" && healthy "$ROLLOUT_SERVER_PORT"; then
        echo "trainer simulator: http://127.0.0.1:$MOCK_TRAINER_PORT (log $LOG_DIR/mock_trainer.log)"
        echo "rollout server:    http://127.0.0.1:$ROLLOUT_SERVER_PORT (agent $AGENT, log $LOG_DIR/rollout_server.log)"
        exit 0
    fi
    while read -r pid; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: a process exited during start; see the logs in $LOG_DIR" >&2
            "$(dirname "$0")/stop_test_environment.sh" >/dev/null 2>&1 || true
            exit 1
        fi
    done <"$PID_FILE"
    sleep 0.5
done
echo "error: not healthy after 60 s; see the logs in $LOG_DIR" >&2
"$(dirname "$0")/stop_test_environment.sh" >/dev/null 2>&1 || true
exit 1
