#!/usr/bin/env bash
# Starts the fleet sample in the foreground (`make run FLEET=1`): Redis, the
# rate-limit service (tollgate-rls-backend: Limitador, counters in Redis), the
# sample API, the token service and two Envoys with Tollgate on 8080 and 8081
# whose remote policy `fleet-per-client` shares one limit (envoy/fleet/limits.yaml):
# Tollgate asks the rate-limit service itself. Ctrl-C stops them all.
#
# State lives in .run/ next to `make run`'s: the same token service database, and
# the fleet demo client's secret in .run/fleet-clients.env (for the walkthrough).
set -euo pipefail
cd "$(dirname "$0")/../.."

ENVOY=${ENVOY:-.venv/bin/envoy}
BIN=target/release
RUN=.run
CREDS=$RUN/fleet-clients.env
A=http://127.0.0.1:8080
B=http://127.0.0.1:8081
REDIS_PORT=6380

command -v redis-server > /dev/null || { echo "redis-server is missing: run make tools" >&2; exit 1; }
mkdir -p "$RUN"
chmod 700 "$RUN"
export TOLLGATE_DB=$RUN/tollgate.db

if [[ ! -f $CREDS ]]; then
  out=$("$BIN/tollgate-token-service" --create clients add --id fleet-app --scopes 'read:data' --default-scopes 'read:data' 2>&1) || {
    echo "cannot create the demo client fleet-app (remove $RUN/ to start afresh): $out" >&2
    exit 1
  }
  umask 077
  printf 'FLEET_APP_SECRET=%s\n' "$(awk '/^client_secret:/ {print $2}' <<< "$out")" > "$CREDS"
fi
# shellcheck disable=SC1090
source "$CREDS"

# The second Envoy: the same file on other ports. The issuer stays 8080 (the
# token service's public URL), so one token is valid on both.
sed -e 's/port_value: 8080/port_value: 8081/' -e 's/port_value: 9901/port_value: 9902/' \
  envoy/fleet/envoy.yaml > "$RUN/envoy-fleet-b.yaml"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no \
  > "$RUN/redis.log" 2>&1 &
pids+=($!)
"$BIN/sample-api" --listen 127.0.0.1:9100 > "$RUN/sample-api.log" 2>&1 &
pids+=($!)
"$BIN/tollgate-token-service" serve --listen 127.0.0.1:9000 --issuer "$A" \
  --audience tollgate-sample-api > "$RUN/token-service.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
  redis-cli -p $REDIS_PORT ping > /dev/null 2>&1 && break
  sleep 0.1
done
"$BIN/tollgate-rls-backend" --limits envoy/fleet/limits.yaml \
  --redis redis://127.0.0.1:$REDIS_PORT --listen 127.0.0.1:8181 --admin 127.0.0.1:8182 \
  > "$RUN/rls-backend.log" 2>&1 &
pids+=($!)
"$ENVOY" -c envoy/fleet/envoy.yaml --concurrency 2 --disable-hot-restart --log-level warn \
  --component-log-level wasm:info > "$RUN/envoy-a.log" 2>&1 &
pids+=($!)
"$ENVOY" -c "$RUN/envoy-fleet-b.yaml" --concurrency 2 --disable-hot-restart --log-level warn \
  --component-log-level wasm:info > "$RUN/envoy-b.log" 2>&1 &
pids+=($!)

for ready in http://127.0.0.1:9901/ready http://127.0.0.1:9902/ready http://127.0.0.1:8182/healthz; do
  for _ in $(seq 1 100); do
    curl -fs "$ready" > /dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fs "$ready" > /dev/null || { echo "$ready is not up; see $RUN/*.log"; exit 1; }
done

cat <<EOF_WALK

Tollgate fleet sample is up (logs in $RUN/).
  Envoy A + Tollgate  $A      Envoy B + Tollgate  $B
  rate-limit service  127.0.0.1:8181 (RLS gRPC), http://127.0.0.1:8182 (admin)
  Redis 127.0.0.1:$REDIS_PORT     token service 127.0.0.1:9000     sample API 127.0.0.1:9100

Both Envoys' Tollgate share the remote policy \`fleet-per-client\`: 10 requests a
minute per client (envoy/fleet/limits.yaml), counted once for the fleet by the
rate-limit service, which Tollgate asks itself.

1. Get a token:

   TOKEN=\$(curl -s -u fleet-app:$FLEET_APP_SECRET \\
     -d grant_type=client_credentials -d scope=read:data $A/token \\
     | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

2. Spread 12 requests over both Envoys: 10 pass, then both refuse:

   for i in \$(seq 1 6); do for gw in $A $B; do
     curl -s -o /dev/null -w "\$gw %{http_code}\n" -H "Authorization: Bearer \$TOKEN" \$gw/data
   done; done

3. The shared 429 (from either Envoy), with Retry-After, RateLimit and
   RateLimit-Policy from the service's answer:

   curl -i -H "Authorization: Bearer \$TOKEN" $B/data

4. The service's own counters and answers, and each Envoy's calls:

   curl -s http://127.0.0.1:8182/counters/tollgate; curl -s http://127.0.0.1:8182/stats
   curl -s http://127.0.0.1:9901/stats | grep tollgate.rls
   curl -s http://127.0.0.1:9902/stats | grep tollgate.rls

Press Ctrl-C to stop.
EOF_WALK

wait -n "${pids[@]}"
echo "a component exited; see $RUN/*.log"
