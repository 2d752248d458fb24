#!/bin/bash
# syscont demo: the main job end to end, with no container engine anywhere.
#
#  1. Build two system-container images with `syscont build`: etcd (Debian's real etcd 3.4
#     with /exports templates) and a flannel-style daemon that reads its network from etcd,
#     is ordered After=etcd.service and Before=docker.service, and signals readiness
#     (Type=notify, through runc's NOTIFY_SOCKET). Push them to a registry on 127.0.0.1.
#  2. Pull, inspect and verify them in the OSTree store.
#  3. On a real systemd: install both, start them, show the list, the key flannel read from
#     etcd and the boot order; update, roll back, and uninstall.
#
# Everything lives under a temporary directory and is removed at the end. Where systemd is
# not PID 1, the machine's own systemd boots in a private namespace (demo/testbed.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

SYSCONT=${SYSCONT:-$PWD/target/release/syscont}
WORK=$(mktemp -d /var/tmp/syscont-demo.XXXXXX)
# The store and deployments of the demo; on a real host these are the defaults
# (/var/lib/containers/atomic and its .storage/ostree).
export SYSCONT_CHECKOUT_PATH=$WORK/atomic
export CONTAINERS_REGISTRIES_CONF=$WORK/registries.conf
REG_PID=
. demo/testbed.sh

cleanup() {
    if [ -n "${TB_PID:-}${INSTALLED:-}" ]; then
        tb "$SYSCONT" uninstall flannel >/dev/null 2>&1 || true
        tb "$SYSCONT" uninstall etcd >/dev/null 2>&1 || true
    fi
    tb_stop
    [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n\033[1m## %s\033[0m\n' "$*"; }
show() { printf '\033[1m$ %s\033[0m\n' "$*"; "$@"; }
# Runs a command on the systemd side (the host, or the private namespace).
on() { printf '\033[1m# %s\033[0m\n' "$*"; tb "$@"; }

say "A registry on 127.0.0.1"
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
printf 'unqualified-search-registries = ["127.0.0.1:%s"]\n[[registry]]\nlocation = "127.0.0.1:%s"\ninsecure = true\n' \
    "$PORT" "$PORT" > "$CONTAINERS_REGISTRIES_CONF"
echo "docker-registry serves 127.0.0.1:$PORT; registries.conf searches it for short names."

say "Root filesystems: busybox, Debian's etcd 3.4, a static sd-notify"
# Copies a dynamically linked program and the libraries it needs into a rootfs.
copy_program() {
    local bin=$1 root=$2 lib
    install -D -m 0755 "$bin" "$root/usr/bin/$(basename "$bin")"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
        install -D -m 0755 "$lib" "$root$lib"
    done
}
busybox_root() {
    local root=$1 a
    mkdir -p "$root/bin" "$root/usr/bin" "$root/etc" "$root/var/lib" "$root/run" "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for a in sh echo cat sleep mkdir mv ls ps; do ln -sf busybox "$root/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
}
mkdir -p "$WORK/debs"
(cd "$WORK/debs" && apt-get download -qq -o APT::Sandbox::User=root etcd-server etcd-client >/dev/null)
for d in "$WORK"/debs/*.deb; do dpkg-deb -x "$d" "$WORK/etcd-pkg"; done
echo "Debian packages: $(cd "$WORK/debs" && ls)"
gcc -static -Os -o "$WORK/sd-notify" demo/images/sd-notify.c

busybox_root "$WORK/etcd/rootfs"
copy_program "$WORK/etcd-pkg/usr/bin/etcd" "$WORK/etcd/rootfs"
copy_program "$WORK/etcd-pkg/usr/bin/etcdctl" "$WORK/etcd/rootfs"
busybox_root "$WORK/flannel/rootfs"
copy_program "$WORK/etcd-pkg/usr/bin/etcdctl" "$WORK/flannel/rootfs"
install -m 0755 "$WORK/sd-notify" "$WORK/flannel/rootfs/usr/bin/sd-notify"
install -m 0755 demo/images/flannel/flanneld.sh "$WORK/flannel/rootfs/usr/bin/flanneld.sh"

say "Build the images without a container engine, and push them"
# A build stores its image too; the demo's builds keep theirs apart from the store it shows.
export SYSCONT_OSTREE_REPO=$WORK/build-store
show "$SYSCONT" build --rootfs "$WORK/etcd/rootfs" --exports demo/images/etcd/exports \
    --label atomic.type=system --label summary="etcd key-value store" --expose 2379 \
    --tag etcd:latest --push "docker://127.0.0.1:$PORT/etcd:latest" --tls-verify=false
show "$SYSCONT" build --rootfs "$WORK/flannel/rootfs" --exports demo/images/flannel/exports \
    --label atomic.type=system --label summary="flannel-style network configuration" \
    --tag flannel:latest --push "docker://127.0.0.1:$PORT/flannel:latest" --tls-verify=false
unset SYSCONT_OSTREE_REPO

tb_boot
INSTALLED=1

say "The image store: pull, list, info, verify"
on "$SYSCONT" pull etcd
on "$SYSCONT" pull flannel
on "$SYSCONT" images list
on "$SYSCONT" images info flannel
on "$SYSCONT" images verify etcd

say "Install etcd as a system container and start it (Type=notify: ready when etcd serves)"
on "$SYSCONT" install --system --set ETCD_PORT=12379 --set ETCD_PEER_PORT=12380 --start etcd
on "$SYSCONT" run etcd etcdctl \
    put /coreos.com/network/config '{"Network": "10.40.0.0/16", "Backend": {"Type": "vxlan"}}'

say "Install flannel; starting it waits for its READY=1"
on "$SYSCONT" install --system --set ETCD_ENDPOINTS=http://127.0.0.1:12379 flannel
on systemctl cat flannel.service
on "$SYSCONT" run flannel
on "$SYSCONT" containers list

say "What flannel read from etcd, published for a container engine"
on cat /run/flannel/subnet.env
on systemctl show -p ActiveEnterTimestampMonotonic -p After etcd.service flannel.service
etcd_up=$(tb systemctl show -P ActiveEnterTimestampMonotonic etcd.service)
flannel_up=$(tb systemctl show -P ActiveEnterTimestampMonotonic flannel.service)
echo "etcd was active at ${etcd_up} us, flannel at ${flannel_up} us: flannel came after etcd."
[ "$flannel_up" -gt "$etcd_up" ]

say "No container daemon: systemd runs runc, runc runs the containers"
on systemctl status --no-pager --lines=3 etcd.service flannel.service || true
for daemon in dockerd containerd podman conmon crio; do
    if tb pgrep -x "$daemon"; then
        echo "a container daemon ($daemon) is running" >&2
        exit 1
    fi
done
echo "No dockerd, containerd, podman, conmon or crio process is running."

say "For scripts: whole names, formats, exit codes; warnings on stderr"
on "$SYSCONT" containers list -q
on "$SYSCONT" containers list --format '{{.name}}: {{.state}} since {{.created}}'
on "$SYSCONT" images list --format json
# Like podman run: a one-off command ends with the container's own status.
on "$SYSCONT" run etcd sh -c 'exit 7' && status=0 || status=$?
echo "exit status: $status"
[ "$status" = 7 ]
# A misspelled value is not silently ignored; a different install of a name is refused.
printf '\033[1m# %s\033[0m\n' "$SYSCONT install --dry-run --name etcd2 --set ETCD_PROT=1 etcd > plan.txt"
tb "$SYSCONT" install --dry-run --name etcd2 --set ETCD_PROT=1 etcd > "$WORK/plan.txt"
on head -n 3 "$WORK/plan.txt"
on "$SYSCONT" install --system --set ETCD_PORT=2379 etcd && status=0 || status=$?
echo "exit status: $status"
[ "$status" = 2 ]

say "Update with a new value (into the other slot, health-checked), then roll back"
on "$SYSCONT" run etcd etcdctl \
    put /demo/network '{"Network": "10.50.0.0/16"}'
on "$SYSCONT" containers update --set FLANNEL_KEY=/demo/network --probation 3 flannel
on cat /run/flannel/subnet.env
on "$SYSCONT" containers rollback flannel
on cat /run/flannel/subnet.env
on "$SYSCONT" containers list

say "The classic tools see the same store"
REPO=$SYSCONT_CHECKOUT_PATH/.storage/ostree
on ostree --repo="$REPO" refs
on ls -l "$SYSCONT_CHECKOUT_PATH"

say "Uninstall"
on "$SYSCONT" uninstall flannel
on "$SYSCONT" uninstall etcd
INSTALLED=
on "$SYSCONT" containers list --all
echo
echo "Demo finished: images built and served locally, stored in OSTree, installed as systemd"
echo "services over D-Bus, run by runc, updated, rolled back and removed, with no container"
echo "engine involved."
