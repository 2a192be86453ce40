#!/usr/bin/env python3
"""make oci-test: the filter's OCI image, checked with real tools.

1. Builds the image (build.py) and reads it back with skopeo from the `oci:` layout.
2. Starts Debian's docker-registry (distribution) on loopback, pushes the image with
   `skopeo copy`, and pulls it back into a fresh layout.
3. Checks what Istio's agent checks (pkg/wasm/imagefetcher.go): an OCI manifest with
   exactly two layers, one `application/vnd.module.wasm.content.layer.v1+wasm`
   holding a Wasm module; its digest equals the .wasm's SHA-256, and the manifest
   digest the registry reports equals the one build.py printed (WasmPlugin.sha256).
4. Loads the module into a real Envoy the way the registry serves it: Envoy fetches
   the content layer from the registry's blob URL (`vm_config.code.remote`, with the
   sha256 pinned) and the filter then answers requests (401 without a token, 200 on
   an anonymous route). Envoy cannot speak the registry protocol itself (in Istio the
   agent pulls the image and hands Envoy a local file), so the blob URL stands in.

Exits non-zero on the first failed check. Python standard library only.
"""

import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
WASM = ROOT / "target/wasm32-wasip1/release/tollgate.wasm"
ENVOY = os.environ.get("ENVOY", str(ROOT / ".venv/bin/envoy"))
WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
REPOSITORY = "platform/tollgate"
TAG = "0.1.0"

checks = 0


def check(condition: bool, what: str) -> None:
    global checks
    if not condition:
        sys.exit(f"oci-test: FAILED: {what}")
    checks += 1
    print(f"  ok  {what}")


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"oci-test: `{' '.join(args)}` failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, what: str, process: subprocess.Popen, log: pathlib.Path, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"oci-test: {what} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    sys.exit(f"oci-test: {what} did not come up within {timeout}s:\n{log.read_text()[-3000:]}")


def get(url: str, accept: str = "*/*"):
    """(status, headers, body) of a GET, whatever the status."""
    try:
        request = urllib.request.Request(url, headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def layout_manifest(layout: pathlib.Path) -> tuple[str, dict]:
    """The layout's one manifest, read through skopeo (digest, parsed manifest)."""
    raw = run("skopeo", "inspect", "--raw", f"oci:{layout}:{TAG}")
    manifest_file = layout.parent / f"{layout.name}.manifest.json"
    manifest_file.write_text(raw)
    digest = run("skopeo", "manifest-digest", str(manifest_file)).strip()
    return digest, json.loads(raw)


def check_wasm_image(manifest: dict, layout: pathlib.Path, wasm_sha: str, where: str) -> None:
    """What Istio's agent requires of the oci variant, and that the module is ours."""
    layers = manifest.get("layers", [])
    check(manifest.get("mediaType") == "application/vnd.oci.image.manifest.v1+json",
          f"{where}: an OCI image manifest")
    check(len(layers) == 2, f"{where}: exactly two layers (Istio refuses any other count)")
    content = [layer for layer in layers if layer["mediaType"] == WASM_CONTENT]
    config = [layer for layer in layers if layer["mediaType"] == WASM_CONFIG]
    check(len(content) == 1 and len(config) == 1, f"{where}: one {WASM_CONTENT} and one {WASM_CONFIG} layer")
    check(content[0]["digest"] == f"sha256:{wasm_sha}", f"{where}: content layer digest = sha256 of the .wasm")
    blob = (layout / "blobs/sha256" / content[0]["digest"].split(":", 1)[1]).read_bytes()
    check(blob[:4] == b"\0asm" and hashlib.sha256(blob).hexdigest() == wasm_sha,
          f"{where}: the content blob is the module itself ({len(blob)} bytes)")
    runtime = json.loads((layout / "blobs/sha256" / config[0]["digest"].split(":", 1)[1]).read_bytes())
    check(runtime.get("type") == "envoy_proxy" and "tollgate" in runtime["config"]["rootIds"],
          f"{where}: runtime config names envoy_proxy and root id tollgate")


ENVOY_CONFIG = """
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: public
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: public
          normalize_path: true
          merge_slashes: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "upstream" }} }}
          http_filters:
          - name: tollgate
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: tollgate
                root_id: tollgate
                failure_policy: FAIL_CLOSED
                vm_config:
                  vm_id: tollgate
                  runtime: envoy.wasm.runtime.v8
                  code:
                    remote:
                      http_uri:
                        uri: http://127.0.0.1:{registry}/v2/{repository}/blobs/sha256:{wasm_sha}
                        cluster: registry
                        timeout: 10s
                      sha256: {wasm_sha}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{plugin}'
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: registry
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: registry
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {registry} }} }} }}
"""

PLUGIN = {
    "realm": "oci-test",
    "providers": {"idp": {
        "issuer": "https://idp.example",
        "remote_jwks": {"http_uri": {"uri": "http://idp/jwks.json", "cluster": "registry", "timeout": "1s"}},
    }},
    "rules": [
        {"match": {"prefix": "/public/"}, "requires": {"allow_anonymous": True}},
        {"match": {"prefix": "/"}, "requires": {}},
    ],
}


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    for tool in ("skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            sys.exit(f"oci-test: {tool} is not installed (Debian: apt-get install -y skopeo docker-registry)")
    if not WASM.is_file():
        sys.exit(f"oci-test: {WASM} not found; run `make wasm` first")
    wasm_sha = hashlib.sha256(WASM.read_bytes()).hexdigest()
    processes = []
    with tempfile.TemporaryDirectory(prefix="tollgate-oci-") as tmp:
        tmp = pathlib.Path(tmp)
        try:
            print("1. build and read the layout with skopeo")
            layout = tmp / "layout"
            out = run(sys.executable, str(ROOT / "envoy/oci/build.py"), "--wasm", str(WASM),
                      "--layout", str(layout), "--tar", str(tmp / "tollgate.oci.tar"), "--tag", TAG)
            printed = next(line.split()[1] for line in out.splitlines() if line.startswith("manifest"))
            digest, manifest = layout_manifest(layout)
            check(digest == printed, f"layout manifest digest {digest} = the one build.py printed")
            check_wasm_image(manifest, layout, wasm_sha, "oci layout")
            again = run(sys.executable, str(ROOT / "envoy/oci/build.py"), "--wasm", str(WASM),
                        "--layout", str(tmp / "again"), "--tar", str(tmp / "again.tar"), "--tag", TAG)
            check(printed in again, "a rebuild of the same .wasm gives the same digest (reproducible)")

            print("2. push to docker-registry on loopback and pull back")
            port = free_port()
            (tmp / "registry.yml").write_text(
                f"version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {tmp}/registry}}}}\n"
                f"http: {{addr: '127.0.0.1:{port}'}}\n")
            registry_log = tmp / "registry.log"
            registry = subprocess.Popen(["docker-registry", "serve", str(tmp / "registry.yml")],
                                        stdout=registry_log.open("w"), stderr=subprocess.STDOUT)
            processes.append(registry)
            wait_for(f"http://127.0.0.1:{port}/v2/", "docker-registry", registry, registry_log)
            remote = f"docker://127.0.0.1:{port}/{REPOSITORY}:{TAG}"
            run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{TAG}", remote)
            status, headers, _ = get(f"http://127.0.0.1:{port}/v2/{REPOSITORY}/manifests/{TAG}",
                                     accept="application/vnd.oci.image.manifest.v1+json")
            check(status == 200 and headers.get("Docker-Content-Digest") == printed,
                  f"registry serves the tag with Docker-Content-Digest {printed}")
            pulled = tmp / "pulled"
            run("skopeo", "copy", "--quiet", "--src-tls-verify=false", remote, f"oci:{pulled}:{TAG}")
            digest, manifest = layout_manifest(pulled)
            check(digest == printed, "pulled-back manifest has the same digest")
            check_wasm_image(manifest, pulled, wasm_sha, "pulled image")

            print("3. Envoy loads the module from the registry")
            listener, admin = free_port(), free_port()
            (tmp / "envoy.yaml").write_text(ENVOY_CONFIG.format(
                admin=admin, listener=listener, registry=port, repository=REPOSITORY,
                wasm_sha=wasm_sha, plugin=json.dumps(PLUGIN)))
            envoy_log = tmp / "envoy.log"
            envoy = subprocess.Popen([ENVOY, "-c", str(tmp / "envoy.yaml"), "--concurrency", "1",
                                      "--disable-hot-restart"],
                                     stdout=envoy_log.open("w"), stderr=subprocess.STDOUT)
            processes.append(envoy)
            wait_for(f"http://127.0.0.1:{admin}/ready", "Envoy", envoy, envoy_log)
            status = 0
            headers = {}
            for _ in range(300):  # the module loads asynchronously; the listener waits for it
                try:
                    status, headers, body = get(f"http://127.0.0.1:{listener}/data")
                except OSError:  # the listener is not bound until the module is in
                    status = 0
                if status == 401:
                    break
                time.sleep(0.1)
            if status != 401:
                print(envoy_log.read_text()[-4000:])
            check(status == 401 and headers.get("WWW-Authenticate", "").startswith('Bearer realm="oci-test"'),
                  f"GET /data without a token: 401 Bearer realm=\"oci-test\" from the pulled filter (got {status})")
            status, _, body = get(f"http://127.0.0.1:{listener}/public/hello")
            check(status == 200 and body == b"upstream", "GET /public/hello (anonymous rule): 200 from upstream")
            for _ in range(50):  # each worker hands its counters to Envoy on its tick
                stats = get(f"http://127.0.0.1:{admin}/stats?filter=wasm")[2].decode()
                if "tollgate.decision.missing_credentials: 1" in stats:
                    break
                time.sleep(0.1)
            check("tollgate.decision.missing_credentials: 1" in stats,
                  "Envoy counts the filter's decision (wasmcustom.tollgate.decision.missing_credentials)")
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
    print(f"oci-test: {checks} passed, 0 failed")


if __name__ == "__main__":
    main()
