#!/usr/bin/env python3
"""Passkeys in a real browser: Debian's Chromium, driven by Playwright over the
DevTools protocol, with a virtual authenticator (WebAuthn.addVirtualAuthenticator).

Against a token service of its own (temporary database, issuer http://localhost:PORT:
WebAuthn needs a domain name), it:
  1. signs alice in on the account pages, registers a passkey, and proves it;
  2. signs in to an app with the passkey alone (acr_values asks for phishing-resistant
     sign-in), exchanges the code, and checks the token: amr has hwk, acr is the
     strong level, auth_time is now;
  3. saves screenshots of the pages at desktop and mobile widths (target/screenshots/).

Usage: test_passkeys.py [TOKEN_SERVICE_BINARY]   (default target/release/...)
"""

import base64
import hashlib
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/tollgate-token-service")
SHOTS = os.path.join(ROOT, "target/screenshots")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PASSWORD = "correct horse battery staple"
# The app's redirect URI, answered by a small server of the test (main() sets it):
# Playwright's page.route does not see the second request of a redirect chain.
REDIRECT = None
PHR = "urn:tollgate:acr:phr"
SIZES = {"desktop": (1280, 860), "mobile": (390, 844)}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(db, *args, stdin=None):
    done = subprocess.run([BINARY, "--db", db, *args], input=stdin, capture_output=True, text=True)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def shoot(page, name):
    os.makedirs(SHOTS, exist_ok=True)
    for label, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=os.path.join(SHOTS, f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 860})


class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"app")

    def log_message(self, *args):
        pass


def main():
    global REDIRECT
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    REDIRECT = f"http://127.0.0.1:{app.server_port}/callback"
    workdir = tempfile.mkdtemp(prefix="tollgate-passkeys-")
    db = os.path.join(workdir, "tollgate.db")
    cli(db, "--create", "clients", "add", "--id", "notes-app", "--public",
        "--scopes", "read:data write:data", "--redirect-uri", REDIRECT)
    cli(db, "users", "add", "--username", "alice", "--scopes", "read:data write:data",
        stdin=PASSWORD + "\n")
    port = free_port()
    base = f"http://localhost:{port}"
    log = open(os.path.join(workdir, "service.log"), "w+")
    service = subprocess.Popen(
        [BINARY, "--db", db, "serve", "--listen", f"127.0.0.1:{port}", "--issuer", base],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        run(base, port)
    finally:
        service.terminate()
        service.wait(10)
        log.seek(0)
        service_log = log.read()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
        app.shutdown()
    audit = [json.loads(line) for line in service_log.splitlines() if line.startswith('{"')]
    added = [event for event in audit if event.get("event") == "user.factor_added"]
    assert added and added[0]["kind"] == "passkey", service_log
    print(f"ok: passkey registered and used in Chromium; screenshots in {SHOTS}")


def run(base, port):
    with sync_playwright() as playwright:
        # Playwright gives each launch a fresh, temporary --user-data-dir itself.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        devtools = context.new_cdp_session(page)
        devtools.send("WebAuthn.enable", {"enableUI": False})
        authenticator = devtools.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
            "hasUserVerification": True, "isUserVerified": True,
            "automaticPresenceSimulation": True}})["authenticatorId"]

        # 1. Account pages: sign in with the password, add a passkey, prove it.
        page.goto(f"{base}/account")
        shoot(page, "account-sign-in")
        page.fill("#username", "alice")
        page.fill("#password", PASSWORD)
        page.click("button[value=approve]")
        page.wait_for_selector("text=Sign-in and security")
        page.click("button:has-text(\"Add a passkey\")")
        page.wait_for_selector("#use-passkey")
        shoot(page, "passkey-add")
        page.click("#use-passkey")
        # Back on the account: the new passkey is proven before changes are allowed.
        page.wait_for_selector("text=Verify it’s you")
        shoot(page, "second-step-passkey")
        page.click("#use-passkey")
        page.wait_for_selector("text=Sign-in and security")
        assert "Passkey" in page.inner_text(".factors"), page.content()
        shoot(page, "account-with-passkey")
        credentials = devtools.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
        assert len(credentials["credentials"]) == 1, credentials

        page.click("button:has-text(\"Set up an authenticator app\")")
        page.wait_for_selector(".qr svg")
        shoot(page, "totp-enrolment")

        # 2. A fresh browser session: sign in to the app with the passkey alone.
        context.clear_cookies()
        verifier = b64url(secrets.token_bytes(32))
        challenge = b64url(hashlib.sha256(verifier.encode()).digest())
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": "notes-app", "redirect_uri": REDIRECT,
            "scope": "read:data write:data", "state": "s1", "code_challenge": challenge,
            "code_challenge_method": "S256", "acr_values": PHR})
        page.goto(f"{base}/authorize?{query}")
        shoot(page, "authorize-sign-in")
        page.fill("#username", "bob")
        page.click("#passkey-sign-in")
        page.wait_for_selector("[role=alert]")
        shoot(page, "authorize-error")
        page.fill("#username", "alice")
        page.click("#passkey-sign-in")
        page.wait_for_selector("#use-passkey")
        with page.expect_request(lambda request: request.url.startswith(REDIRECT)) as redirected:
            page.click("#use-passkey")
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirected.value.url).query))
        page.wait_for_url(lambda url: url.startswith(REDIRECT))
        page.wait_for_load_state()
        assert params.get("state") == "s1" and "code" in params, params

        # The session now stands in: consent only.
        page.goto(f"{base}/authorize?{query.replace('s1', 's2')}")
        page.wait_for_selector("text=Signed in as")
        shoot(page, "authorize-consent")
        browser.close()

    body = urllib.parse.urlencode({
        "grant_type": "authorization_code", "client_id": "notes-app", "code": params["code"],
        "redirect_uri": REDIRECT, "code_verifier": verifier}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/token", body) as response:
        token = json.load(response)
    access = claims(token["access_token"])
    assert "hwk" in access["amr"] and "pwd" not in access["amr"], access
    assert access["acr"] == PHR, access
    assert abs(access["auth_time"] - time.time()) < 60, access
    assert access["iss"] == base, access
    print(f"token: acr={access['acr']} amr={access['amr']} auth_time={access['auth_time']}")


if __name__ == "__main__":
    main()
