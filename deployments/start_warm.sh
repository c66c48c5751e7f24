#!/usr/bin/env bash
# GPU host entrypoint (the seed's start_warm.sh): start the warm model server, wait until its health
# says ready, then start a Prefect process worker on the GPU pool. SIGTERM/SIGINT stop both cleanly.
# Runs as a container entrypoint or a systemd service; everything logs to stdout.
#
# Environment: PREFECT_API_URL, S2V_CHECKPOINT, S2V_MODEL_SERVER (socket), S2V_OUTPUT, S2V_WORKER_NAME,
# S2V_WORK_POOL (default s2v-gpu), S2V_SERVER_READY_TIMEOUT_S (default 1800: loading takes minutes).
# S2V_BIN and PREFECT_BIN name the commands (tests point them elsewhere).
set -euo pipefail

S2V_BIN=${S2V_BIN:-s2v}
PREFECT_BIN=${PREFECT_BIN:-prefect}
SOCKET=${S2V_MODEL_SERVER:-/tmp/wan2_s2v_model_server.sock}
POOL=${S2V_WORK_POOL:-s2v-gpu}
WORKER=${S2V_WORKER_NAME:-$(hostname)}
READY_TIMEOUT=${S2V_SERVER_READY_TIMEOUT_S:-1800}
export S2V_MODEL_SERVER=$SOCKET S2V_WORKER_NAME=$WORKER

log() { echo "start_warm: $*"; }

server_pid=""
worker_pid=""
stop() {
  log "stopping"
  if [ -n "$worker_pid" ]; then kill -TERM "$worker_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; fi
  if [ -n "$worker_pid" ]; then wait "$worker_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ]; then wait "$server_pid" 2>/dev/null || true; fi
  log "stopped"
}
trap 'stop; exit 0' TERM INT

log "starting the model server on $SOCKET"
"$S2V_BIN" server --socket "$SOCKET" &
server_pid=$!

waited=0
until "$S2V_BIN" server-status --socket "$SOCKET" 2>/dev/null | grep -q '"status": "ready"'; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    log "the model server exited before it was ready"
    wait "$server_pid" || true
    exit 1
  fi
  if [ "$waited" -ge "$READY_TIMEOUT" ]; then
    log "the model server was not ready after ${READY_TIMEOUT}s"
    stop
    exit 1
  fi
  sleep 2 &
  wait $! || true
  waited=$((waited + 2))
done
log "model server ready; starting worker $WORKER on pool $POOL"

# --limit 1: one flow run at a time per GPU; the model server queues what arrives meanwhile.
"$PREFECT_BIN" worker start --pool "$POOL" --type process --name "$WORKER" --limit 1 &
worker_pid=$!

# Whichever ends first ends the host: a worker without a model (or the reverse) is no use.
set +e
wait -n "$server_pid" "$worker_pid"
status=$?
set -e
log "a child exited with status $status"
stop
exit "$status"
