#!/usr/bin/env python3
"""Refreshes istio-crds.json from Istio's published CRD file.

Usage: extract.py CRD_ALL_YAML ISTIO_COMMIT
CRD_ALL_YAML is manifests/charts/base/files/crd-all.gen.yaml of the istio/istio
repository. Keeps, for the kinds envoy/istio/ uses, each served version's
openAPIV3Schema (see WANTED) with the `description` texts dropped (they are most of the size).
Needs PyYAML.
"""

import json
import pathlib
import sys

import yaml

# The kinds envoy/istio/ uses, at the versions it writes (each kind's storage version).
WANTED = {
    "extensions.istio.io/v1alpha1/WasmPlugin",
    "networking.istio.io/v1/ServiceEntry",
    "networking.istio.io/v1/DestinationRule",
    "networking.istio.io/v1/Gateway",
    "networking.istio.io/v1/VirtualService",
    "networking.istio.io/v1alpha3/EnvoyFilter",
}


def strip(node):
    if isinstance(node, dict):
        return {key: strip(value) for key, value in node.items()
                if not (key == "description" and isinstance(value, str))}
    if isinstance(node, list):
        return [strip(value) for value in node]
    return node


def main() -> None:
    source, commit = sys.argv[1], sys.argv[2]
    schemas = {}
    for crd in yaml.safe_load_all(pathlib.Path(source).read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            key = f"{spec['group']}/{version['name']}/{spec['names']['kind']}"
            if key in WANTED and version.get("served"):
                schemas[key] = strip(version["schema"]["openAPIV3Schema"])
    missing = WANTED - schemas.keys()
    if missing:
        sys.exit(f"not in {source}: {', '.join(sorted(missing))}")
    out = pathlib.Path(__file__).with_name("istio-crds.json")
    out.write_text(json.dumps({
        "source": f"istio/istio@{commit}:manifests/charts/base/files/crd-all.gen.yaml",
        "schemas": dict(sorted(schemas.items())),
    }, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"{out}: {len(schemas)} schemas: {', '.join(sorted(schemas))}")


if __name__ == "__main__":
    main()
