#!/bin/bash
# syscont demo: build a small system-container image without a container engine, serve it
# from a local registry, pull it into the OSTree store, inspect it, and check it out.
# Everything happens under a temporary directory on 127.0.0.1 and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSCONT=${SYSCONT:-$PWD/target/release/syscont}
WORK=$(mktemp -d /var/tmp/syscont-demo.XXXXXX)
export SYSCONT_OSTREE_REPO=$WORK/repo SYSCONT_CHECKOUT_PATH=$WORK/checkout
export CONTAINERS_REGISTRIES_CONF=$WORK/registries.conf
REG_PID=
cleanup() {
    [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# A registry on a free port of 127.0.0.1.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: 127.0.0.1:$PORT}
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
printf 'unqualified-search-registries = ["127.0.0.1:%s"]\n[[registry]]\nlocation = "127.0.0.1:%s"\ninsecure = true\n' "$PORT" "$PORT" > "$CONTAINERS_REGISTRIES_CONF"

# The image: busybox plus an /exports directory, as `atomic install --system` expects.
ROOT=$WORK/hello/rootfs EXPORTS=$WORK/hello/exports
mkdir -p "$ROOT/bin" "$ROOT/etc" "$EXPORTS"
cp /bin/busybox "$ROOT/bin/"
for a in sh echo cat sleep date; do ln -s busybox "$ROOT/bin/$a"; done
echo "Hello from a system container" > "$ROOT/etc/hello.conf"
cat > "$EXPORTS/manifest.json" <<'JSON'
{ "version": "1.0", "defaultValues": { "GREETING": "hello" } }
JSON
cat > "$EXPORTS/service.template" <<'UNIT'
[Unit]
Description=$NAME says $GREETING
[Service]
ExecStart=$EXEC_START
ExecStop=$EXEC_STOP
WorkingDirectory=$DESTDIR
[Install]
WantedBy=multi-user.target
UNIT

step "$SYSCONT" build --rootfs "$ROOT" --exports "$EXPORTS" --cmd /bin/sh \
    --label atomic.type=system --tag hello:1 \
    --push "docker://127.0.0.1:$PORT/demo/hello:1" --tls-verify=false
step "$SYSCONT" pull demo/hello:1
step "$SYSCONT" pull demo/hello:1
step "$SYSCONT" images list
step "$SYSCONT" images info demo/hello:1
step "$SYSCONT" images inspect demo/hello:1
step ostree --repo="$SYSCONT_OSTREE_REPO" refs
step "$SYSCONT" images checkout demo/hello:1 "$SYSCONT_CHECKOUT_PATH/hello-rootfs"
step ls -l "$SYSCONT_CHECKOUT_PATH/hello-rootfs/bin" "$SYSCONT_CHECKOUT_PATH/hello-rootfs/exports"
step "$SYSCONT" images verify demo/hello:1
echo
echo "Demo finished: the image went from a directory to a registry to OSTree and back to a"
echo "hardlinked rootfs, with no container engine involved."
