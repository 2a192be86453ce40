#!/usr/bin/env python3
"""Packs the filter into an OCI image that Istio's WasmPlugin can pull.

Format: the Wasm artifact image ("oci" variant of the Wasm image spec that Istio's
agent reads): a manifest with exactly two layers,

  application/vnd.module.wasm.config.v1+json        runtime-config.json (type, ABI, root ids)
  application/vnd.module.wasm.content.layer.v1+wasm  plugin.wasm, the module itself, uncompressed

so the content layer's digest is the .wasm's own SHA-256. The image goes into an OCI
image layout directory (what `skopeo copy oci:DIR:TAG docker://REGISTRY/...` reads)
and the same layout as a tarball. The build is reproducible: no timestamps, so the
same .wasm always gives the same manifest digest (the one WasmPlugin.sha256 pins).

Prints the layout, the tarball, the manifest digest and the module's SHA-256.
Python standard library only.
"""

import argparse
import hashlib
import io
import json
import pathlib
import sys
import tarfile

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
TITLE = "org.opencontainers.image.title"


def blob(layout: pathlib.Path, data: bytes, media_type: str, annotations=None) -> dict:
    """Stores `data` under blobs/sha256/ and returns its OCI descriptor."""
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    descriptor = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
    if annotations:
        descriptor["annotations"] = annotations
    return descriptor


def canonical(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build(wasm: pathlib.Path, layout: pathlib.Path, tag: str, root_id: str, version: str) -> dict:
    module = wasm.read_bytes()
    if module[:4] != b"\0asm":
        sys.exit(f"oci: {wasm} is not a WebAssembly module (no \\0asm header)")
    if layout.exists():
        # Only ever an earlier build of this script: refuse anything else.
        if not (layout / "oci-layout").is_file():
            sys.exit(f"oci: {layout} exists and is not an OCI layout; not overwriting it")
        for path in sorted(layout.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
    layout.mkdir(parents=True, exist_ok=True)

    runtime_config = canonical({
        "type": "envoy_proxy",
        "abiVersions": ["proxy_abi_version_0_2_1"],
        "config": {"rootIds": [root_id]},
    })
    config = blob(layout, runtime_config, WASM_CONFIG)
    layers = [
        blob(layout, runtime_config, WASM_CONFIG, {TITLE: "runtime-config.json"}),
        blob(layout, module, WASM_CONTENT, {TITLE: "plugin.wasm"}),
    ]
    manifest = blob(layout, canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config,
        "layers": layers,
        "annotations": {
            TITLE: "tollgate",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.description": "Tollgate Envoy HTTP filter (proxy-wasm ABI 0.2.1)",
        },
    }), MANIFEST, {"org.opencontainers.image.ref.name": tag})
    (layout / "index.json").write_bytes(canonical({"schemaVersion": 2, "manifests": [manifest]}))
    (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    return {"manifest": manifest["digest"], "wasm_sha256": layers[1]["digest"], "size": len(module)}


def tarball(layout: pathlib.Path, out: pathlib.Path) -> None:
    """The layout as a reproducible tar (fixed owner and mtime, sorted entries)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(layout.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(layout)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_dir():
                tar.addfile(info)
            else:
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
    out.write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wasm", default="target/wasm32-wasip1/release/tollgate.wasm")
    parser.add_argument("--layout", default="target/oci/tollgate", help="OCI layout directory to write")
    parser.add_argument("--tar", default="target/oci/tollgate.oci.tar", help="the layout as a tarball")
    parser.add_argument("--tag", default="latest", help="the layout's ref name")
    parser.add_argument("--version", default="0.1.0", help="org.opencontainers.image.version")
    parser.add_argument("--root-id", default="tollgate", help="root id advertised in the runtime config")
    args = parser.parse_args()

    wasm, layout, out = pathlib.Path(args.wasm), pathlib.Path(args.layout), pathlib.Path(args.tar)
    if not wasm.is_file():
        sys.exit(f"oci: {wasm} not found; run `make wasm` first")
    image = build(wasm, layout, args.tag, args.root_id, args.version)
    tarball(layout, out)
    print(f"OCI layout   {layout} (skopeo: oci:{layout}:{args.tag})")
    print(f"tarball      {out}")
    print(f"manifest     {image['manifest']}   <- WasmPlugin.sha256 for an oci:// url (without 'sha256:')")
    print(f"plugin.wasm  {image['wasm_sha256']}   ({image['size']} bytes; the content layer's digest)")


if __name__ == "__main__":
    main()
