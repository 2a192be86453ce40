#!/usr/bin/env python3
"""`make bench`: Tollgate against Envoy's native filters, on one pinned core.

Every configuration runs in its own Envoy (`--concurrency 1`, pinned to CPU 0
when `taskset` and two CPUs are there) in front of one upstream Envoy that
answers 200 itself (pinned, with the load generator `wrk`, to CPU 1). Rows run
interleaved, several rounds; the table shows medians over rounds.

Rows *-w2 run the proxy with two workers (`--concurrency 2`), so that Tollgate's
workers share its counters in shared data as in production; a 2-core machine can
only pin them to both CPUs, the load keeping CPU 1, for native and Tollgate alike.

Rows H-*: the wasm floor plus one kind of host call, ten times per request; the
report prices each host call Tollgate makes (bench/floor).

Settings (environment): BENCH_SECONDS (3) per row and round, BENCH_ROUNDS (10),
BENCH_CONNECTIONS (32), BENCH_POOL (20000 distinct tokens per algorithm for the
cold rows: twice the cache bound, so every request misses), BENCH_MEMORY_TOKENS
(100000; 0 skips the memory run), BENCH_ROWS (comma-separated row ids to run,
e.g. "1,2,4" for profiling; row 1 is always run), ENVOY (.venv/bin/envoy),
TOLLGATE_WASM (the `make wasm` output; another build, to compare),
TOLLGATE_BASELINE_WASM (another build, e.g. of an earlier commit: every Tollgate
row gets a twin on it, interleaved in the same rounds, and the report gives each
row's ratio to its twin: an A/B that machine drift cannot bias).

The fleet rows (7r-jwt: Tollgate's remote policy calls the service; 7f-jwt: Envoy's
native ratelimit filter after Tollgate does) also run Redis (`redis-server`) and the
rate-limit service (target/release/tollgate-rls-backend), pinned with wrk and the
upstream.

The mTLS rows (9-tls, 9-bound) send a warm unbound token and a warm token bound to
the client certificate (`cnf.x5t#S256`) through the same HTTPS listener, which
requires a client certificate from the sample CA (target/release/sample-ca, into
bench/out/tls/). wrk presents no client certificate, so it goes through a TLS client
Envoy on the load CPU. If the certificates cannot be made, these rows are skipped,
and the report says so.

Stdlib only. Generated keys, tokens, configs and Envoy logs go to bench/out/.
"""

import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
RUN = OUT / "run"
CONFIGS = BENCH / "configs"

ISSUER = "https://bench.tollgate.local"
# DPoP row: its own issuer (a token bound to an app key) and the public base
# URI proofs name, whatever port the proxy gets.
DPOP_ISSUER = "https://bench-dpop.tollgate.local"
DPOP_BASE = "http://bench.local"
AUDIENCE = "tollgate-bench"
API_KEY = "tg_live_bench_6f1d2c9a4b7e4e0f9a3c5d8b1e2f7a6c"
# Verified-token caches of the rows: as many entries in Tollgate as in jwt_authn.
CACHE_ENTRIES = 10_000
CACHE_BYTES = 16 << 20
# The memory run lifts Tollgate's entry bound, so that its byte bound binds.
MEMORY_CACHE_ENTRIES = 1_000_000
# RSS growth allowed above the cache's byte bound (with the cache off, 100k
# distinct tokens grow RSS by under 1 MiB).
MEMORY_SLACK = 4 << 20
EDDSA_GAP = """\
  EdDSA gap: Tollgate hands RS* and ES* signatures to Envoy's BoringSSL (the
  verify_signature foreign function), but that function always pairs the key with
  a named digest and streams the text, which BoringSSL's Ed25519 does not support.
  So EdDSA is verified in the wasm VM, in pure Rust, against native code in jwt_authn."""


def env_int(name, default):
    return int(os.environ.get(name, default))


@dataclass
class Settings:
    seconds: int = env_int("BENCH_SECONDS", 3)
    rounds: int = env_int("BENCH_ROUNDS", 10)
    connections: int = env_int("BENCH_CONNECTIONS", 32)
    pool: int = env_int("BENCH_POOL", 20_000)
    memory_tokens: int = env_int("BENCH_MEMORY_TOKENS", 100_000)
    only_rows: str = os.environ.get("BENCH_ROWS", "")
    warmup_seconds: int = 1
    # Proofs for the DPoP row: one per request it sends (a replayed proof is a 401),
    # at up to 12k req/s (it runs at about 10k on a 2-core VM) for the whole run.
    dpop_proofs: int = env_int("BENCH_DPOP_PROOFS",
                               12_000 * (1 + env_int("BENCH_ROUNDS", 10) * env_int("BENCH_SECONDS", 3)))
    envoy: Path = Path(os.environ.get("ENVOY", ROOT / ".venv/bin/envoy")).resolve()
    tollgate_wasm: Path = Path(os.environ.get(
        "TOLLGATE_WASM", ROOT / "target/wasm32-wasip1/release/tollgate.wasm")).resolve()
    baseline_wasm: Path | None = (Path(os.environ["TOLLGATE_BASELINE_WASM"]).resolve()
                                  if os.environ.get("TOLLGATE_BASELINE_WASM") else None)
    floor_wasm: Path = BENCH / "floor/target/wasm32-wasip1/release/tollgate_bench_floor.wasm"
    minter: Path = BENCH / "tokens/target/release/tollgate-bench-tokens"
    rls_backend: Path = ROOT / "target/release/tollgate-rls-backend"
    sample_ca: Path = ROOT / "target/release/sample-ca"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- Tokens -------------------------------------------------------------------


def setup_tls(s: Settings):
    """The sample CA's certificates for the mTLS rows, in bench/out/tls/ (made
    again when older than 20 days: they are valid for 30), and the x5t#S256 of
    the client's certificate. (None, reason) when they cannot be made."""
    out = OUT / "tls"
    try:
        cert = out / "partner-acme.pem"
        if not cert.exists() or time.time() - cert.stat().st_mtime > 20 * 86_400:
            if not s.sample_ca.exists():
                return None, f"missing {s.sample_ca} (make bench builds it)"
            subprocess.run([str(s.sample_ca), str(out)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pem = cert.read_text()
        body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
        digest = hashlib.sha256(base64.b64decode("".join(body.split()))).digest()
        return out, base64.urlsafe_b64encode(digest).decode().rstrip("=")
    except (OSError, IndexError, ValueError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        return None, f"{e} {detail.decode(errors='replace').strip()}".strip()


def mint_tokens(s: Settings, x5t) -> Path:
    """Keys, JWKS and token pools; reused by later runs while they suffice.
    With `x5t`, also a warm token bound to that certificate."""
    out = OUT / "tokens"
    want = {"es256": max(s.pool, s.memory_tokens), "rs256": s.pool, "eddsa": s.pool,
            "invalid": s.pool}
    try:
        have = json.loads((out / "manifest.json").read_text())
        fresh = (all(have[k] >= n for k, n in want.items())
                 and have["expires_at"] > time.time() + 2 * 86_400
                 and have["issuer"] == ISSUER and have["audience"] == AUDIENCE
                 and (x5t is None or have.get("x5t") == x5t))
    except (OSError, ValueError, KeyError):
        fresh = False
    if not fresh:
        log(f"minting keys and tokens into {out.relative_to(ROOT)} ...")
        counts = [want[k] for k in ("es256", "rs256", "eddsa", "invalid")]
        bound = [x5t] if x5t else []
        subprocess.run([str(a) for a in [s.minter, out, ISSUER, AUDIENCE, *counts, *bound]],
                       check=True)
    (out / "api_key.txt").write_text(API_KEY + "\n")
    return out


# --- Configs ------------------------------------------------------------------


def render(template: str, values: dict) -> str:
    """Fills `${name}`; a multi-line value is indented like its placeholder."""
    lines = []
    for line in template.splitlines():
        for name, value in values.items():
            token = "${" + name + "}"
            if token not in line:
                continue
            value = str(value)
            if "\n" in value:
                indent = line[: line.index(token)]
                value = ("\n" + indent).join(value.rstrip("\n").splitlines())
            line = line.replace(token, value)
        lines.append(line)
    return "\n".join(lines) + "\n"


def tollgate_config(jwks: str, proxy: str, dpop_jwks: str = "") -> dict:
    """The plugin configuration of a Tollgate proxy (PROXIES)."""
    rule = {"match": {"prefix": "/"}, "requires": {"scopes": {"all_of": ["read:data"]}}}
    config = {
        "realm": "bench",
        "signature_backend": "auto",
        "providers": {"bench": {
            "issuer": ISSUER, "audiences": [AUDIENCE],
            "algorithms": ["ES256", "RS256", "EdDSA"],
            "local_jwks": {"inline_string": jwks},
        }},
        "rules": [rule],
        "token_cache": {"max_entries": MEMORY_CACHE_ENTRIES if proxy == "tollgate_memory"
                        else CACHE_ENTRIES, "max_bytes": CACHE_BYTES},
    }
    if proxy.startswith("tollgate_limits") or proxy in ("tollgate_fleet", "tollgate_remote"):
        digest = hashlib.sha256(API_KEY.encode()).hexdigest()
        key_set = {"consumers": [{"id": "bench-consumer", "scopes": ["read:data"],
                                  "keys": [{"id": "k1", "hash": digest, "enabled": True}]}]}
        config["api_keys"] = {"from_headers": ["X-API-Key"],
                              "key_set": {"inline_string": json.dumps(key_set)}}
        # Never refuses: the row measures counting, not 429s.
        config["rate_limits"] = {"policies": {"per-client": {
            "limit": 1_000_000_000, "window": "1s", "key": "client_id"}}}
        rule["requires"]["credentials"] = ["jwt", "api_key"]
        rule["rate_limits"] = ["per-client"]
    if proxy == "tollgate_remote":
        # The native row's descriptor and limit (FleetBackend.LIMITS), asked by
        # Tollgate itself; failing closed, a backend error shows as a wrong status.
        config["rate_limits"]["policies"]["bench-per-client"] = {
            "key": "client_id",
            "backend": {"rls": {"cluster": "rate_limit_service", "domain": "tollgate",
                                "timeout": "1s", "failure_mode_deny": True}}}
        rule["rate_limits"].append("bench-per-client")
    if dpop_jwks and proxy == "tollgate":
        config["providers"]["bench-dpop"] = {
            "issuer": DPOP_ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
            "local_jwks": {"inline_string": dpop_jwks},
            # Proofs are minted once per run: accept them for the run's length.
            "dpop": {"public_base_uri": DPOP_BASE, "max_age": "3600s"},
        }
    return config


def mint_dpop(s: Settings, tokens: Path):
    """A DPoP-bound token and one fresh proof per request of the DPoP row (each
    proof's jti is single-use), minted anew every run since proofs carry iat."""
    subprocess.run([str(a) for a in [s.minter, "dpop", tokens, DPOP_ISSUER, AUDIENCE,
                                     f"{DPOP_BASE}/data", s.dpop_proofs]], check=True)


# Host-call probes (rows H-*): the floor plus one kind of host call, N times per
# request (bench/floor). (probe, N, what one unit is, units per request).
HOST_CALL_PROBES = [
    ("header_map", 10, "get_http_request_headers (the whole map)", 10),
    ("clock", 10, "get_current_time", 10),
    ("source_address", 10, "get_property source.address", 10),
    ("set_header", 10, "set_http_request_header (a new header)", 10),
    ("set_header_map", 10, "set_http_request_headers: whole map + 10 new, one call", 1),
    ("shared_read", 10, "get_shared_data (512 bytes)", 10),
    ("shared_update", 10, "get_shared_data + set_shared_data with CAS", 10),
    ("histogram", 10, "record_metric on a histogram", 10),
]

# Proxies that call the rate-limit service (FleetBackend, configs/rls_cluster.yaml).
FLEET_PROXIES = ("tollgate_fleet", "tollgate_remote")

# Proxy under test -> its HTTP filters before the router (configs/filters/*.yaml).
PROXIES = {
    "noauth": [],
    "floor": ["floor"],
    "native": ["jwt_authn"],
    "native_limits": ["jwt_authn", "local_ratelimit"],
    "native_api_key": ["api_key_auth", "local_ratelimit"],
    "tollgate": ["tollgate"],
    "tollgate_limits": ["tollgate"],
    "tollgate_fleet": ["tollgate", "ratelimit"],
    "tollgate_limits_baseline": ["tollgate"],
    "tollgate_remote": ["tollgate"],
    "tollgate_memory": ["tollgate"],
    "tollgate_baseline": ["tollgate"],
    "tollgate_tls": ["tollgate"],
    **{f"floor_{probe}": ["floor"] for probe, *_ in HOST_CALL_PROBES},
}


def base_proxy(proxy: str) -> str:
    """The configuration a proxy runs: its name without the "@<workers>" suffix."""
    return proxy.split("@")[0]


def proxy_workers(proxy: str) -> int:
    """Envoy's --concurrency for a proxy: "tollgate@2" runs two workers."""
    return int(proxy.split("@")[1]) if "@" in proxy else 1


@dataclass
class Ports:
    port: int
    admin: int


# Ports already given to a process of this run. The kernel may hand a freed port
# out again, and Envoy binds listeners with SO_REUSEPORT: two proxies on one port
# would both start and split the load (a row once got the API-key filter's 401).
HANDED_OUT: set = set()


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in HANDED_OUT:
            HANDED_OUT.add(port)
            return port


def free_ports() -> Ports:
    return Ports(free_port(), free_port())


def upstream_config(ports: Ports) -> Path:
    path = RUN / "upstream.yaml"
    text = (CONFIGS / "upstream.yaml").read_text()
    path.write_text(render(text, {"port": ports.port, "admin_port": ports.admin}))
    return path


def tls_client_config(tls: Path, ports: Ports, proxy_port: int) -> Path:
    path = RUN / "tls_client.yaml"
    text = (CONFIGS / "tls_client.yaml").read_text()
    path.write_text(render(text, {"port": ports.port, "admin_port": ports.admin,
                                  "proxy_port": proxy_port, "tls": tls}))
    return path


def proxy_config(s: Settings, name: str, tokens: Path, ports: Ports, upstream: int,
                 file_name: str, rls_port: int = 0, tls: Path | None = None) -> Path:
    jwks = (tokens / "jwks.json").read_text().strip()
    dpop_file = tokens / "dpop_jwks.json"
    dpop_jwks = dpop_file.read_text().strip() if dpop_file.exists() else ""
    plugin = tollgate_config(jwks, name, dpop_jwks)
    values = {
        "port": ports.port, "admin_port": ports.admin, "upstream_port": upstream,
        "floor_wasm": s.floor_wasm,
        "floor_probe": next((f"{probe} {n}" for probe, n, *_ in HOST_CALL_PROBES
                             if name == f"floor_{probe}"), ""),
        "tollgate_wasm": s.baseline_wasm if name.endswith("_baseline") else s.tollgate_wasm,
        "issuer": ISSUER, "audience": AUDIENCE, "jwks": json.dumps(jwks),
        "cache_entries": CACHE_ENTRIES, "api_key": API_KEY,
        # A JSON string literal is a valid YAML double-quoted scalar.
        "plugin_config": json.dumps(json.dumps(plugin)),
    }
    filters = "".join(render((CONFIGS / "filters" / f"{f}.yaml").read_text(), values)
                      for f in PROXIES[name])
    values["filters"] = filters
    values["transport_socket"] = (render((CONFIGS / "tls_listener.yaml").read_text(),
                                         {"tls": tls}) if name == "tollgate_tls" else "")
    values["clusters"] = (render((CONFIGS / "rls_cluster.yaml").read_text(),
                                 {"rls_port": rls_port})
                          if name in FLEET_PROXIES else "")
    path = RUN / f"{file_name}.yaml"
    path.write_text(render((CONFIGS / "proxy.yaml").read_text(), values))
    return path


# --- Processes ----------------------------------------------------------------


def pinning():
    """(CPU of the proxy under test, CPU of wrk and the upstream), or None."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ("0", "1")
    return None


def pinned(cmd, cpus):
    return (["taskset", "-c", cpus] if cpus else []) + cmd


def http_get(port: int, path: str, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


class Envoy:
    def __init__(self, s: Settings, name: str, config: Path, ports: Ports, cpus, workers=1):
        self.name, self.ports = name, ports
        self.log_path = RUN / f"{name}.log"
        cmd = [str(s.envoy), "-c", str(config), "--concurrency", str(workers),
               "--disable-hot-restart", "--log-level", "warn"]
        with self.log_path.open("w") as log_file:
            self.proc = subprocess.Popen(pinned(cmd, cpus), cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log_file)

    @property
    def port(self):
        return self.ports.port

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if http_get(self.ports.admin, "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"{self.name}: Envoy did not become ready:\n"
                         f"{self.log_path.read_text()[-4000:]}")

    def cpu_seconds(self) -> float:
        """User + system time of all its threads."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def counters(self, needle: str) -> dict:
        _, body = http_get(self.ports.admin, f"/stats?filter={needle}")
        out = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), 1):
        return True


class FleetBackend:
    """Redis and the rate-limit service for the fleet row, on the load CPU."""

    LIMITS = ("- {namespace: tollgate, name: bench-per-client, max_value: 1000000000000,"
              " seconds: 60, conditions: [\"descriptors[0].policy == 'bench-per-client'\"],"
              " variables: [\"descriptors[0].client_id\"]}\n")

    def __init__(self, s: Settings, cpus):
        if not shutil.which("redis-server"):
            raise SystemExit("redis-server is not installed: run `make bench`")
        if not s.rls_backend.exists():
            raise SystemExit(f"missing {s.rls_backend}: run `make bench`")
        self.redis_port, self.grpc_port, self.admin_port = free_port(), free_port(), free_port()
        limits = RUN / "rls-limits.yaml"
        limits.write_text(self.LIMITS)
        self.procs = []
        self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind",
                              "127.0.0.1", "--save", "", "--appendonly", "no"], cpus)
        self._wait(lambda: port_open(self.redis_port))
        self._spawn("rls-backend", [str(s.rls_backend), "--limits", str(limits),
                                    "--redis", f"redis://127.0.0.1:{self.redis_port}",
                                    "--listen", f"127.0.0.1:{self.grpc_port}",
                                    "--admin", f"127.0.0.1:{self.admin_port}"], cpus)
        self._wait(lambda: http_get(self.admin_port, "/healthz")[0] == 200)

    def _spawn(self, name, cmd, cpus):
        with (RUN / f"{name}.log").open("w") as log_file:
            self.procs.append(subprocess.Popen(pinned(cmd, cpus), stdin=subprocess.DEVNULL,
                                               stdout=log_file, stderr=subprocess.STDOUT))

    def _wait(self, ready, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit("the fleet backend did not start: see bench/out/run/redis.log, "
                         "rls-backend.log")

    def stats(self) -> dict:
        return json.loads(http_get(self.admin_port, "/stats")[1])

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


# --- Load ---------------------------------------------------------------------


@dataclass
class Load:
    """What a row sends: a file of credentials, one a line, cycled per request."""
    file: Path
    header: str = "Authorization"
    prefix: str = "Bearer "
    # A header every request carries as is (the DPoP row's bound token).
    fixed: tuple = ("", "")

    def first(self):
        return self.file.read_text().split("\n", 1)[0]


def start_wrk(s: Settings, port: int, load: Load, seconds: float, cpus, start=0):
    env = dict(os.environ, BENCH_TOKENS=str(load.file), BENCH_HEADER=load.header,
               BENCH_PREFIX=load.prefix, BENCH_START=str(start),
               BENCH_FIXED_HEADER=load.fixed[0], BENCH_FIXED_VALUE=load.fixed[1])
    cmd = ["wrk", "-t1", f"-c{s.connections}", f"-d{seconds}s", "--timeout", "10s",
           "-s", str(BENCH / "rotate.lua"), f"http://127.0.0.1:{port}/data"]
    return subprocess.Popen(pinned(cmd, cpus), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wrk_summary(proc, seconds) -> dict:
    # Bounded: wrk stops by itself after `seconds`; the timeout is a backstop.
    out, err = proc.communicate(timeout=seconds + 60)
    for line in out.splitlines():
        if line.startswith("WRK "):
            return json.loads(line[4:])
    raise SystemExit(f"wrk gave no summary:\n{out}\n{err}")


def run_wrk(s, port, load, seconds, cpus, start=0) -> dict:
    return wrk_summary(start_wrk(s, port, load, seconds, cpus, start), seconds)


# --- Rows ---------------------------------------------------------------------


@dataclass
class Row:
    id: str
    label: str
    proxy: str
    load: Load
    status: int = 200
    native: str = ""  # the id of the matching native row
    via: str = ""  # the Envoy wrk talks to, if not the proxy itself (the TLS client)
    baseline: str = ""  # the id of the twin row on TOLLGATE_BASELINE_WASM
    runs: list = field(default_factory=list)
    # Where the next run starts in the credential file: each run goes on
    # where the last one stopped, so a cold row never meets a token its
    # Envoy has cached (the file is twice the cache bound).
    cursor: int = 0

    def port(self, envoys) -> int:
        return envoys[self.via or self.proxy].port

    def drive(self, s, port, seconds, cpus) -> dict:
        result = run_wrk(s, port, self.load, seconds, cpus, self.cursor)
        self.cursor += result["requests"]
        return result


def with_baseline_twins(rows: list) -> list:
    """Each plain Tollgate row followed by its twin on the baseline build."""
    out = []
    for row in rows:
        out.append(row)
        # The DPoP row needs a build that knows DPoP: no twin.
        if (base_proxy(row.proxy) in ("tollgate", "tollgate_limits")
                and not row.id.endswith("-dpop")):
            twin = f"{row.id}b"
            row.baseline = twin
            workers = proxy_workers(row.proxy)
            proxy = f"{base_proxy(row.proxy)}_baseline" + (f"@{workers}" if workers > 1 else "")
            out.append(Row(twin, f"{row.label} [baseline]", proxy, row.load,
                           row.status, native=row.native))
    return out


def make_rows(tokens: Path, tls: bool) -> list:
    """The rows in run order: each next to the rows it is compared with, so
    that both sides of a ratio are measured seconds apart (the speed of a
    shared machine drifts by tens of percent within a minute)."""
    warm = Load(tokens / "warm.txt")
    dpop_token = (tokens / "dpop_token.txt").read_text().strip()
    dpop = Load(tokens / "dpop_proofs.txt", "DPoP", "", ("Authorization", f"DPoP {dpop_token}"))
    key = Load(tokens / "api_key.txt", "X-API-Key", "")
    invalid = Load(tokens / "invalid.txt")
    cold = {alg: Load(tokens / f"{alg.lower()}.txt") for alg in ("RS256", "EdDSA", "ES256")}
    return [
        Row("1", "Envoy, no auth filter (the limit)", "noauth", warm),
        Row("2", "wasm floor: read + remove one header", "floor", warm),
        Row("4", "Tollgate, warm (one token)", "tollgate", warm, native="3"),
        Row("4-dpop", "Tollgate, warm DPoP token, fresh proof", "tollgate", dpop, native="3"),
        Row("3", "native jwt_authn+cache, warm", "native", warm),
        *[row for a, load in cold.items() for row in (
            Row(f"5-{a}", f"native jwt_authn, cold {a}", "native", load),
            Row(f"6-{a}", f"Tollgate, cold {a}", "tollgate", load, native=f"5-{a}"))],
        Row("8", "Tollgate, invalid-token flood", "tollgate", invalid, 401, native="8n"),
        Row("8n", "native jwt_authn, invalid-token flood", "native", invalid, 401),
        Row("7n-jwt", "native jwt_authn+cache + local_ratelimit", "native_limits", warm),
        Row("7-jwt", "Tollgate + rate limit, warm JWT", "tollgate_limits", warm, native="7n-jwt"),
        Row("7n-key", "native api_key_auth + local_ratelimit", "native_api_key", key),
        Row("7-key", "Tollgate + rate limit, API key", "tollgate_limits", key, native="7n-key"),
        Row("7r-jwt", "Tollgate + rate limit + filter RLS call", "tollgate_remote",
            warm, native="7f-jwt"),
        Row("7f-jwt", "Tollgate + rate limit + native RLS call", "tollgate_fleet", warm),
        # The probes, around a floor row of their own (each compared with it).
        *[Row(f"H-{probe}", f"floor + {n} x {probe}", f"floor_{probe}", warm)
          for probe, n, *_ in HOST_CALL_PROBES[:4]],
        Row("H-floor", "wasm floor (beside the probes)", "floor", warm),
        *[Row(f"H-{probe}", f"floor + {n} x {probe}", f"floor_{probe}", warm)
          for probe, n, *_ in HOST_CALL_PROBES[4:]],
        # Two workers (--concurrency 2): shared-data contention between VMs shows.
        Row("4-w2", "Tollgate, warm, 2 workers", "tollgate@2", warm, native="3-w2"),
        Row("3-w2", "native jwt_authn+cache, warm, 2 workers", "native@2", warm),
        Row("7n-jwt-w2", "native jwt_authn + local_ratelimit, 2 workers", "native_limits@2",
            warm),
        Row("7-jwt-w2", "Tollgate + rate limit, warm JWT, 2 workers", "tollgate_limits@2",
            warm, native="7n-jwt-w2"),
        Row("7n-key-w2", "native api_key_auth + local_ratelimit, 2 workers",
            "native_api_key@2", key),
        Row("7-key-w2", "Tollgate + rate limit, API key, 2 workers", "tollgate_limits@2", key,
            native="7n-key-w2"),
        *([Row("9-tls", "Tollgate over mTLS, warm unbound token", "tollgate_tls", warm,
               via="tls_client"),
           Row("9-bound", "Tollgate over mTLS, warm bound token", "tollgate_tls",
               Load(tokens / "warm-bound.txt"), via="tls_client")] if tls else []),
    ]


def check_rows(rows, envoys):
    """One request per row before timing: a row answering the wrong status
    would time an error path."""
    for row in rows:
        headers = {row.load.header: row.load.prefix + row.load.first()}
        if row.load.fixed[0]:
            headers[row.load.fixed[0]] = row.load.fixed[1]
        status, body = http_get(row.port(envoys), "/data", headers)
        if status != row.status:
            raise SystemExit(f"row {row.id}: expected {row.status}, got {status}: {body[:300]}")


def measure(s, row, envoy, port, cpus) -> dict:
    cpu0 = envoy.cpu_seconds()
    result = row.drive(s, port, s.seconds, cpus)
    result["proxy_cpu_s"] = envoy.cpu_seconds() - cpu0
    result["cpu_us"] = result["proxy_cpu_s"] * 1e6 / result["requests"]
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    # Non-2xx answers are the point of the invalid-token rows, an error elsewhere.
    # wrk counts requests cut off at the end as neither, hence the slack.
    bad = result["requests"] if row.status != 200 else 0
    result["ok"] = (result["errors"] <= s.connections and result["timeouts"] == 0
                    and abs(result["non_2xx"] - bad) <= s.connections)
    return result


def run_rounds(s, rows, envoys, cpus):
    log(f"warm-up: {s.warmup_seconds} s per row")
    for row in rows:
        row.drive(s, row.port(envoys), s.warmup_seconds, cpus)
    for r in range(s.rounds):
        # Interleaved; every other round backwards, so that neither side of a
        # pair always runs first.
        order = rows if r % 2 == 0 else rows[::-1]
        log(f"round {r + 1}/{s.rounds}: {len(order)} rows x {s.seconds} s")
        for row in order:
            row.runs.append(measure(s, row, envoys[row.proxy], row.port(envoys), cpus))


# --- Memory -------------------------------------------------------------------


def memory_run(s, name, tokens, upstream_port, pin) -> dict:
    """RSS of a fresh Envoy before and while `memory_tokens` distinct valid
    ES256 tokens go through it, read after each quarter."""
    proxy_cpus, load_cpus = pin if pin else (None, None)
    ports = free_ports()
    config = proxy_config(s, name, tokens, ports, upstream_port, f"memory-{name}")
    envoy = Envoy(s, f"memory-{name}", config, ports, proxy_cpus)
    try:
        envoy.wait_ready()
        run_wrk(s, ports.port, Load(tokens / "warm.txt"), 1, load_cpus)
        base = envoy.rss_bytes()
        pool = (tokens / "es256.txt").read_text().splitlines()[: s.memory_tokens]
        quarter = len(pool) // 4
        samples, non_2xx = [], 0
        for i in range(4):
            part = RUN / f"memory-{i}.txt"
            part.write_text("\n".join(pool[i * quarter:(i + 1) * quarter]) + "\n")
            result = send_exactly(s, envoy, Load(part), quarter, load_cpus)
            non_2xx += result["non_2xx"]
            samples.append(((i + 1) * quarter, envoy.rss_bytes()))
        return {"base": base, "samples": samples, "growth": samples[-1][1] - base,
                "non_2xx": non_2xx}
    finally:
        envoy.stop()


def send_exactly(s, envoy, load, count, cpus, limit_seconds=300) -> dict:
    """Runs wrk until Envoy has answered `count` more requests (read from its
    stats), then interrupts it: wrk itself can only stop on a duration."""
    def answered():
        return sum(envoy.counters("http.public.downstream_rq_completed").values())

    target = answered() + count
    proc = start_wrk(s, envoy.port, load, limit_seconds, cpus)
    deadline = time.time() + limit_seconds
    while answered() < target and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    return wrk_summary(proc, 10)


# --- Results ------------------------------------------------------------------


def median(values):
    return statistics.median(values) if values else float("nan")


def round_ratio(row, other, key="rps"):
    """Median over rounds of the per-round ratio: both sides of a ratio come
    from the same round."""
    return median([a[key] / b[key] for a, b in zip(row.runs, other.runs)])


def summarize(rows) -> dict:
    by_id = {row.id: row for row in rows}
    out = {}
    for row in rows:
        runs, native = row.runs, by_id.get(row.native)
        out[row.id] = {
            "label": row.label,
            "rps": median([x["rps"] for x in runs]),
            "p50_ms": median([x["p50_us"] for x in runs]) / 1000,
            "p99_ms": median([x["p99_us"] for x in runs]) / 1000,
            "cpu_us": median([x["cpu_us"] for x in runs]),
            "cpu_pct": median([x["proxy_cpu_s"] * 1e8 / x["duration_us"] for x in runs]),
            "vs_limit": round_ratio(row, by_id["1"]),
            "native": row.native,
            "vs_native": round_ratio(row, native) if native else None,
            "baseline": row.baseline,
            "vs_baseline": round_ratio(row, by_id[row.baseline]) if row.baseline else None,
            "ok": all(x["ok"] for x in runs),
        }
    return out


def host_call_costs(rows) -> dict:
    """Proxy CPU per host call, in microseconds, by probe: the median over rounds
    of (CPU/req of the probe row - CPU/req of the floor beside it) / calls."""
    by_id = {row.id: row for row in rows}
    floor = by_id.get("H-floor")
    out = {}
    for probe, _, what, units in HOST_CALL_PROBES:
        row = by_id.get(f"H-{probe}")
        if floor and row:
            out[probe] = (what, median([(a["cpu_us"] - b["cpu_us"]) / units
                                        for a, b in zip(row.runs, floor.runs)]))
    return out


def evaluate_targets(rows, summary, memory) -> dict:
    """The issue's targets: name -> (value, comparison, threshold, met); a
    target whose rows were not run is left out."""
    by_id = {row.id: row for row in rows}
    out = {}

    def target(name, ids, value, op, threshold):
        if all(i in by_id for i in ids):
            v = value()
            met = None if op == "report" else (v >= threshold if op == ">=" else v <= threshold)
            out[name] = (v, op, threshold, met)

    target("warm_vs_floor", ["4", "2"], lambda: round_ratio(by_id["4"], by_id["2"]), ">=", 0.95)
    target("warm_vs_native", ["4", "3"], lambda: summary["4"]["vs_native"], ">=", 0.9)
    # Limits on every route: the limit path against native's (issue 16).
    target("limit_jwt_vs_native", ["7-jwt", "7n-jwt"], lambda: summary["7-jwt"]["vs_native"],
           ">=", 0.85)
    target("limit_key_vs_native", ["7-key", "7n-key"], lambda: summary["7-key"]["vs_native"],
           ">=", 0.85)
    # Two workers, sharing one counter table (reported: the load shares a CPU).
    for rid in ("4-w2", "7-jwt-w2", "7-key-w2"):
        target(f"w2_{rid[:-3].replace('-', '_')}_vs_native", [rid, by_id[rid].native]
               if rid in by_id else [rid], lambda rid=rid: summary[rid]["vs_native"],
               "report", 1.0)
    # A proof costs one ES256 verification per request: reported, no target.
    target("dpop_vs_warm_bearer", ["4-dpop", "4"],
           lambda: round_ratio(by_id["4-dpop"], by_id["4"]), "report", 0)
    for alg in ("ES256", "RS256", "EdDSA"):
        # EdDSA: reported, no target (EDDSA_GAP).
        op = "report" if alg == "EdDSA" else ">="
        target(f"cold_{alg.lower()}_vs_native", [f"6-{alg}", f"5-{alg}"],
               lambda alg=alg: summary[f"6-{alg}"]["vs_native"], op, 1.0)
    # Proxy CPU per rejected request, relative to a cold ES256 verify.
    target("invalid_vs_cold_cpu", ["8", "6-ES256"],
           lambda: round_ratio(by_id["8"], by_id["6-ES256"], "cpu_us"), "<=", 1.0)
    # The cost of a fleet-wide limit on the native path: req/s against the same
    # Tollgate with only its local limit (reported, no target).
    target("native_rls_vs_local", ["7f-jwt", "7-jwt"],
           lambda: round_ratio(by_id["7f-jwt"], by_id["7-jwt"]), "report", 1.0)
    # The cost of checking a token's certificate binding: req/s and proxy CPU
    # per request of a bound token against an unbound one, same mTLS listener.
    target("mtls_bound_vs_unbound", ["9-bound", "9-tls"],
           lambda: round_ratio(by_id["9-bound"], by_id["9-tls"]), "report", 1.0)
    target("mtls_bound_vs_unbound_cpu", ["9-bound", "9-tls"],
           lambda: round_ratio(by_id["9-bound"], by_id["9-tls"], "cpu_us"), "report", 1.0)
    # The same call made by Tollgate itself (a remote policy): against the local
    # row, and against the native filter making it (reported, no target).
    target("remote_rls_vs_local", ["7r-jwt", "7-jwt"],
           lambda: round_ratio(by_id["7r-jwt"], by_id["7-jwt"]), "report", 1.0)
    target("remote_rls_vs_native_rls", ["7r-jwt", "7f-jwt"],
           lambda: round_ratio(by_id["7r-jwt"], by_id["7f-jwt"]), "report", 1.0)
    if "tollgate" in memory:
        growth = memory["tollgate"]["growth"] / 2**20
        bound = (CACHE_BYTES + MEMORY_SLACK) / 2**20
        out["memory_growth_mib"] = (growth, "<=", bound, growth <= bound)
    return out


def print_report(s, pin, summary, native_cache, memory, targets, tls_skipped, host_calls):
    print()
    print(f"Tollgate bench: {s.rounds} rounds x {s.seconds} s per row, interleaved; "
          f"wrk -t1 -c{s.connections}, HTTP/1.1 keep-alive; medians over rounds.")
    if pin:
        print(f"Pinned with taskset: proxy under test (--concurrency 1) on CPU {pin[0]}; "
              f"wrk and the upstream Envoy on CPU {pin[1]}. Rows *-w2 (--concurrency 2): "
              f"the proxy on CPUs {pin[0]},{pin[1]}, sharing CPU {pin[1]} with the load.")
    else:
        print("Not pinned (no taskset, or fewer than 2 CPUs).")
    fmt = "{:<16} {:<40} {:>8} {:>7} {:>7} {:>8} {:>6} {:>6} {:>19}"
    print(fmt.format("row", "configuration", "req/s", "p50 ms", "p99 ms", "CPU/req",
                     "CPU", "x row1", "x native"))
    print("-" * 127)
    for rid, r in summary.items():
        native = f"{r['vs_native']:.2f} (row {r['native']})" if r["vs_native"] else "-"
        print(fmt.format(rid, r["label"] + ("" if r["ok"] else " !"), f"{r['rps']:.0f}",
                         f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['cpu_us']:.0f} us",
                         f"{r['cpu_pct']:.0f}%", f"{r['vs_limit']:.2f}", native))
    print("CPU/req: the proxy Envoy's user+system time per request; CPU: its share of one core.")
    if tls_skipped:
        print(f"mTLS rows (9-tls, 9-bound) skipped: {tls_skipped}")
    elif "9-tls" in summary:
        print("Rows 9-*: HTTPS with a required client certificate; wrk reaches it through a TLS "
              "client Envoy on the load CPU,\n  so compare them with each other, not with row 1.")
    if s.baseline_wasm:
        print(f"Against the baseline build ({s.baseline_wasm}), same rounds "
              "(req/s, and CPU/req: lower is better):")
        for rid, r in summary.items():
            if r["vs_baseline"] is not None:
                twin = summary[r["baseline"]]
                print(f"  row {rid:<9} req/s x{r['vs_baseline']:.3f}   CPU/req "
                      f"{r['cpu_us']:.0f} us vs {twin['cpu_us']:.0f} us")
    if not all(r["ok"] for r in summary.values()):
        print("! = wrong statuses or socket errors in some round: see bench/out/run/*.log")
    if native_cache:
        print("native jwt_authn verified-JWT cache over all rows: "
              + ", ".join(f"{k} {v}" for k, v in sorted(native_cache.items())))
    if host_calls:
        print()
        print("Host calls: proxy CPU per call (rows H-* against H-floor, same rounds; "
              "medians of per-round differences):")
        for probe, (what, us) in host_calls.items():
            print(f"  {probe:<15} {us:6.2f} us  {what}")
    if memory:
        print()
        print(f"Memory: VmRSS of a fresh Envoy while {s.memory_tokens} distinct valid ES256 "
              f"tokens go through it (Tollgate token_cache: max_bytes {CACHE_BYTES >> 20} MiB, "
              f"max_entries {MEMORY_CACHE_ENTRIES} so that the byte bound binds; native "
              f"jwt_cache_size {CACHE_ENTRIES}).")
        for name, m in memory.items():
            steps = ", ".join(f"{n // 1000}k {rss / 2**20:.1f}" for n, rss in m["samples"])
            print(f"  {name:<9} start {m['base'] / 2**20:.1f} MiB; after {steps} MiB; growth "
                  f"{m['growth'] / 2**20:+.1f} MiB"
                  + ("" if m["non_2xx"] == 0 else f"  ({m['non_2xx']} non-2xx!)"))
    print()
    print("Targets (req/s ratios within each round, and CPU/req; medians of rounds):")
    for name, (value, op, threshold, met) in targets.items():
        verdict = "reported" if met is None else ("met" if met else "NOT MET")
        bound = "" if op == "report" else f"target {op} {threshold:.2f}"
        print(f"  {name:<26} {value:8.2f}  {bound:<16} {verdict}")
    if "cold_eddsa_vs_native" in targets:
        print(EDDSA_GAP)


def bench_line(s, pin, summary, memory, targets, host_calls) -> dict:
    return {
        "host_call_us": {k: round(us, 3) for k, (_, us) in host_calls.items()},
        "targets": {k: {"value": round(v, 3), "op": op, "threshold": t, "met": met}
                    for k, (v, op, t, met) in targets.items()},
        "targets_met": all(met for *_, met in targets.values() if met is not None),
        "valid": all(r["ok"] for r in summary.values()),
        "rows": {k: {"rps": round(v["rps"]), "p50_ms": round(v["p50_ms"], 2),
                     "p99_ms": round(v["p99_ms"], 2), "cpu_us": round(v["cpu_us"], 1),
                     "vs_limit": round(v["vs_limit"], 3),
                     "vs_native": None if v["vs_native"] is None else round(v["vs_native"], 3),
                     "vs_baseline": (None if v["vs_baseline"] is None
                                     else round(v["vs_baseline"], 3))}
                 for k, v in summary.items()},
        "memory": {k: {"rss_start": m["base"], "rss_end": m["samples"][-1][1],
                       "growth": m["growth"]} for k, m in memory.items()},
        "seconds": s.seconds, "rounds": s.rounds, "connections": s.connections,
        "pinned": bool(pin),
    }


# --- Main ---------------------------------------------------------------------


def main():
    s = Settings()
    for path in (s.envoy, s.tollgate_wasm, s.floor_wasm, s.minter):
        if not path.exists():
            raise SystemExit(f"missing {path}: run `make bench`")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: run `make bench`")
    RUN.mkdir(parents=True, exist_ok=True)
    pin = pinning()
    proxy_cpus, load_cpus = pin if pin else (None, None)
    tls, x5t = setup_tls(s)
    tls_skipped = "" if tls else x5t
    if tls_skipped:
        log(f"mTLS rows skipped: {tls_skipped}")
    tokens = mint_tokens(s, x5t if tls else None)
    mint_dpop(s, tokens)
    rows = make_rows(tokens, tls is not None)
    if s.only_rows:
        wanted = {"1", *s.only_rows.split(",")}
        rows = [row for row in rows if row.id in wanted]
    if s.baseline_wasm:
        if not s.baseline_wasm.exists():
            raise SystemExit(f"missing TOLLGATE_BASELINE_WASM {s.baseline_wasm}")
        rows = with_baseline_twins(rows)

    upstream_ports = free_ports()
    envoys = {}
    upstream = Envoy(s, "upstream", upstream_config(upstream_ports), upstream_ports, load_cpus)
    fleet = None
    try:
        upstream.wait_ready()
        if any(row.proxy in FLEET_PROXIES for row in rows):
            fleet = FleetBackend(s, load_cpus)
        for name in sorted({row.proxy for row in rows}):
            ports = free_ports()
            config = proxy_config(s, base_proxy(name), tokens, ports, upstream_ports.port,
                                  name.replace("@", "-w"), fleet.grpc_port if fleet else 0, tls)
            workers = proxy_workers(name)
            # Two workers get both CPUs (the load keeps CPU 1 too): as well as a
            # 2-core machine can pin them, and the same for native and Tollgate.
            cpus = (",".join(pin) if pin else None) if workers > 1 else proxy_cpus
            envoys[name] = Envoy(s, name, config, ports, cpus, workers)
        if any(row.via for row in rows):
            ports = free_ports()
            config = tls_client_config(tls, ports, envoys["tollgate_tls"].port)
            envoys["tls_client"] = Envoy(s, "tls_client", config, ports, load_cpus)
        for envoy in envoys.values():
            envoy.wait_ready()
        check_rows(rows, envoys)
        run_rounds(s, rows, envoys, load_cpus)
        if fleet:
            log(f"rate-limit service answered: {fleet.stats()}")
        native_cache = {k.rsplit(".", 1)[1]: v
                        for k, v in envoys["native"].counters("jwt_cache").items()
                        } if "native" in envoys else {}
        for envoy in envoys.values():
            envoy.stop()
        memory = {}
        if s.memory_tokens > 0:
            for label, proxy in (("tollgate", "tollgate_memory"), ("native", "native")):
                log(f"memory: {s.memory_tokens} distinct tokens through a fresh {label} Envoy")
                memory[label] = memory_run(s, proxy, tokens, upstream_ports.port, pin)
    finally:
        for envoy in [*envoys.values(), upstream]:
            envoy.stop()
        if fleet:
            fleet.stop()

    summary = summarize(rows)
    targets = evaluate_targets(rows, summary, memory)
    host_calls = host_call_costs(rows)
    print_report(s, pin, summary, native_cache, memory, targets, tls_skipped, host_calls)
    line = bench_line(s, pin, summary, memory, targets, host_calls)
    print("BENCH " + json.dumps(line, separators=(",", ":")), flush=True)
    if not line["valid"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
