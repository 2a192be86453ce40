#!/usr/bin/env python3
"""make istio-test: the manifests in envoy/istio/ against Istio's CRD schemas, and
against the sample stack they stand for.

Schema check: every document is validated (python-jsonschema) against the
openAPIV3Schema of its kind in schemas/istio-crds.json, taken from Istio's published
CRD file (schemas/extract.py). Kubernetes semantics are kept where JSON Schema
differs: unknown fields are errors (what `kubectl apply` does with its default
strict field validation) unless the schema preserves them, and `nullable` admits
null. The CEL rules (x-kubernetes-validations) are not evaluated.

Structural check: what a working gateway needs of them together (the WasmPlugin's
settings, its pluginConfig equal to envoy/envoy.yaml's plugin configuration up to
the mesh names, clusters that the ServiceEntry/DestinationRules provide, the
EnvoyFilter's HCM settings equal to the sample's, the route it turns Tollgate off
on, the filter name Istio gives the plugin).
"""

import copy
import json
import pathlib
import re
import sys

import jsonschema
import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NAMESPACE = "tollgate"
TOKEN_SERVICE = f"token-service.{NAMESPACE}.svc.cluster.local"
PUBLIC_ISSUER = "https://api.example.com"

checks = 0


def check(condition: bool, what: str) -> None:
    global checks
    if not condition:
        sys.exit(f"istio-test: FAILED: {what}")
    checks += 1
    print(f"  ok  {what}")


def kubernetes(schema):
    """A structural schema as JSON Schema with Kubernetes' strictness."""
    if isinstance(schema, list):
        return [kubernetes(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: kubernetes(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def load_schemas() -> dict:
    data = json.loads((HERE / "schemas/istio-crds.json").read_text())
    print(f"schemas from {data['source']}")
    return {key: jsonschema.Draft7Validator(kubernetes(schema)) for key, schema in data["schemas"].items()}


def errors(validators: dict, document: dict) -> list[str]:
    key = f"{document.get('apiVersion')}/{document.get('kind')}"
    if key not in validators:
        return [f"no schema for {key}"]
    found = [f"{'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
             for error in validators[key].iter_errors({"spec": document.get("spec")})]
    metadata = document.get("metadata") or {}
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", metadata.get("name", "")):
        found.append("metadata.name: not a DNS-1123 label")
    if not metadata.get("namespace"):
        found.append("metadata.namespace: missing")
    return found


def sample_plugin_config() -> tuple[dict, dict]:
    """envoy/envoy.yaml's plugin configuration and its HTTP connection manager."""
    envoy = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    tollgate = next(f for f in hcm["http_filters"] if f["name"] == "tollgate")
    return json.loads(tollgate["typed_config"]["config"]["configuration"]["value"]), hcm


def in_mesh(node):
    """The sample's plugin config with the mesh's names (see wasmplugin.yaml)."""
    if isinstance(node, dict):
        return {key: in_mesh(value) for key, value in node.items()}
    if isinstance(node, list):
        return [in_mesh(value) for value in node]
    if node == "token_service":
        return f"outbound|80||{TOKEN_SERVICE}"
    if isinstance(node, str) and node.startswith("http://token-service/"):
        return f"http://{TOKEN_SERVICE}/" + node.removeprefix("http://token-service/")
    if node == "http://127.0.0.1:8080":
        return PUBLIC_ISSUER
    return node


def http_uris(node):
    """Every http_uri object in a plugin config."""
    if isinstance(node, dict):
        if "http_uri" in node:
            yield node["http_uri"]
        for value in node.values():
            yield from http_uris(value)
    elif isinstance(node, list):
        for value in node:
            yield from http_uris(value)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    validators = load_schemas()
    documents = {}
    for path in sorted(HERE.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found = errors(validators, document)
            check(not found, f"{path.name}: {document['kind']} {document['metadata']['name']} matches "
                             f"Istio's {document['apiVersion']} schema" + "".join(f"\n      {e}" for e in found))
            documents[(document["kind"], document["metadata"]["name"])] = document

    print("the validator refuses what Istio would refuse")
    plugin = documents[("WasmPlugin", "tollgate")]
    for change, what in [
        (lambda d: d["spec"].update(failStrategy="FAIL_CLOSED"), "failStrategy FAIL_CLOSED (Envoy's spelling)"),
        (lambda d: d["spec"].update(phase="AUTHENTICATION"), "an unknown phase"),
        (lambda d: d["spec"].update(sha256=d["spec"]["sha256"].upper()), "an upper-case sha256"),
        (lambda d: d["spec"].setdefault("vmConfig", {}).update(vmId="tollgate"), "vmConfig.vmId (no such field)"),
        (lambda d: d["spec"].pop("url"), "a missing url"),
    ]:
        broken = copy.deepcopy(plugin)
        change(broken)
        check(bool(errors(validators, broken)), f"refused: {what}")

    print("the manifests fit together and match the sample stack")
    spec = plugin["spec"]
    check(spec["phase"] == "AUTHN" and spec["failStrategy"] == "FAIL_CLOSE",
          "WasmPlugin: phase AUTHN, failStrategy FAIL_CLOSE")
    check(spec["imagePullPolicy"] in ("IfNotPresent", "Always") and re.fullmatch(r"[a-f0-9]{64}", spec["sha256"]) is not None,
          "WasmPlugin: imagePullPolicy set, sha256 pins the image")
    check(spec["url"].startswith("oci://") and spec["pluginName"] == "tollgate", "WasmPlugin: oci:// url, root id tollgate")
    sample, hcm = sample_plugin_config()
    check(spec["pluginConfig"] == in_mesh(sample),
          "pluginConfig = envoy/envoy.yaml's plugin config with the issuer, clusters and URIs renamed for the mesh")

    destination_rules = {d["spec"]["host"]: d for (kind, _), d in documents.items() if kind == "DestinationRule"}
    service_entries = {(host, port["number"]) for (kind, _), d in documents.items() if kind == "ServiceEntry"
                       for host in d["spec"]["hosts"] for port in d["spec"]["ports"]}
    for http_uri in http_uris(spec["pluginConfig"]):
        cluster = re.fullmatch(r"outbound\|(\d+)\|\|(.+)", http_uri["cluster"])
        check(cluster is not None, f"{http_uri['cluster']}: Istio's cluster naming outbound|<port>||<host>")
        port, host = int(cluster.group(1)), cluster.group(2)
        check(http_uri["uri"].startswith(f"http://{host}/"), f"{http_uri['uri']}: same host as its cluster")
        check(host.endswith(".svc.cluster.local") or (host, port) in service_entries,
              f"{host}:{port}: a mesh Service or a ServiceEntry port")
        check(host in destination_rules, f"{host}: has a DestinationRule")

    external = documents[("ServiceEntry", "login-example-com")]["spec"]
    rule = destination_rules["login.example.com"]["spec"]["trafficPolicy"]["portLevelSettings"][0]
    check(external["location"] == "MESH_EXTERNAL" and external["ports"][0]["targetPort"] == 443
          and rule["port"]["number"] == external["ports"][0]["number"]
          and rule["tls"] == {"mode": "SIMPLE", "sni": "login.example.com"},
          "external issuer: outbound|80||login.example.com originates TLS to 443 with SNI")

    envoy_filter = documents[("EnvoyFilter", "tollgate-gateway")]["spec"]
    gateway = documents[("Gateway", "api")]["spec"]
    check(envoy_filter["workloadSelector"]["labels"] == spec["selector"]["matchLabels"] == gateway["selector"],
          "WasmPlugin, EnvoyFilter and Gateway select the same gateway pods")
    patches = {patch["applyTo"]: patch for patch in envoy_filter["configPatches"]}
    hcm_patch = patches["NETWORK_FILTER"]["patch"]["value"]["typed_config"]
    for field in ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action", "common_http_protocol_options"):
        check(hcm_patch.get(field) == hcm.get(field) and field in hcm,
              f"EnvoyFilter sets the sample's HCM {field}: {hcm.get(field)}")
    check(hcm_patch["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST",
          "underscored header names (x_tollgate_subject) are refused")
    route_patch = patches["HTTP_ROUTE"]
    filter_name = f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}"
    check(route_patch["patch"]["value"]["typed_per_filter_config"][filter_name]["disabled"] is True,
          f"EnvoyFilter turns off the filter Istio names {filter_name}")
    routes = {route["name"]: route for route in documents[("VirtualService", "api")]["spec"]["http"]}
    off = routes.get(route_patch["match"]["routeConfiguration"]["vhost"]["route"]["name"])
    check(off is not None, "the route it is turned off on exists in the VirtualService")
    off_paths = {(kind, value) for match in off["match"] for kind, value in match["uri"].items()}
    sample_off = {("exact" if "path" in route["match"] else "prefix", route["match"].get("path", route["match"].get("prefix")))
                  for host in hcm["route_config"]["virtual_hosts"] for route in host["routes"]
                  if route.get("typed_per_filter_config", {}).get("tollgate", {}).get("disabled")}
    check(off_paths == sample_off, f"Tollgate is off on exactly the sample's token-service paths {sorted(sample_off)}")
    check(off["route"][0]["destination"]["host"] == TOKEN_SERVICE, "those paths go to the token service")
    print(f"istio-test: {checks} passed, 0 failed")


if __name__ == "__main__":
    main()
