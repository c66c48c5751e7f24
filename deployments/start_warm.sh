#!/usr/bin/env bash
# GPU host entrypoint (the original server's start_warm.sh): start the warm model server, wait until its health
# says ready, then start a Prefect process worker on the GPU pool. SIGTERM/SIGINT stop both cleanly.
# Runs as a container entrypoint or a systemd service (Type=simple, KillSignal=SIGTERM); logs to stdout.
#
# Environment: PREFECT_API_URL, S2V_CHECKPOINT (required: the Wan2.2-S2V-14B folder, or "tiny" for the
# random-weight test model), S2V_MODEL_SERVER (socket), S2V_OUTPUT, S2V_WORKER_NAME (default the host
# name), S2V_WORK_POOL (default s2v-gpu), S2V_WORKER_LIMIT (flow runs at once, default 3: one generates
# while the next two start, download and wait in the model server's queue, which runs one job at a time;
# README "Benchmarks": 80% GPU-busy with 2, 94-95% with 3, at 25 s generations), S2V_SERVER_READY_TIMEOUT_S
# (default 1800: loading the 14B model takes minutes). S2V_BIN and PREFECT_BIN name the commands (tests
# swap them).
set -euo pipefail

S2V_BIN=${S2V_BIN:-s2v}
PREFECT_BIN=${PREFECT_BIN:-prefect}
SOCKET=${S2V_MODEL_SERVER:-/tmp/wan2_s2v_model_server.sock}
POOL=${S2V_WORK_POOL:-s2v-gpu}
WORKER=${S2V_WORKER_NAME:-${HOSTNAME:-s2v-gpu-worker}}
LIMIT=${S2V_WORKER_LIMIT:-3}
READY_TIMEOUT=${S2V_SERVER_READY_TIMEOUT_S:-1800}
# The flow runs the worker starts must reach this server, record this worker's name, and send the
# heartbeats by which a run of a host that died is found and handed out again (30 s: Prefect's least).
export S2V_MODEL_SERVER=$SOCKET S2V_WORKER_NAME=$WORKER PREFECT_FLOWS_HEARTBEAT_FREQUENCY=${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}

log() { echo "start_warm: $*"; }

# A GPU host without its model would make a night of noise marked succeeded: refuse to start.
checkpoint=${S2V_CHECKPOINT:-}
if [ -z "$checkpoint" ]; then
  log "error: S2V_CHECKPOINT is not set; set it to the Wan2.2-S2V-14B checkpoint folder (or S2V_CHECKPOINT=tiny for the random-weight test model)"
  exit 2
fi
if [ "$checkpoint" != "tiny" ] && [ ! -d "$checkpoint" ]; then
  log "error: S2V_CHECKPOINT=$checkpoint is not a folder; is the model volume mounted?"
  exit 2
fi

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

if [ -z "${PREFECT_API_URL:-}" ]; then
  log "warning: PREFECT_API_URL is not set; the worker uses the API of the active Prefect profile"
fi

# Everything on stdout: one stream for journald or `docker logs`.
log "starting the model server on $SOCKET"
"$S2V_BIN" server --socket "$SOCKET" 2>&1 &
server_pid=$!

# Sets state to the server's status (loading, ready, busy, failed) or "down" when nothing answers.
poll_server() {
  state=down
  reply=$("$S2V_BIN" server-status --socket "$SOCKET" 2>/dev/null) || return 0
  if [[ $reply =~ \"status\":\ *\"([a-z]+)\" ]]; then state=${BASH_REMATCH[1]}; fi
}

deadline=$((SECONDS + READY_TIMEOUT))  # SECONDS: bash's clock since start
while poll_server; do
  case $state in
    ready | busy) break ;;  # busy: a client sent a job the moment the model was loaded
    failed)
      # The server stays up to report its error; waiting longer would not load the model.
      log "the model server could not load the model: $reply"
      stop
      exit 1
      ;;
  esac
  if ! kill -0 "$server_pid" 2>/dev/null; then
    log "the model server exited before it was ready"
    wait "$server_pid" || true
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "the model server was not ready after ${READY_TIMEOUT}s (state: $state)"
    stop
    exit 1
  fi
  # In the background so a SIGTERM is handled now, not after the sleep.
  sleep 2 &
  wait $! || true
done
log "model server ready; starting worker $WORKER on pool $POOL"

# --limit 3: the next rows start and download while one generates; the model server queues the GPU work.
"$PREFECT_BIN" worker start --pool "$POOL" --type process --name "$WORKER" --limit "$LIMIT" 2>&1 &
worker_pid=$!

# Whichever ends first ends the host: a worker without a model (or the reverse) is no use.
set +e
wait -n "$server_pid" "$worker_pid"
status=$?
set -e
log "a child exited with status $status"
stop
exit "$status"
