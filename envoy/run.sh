#!/usr/bin/env bash
# Runs the Tollgate sample stack in the foreground, like a small service manager:
# the sample API, the token service and Envoy with the filter.
#
# - One stack at a time: a second start (same state directory, or the stack's ports
#   taken) says so and exits 1 before it changes anything. `run.sh --check` does only
#   that test (make run calls it before building).
# - Stopping it in any way stops every component: Ctrl-C, `kill` of the script, `kill`
#   of make (the script follows its parent), even `kill -9` of the script (the
#   components get SIGTERM when it dies, through setpriv --pdeathsig).
# - A component that exits is named with the tail of its log, and the rest are stopped.
# - The banner comes only once the filter has its keys: until then Envoy answers 503.
#
# State lives in $TOLLGATE_RUN_DIR (default .run/): the token service's database, the
# logs, and, for this demo only, the demo identities' secrets (envoy/seed.sh) so the
# walkthrough can print copy-paste commands. The service itself stores only hashes.
# tls/ holds the HTTPS listener's and the demo clients' certificates, made afresh by the
# sample CA (src/sample-ca) at every start; Envoy runs $RUN/envoy.yaml, the sample
# config with their paths.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY=${ENVOY:-.venv/bin/envoy}
BIN=target/release
RUN=${TOLLGATE_RUN_DIR:-.run}
STATE=$RUN/demo.env
PUBLIC=http://127.0.0.1:8080
# The fixed addresses of envoy/envoy.yaml and the commands below.
PORTS=(8080:Envoy 8443:Envoy-HTTPS 9901:Envoy-admin 9000:token-service 9100:sample-api)

say() { echo "make run: $*" >&2; }

# Exits 1 if a stack is running from $RUN or any of the stack's ports is taken.
# Touches nothing: the lock file is opened for appending, never truncated.
refuse_if_running() {
  if [[ -d $RUN ]]; then
    exec 9>> "$RUN/run.lock"
    if ! flock -n 9; then
      local pid
      pid=$(cat "$RUN/run.pid" 2> /dev/null || echo '?')
      say "the sample stack is already running from $RUN/ (pid $pid). Stop it first: Ctrl-C in its terminal, or kill $pid."
      exit 1
    fi
  fi
  local entry
  for entry in "${PORTS[@]}"; do
    if (exec 3<> "/dev/tcp/127.0.0.1/${entry%%:*}") 2> /dev/null; then
      say "127.0.0.1:${entry%%:*} (${entry#*:}) is already in use, by another make run (another checkout?) or another program. Stop it first."
      exit 1
    fi
  done
}

if [[ ${1:-} == --check ]]; then
  refuse_if_running
  exit 0
fi

refuse_if_running
mkdir -p "$RUN"
chmod 700 "$RUN"
# Held for as long as this script runs (components do not inherit it).
exec 9>> "$RUN/run.lock"
if ! flock -n 9; then
  say "another make run is starting from $RUN/"
  exit 1
fi
if [[ -f $RUN/demo-clients.env ]]; then
  say "$RUN/ comes from an older make run (its mobile-app client was confidential; it is now the public"
  say "client of the code flow). Start afresh: rm -rf $RUN"
  exit 1
fi
echo $$ > "$RUN/run.pid"
RUN_PATH=$(cd "$RUN" && pwd)
export TOLLGATE_DB=$RUN/tollgate.db
envoy/seed.sh "$STATE" "$BIN/tollgate-token-service"
# shellcheck disable=SC1090
source "$STATE"
"$BIN/sample-ca" "$RUN/tls" > /dev/null
TLS_DIR=$RUN_PATH/tls
sed -e "s|\.run/tls/|$TLS_DIR/|g" -e "s|\.run/access\.log|$RUN/access.log|g" envoy/envoy.yaml > "$RUN/envoy.yaml"

names=() pids=() logs=()
# Components get SIGTERM if this script dies without cleaning up (kill -9).
DEATHSIG=()
if command -v setpriv > /dev/null; then DEATHSIG=(setpriv --pdeathsig TERM --); fi

start() {
  local name=$1
  shift
  "${DEATHSIG[@]}" "$@" > "$RUN/$name.log" 2>&1 9>&- &
  names+=("$name") pids+=($!) logs+=("$RUN/$name.log")
}

stop() {
  trap - EXIT INT TERM HUP
  local pid alive
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2> /dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -f "$RUN/run.pid"
}
trap stop EXIT
trap 'echo; say "stopping"; stop; exit 130' INT
trap 'say "stopping"; stop; exit 143' TERM
trap 'stop; exit 129' HUP

# Exits (stopping the rest) if a component has exited or make has gone away.
supervise() {
  local i status
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2> /dev/null; then
      status=0
      wait "${pids[$i]}" || status=$?
      say "${names[$i]} exited (status $status); the end of ${logs[$i]}:"
      tail -n 20 "${logs[$i]}" | sed 's/^/    /' >&2
      exit 1
    fi
  done
  if ! kill -0 "$PPID" 2> /dev/null; then
    say "the parent process (pid $PPID) has gone; stopping"
    exit 1
  fi
}

start sample-api "$BIN/sample-api" --listen 127.0.0.1:9100
start token-service "$BIN/tollgate-token-service" serve --listen 127.0.0.1:9000 --issuer "$PUBLIC" \
  --audience tollgate-sample-api --mtls-endpoint-base https://127.0.0.1:8443
start envoy "$ENVOY" -c "$RUN/envoy.yaml" --concurrency 2 --disable-hot-restart --log-level warn --file-flush-interval-msec 1000 \
  --component-log-level wasm:info

# shellcheck source=envoy/demo/walkthrough.sh
source envoy/demo/walkthrough.sh
if ! demo_wait_ready 30 supervise; then
  say "the stack did not become ready within 30 s; logs in $RUN/"
  exit 1
fi
demo_walkthrough "logs in $RUN/" \
  "The CLI works on the stack's database with: export TOLLGATE_DB=$RUN_PATH/tollgate.db" \
  "Press Ctrl-C to stop."

while :; do
  supervise
  sleep 0.5 9>&-
done
