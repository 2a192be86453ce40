#!/usr/bin/env bash
# make run-test: `make run` as a service manager, and the sample walkthrough against it.
#
# Runs in a private network namespace (unshare --net, loopback only) so the stack's
# fixed ports (8080, 9000, 9100, 9901) cannot collide with the e2e suite, another
# checkout's make run or anything else on the machine; state goes to a temporary
# directory, never to .run/. Without unshare (not root), it uses the host's loopback
# and refuses to start if those ports are taken.
#
# Checks:
#   - the walkthrough: the demo app's code + PKCE flow (envoy/demo/mobile_app.py),
#     then the printed curl steps (token, API key, 401/403, admin API);
#   - a second make run is refused, exits non-zero, leaves the live logs alone and
#     prints no secret;
#   - every way of stopping leaves no component behind: kill of make, kill of the
#     script, kill -9 of the script, kill -9 of make, Ctrl-C (SIGINT to the group);
#   - a component that exits is named with its log, and the rest are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z ${TOLLGATE_TEST_NETNS:-} ]] && command -v unshare ip > /dev/null && unshare --net true 2> /dev/null; then
  # shellcheck disable=SC2016 # $0 and $@ expand in the inner shell
  exec unshare --net env TOLLGATE_TEST_NETNS=1 bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi

RUN=$(mktemp -d /tmp/tollgate-run-test.XXXXXX)
OUT=$RUN.out
PUBLIC=http://127.0.0.1:8080
export TOLLGATE_RUN_DIR=$RUN
passed=0
pids_to_reap=()

cleanup() {
  local pid
  for pid in "${pids_to_reap[@]}"; do kill -KILL "$pid" 2> /dev/null || true; done
  rm -rf "$RUN" "$OUT" "$RUN".second
}
trap cleanup EXIT

ok() {
  passed=$((passed + 1))
  echo "  ok  $*"
}
fail() {
  echo "run-test: FAILED: $*" >&2
  # run.sh's own messages and the log tails it shows (not the banner: it has secrets)
  [[ -f $OUT ]] && grep -A 20 '^make run:\|^make: ' "$OUT" | sed 's/^/    | /' >&2
  exit 1
}

for port in 8080 9000 9100 9901; do
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
    fail "127.0.0.1:$port is in use and this run has no network namespace of its own (run as root)"
  fi
done

# Starts `make run` in the background in its own process group; sets MAKE_PID,
# SCRIPT_PID and COMPONENTS once the banner is out.
start_stack() {
  : > "$OUT"
  # Started from a subshell, so this shell does not report its killed jobs.
  MAKE_PID=$(setsid make --no-print-directory run > "$OUT" 2>&1 & echo $!)
  pids_to_reap+=("$MAKE_PID")
  for _ in $(seq 1 900); do
    grep -q 'Press Ctrl-C to stop' "$OUT" && break
    kill -0 "$MAKE_PID" 2> /dev/null || fail "make run exited before the banner"
    sleep 0.2
  done
  grep -q 'Press Ctrl-C to stop' "$OUT" || fail "no banner within 180 s"
  SCRIPT_PID=$(cat "$RUN/run.pid")
  # The components by name: run.sh's supervision loop also forks short-lived
  # helpers (sleep, a subshell), which a busy machine can catch alive.
  mapfile -t COMPONENTS < <(ps -o pid= --ppid "$SCRIPT_PID" | awk '{print $1}' | while read -r pid; do
    [[ $(ps -o comm= -p "$pid") =~ ^(envoy|tollgate-token-|sample-api) ]] && echo "$pid"
  done)
  ((${#COMPONENTS[@]} == 3)) || fail "expected 3 components under run.sh, found ${#COMPONENTS[@]}"
  pids_to_reap+=("$SCRIPT_PID" "${COMPONENTS[@]}")
}

# Passes when make, the script and every component are gone and the ports are closed.
expect_all_stopped() {
  local what=$1 pid left port
  for _ in $(seq 1 150); do
    left=()
    for pid in "$MAKE_PID" "$SCRIPT_PID" "${COMPONENTS[@]}"; do
      if kill -0 "$pid" 2> /dev/null && [[ $(ps -o stat= -p "$pid") != Z* ]]; then left+=("$pid"); fi
    done
    ((${#left[@]} == 0)) && break
    sleep 0.1
  done
  ((${#left[@]} == 0)) || fail "$what: still running: $(ps -o pid=,comm= -p "$(
    IFS=,
    echo "${left[*]}"
  )" | tr '\n' ' ')"
  for port in 8080 9000 9100 9901; do
    if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then fail "$what: 127.0.0.1:$port still open"; fi
  done
  ok "$what: make, run.sh and all 3 components stopped, ports closed"
}

echo "1. make run, the walkthrough against it"
start_stack
ok "make run printed the banner (filter ready)"
# shellcheck disable=SC1090,SC1091
source "$RUN/demo.env"
[[ $(stat -c %a "$RUN/demo.env") == 600 ]] || fail "demo.env is not mode 600"
ok "demo secrets are kept in a mode-600 state file"
# shellcheck source=envoy/demo/walkthrough.sh
source envoy/demo/walkthrough.sh
demo_check

echo "2. a second make run is refused"
sums=$(md5sum "$RUN"/*.log)
second=$(make --no-print-directory run 2>&1) && fail "a second make run exited 0"
[[ $second == *'already running'* ]] || fail "the second make run did not say the stack is running: $second"
for secret in "$BACKEND_SECRET" "$READER_SECRET" "$KEY_ADMIN_SECRET" "$PARTNER_API_KEY" "$DEMO_PASSWORD"; do
  [[ $second != *"$secret"* ]] || fail "the second make run printed a secret"
done
[[ $(md5sum "$RUN"/*.log) == "$sums" ]] || fail "the second make run changed the live logs"
second=$(TOLLGATE_RUN_DIR=$RUN.second make --no-print-directory run 2>&1) && fail "a second make run (other state dir) exited 0"
[[ $second == *'127.0.0.1:8080 (Envoy) is already in use'* ]] || fail "the second make run did not name the busy port: $second"
[[ ! -e $RUN.second ]] || fail "the refused make run created its state directory"
ok "a second make run exits non-zero, says so, prints no secret, leaves logs and state alone"
[[ $(demo_status "$PUBLIC/public/hello") == 200 ]] || fail "the first stack is hurt"
ok "the first stack still serves"

echo "3. every way of stopping stops everything"
kill -TERM "$MAKE_PID"
expect_all_stopped "kill of make"
start_stack
kill -TERM "$SCRIPT_PID"
expect_all_stopped "kill of run.sh"
start_stack
kill -KILL "$SCRIPT_PID"
expect_all_stopped "kill -9 of run.sh"
start_stack
kill -KILL "$MAKE_PID"
expect_all_stopped "kill -9 of make"
start_stack
kill -INT -- "-$MAKE_PID" # Ctrl-C: the terminal signals the whole foreground group
expect_all_stopped "Ctrl-C"

echo "4. a component that exits is named, and the rest are stopped"
start_stack
kill -KILL "$(pgrep -P "$SCRIPT_PID" -x sample-api)"
expect_all_stopped "sample-api killed"
grep -q 'sample-api exited (status 137); the end of' "$OUT" || fail "run.sh did not name the exited component"
grep -q 'sample-api listening on' "$OUT" || fail "run.sh did not show the component's log"
ok "run.sh named sample-api (status 137) and showed the end of its log"
echo "run-test: $passed passed, 0 failed"
