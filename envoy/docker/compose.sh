#!/usr/bin/env bash
# The sample stack under docker compose (compose.yaml), on host networking.
#
#   compose.sh up     stage and build the image from local files, start the stack
#                     detached, seed the demo identities (the same as make run) and
#                     print the walkthrough. Secrets for it: .run/compose-demo.env.
#   compose.sh test   the same under its own project and volume, then the walkthrough
#                     checks (the demo app's code + PKCE flow and the curl steps)
#                     against the containers, a restart of the token service (its data
#                     survives), and everything removed again. Exits non-zero, saying
#                     why, when Docker cannot run here.
#
# COMPOSE picks the command (`docker compose` or Debian's `docker-compose`); by
# default whichever works.
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE=${1:-}
YAML=envoy/docker/compose.yaml
say() { echo "compose.sh $MODE: $*" >&2; }

if [[ $MODE != up && $MODE != test ]]; then
  echo "usage: compose.sh up|test" >&2
  exit 2
fi

if ! docker_error=$(docker info 2>&1 > /dev/null); then
  say "Docker is not available here, so the stack cannot run in containers:"
  say "  ${docker_error//$'\n'/ }"
  say "Install and start it (Debian: apt-get install -y docker.io docker-compose; dockerd &), then retry."
  exit 1
fi
read -ra COMPOSE <<< "${COMPOSE:-}"
if ((${#COMPOSE[@]} == 0)); then
  if docker compose version > /dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose > /dev/null; then
    COMPOSE=(docker-compose)
  else
    say "neither \`docker compose\` nor \`docker-compose\` is installed (Debian: apt-get install -y docker-compose)"
    exit 1
  fi
fi

if [[ $MODE == test ]]; then
  export TOLLGATE_VOLUME=tollgate-docker-test-data
  COMPOSE+=(-p tollgate-docker-test)
  STATE=$(mktemp)
else
  mkdir -p .run
  STATE=.run/compose-demo.env
fi
COMPOSE+=(-f "$YAML")
CLI=("${COMPOSE[@]}" exec -T token-service tollgate-token-service)

for port in 8080 8443 9000 9100 9901; do
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
    # make compose-up on a stack that is already up only prints the walkthrough again.
    if [[ $MODE == up && -n $("${COMPOSE[@]}" ps -q envoy 2> /dev/null) ]]; then break; fi
    say "127.0.0.1:$port is in use (make run, or another stack?): the containers use the host's network. Stop it first."
    exit 1
  fi
done

passed=0
ok() {
  passed=$((passed + 1))
  echo "  ok  $*"
}
fail() {
  say "FAILED: $*"
  "${COMPOSE[@]}" logs --tail 20 >&2 || true
  exit 1
}
if [[ $MODE == test ]]; then
  trap '"${COMPOSE[@]}" down -v --remove-orphans > /dev/null 2>&1 || true; rm -f "$STATE"' EXIT
  "${COMPOSE[@]}" down -v --remove-orphans > /dev/null 2>&1 || true
fi

echo "building the image from local files"
envoy/docker/stage.sh > /dev/null
"${COMPOSE[@]}" build --quiet token-service 2>&1 | grep -v '^$' || true
docker image inspect tollgate-sample:local > /dev/null || fail "the image was not built"
[[ $MODE == up ]] || ok "image tollgate-sample:local built FROM scratch out of local files"

"${COMPOSE[@]}" up -d
for _ in $(seq 1 300); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9000/healthz 2> /dev/null) == 200 ]] && break
  sleep 0.2
done
[[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9000/healthz) == 200 ]] ||
  fail "the token service container did not become healthy"

# A state file whose identities the database no longer has (its volume was removed):
# start it afresh.
if [[ -s $STATE ]] && ! "${CLI[@]}" clients list 2> /dev/null | grep -q '^backend'; then
  say "the database has no demo identities; seeding afresh"
  : > "$STATE"
fi
envoy/seed.sh "$STATE" "${CLI[@]}"
# shellcheck disable=SC1090
source "$STATE"
TLS_DIR=$PWD/.run/compose-tls # stage.sh wrote the demo clients' certificates there
# shellcheck source=envoy/demo/walkthrough.sh
source envoy/demo/walkthrough.sh
demo_wait_ready 60 || fail "the filter did not get its keys within 60 s"

if [[ $MODE == up ]]; then
  demo_walkthrough "logs: ${COMPOSE[*]} logs" \
    "The CLI in the stack: ${CLI[*]/-T /} clients list" \
    "Stop it with: make compose-down"
  exit 0
fi

ok "the stack is up and seeded; the filter has its keys"
for service in sample-api token-service envoy; do
  user=$(docker inspect -f '{{.Config.User}}' "$("${COMPOSE[@]}" ps -q "$service")")
  [[ $user == tollgate ]] || fail "$service runs as '$user', not the unprivileged user"
done
ok "all three containers run as the unprivileged user tollgate"
demo_check
"${COMPOSE[@]}" restart token-service > /dev/null 2>&1
demo_wait_ready 60 || fail "not ready again after a restart of the token service"
[[ -n $(demo_token "backend:$BACKEND_SECRET" read:data) ]] || fail "the backend client is gone after a restart"
python3 envoy/demo/mobile_app.py --username "$DEMO_USER" --password "$DEMO_PASSWORD" > /dev/null 2>&1 ||
  fail "the demo user cannot sign in after a restart"
ok "after a restart of the token service its clients and users are still there (volume $TOLLGATE_VOLUME)"
echo "docker-test: $passed passed, 0 failed"
