#!/usr/bin/env python3
"""`make soak` (and the last step of `make bench`): mixed traffic through the sample
stack for SOAK_SECONDS, with a signing-key rotation and an API-key set change in the
middle.

The stack is the one `make run` starts (envoy/run.sh: Envoy with `--concurrency 2`,
the token service, the sample API, envoy/envoy.yaml unchanged), in a network namespace
of its own when `unshare` works (as in envoy/test_run.sh), so its fixed ports cannot
collide with anything else on the machine. State and logs go to bench/out/soak/.

Traffic, all through Envoy on 127.0.0.1:8080:
  - wrk (bench/soak.lua), from 127.0.0.1, paced to about SOAK_RATE requests/s, each
    answer counted per kind: valid tokens of SOAK_CLIENTS clients (under their
    per-client limit), the reader client far over its limit (429), API keys of
    several consumers, revoked tokens, a read-only token on a write route (403), no
    credentials, the anonymous route (over its per-IP limit);
  - invalid credentials (forged signatures, malformed tokens, unknown `kid`s,
    unknown API keys) at SOAK_INVALID_RATE/s from other loopback addresses: the
    sample's brute-force protection locks out an address after 20 such failures a
    minute, so these come from many addresses, and one address floods (and is
    locked out, 429).
In the middle: `tollgate-token-service keys rotate` (new tokens must pass at once,
the old ones too), then a new API key and a disabled one through the admin API.
Access tokens live SOAK_TOKEN_TTL seconds, so that every token, revoked ones
included, expires during the run; the soak replaces them before they do, and keeps
sending the expired revoked ones.

Every SOAK_CHUNK seconds (one wrk run) it reports Envoy's VmRSS, heap (tcmalloc's
`allocated`, from /memory) and CPU, decisions/s
(deltas of the filter's `tollgate.decision.*` counters), 5xx and VM restarts. Then a
verdict and a `SOAK {json}` line; exit status 1 when any of these is not zero:
  - 5xx: Envoy's `http.public.downstream_rq_5xx`, the filter's 503 decisions
    (`keys_unavailable`, `revocations_unavailable`) after start-up, 5xx seen by the
    clients;
  - VM restarts: `wasm.envoy.wasm.runtime.v8.created` beyond start-up, a change of
    `wasm.envoy.wasm.runtime.v8.active`, `wasm.tollgate.vm_reload`, VM panics or
    traps in Envoy's log;
  - wrong answers: a status outside what a kind may get (a valid token refused, a
    disabled key accepted, a revoked token let through, ...);
  - the events: tokens of the new key refused right after the rotation, or an API-key
    change that does not reach the gateway within 20 s.

Settings (environment): SOAK_SECONDS (600), SOAK_CHUNK (30; at most a quarter of
SOAK_SECONDS), SOAK_RATE (1000; 0: as fast as wrk goes), SOAK_CONNECTIONS (8),
SOAK_CLIENTS (32), SOAK_CONSUMERS (16), SOAK_INVALID_RATE (100; 0: none),
SOAK_TOKEN_TTL (300), ENVOY
(.venv/bin/envoy). Needs `make wasm bins` and wrk. Stdlib only. The demo secrets and
the credentials wrk sends stay in bench/out/soak/run/ (mode 700), never in the output.
"""

import base64
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out" / "soak"
CLI = ROOT / "target/release/tollgate-token-service"
WASM = ROOT / "target/wasm32-wasip1/release/tollgate.wasm"
PUBLIC, ADMIN, TOKEN_SERVICE = 8080, 9901, 9000

# What each kind of request may be answered. Anything else is a wrong answer.
EXPECTED = {
    "valid": {200, 429},           # tokens of soak clients, each under its limit
    "write": {200, 429},           # the backend client's POST (write:data)
    "reader": {200, 429},          # the reader client, far over its limit
    "api_key": {200, 429},
    "api_key_disabling": {200, 401},  # the key disabled during this chunk
    "api_key_disabled": {401},
    "revoked": {401},
    "scope": {403},                # a read-only token on POST /data
    "missing": {401},
    "anonymous": {200, 429},       # /public/, per-IP limit
    # From other addresses (InvalidSender):
    "forged": {401}, "malformed": {401}, "unknown_kid": {401}, "unknown_api_key": {401},
    "flood": {401, 429},           # one address, locked out by brute-force protection
}
# wrk's mix, out of 100 requests.
WEIGHTS = {"valid": 47, "reader": 12, "api_key": 16, "api_key_disabling": 2,
           "api_key_disabled": 2, "write": 3, "revoked": 6, "scope": 4, "missing": 4,
           "anonymous": 4}
FILTER_5XX = ("keys_unavailable", "revocations_unavailable")
# Envoy log lines that mean a VM trapped, failed or was created again (counted
# beyond those of start-up): a Rust panic's message, a trap in a VM call
# ("Function: proxy_on_… failed: Uncaught RuntimeError: …"), a new thread-local VM
# (logged at debug level only).
VM_FAILURE = re.compile(r"panicked|Function: \S+ failed|Uncaught|RuntimeError"
                        r"|Thread-Local Wasm created|failed to (load|initialize|start)"
                        r"|wasm.*(crash|abort)", re.IGNORECASE)


def env_int(name, default):
    return int(os.environ.get(name, default))


@dataclass
class Settings:
    seconds: int = env_int("SOAK_SECONDS", 600)
    chunk: int = env_int("SOAK_CHUNK", 30)
    rate: int = env_int("SOAK_RATE", 1000)
    connections: int = env_int("SOAK_CONNECTIONS", 8)
    clients: int = env_int("SOAK_CLIENTS", 32)
    consumers: int = env_int("SOAK_CONSUMERS", 16)
    invalid_rate: int = env_int("SOAK_INVALID_RATE", 100)
    token_ttl: int = env_int("SOAK_TOKEN_TTL", 300)
    envoy: Path = Path(os.environ.get("ENVOY", ROOT / ".venv/bin/envoy")).resolve()

    def chunks(self):
        """(number of wrk runs, seconds each): at least four, so that the events
        in the middle have traffic before and after them."""
        length = max(5, min(self.chunk, self.seconds // 4))
        return max(4, round(self.seconds / length)), length


def log(msg):
    print(f"soak: {msg}", file=sys.stderr, flush=True)


def in_own_netns():
    """Re-runs this script in a private network namespace (loopback only) when it
    can: the stack's ports are fixed, the machine is shared."""
    if os.environ.get("SOAK_NETNS") or not (shutil.which("unshare") and shutil.which("ip")):
        return
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        log("no network namespace (not root?): using the host's loopback")
        return
    os.environ["SOAK_NETNS"] = "1"
    os.execvp("unshare", ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
                          sys.executable, *sys.argv])


# --- HTTP -----------------------------------------------------------------------


def request(method, path, port=PUBLIC, headers=None, body=None, source=None, timeout=10):
    """(status, body text). `source`: the local address to send from."""
    conn = HTTPConnection("127.0.0.1", port, timeout=timeout,
                          source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def basic(client_id, secret):
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def b64url(data: bytes):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def kid_of(token):
    return b64url_json(token.split(".")[0]).get("kid")


# --- The stack ------------------------------------------------------------------


class Stack:
    """envoy/run.sh in the background: started, watched, stopped with Ctrl-C."""

    def __init__(self, s: Settings):
        if OUT.exists():
            shutil.rmtree(OUT)
        self.run_dir = OUT / "run"
        self.run_dir.mkdir(parents=True, mode=0o700)
        # run.sh's banner has the demo secrets in it.
        self.banner = self.run_dir / "run.out"
        env = dict(os.environ, TOLLGATE_RUN_DIR=str(self.run_dir), ENVOY=str(s.envoy),
                   TOLLGATE_ACCESS_TOKEN_TTL=str(s.token_ttl))
        with self.banner.open("w") as out:
            self.proc = subprocess.Popen(["envoy/run.sh"], cwd=ROOT, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while "Press Ctrl-C to stop" not in self.banner.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                tail = [line for line in self.banner.read_text().splitlines()
                        if line.startswith("make run:") or line.startswith("    ")]
                raise SystemExit("soak: the sample stack did not start:\n" + "\n".join(tail[-30:]))
            time.sleep(0.2)
        self.envoy_pid = self._child("envoy")
        self.secrets = dict(line.split("=", 1) for line in
                            (self.run_dir / "demo.env").read_text().splitlines() if "=" in line)
        self.env = dict(os.environ, TOLLGATE_DB=str(self.run_dir / "tollgate.db"))

    def _child(self, name):
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            comm = text[text.index("(") + 1: text.rindex(")")]
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and comm == name:
                return int(stat.parent.name)
        self.stop()
        raise SystemExit(f"soak: no {name} process under envoy/run.sh")

    def cli(self, *args):
        """The token service's CLI on the stack's database; its output."""
        done = subprocess.run([str(CLI), *args], env=self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SystemExit(f"soak: tollgate-token-service {' '.join(args)}: {done.stderr}")
        return done.stdout

    def rss_mib(self):
        for line in Path(f"/proc/{self.envoy_pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def heap_mib(self):
        """What Envoy's own allocator (tcmalloc) has handed out: RSS outside it is
        mostly the wasm VMs' memory (V8)."""
        _, body = request("GET", "/memory", ADMIN)
        return int(json.loads(body)["allocated"]) / 2**20

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.envoy_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self):
        """Envoy's counters and gauges that the soak reads."""
        wanted = r"^(wasmcustom\.tollgate\.|wasm\.|http\.public\.downstream_rq_)"
        _, body = request("GET", "/stats?filter=" + urllib.parse.quote(wanted), ADMIN)
        out = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name.removeprefix("wasmcustom.")] = int(value)
        return out

    def vm_log_lines(self):
        path = self.run_dir / "envoy.log"
        return [line for line in path.read_text(errors="replace").splitlines()
                if VM_FAILURE.search(line)]

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- Identities -----------------------------------------------------------------


@dataclass
class Token:
    value: str
    expires_at: float


class Identities:
    """The soak's clients, tokens and API keys, made through the stack's own
    interfaces: the CLI, /token and /revoke through Envoy, the admin API."""

    def __init__(self, s: Settings, stack: Stack):
        self.stack = stack
        self.secrets = {"backend": stack.secrets["BACKEND_SECRET"],
                        "reader": stack.secrets["READER_SECRET"]}
        for i in range(s.clients):
            self.add_client(f"soak-{i}")
        self.add_client("soak-rotation")
        self.valid = {f"soak-{i}": self.token(f"soak-{i}") for i in range(s.clients)}
        self.backend = self.token("backend", "read:data write:data")
        self.reader = self.token("reader")
        # Revoked tokens, newest last; kept after they expire. New ones are revoked
        # a chunk before wrk uses them (the gateway polls every 2 s).
        self.revoked = self.revoke_new()
        self.revoked_next = []
        self.admin = self.admin_token()
        # consumer -> key; key ids of the soak's own keys
        self.api_keys = {"partner-a": stack.secrets["PARTNER_API_KEY"]}
        self.key_ids = {}
        for i in range(s.consumers):
            consumer = f"soak-partner-{i}"
            self.admin_call("POST", "/admin/consumers",
                            {"id": consumer, "tenant": "soak", "scopes": "read:data"})
            self.key_ids[consumer], self.api_keys[consumer] = self.new_key(consumer)
        self.disabling, self.disabled = {}, {}

    def revoke_new(self):
        """Two new tokens, revoked."""
        tokens = [self.token("backend") for _ in range(2)]
        for token in tokens:
            status, body = self.post_form("/revoke", "backend", {"token": token.value})
            if status != 200:
                raise SystemExit(f"soak: /revoke answered {status}: {body}")
        return tokens

    def wait_until_known(self):
        """Until the gateway has the revocations and every key: each seen by one
        worker, then one more poll and tick for the other (about 3 s, README)."""
        for token in self.revoked:
            if wait_for(lambda: probe({"Authorization": f"Bearer {token.value}"}), 401)[0] is None:
                raise SystemExit("soak: a revoked token still works after 20 s")
        for consumer, key in self.api_keys.items():
            if wait_for(lambda: probe({"X-API-Key": key}), 200)[0] is None:
                raise SystemExit(f"soak: the key of {consumer} is not accepted after 20 s")
        time.sleep(3)

    def add_client(self, client_id):
        out = self.stack.cli("clients", "add", "--id", client_id, "--scopes", "read:data")
        self.secrets[client_id] = next(line.split(": ", 1)[1] for line in out.splitlines()
                                       if line.startswith("client_secret: "))

    def post_form(self, path, client_id, fields, port=PUBLIC):
        """A form POST as `client_id` (client_secret_basic)."""
        return request("POST", path, port, body=urllib.parse.urlencode(fields),
                       headers={"Authorization": basic(client_id, self.secrets[client_id]),
                                "Content-Type": "application/x-www-form-urlencoded"})

    def token(self, client_id, scope="read:data", port=PUBLIC):
        status, body = self.post_form(
            "/token", client_id, {"grant_type": "client_credentials", "scope": scope}, port)
        if status != 200:
            raise SystemExit(f"soak: no token for {client_id}: {status} {body}")
        answer = json.loads(body)
        return Token(answer["access_token"], time.time() + answer["expires_in"])

    def admin_token(self):
        self.secrets["key-admin"] = self.stack.secrets["KEY_ADMIN_SECRET"]
        return self.token("key-admin", "tollgate:admin", TOKEN_SERVICE)

    def admin_call(self, method, path, body=None):
        if self.admin.expires_at < time.time() + 60:
            self.admin = self.admin_token()
        status, text = request(method, path, TOKEN_SERVICE,
                               body=None if body is None else json.dumps(body),
                               headers={"Authorization": f"Bearer {self.admin.value}",
                                        "Content-Type": "application/json"})
        if status not in (200, 201):
            raise SystemExit(f"soak: admin API {method} {path}: {status} {text}")
        return json.loads(text)

    def new_key(self, consumer):
        """(key id, key) of a new key for `consumer`."""
        created = self.admin_call("POST", "/admin/api-keys", {"consumer": consumer})
        return created["id"], created["api_key"]

    def refresh_expiring(self, within):
        """New tokens for those that expire within `within` seconds; revoked ones
        are kept through their expiry, and new ones revoked for the next chunk."""
        soon = time.time() + within
        self.revoked += self.revoked_next
        self.revoked_next = []
        if self.revoked[-1].expires_at < soon:
            self.revoked_next = self.revoke_new()
        for client_id, token in self.valid.items():
            if token.expires_at < soon:
                self.valid[client_id] = self.token(client_id)
        if self.backend.expires_at < soon:
            self.backend = self.token("backend", "read:data write:data")
        if self.reader.expires_at < soon:
            self.reader = self.token("reader")

    def mix(self):
        """kind -> [(method, path, header, value)] for the next wrk run."""
        def bearer(token):
            return ("Authorization", f"Bearer {token.value}")

        def keys(kind):
            return [("GET", "/data", "X-API-Key", key) for key in kind.values()]

        valid = list(self.valid.values())
        return {
            "valid": [("GET", "/data", *bearer(t)) for t in valid],
            "write": [("POST", "/data", *bearer(self.backend))],
            "reader": [("GET", "/data", *bearer(self.reader))],
            "api_key": keys(self.api_keys),
            "api_key_disabling": keys(self.disabling),
            "api_key_disabled": keys(self.disabled),
            "revoked": [("GET", "/data", *bearer(t)) for t in self.revoked],
            "scope": [("POST", "/data", *bearer(t)) for t in valid[:4]],
            "missing": [("GET", "/data", "", "")],
            "anonymous": [("GET", "/public/hello", "", "")],
        }


def schedule(weights):
    """The kinds in a smooth weighted round-robin, as many times each as its
    weight, each spread evenly over the cycle."""
    current = dict.fromkeys(weights, 0)
    total = sum(weights.values())
    order = []
    for _ in range(total):
        for kind, weight in weights.items():
            current[kind] += weight
        pick = max(current, key=current.get)
        current[pick] -= total
        order.append(pick)
    return order


def write_mix(path, pools):
    weights = {k: w for k, w in WEIGHTS.items() if pools.get(k)}
    lines = ["schedule\t" + ",".join(schedule(weights))]
    for kind, requests in pools.items():
        lines += ["\t".join((kind, *r)) for r in requests]
    path.write_text("\n".join(lines) + "\n")


# --- Invalid credentials from other addresses -----------------------------------


class InvalidSender(threading.Thread):
    """Invalid credentials at `rate`/s, each from the next of many loopback
    addresses (new connection each), a tenth from one flooding address."""

    ADDRESSES = 2000

    def __init__(self, rate, valid_token):
        super().__init__(daemon=True)
        self.rate = rate
        self.stop_event = threading.Event()
        self.answers = {}
        self.errors = 0
        self.lock = threading.Lock()
        header, payload, sig = valid_token.split(".")
        middle = len(sig) // 2
        flipped = "A" if sig[middle] != "A" else "B"
        self.forged = f"{header}.{payload}.{sig[:middle]}{flipped}{sig[middle + 1:]}"
        self.payload, self.sig, self.alg = payload, sig, b64url_json(header)["alg"]

    def credential(self, kind):
        if kind in ("forged", "flood"):
            return {"Authorization": f"Bearer {self.forged}"}
        if kind == "malformed":
            return {"Authorization": "Bearer not-a.jwt"}
        if kind == "unknown_kid":
            header = b64url(json.dumps({"alg": self.alg, "typ": "at+jwt",
                                        "kid": secrets.token_hex(8)}).encode())
            return {"Authorization": f"Bearer {header}.{self.payload}.{self.sig}"}
        return {"X-API-Key": "tg_live_" + secrets.token_hex(16)}

    def run(self):
        if self.rate <= 0:
            return
        kinds = ["forged", "malformed", "unknown_kid", "unknown_api_key"] * 2 + ["flood"]
        interval, n = 1 / self.rate, 0
        flood = None
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            kind = kinds[n % len(kinds)]
            try:
                if kind == "flood":
                    flood = flood or HTTPConnection(
                        "127.0.0.1", PUBLIC, timeout=10, source_address=("127.2.0.1", 0))
                    flood.request("GET", "/data", headers=self.credential(kind))
                    resp = flood.getresponse()
                    resp.read()
                    status = resp.status
                else:
                    i = n % self.ADDRESSES
                    source = f"127.1.{i // 250}.{i % 250 + 1}"
                    status = request("GET", "/data", headers=self.credential(kind),
                                     source=source)[0]
                with self.lock:
                    key = f"{kind} {status}"
                    self.answers[key] = self.answers.get(key, 0) + 1
            except (OSError, HTTPException):
                self.errors += 1
                if kind == "flood" and flood:
                    flood.close()
                    flood = None
            n += 1
            next_at = max(next_at + interval, time.monotonic() - 1)
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))
        if flood:
            flood.close()

    def take(self):
        with self.lock:
            answers, self.answers = self.answers, {}
        return answers


# --- wrk ------------------------------------------------------------------------


def run_wrk(s: Settings, mix: Path, seconds):
    """Starts one wrk run; `wrk_result` collects it."""
    delay = round(s.connections * 1000 / s.rate) if s.rate > 0 else 0
    env = dict(os.environ, SOAK_MIX=str(mix), SOAK_DELAY_MS=str(delay))
    cmd = ["wrk", f"-t{s.connections}", f"-c{s.connections}", f"-d{seconds}s", "--timeout", "10s",
           "-s", str(BENCH / "soak.lua"), f"http://127.0.0.1:{PUBLIC}/data"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wrk_result(proc, seconds):
    out, err = proc.communicate(timeout=seconds + 60)
    for line in out.splitlines():
        if line.startswith("WRK "):
            return json.loads(line[4:])
    raise SystemExit(f"soak: wrk gave no summary:\n{out}\n{err}")


# --- Events in the middle -------------------------------------------------------


def wait_for(probe, want, timeout=20):
    """Seconds until probe() returns `want` (None: not within `timeout`), and the
    statuses seen on the way."""
    start, seen = time.monotonic(), []
    while time.monotonic() - start < timeout:
        status = probe()
        seen.append(status)
        if status == want:
            return time.monotonic() - start, seen
        time.sleep(0.25)
    return None, seen


_probes = itertools.count()


def probe(headers, path="/data"):
    """The status of one request from an address used for nothing else: a probe's
    failures (an API key not known yet) must not lock out the address of wrk, of
    the invalid sender or of another probe (brute-force protection)."""
    n = next(_probes)
    return request("GET", path, headers=headers, source=f"127.3.{n // 250}.{n % 250 + 1}")[0]


def rotate_keys(stack, ids, note):
    """`keys rotate`, then tokens signed with the new key, each used at once: all
    must pass. Half the clients move to the new key, half keep the old one."""
    old_kid = kid_of(ids.valid["soak-0"].value)
    stack.cli("keys", "rotate")
    rotated = time.monotonic()

    def use(token):
        return probe({"Authorization": f"Bearer {token.value}"})

    statuses = []
    for _ in range(3):
        token = ids.token("soak-rotation")
        statuses.append(use(token))
    new_kid = kid_of(token.value)
    passed, _ = wait_for(lambda: use(token), 200)
    passing_after = None if passed is None else time.monotonic() - rotated
    for i, client_id in enumerate(ids.valid):
        if i % 2 == 0:
            ids.valid[client_id] = ids.token(client_id)
    ids.backend = ids.token("backend", "read:data write:data")
    note(f"keys rotated; new-key tokens at once: {statuses}, passing "
         f"{fmt_s(passing_after)} after the rotation")
    return {"old_kid": old_kid, "new_kid": new_kid, "first_uses": statuses,
            "passing_after_s": passing_after,
            "ok": new_kid != old_kid and statuses == [200] * 3}


def change_key_set(ids, note):
    """A new key for partner-a, and the key wrk sends as `api_key_disabling` in
    this chunk disabled, through the admin API; times until the gateway has each."""
    key_id, key = ids.new_key("partner-a")
    accepted, seen_new = wait_for(lambda: probe({"X-API-Key": key}), 200)
    [(consumer, victim)] = ids.disabling.items()
    ids.admin_call("POST", f"/admin/api-keys/{ids.key_ids[consumer]}/disable")
    refused, _ = wait_for(lambda: probe({"X-API-Key": victim}), 401)
    ids.api_keys["partner-a-2"] = key
    note(f"API keys: new key accepted after {fmt_s(accepted)}, "
         f"disabled key refused after {fmt_s(refused)}")
    return {"new_key_accepted_s": accepted, "disabled_key_refused_s": refused,
            "new_key_statuses": sorted(set(seen_new)),
            "ok": accepted is not None and refused is not None}


def fmt_s(seconds):
    return "never" if seconds is None else f"{seconds:.1f} s"


# --- Samples and the report -----------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_mib: float
    heap_mib: float
    cpu_pct: float
    decisions_per_s: float
    allowed_per_s: float
    wrk_rps: float
    fivexx: int
    restarts: int
    limit_entries: int
    load: float
    note: str = ""


@dataclass
class Totals:
    answers: dict = field(default_factory=dict)
    wrk_errors: int = 0
    wrk_timeouts: int = 0
    wrk_requests: int = 0

    def add(self, answers):
        for key, count in answers.items():
            self.answers[key] = self.answers.get(key, 0) + count


def decisions(stats):
    return {k.removeprefix("tollgate.decision."): v for k, v in stats.items()
            if k.startswith("tollgate.decision.")}


def vm_counts(stats):
    """(VMs created, VMs active, VM reloads) from Envoy 1.40's wasm stats:
    wasm.envoy.wasm.runtime.v8.created/active and wasm.<vm_id>.vm_reload (the
    last only moves under failure_policy FAIL_RELOAD)."""
    wasm = {k: v for k, v in stats.items() if k.startswith("wasm.")}
    created = sum(v for k, v in wasm.items() if k.endswith(".created"))
    active = sum(v for k, v in wasm.items() if k.endswith(".active"))
    reloads = sum(v for k, v in wasm.items() if k.endswith(".vm_reload"))
    return created, active, reloads


def restarts_since(stats, base):
    (c0, a0, r0), (c1, a1, r1) = vm_counts(base), vm_counts(stats)
    return (c1 - c0) + abs(a1 - a0) + (r1 - r0)


def fivexx_now(stats, base):
    d0, d1 = decisions(base), decisions(stats)
    name = "http.public.downstream_rq_5xx"
    envoy = stats.get(name, 0) - base.get(name, 0)
    filt = sum(d1.get(r, 0) - d0.get(r, 0) for r in FILTER_5XX)
    return envoy, filt


def wrong_answers(answers):
    wrong = {}
    for key, count in answers.items():
        kind, status = key.rsplit(" ", 1)
        if int(status) not in EXPECTED.get(kind, ()):
            wrong[key] = count
    return wrong


def client_5xx(answers):
    return sum(c for k, c in answers.items() if k.rsplit(" ", 1)[1].startswith("5"))


def print_answers(totals: Totals):
    by_kind = {}
    for key, count in totals.answers.items():
        kind, status = key.rsplit(" ", 1)
        by_kind.setdefault(kind, {})[int(status)] = count
    print("\nAnswers per kind of request (status: count; expected in brackets):")
    for kind in EXPECTED:
        if kind in by_kind:
            got = ", ".join(f"{st}: {n}" for st, n in sorted(by_kind[kind].items()))
            expected = "/".join(str(x) for x in sorted(EXPECTED[kind]))
            print(f"  {kind:<18} {got:<40} [{expected}]")


@dataclass
class Run:
    """What a soak gathered."""
    base: dict              # Envoy's stats when the traffic started
    rss_idle: float         # Envoy's RSS then
    heap_idle: float        # and its heap
    samples: list = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    events: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    vm_lines: list = field(default_factory=list)  # VM failures logged during the traffic
    sender_errors: int = 0


def main():
    in_own_netns()
    s = Settings()
    for path, how in ((s.envoy, "make tools"), (WASM, "make wasm"), (CLI, "make bins"),
                      (ROOT / "target/release/sample-api", "make bins")):
        if not path.exists():
            raise SystemExit(f"soak: missing {path}: run `{how}`")
    if not shutil.which("wrk"):
        raise SystemExit("soak: wrk is not installed: run `make soak`")
    log("starting the sample stack (envoy/run.sh) ...")
    stack = Stack(s)
    try:
        log("making clients, tokens, consumers and API keys ...")
        ids = Identities(s, stack)
        ids.wait_until_known()
        run = soak(s, stack, ids)
    finally:
        stack.stop()
    report(s, run)


def soak(s: Settings, stack: Stack, ids: Identities) -> Run:
    """The traffic, chunk by chunk, with a sample after each and the events in
    the middle."""
    n_chunks, length = s.chunks()
    rotate_at, keys_at = max(1, n_chunks // 2 - 1), max(2, n_chunks // 2)
    mix = stack.run_dir / "mix.tsv"
    run = Run(base=stack.stats(), rss_idle=stack.rss_mib(), heap_idle=stack.heap_mib())
    vm_lines_before = len(stack.vm_log_lines())
    print(f"\nTollgate soak: {n_chunks} x {length} s of mixed traffic through the sample stack "
          f"(Envoy --concurrency 2, pid {stack.envoy_pid}); wrk -t{s.connections} "
          f"-c{s.connections} paced to ~{s.rate or 'unlimited'} req/s, invalid credentials "
          f"at {s.invalid_rate}/s from {InvalidSender.ADDRESSES} other addresses; "
          f"{s.clients} clients, {len(ids.api_keys)} API keys, tokens for {s.token_ttl} s. "
          f"Envoy RSS before traffic "
          f"{run.rss_idle:.1f} MiB; {vm_counts(run.base)[1]} wasm VMs.")
    print("Every chunk: Envoy's RSS, its heap (tcmalloc; the rest is mostly the wasm VMs) and "
          "CPU, decisions/s (allowed/s), wrk's req/s; 5xx and VM restarts so far; live "
          "rate-limit counters; load average.")
    print(f"{'t s':>5} {'RSS MiB':>8} {'heap':>5} {'CPU%':>5} {'dec/s':>7} {'allow/s':>7} "
          f"{'wrk/s':>6} "
          f"{'5xx':>4} {'VMre':>4} {'limit':>6} {'load':>5}  events", flush=True)
    sender = InvalidSender(s.invalid_rate, ids.valid["soak-0"].value)
    wrk, notes = None, []
    prev = (time.monotonic(), run.base, stack.cpu_seconds())
    start = prev[0]
    sender.start()
    try:
        for chunk in range(n_chunks):
            ids.refresh_expiring(length + 120)
            if chunk == keys_at:
                # Its own kind from this chunk on: 200 until it is disabled.
                ids.disabling["soak-partner-0"] = ids.api_keys.pop("soak-partner-0")
            write_mix(mix, ids.mix())
            wrk = run_wrk(s, mix, length)
            if chunk == rotate_at:
                time.sleep(length / 2)
                run.events["rotation"] = rotate_keys(stack, ids, notes.append)
            elif chunk == keys_at:
                time.sleep(length / 2)
                run.events["key_set_change"] = change_key_set(ids, notes.append)
            result = wrk_result(wrk, length)
            wrk = None
            ids.disabled.update(ids.disabling)
            ids.disabling.clear()
            if not stack.alive():
                raise SystemExit(f"soak: the sample stack stopped: see {stack.run_dir}")
            answers = Totals()
            answers.add(result["answers"])
            answers.add(sender.take())
            run.totals.add(answers.answers)
            wrong = wrong_answers(answers.answers)
            if wrong:
                notes.append("wrong answers: " + ", ".join(f"{k} x{n}" for k, n in wrong.items()))
            run.totals.wrk_errors += result["errors"]
            run.totals.wrk_timeouts += result["timeouts"]
            run.totals.wrk_requests += result["requests"]
            now = (time.monotonic(), stack.stats(), stack.cpu_seconds())
            run.samples.append(take_sample(stack, run, prev, now, start, result, notes))
            notes.clear()
            prev = now
    finally:
        if wrk and wrk.poll() is None:
            wrk.kill()
        sender.stop_event.set()
        sender.join(15)
    run.totals.add(sender.take())
    run.sender_errors = sender.errors
    run.final = stack.stats()
    run.vm_lines = stack.vm_log_lines()[vm_lines_before:]
    return run


def take_sample(stack, run, prev, now, start, result, notes) -> Sample:
    """One row of the table, printed at once; prev and now: (time, stats, CPU s)."""
    (t0, stats0, cpu0), (t1, stats1, cpu1) = prev, now
    d0, d1 = decisions(stats0), decisions(stats1)
    allowed = sum(d1.get(r, 0) - d0.get(r, 0) for r in ("authenticated", "anonymous"))
    envoy_5xx, filter_5xx = fivexx_now(stats1, run.base)
    sample = Sample(
        t=t1 - start, rss_mib=stack.rss_mib(), heap_mib=stack.heap_mib(),
        cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0),
        decisions_per_s=(sum(d1.values()) - sum(d0.values())) / (t1 - t0),
        allowed_per_s=allowed / (t1 - t0),
        wrk_rps=result["requests"] / (result["duration_us"] / 1e6),
        fivexx=envoy_5xx + filter_5xx + client_5xx(run.totals.answers),
        restarts=restarts_since(stats1, run.base),
        limit_entries=stats1.get("tollgate.ratelimit.entries", 0),
        load=os.getloadavg()[0], note="; ".join(notes))
    print(f"{sample.t:5.0f} {sample.rss_mib:8.1f} {sample.heap_mib:5.1f} {sample.cpu_pct:5.0f} "
          f"{sample.decisions_per_s:7.0f} {sample.allowed_per_s:7.0f} {sample.wrk_rps:6.0f} "
          f"{sample.fivexx:4d} {sample.restarts:4d} {sample.limit_entries:6d} "
          f"{sample.load:5.1f}  {sample.note}", flush=True)
    return sample


def report(s: Settings, run: Run):
    samples, totals, events = run.samples, run.totals, run.events
    base, final, rss_idle, vm_lines = run.base, run.final, run.rss_idle, run.vm_lines
    (c0, a0, r0), (c1, a1, r1) = vm_counts(base), vm_counts(final)
    restarts = restarts_since(final, base) + len(vm_lines)
    envoy_5xx, filter_5xx = fivexx_now(final, base)
    seen_5xx = client_5xx(totals.answers)
    wrong = wrong_answers(totals.answers)
    d0, d1 = decisions(base), decisions(final)
    made = {r: d1.get(r, 0) - d0.get(r, 0) for r in d1 if d1.get(r, 0) - d0.get(r, 0) > 0}
    elapsed = samples[-1].t
    half = samples[len(samples) // 2]
    first, last = samples[0], samples[-1]
    rss_max = max(x.rss_mib for x in samples)

    print_answers(totals)
    print("\nDecisions (tollgate.decision.*, whole run): "
          + ", ".join(f"{r} {n}" for r, n in sorted(made.items(), key=lambda x: -x[1])))
    print(f"Decisions/s: mean {sum(made.values()) / elapsed:.0f}, "
          f"min {min(x.decisions_per_s for x in samples):.0f}, "
          f"max {max(x.decisions_per_s for x in samples):.0f}; "
          f"wrk sent {totals.wrk_requests} requests ({totals.wrk_errors} socket errors, "
          f"{totals.wrk_timeouts} timeouts); invalid sender: {run.sender_errors} errors.")
    print(f"Envoy RSS: {rss_idle:.1f} MiB before traffic, {first.rss_mib:.1f} after the first "
          f"chunk, max {rss_max:.1f}, last {last.rss_mib:.1f} "
          f"({last.rss_mib - first.rss_mib:+.1f} MiB "
          f"since the first chunk, {last.rss_mib - half.rss_mib:+.1f} over the second half); "
          f"Envoy's heap {run.heap_idle:.1f} MiB before traffic, {first.heap_mib:.1f} after the "
          f"first chunk, {last.heap_mib:.1f} at the end.")
    if "rotation" in events:
        r = events["rotation"]
        print(f"Key rotation: kid {r['old_kid']} -> {r['new_kid']}; the first uses of new-key "
              f"tokens got {r['first_uses']}; they pass from {fmt_s(r['passing_after_s'])} "
              "after the rotation.")
    if "key_set_change" in events:
        k = events["key_set_change"]
        print(f"API-key set change: new key accepted after {fmt_s(k['new_key_accepted_s'])}, "
              f"disabled key refused after {fmt_s(k['disabled_key_refused_s'])}.")
    print(f"5xx: Envoy downstream_rq_5xx {envoy_5xx}, filter 503s "
          f"({'/'.join(FILTER_5XX)}) {filter_5xx}, seen by clients {seen_5xx}.")
    print(f"VM restarts: wasm VMs created after start-up {c1 - c0} (wasm.envoy.wasm.runtime.v8"
          f".created), active {a0} -> {a1}, reloads {r1 - r0}, VM failures in Envoy's log "
          f"{len(vm_lines)}.")
    for line in vm_lines[:10]:
        print(f"  | {line}")
    if wrong:
        print("Wrong answers: " + ", ".join(f"{k} x{n}" for k, n in sorted(wrong.items())))

    failures = []
    if envoy_5xx or filter_5xx or seen_5xx:
        failures.append("5xx")
    if restarts:
        failures.append("VM restarts")
    if wrong:
        failures.append("wrong answers")
    if not events.get("rotation", {}).get("ok", True):
        failures.append("new-key tokens refused after the rotation")
    if not events.get("key_set_change", {}).get("ok", True):
        failures.append("API-key change not applied")
    verdict = "PASS" if not failures else "FAIL (" + ", ".join(failures) + ")"
    print(f"\nSoak verdict: {verdict}")
    line = {
        "verdict": "pass" if not failures else "fail",
        "failures": failures,
        "seconds": round(elapsed), "rate": s.rate, "connections": s.connections,
        "rss_mib": {"idle": round(rss_idle, 1), "first": round(first.rss_mib, 1),
                    "max": round(rss_max, 1), "last": round(last.rss_mib, 1),
                    "series": [[round(x.t), round(x.rss_mib, 1)] for x in samples]},
        "heap_mib": {"idle": round(run.heap_idle, 1),
                     "series": [[round(x.t), round(x.heap_mib, 1)] for x in samples]},
        "decisions_per_s": {"mean": round(sum(made.values()) / elapsed),
                            "series": [[round(x.t), round(x.decisions_per_s)] for x in samples]},
        "decisions": made,
        "fivexx": {"envoy": envoy_5xx, "filter": filter_5xx, "clients": seen_5xx},
        "vm_restarts": restarts,
        "wrong_answers": wrong,
        "events": events,
        "wrk": {"requests": totals.wrk_requests, "errors": totals.wrk_errors,
                "timeouts": totals.wrk_timeouts},
    }
    print("SOAK " + json.dumps(line, separators=(",", ":")), flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
