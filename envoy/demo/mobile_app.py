#!/usr/bin/env python3
"""Plays the mobile app of the sample stack: OAuth 2.0 authorization code + PKCE
(RFC 7636) for a native app on a loopback redirect (RFC 8252), as the public client
`mobile-app`.

  1. reads the issuer's metadata (/.well-known/oauth-authorization-server);
  2. listens on http://127.0.0.1:<free port>/callback and opens the sign-in page in
     the browser (or prints its URL); you sign in and approve;
  3. receives the redirect, checks `state` and `iss` (RFC 9207), exchanges the code
     with the PKCE verifier;
  4. calls the API through Envoy with the access token;
  5. refreshes (the refresh token rotates) and calls the API again.

With --username and --password it fills in the sign-in form itself (no browser), as
the tests do; with --acr-values it asks for a stronger sign-in (step-up), and
--totp-secret answers the second step with the authenticator app's code. Tokens are never printed: only their claims and a fingerprint.
Python standard library only.

  python3 envoy/demo/mobile_app.py
  python3 envoy/demo/mobile_app.py --username alice --password '...'
  python3 envoy/demo/mobile_app.py --username alice --password '...' --scope 'read:data write:data' \
      --acr-values urn:tollgate:acr:mfa --totp-secret '...' --api http://127.0.0.1:8080/transfers
"""

import argparse
import base64
import hashlib
import hmac
import html.parser
import http.server
import json
import secrets
import struct
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser


class Failure(Exception):
    pass


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirects)


def request(url: str, data: dict | None = None, headers: dict | None = None):
    """(status, headers, body) without following redirects."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with OPENER.open(urllib.request.Request(url, data=body, headers=headers or {}), timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def post_token(endpoint: str, form: dict) -> dict:
    status, _, body = request(endpoint, form)
    answer = json.loads(body or b"{}")
    if status != 200:
        raise Failure(f"token endpoint: {status} {answer.get('error')}: {answer.get('error_description')}")
    return answer


class Callback(http.server.BaseHTTPRequestHandler):
    """The app's loopback redirect URI: takes one /callback and hands over its query."""

    result: dict = {}
    done = threading.Event()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/callback":
            self.send_error(404)
            return
        Callback.result = dict(urllib.parse.parse_qsl(url.query))
        ok = "code" in Callback.result
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        message = "Signed in. You can close this window and go back to the app." if ok else \
            f"Sign-in did not complete: {Callback.result.get('error', 'no code')}."
        self.wfile.write(f"<!doctype html><title>Mobile app</title><p>{message}</p>".encode())
        Callback.done.set()

    def log_message(self, *args):
        pass


class LoginForm(html.parser.HTMLParser):
    """The sign-in page's form: its action and its fields' names and values."""

    def __init__(self):
        super().__init__()
        self.action = None
        self.fields = {}
        self.in_form = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and self.action is None:
            self.action, self.in_form = attrs.get("action", ""), True
        elif tag == "input" and self.in_form and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self.in_form = False


def totp(secret: str, at: float) -> str:
    """RFC 6238: what the user's authenticator app shows (HMAC-SHA1, 6 digits, 30 s)."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(at) // 30), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    return f"{(struct.unpack('>I', mac[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


def sign_in(authorize_url: str, username: str, password: str, totp_secret: str | None = None) -> str:
    """Does what the user does in the browser; returns the redirect's Location."""
    status, _, body = request(authorize_url)
    if status != 200:
        raise Failure(f"sign-in page: {status}: {body[:200]!r}")
    form = LoginForm()
    form.feed(body.decode())
    if not form.action or "username" not in form.fields or "password" not in form.fields:
        raise Failure("sign-in page: no form with username and password fields")
    fields = dict(form.fields, username=username, password=password, decision="approve")
    status, headers, body = request(urllib.parse.urljoin(authorize_url, form.action), fields)
    if status == 200 and b'name="otp"' in body:
        # The request asked for more than a password (acr_values): the second step.
        if not totp_secret:
            raise Failure("the sign-in asks for a one-time code: pass --totp-secret")
        step = LoginForm()
        step.feed(body.decode())
        fields = dict(step.fields, otp=totp(totp_secret, time.time()), decision="approve")
        status, headers, body = request(urllib.parse.urljoin(authorize_url, step.action), fields)
    if status not in (302, 303) or not headers.get("Location"):
        raise Failure(f"sign-in: expected a redirect back to the app, got {status} (wrong password?)")
    return headers["Location"]


def call_api(api: str, access_token: str) -> dict:
    status, _, body = request(api, headers={"Authorization": f"Bearer {access_token}"})
    if status != 200:
        raise Failure(f"GET {api}: {status} {body[:300]!r}")
    echoed = json.loads(body)["headers"]
    if "authorization" in echoed:
        raise Failure("the API received the Authorization header: Tollgate should have stripped it")
    return {name: value for name, value in echoed.items() if name.startswith("x-tollgate-")}


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description="The sample stack's mobile app: code + PKCE, API call, refresh.")
    parser.add_argument("--issuer", default="http://127.0.0.1:8080")
    parser.add_argument("--client-id", default="mobile-app")
    parser.add_argument("--scope", default="read:data")
    parser.add_argument("--api", default=None, help="API URL (default: ISSUER/data, through Envoy)")
    parser.add_argument("--username", help="fill in the sign-in form with this user (no browser)")
    parser.add_argument("--password", help="with --username")
    parser.add_argument("--acr-values", help="ask for a sign-in level, e.g. urn:tollgate:acr:mfa (step-up)")
    parser.add_argument("--totp-secret", help="with --username: the authenticator app's secret, for the second step")
    parser.add_argument("--no-browser", action="store_true", help="only print the sign-in URL")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the sign-in")
    args = parser.parse_args()
    api = args.api or f"{args.issuer}/data"

    status, _, body = request(f"{args.issuer}/.well-known/oauth-authorization-server")
    if status != 200:
        raise Failure(f"issuer metadata: {status}")
    metadata = json.loads(body)
    print(f"issuer          {metadata['issuer']}")

    server = http.server.HTTPServer(("127.0.0.1", 0), Callback)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    redirect_uri = f"http://127.0.0.1:{server.server_port}/callback"
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(16)
    authorize_url = metadata["authorization_endpoint"] + "?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": args.client_id, "redirect_uri": redirect_uri,
        "scope": args.scope, "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
        **({"acr_values": args.acr_values} if args.acr_values else {}),
    })
    print(f"callback        {redirect_uri}")
    try:
        if args.username:
            location = sign_in(authorize_url, args.username, args.password or "", args.totp_secret)
            if not location.startswith(redirect_uri + "?"):
                raise Failure(f"redirected elsewhere than the app's callback: {location.split('?')[0]}")
            request(location)  # what the browser does with the redirect: it reaches the app
        else:
            print(f"\nSign in here (the page opens in your browser if one is available):\n\n  {authorize_url}\n")
            if not args.no_browser:
                webbrowser.open(authorize_url)
        if not Callback.done.wait(args.timeout):
            raise Failure(f"no redirect to {redirect_uri} within {args.timeout:.0f} s")
    finally:
        server.shutdown()

    result = Callback.result
    if "error" in result:
        raise Failure(f"authorization refused: {result['error']}: {result.get('error_description', '')}")
    if result.get("state") != state:
        raise Failure("the redirect's state is not ours: not a response to this app's request")
    if result.get("iss") != metadata["issuer"]:
        raise Failure(f"the redirect's iss {result.get('iss')!r} is not the issuer (RFC 9207 mix-up defence)")
    print("redirect        code received, state and iss match")

    tokens = post_token(metadata["token_endpoint"], {
        "grant_type": "authorization_code", "code": result["code"], "redirect_uri": redirect_uri,
        "client_id": args.client_id, "code_verifier": verifier,
    })
    access = claims(tokens["access_token"])
    print(f"token           access {fingerprint(tokens['access_token'])}… sub={access['sub']} "
          f"client_id={access['client_id']} scope={access['scope']!r} expires_in={tokens['expires_in']}")
    print(f"signed in       acr={access.get('acr')} amr={access.get('amr')} auth_time={access.get('auth_time')}")
    if "refresh_token" not in tokens:
        raise Failure("no refresh token in the code exchange")
    identity = call_api(api, tokens["access_token"])
    print(f"API             200, the upstream saw {json.dumps(identity, sort_keys=True)}")
    if identity.get("x-tollgate-subject") != access["sub"]:
        raise Failure("the API saw another subject than the token's")

    refreshed = post_token(metadata["token_endpoint"], {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": args.client_id,
    })
    if refreshed.get("refresh_token") in (None, tokens["refresh_token"]):
        raise Failure("the refresh token was not rotated")
    print(f"refresh         new access {fingerprint(refreshed['access_token'])}…, refresh token rotated, "
          f"same sign-in: amr={claims(refreshed['access_token']).get('amr')}")
    identity = call_api(api, refreshed["access_token"])
    print(f"API             200 again with the refreshed token (subject {identity.get('x-tollgate-subject')})")
    print("mobile app: signed in, called the API, refreshed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Failure, OSError, KeyError, ValueError) as error:
        print(f"mobile app: FAILED: {error}", file=sys.stderr)
        sys.exit(1)
