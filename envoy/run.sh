#!/usr/bin/env bash
# Starts the Tollgate sample stack in the foreground: the sample API, the token
# service and Envoy with the filter. Ctrl-C stops all three.
#
# State lives in .run/: the token service database (keys and clients survive
# restarts) and, for this demo only, the demo clients' secrets so the
# walkthrough can print copy-paste commands. The service itself stores only
# argon2 hashes.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY=${ENVOY:-.venv/bin/envoy}
BIN=target/release
RUN=.run
DB=$RUN/tollgate.db
CREDS=$RUN/demo-clients.env
KEYS=$RUN/demo-api-keys.env
PUBLIC=http://127.0.0.1:8080

mkdir -p "$RUN"
chmod 700 "$RUN"
export TOLLGATE_DB=$DB

# Prints the new client's secret; the CLI shows it once and stores only its hash.
secret_of() {
  local out
  out=$("$BIN/tollgate-token-service" clients add --id "$1" --scopes "$2" 2>&1) || {
    echo "cannot create demo client $1 (remove $RUN/ to start afresh): $out" >&2
    return 1
  }
  awk '/^client_secret:/ {print $2}' <<< "$out"
}

if [[ ! -f $CREDS ]]; then
  mobile=$(secret_of mobile-app 'read:data write:data')
  reader=$(secret_of reader 'read:data')
  umask 077
  printf 'MOBILE_APP_SECRET=%s\nREADER_SECRET=%s\n' "$mobile" "$reader" > "$CREDS"
fi
if [[ ! -f $KEYS ]]; then
  # An operator client for the admin API, and an API-key consumer with one key
  # (printed once by the CLI; the service stores only its SHA-256).
  admin=$(secret_of key-admin 'tollgate:admin')
  "$BIN/tollgate-token-service" consumers add --id partner-a --tenant acme \
    --scopes read:data > /dev/null
  key=$("$BIN/tollgate-token-service" api-keys create --consumer partner-a 2> /dev/null \
    | awk '/^api_key:/ {print $2}')
  [[ -n $key ]] || { echo "cannot create the demo API key (remove $RUN/ to start afresh)" >&2; exit 1; }
  umask 077
  printf 'KEY_ADMIN_SECRET=%s\nPARTNER_API_KEY=%s\n' "$admin" "$key" > "$KEYS"
fi
# shellcheck disable=SC1090
source "$CREDS"
# shellcheck disable=SC1090
source "$KEYS"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN/sample-api" --listen 127.0.0.1:9100 > "$RUN/sample-api.log" 2>&1 &
pids+=($!)
"$BIN/tollgate-token-service" serve --listen 127.0.0.1:9000 --issuer "$PUBLIC" \
  --audience tollgate-sample-api > "$RUN/token-service.log" 2>&1 &
pids+=($!)
"$ENVOY" -c envoy/envoy.yaml --concurrency 2 --disable-hot-restart --log-level warn \
  --component-log-level wasm:info > "$RUN/envoy.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:9901/ready > /dev/null 2>&1 && break
  sleep 0.2
done
curl -fs http://127.0.0.1:9901/ready > /dev/null || { echo "Envoy did not start; see $RUN/envoy.log"; exit 1; }

cat <<EOF_WALK

Tollgate sample stack is up (logs in $RUN/).
  Envoy + Tollgate  $PUBLIC      token service 127.0.0.1:9000      sample API 127.0.0.1:9100

1. Get a token (client_credentials, client_secret_basic):

   TOKEN=\$(curl -s -u mobile-app:$MOBILE_APP_SECRET \\
     -d grant_type=client_credentials -d scope=read:data $PUBLIC/token \\
     | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

2. Call the API: 200, and the echo shows no Authorization header but x-tollgate-* identity:

   curl -s -H "Authorization: Bearer \$TOKEN" $PUBLIC/data

3. No token: 401 with WWW-Authenticate: Bearer realm="tollgate-sample":

   curl -i $PUBLIC/data

4. A bad token: 401 error="invalid_token":

   curl -i -H "Authorization: Bearer \${TOKEN}x" $PUBLIC/data

5. Missing scope (POST /data needs write:data): 403 error="insufficient_scope":

   curl -i -X POST -H "Authorization: Bearer \$TOKEN" $PUBLIC/data

6. An API key (consumer partner-a, tenant acme): 200, the upstream sees
   x-tollgate-consumer and x-tollgate-tenant but no key:

   curl -s -H "X-API-Key: $PARTNER_API_KEY" $PUBLIC/data

7. Manage keys through the token service's admin API (scope tollgate:admin):

   ADMIN=\$(curl -s -u key-admin:$KEY_ADMIN_SECRET -d grant_type=client_credentials -d scope=tollgate:admin \\
     http://127.0.0.1:9000/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
   curl -s -H "Authorization: Bearer \$ADMIN" http://127.0.0.1:9000/admin/api-keys
   curl -s -H "Authorization: Bearer \$ADMIN" -H 'Content-Type: application/json' \\
     -d '{"consumer":"partner-a","expires_in":86400}' http://127.0.0.1:9000/admin/api-keys

   New, disabled and deleted keys take effect at the gateway within about 3 s.

Anonymous route: curl -s $PUBLIC/public/hello      Another client: reader / $READER_SECRET
Press Ctrl-C to stop.
EOF_WALK

wait -n "${pids[@]}"
echo "a component exited; see $RUN/*.log"
