# shellcheck shell=bash
# The sample stack's walkthrough, shared by make run (envoy/run.sh), make compose-up
# and the tests (envoy/test_run.sh, envoy/docker/compose.sh). Sourced, after the demo
# state file (envoy/seed.sh) has been sourced: it uses BACKEND_SECRET, READER_SECRET,
# KEY_ADMIN_SECRET, PARTNER_API_KEY, DEMO_USER, DEMO_PASSWORD and DEMO_TOTP_SECRET.

PUBLIC=${PUBLIC:-http://127.0.0.1:8080}

demo_status() { curl -s -o /dev/null -w '%{http_code}' "$@" 2> /dev/null || true; }

demo_token() {
  curl -s -u "$1" -d grant_type=client_credentials ${2:+-d scope="$2"} "${3:-$PUBLIC/token}" 2> /dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' 2> /dev/null || true
}

# Waits until the filter has its keys: a token and an API key both pass five times
# in a row (Envoy answers 503 until the JWKS, revocation list and key set have loaded
# in every worker). Runs "$2" (e.g. a supervision check) on every round. Returns 1
# after "$1" seconds.
demo_wait_ready() {
  local seconds=$1 hook=${2:-true} token='' streak=0
  for _ in $(seq 1 $((seconds * 10))); do
    "$hook"
    [[ -n $token ]] || token=$(demo_token "backend:$BACKEND_SECRET" read:data)
    if [[ -n $token && $(demo_status -H "Authorization: Bearer $token" "$PUBLIC/data") == 200 &&
      $(demo_status -H "X-API-Key: $PARTNER_API_KEY" "$PUBLIC/data") == 200 ]]; then
      streak=$((streak + 1))
      ((streak < 5)) || return 0
    else
      streak=0
    fi
    sleep 0.1 9>&-
  done
  return 1
}

# Prints the walkthrough with the demo secrets filled in.
# $1: where the logs are; $2: how to run the CLI on the stack's database; $3: how to stop.
demo_walkthrough() {
  cat << EOF_WALK

Tollgate sample stack is up ($1).
  Envoy + Tollgate  $PUBLIC      token service 127.0.0.1:9000      sample API 127.0.0.1:9100

1. A backend gets a token (client_credentials, client_secret_basic):

   TOKEN=\$(curl -s -u backend:$BACKEND_SECRET \\
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

8. A user signs in to the mobile app (authorization code + PKCE; public client
   mobile-app, user $DEMO_USER / $DEMO_PASSWORD). The app's side, played by a script:
   it opens the sign-in page in your browser, receives the redirect on
   http://127.0.0.1:<port>/callback, exchanges the code, calls the API and refreshes:

   python3 envoy/demo/mobile_app.py

   By hand, the same steps:

   VERIFIER=\$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
   CHALLENGE=\$(printf %s "\$VERIFIER" | openssl dgst -sha256 -binary | basenc --base64url | tr -d '=')
   # open in a browser, sign in; it redirects to http://127.0.0.1/callback?code=...
   echo "$PUBLIC/authorize?response_type=code&client_id=mobile-app&redirect_uri=http://127.0.0.1/callback&scope=read:data&state=xyz&code_challenge=\$CHALLENGE&code_challenge_method=S256"
   curl -s -d grant_type=authorization_code -d client_id=mobile-app -d redirect_uri=http://127.0.0.1/callback \\
     -d code_verifier="\$VERIFIER" -d code=<code from the address bar> $PUBLIC/token

9. Step-up: /transfers needs a multi-factor sign-in (its rule: the token's amr
   contains mfa). $DEMO_USER has an authenticator app; its secret for this demo:
   $DEMO_TOTP_SECRET (mobile_app.py computes the codes from it, as the app would).
   A password-only token is refused (403, missing_claim), then the app asks for
   acr_values=urn:tollgate:acr:mfa, the user enters the code, and the call succeeds:

   python3 envoy/demo/mobile_app.py --username $DEMO_USER --password '$DEMO_PASSWORD' \\
     --scope 'read:data write:data' --api $PUBLIC/transfers                        # FAILED: 403
   python3 envoy/demo/mobile_app.py --username $DEMO_USER --password '$DEMO_PASSWORD' \\
     --scope 'read:data write:data' --api $PUBLIC/transfers \\
     --acr-values urn:tollgate:acr:mfa --totp-secret $DEMO_TOTP_SECRET          # 200, amr [mfa, otp, pwd]

   Passkeys and the authenticator app are managed at $PUBLIC/account (passkeys need
   a domain name: browse http://localhost:8080 with --issuer http://localhost:8080).

$2
Anonymous route: curl -s $PUBLIC/public/hello      Another client: reader / $READER_SECRET
$3
EOF_WALK
}

# Runs the walkthrough as a user would and checks every answer. Calls `ok MESSAGE`
# for each check passed and `fail MESSAGE` (which must exit) otherwise.
demo_check() {
  local token body admin app
  app=$(python3 envoy/demo/mobile_app.py --issuer "$PUBLIC" --username "$DEMO_USER" --password "$DEMO_PASSWORD" 2>&1) ||
    fail "the mobile app's flow: $app"
  [[ $app == *'refresh token rotated'* ]] || fail "the mobile app did not refresh: $app"
  ok "mobile app: code + PKCE sign-in, loopback callback, API call, refresh (envoy/demo/mobile_app.py)"
  [[ $(python3 envoy/demo/mobile_app.py --issuer "$PUBLIC" --username "$DEMO_USER" --password wrong-password 2>&1) == *'wrong password'* ]] ||
    fail "a wrong password did not fail the sign-in"
  ok "mobile app: a wrong password is refused"
  token=$(demo_token "backend:$BACKEND_SECRET" read:data)
  [[ -n $token ]] || fail "step 1: no token for the backend client"
  body=$(curl -s -H "Authorization: Bearer $token" "$PUBLIC/data")
  python3 -c 'import json,sys; h=json.loads(sys.argv[1])["headers"]; assert "authorization" not in h and h["x-tollgate-client-id"] == "backend", h' "$body" 2> /dev/null ||
    fail "step 2: the upstream did not get the identity without the token: $body"
  ok "walkthrough 1-2: client_credentials token, 200, the upstream sees x-tollgate-client-id: backend and no token"
  curl -s -D - -o /dev/null "$PUBLIC/data" | grep -qi '^www-authenticate: Bearer realm="tollgate-sample"' ||
    fail "step 3: no 401 Bearer realm"
  [[ $(demo_status -H "Authorization: Bearer ${token}x" "$PUBLIC/data") == 401 ]] || fail "step 4: bad token not 401"
  [[ $(demo_status -X POST -H "Authorization: Bearer $token" "$PUBLIC/data") == 403 ]] || fail "step 5: not 403"
  ok "walkthrough 3-5: 401 Bearer realm, 401 for a bad token, 403 for a missing scope"
  body=$(curl -s -H "X-API-Key: $PARTNER_API_KEY" "$PUBLIC/data")
  python3 -c 'import json,sys; h=json.loads(sys.argv[1])["headers"]; assert "x-api-key" not in h and h["x-tollgate-consumer"] == "partner-a" and h["x-tollgate-tenant"] == "acme", h' "$body" 2> /dev/null ||
    fail "step 6: API key: $body"
  ok "walkthrough 6: API key, the upstream sees consumer partner-a, tenant acme, no key"
  admin=$(demo_token "key-admin:$KEY_ADMIN_SECRET" tollgate:admin http://127.0.0.1:9000/token)
  [[ $(demo_status -H "Authorization: Bearer $admin" http://127.0.0.1:9000/admin/api-keys) == 200 ]] ||
    fail "step 7: admin API"
  ok "walkthrough 7: admin API with the key-admin client"
  [[ -n $(demo_token "reader:$READER_SECRET" read:data) ]] || fail "the reader client gets no token"
  [[ $(demo_status "$PUBLIC/public/hello") == 200 ]] || fail "the anonymous route"
  ok "the reader client and the anonymous route"
  [[ $(demo_status -H 'x_tollgate_subject: admin' "$PUBLIC/public/hello") == 400 ]] || fail "underscored header not refused"
  ok "a client-sent x_tollgate_subject is refused with 400"
  app=$(python3 envoy/demo/mobile_app.py --issuer "$PUBLIC" --username "$DEMO_USER" --password "$DEMO_PASSWORD" \
    --scope 'read:data write:data' --api "$PUBLIC/transfers" 2>&1) && fail "step 9: a password-only token reached /transfers: $app"
  [[ $app == *'403'* ]] || fail "step 9: the password-only call was not refused with 403: $app"
  app=$(python3 envoy/demo/mobile_app.py --issuer "$PUBLIC" --username "$DEMO_USER" --password "$DEMO_PASSWORD" \
    --scope 'read:data write:data' --api "$PUBLIC/transfers" --acr-values urn:tollgate:acr:mfa \
    --totp-secret "$DEMO_TOTP_SECRET" 2>&1) || fail "step 9: step-up with the authenticator app: $app"
  [[ $app == *"amr=['mfa', 'otp', 'pwd']"* ]] || fail "step 9: the token does not state the second factor: $app"
  ok "walkthrough 9: step-up route, 403 with the password only, 200 after the one-time code"
}
