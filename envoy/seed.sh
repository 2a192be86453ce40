#!/usr/bin/env bash
# Seeds the sample stack's demo identities through the token service's CLI, once:
#   backend     confidential client (client_credentials), read:data write:data
#   reader      confidential client, read:data
#   key-admin   confidential client for the admin API, tollgate:admin
#   partner-a   API-key consumer (tenant acme, read:data) with one key
#   alice       a user who signs in at /authorize (random password), with an
#               authenticator app (TOTP secret kept for the step-up walkthrough)
#   mobile-app  public client (authorization code + PKCE), redirect http://127.0.0.1/callback
#
# Usage: seed.sh STATE_FILE CLI...
#   CLI is how to run tollgate-token-service against the stack's database, e.g.
#   `target/release/tollgate-token-service` (with TOLLGATE_DB set) or
#   `docker-compose -f envoy/docker/compose.yaml exec -T token-service tollgate-token-service`.
# The CLI prints each secret once and the service keeps only hashes, so for this demo
# they are kept in STATE_FILE (mode 600) for the walkthrough. Safe to repeat: what
# STATE_FILE already records is not created again.
set -euo pipefail

STATE=$1
shift
CLI=("$@")
umask 077
touch "$STATE"
# shellcheck disable=SC1090
source "$STATE"

fail() {
  echo "seed: cannot create $1: $2" >&2
  echo "seed: the database may hold demo identities this state file does not know; start afresh by removing both" >&2
  exit 1
}

# Runs the CLI; prints the value of `field:` from its output.
field_of() {
  local field=$1 what=$2 out
  shift 2
  out=$("${CLI[@]}" "$@" 2>&1 < /dev/null) || fail "$what" "$out"
  awk -v f="$field:" '$1 == f {print $2}' <<< "$out"
}

remember() { printf '%s=%s\n' "$1" "$2" >> "$STATE"; }

# The first command makes the stack's database (management commands never create one
# by accident without --create).
out=$("${CLI[@]}" --create keys list 2>&1 < /dev/null) || fail 'the database' "$out"

if [[ -z ${BACKEND_SECRET:-} ]]; then
  remember BACKEND_SECRET "$(field_of client_secret 'client backend' clients add --id backend --scopes 'read:data write:data')"
fi
if [[ -z ${READER_SECRET:-} ]]; then
  remember READER_SECRET "$(field_of client_secret 'client reader' clients add --id reader --scopes 'read:data' --default-scopes 'read:data')"
fi
if [[ -z ${KEY_ADMIN_SECRET:-} ]]; then
  remember KEY_ADMIN_SECRET "$(field_of client_secret 'client key-admin' clients add --id key-admin --scopes 'tollgate:admin')"
fi
if [[ -z ${PARTNER_API_KEY:-} ]]; then
  field_of consumer 'consumer partner-a' consumers add --id partner-a --tenant acme --scopes read:data > /dev/null
  key=$(field_of api_key 'an API key for partner-a' api-keys create --consumer partner-a)
  [[ -n $key ]] || fail 'an API key for partner-a' 'the CLI printed no api_key'
  remember PARTNER_API_KEY "$key"
fi
if [[ -z ${DEMO_PASSWORD:-} ]]; then
  password=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
  out=$(printf '%s\n' "$password" | "${CLI[@]}" users add --username alice --scopes "read:data write:data" 2>&1) || fail 'user alice' "$out"
  remember DEMO_USER alice
  remember DEMO_PASSWORD "$password"
fi
if [[ -z ${DEMO_TOTP_SECRET:-} ]]; then
  remember DEMO_TOTP_SECRET "$(field_of totp_secret 'a TOTP secret for alice' users add-totp --username alice --label 'Demo authenticator')"
fi
if [[ -z ${MOBILE_APP_CLIENT:-} ]]; then
  field_of client_id 'client mobile-app' clients add --id mobile-app --public --scopes 'read:data write:data' \
    --redirect-uri http://127.0.0.1/callback > /dev/null
  remember MOBILE_APP_CLIENT mobile-app
fi
