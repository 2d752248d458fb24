#!/bin/bash
# Build the benchmark images reproducibly and push them to the local registry.
#
#   debian-base:1          debootstrap --variant=minbase bookworm, cleaned like a Docker image
#   debian-base-rebuilt:1  the same tree, mtimes shifted by 30 days, /etc/image-build-id changed
#   etcd:3.4               debian-base:1's blob + Debian etcd-server/etcd-client + /exports
#   hello:1, hello:2       busybox-static, one layer; they differ only in /etc/hello.conf
#   big:1                  four generated layers (lib/genbig.py), about 1 GB (skip: BIG=0)
#
# Everything is cached under /var/tmp/syscont-bench/fixtures; FORCE=1 rebuilds the layers
# (the debootstrap tree stays cached: delete fixtures/rootfs-debian-base* to redo it).
# Each image is pushed only when the registry does not already hold the same manifest.
set -euo pipefail
# shellcheck source=bench/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

BIG=${BIG:-1}
FORCE=${FORCE:-0}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MTIME=1700000000
SRC=$BENCH_DIR/fixtures-src
L=$FIXTURES/layers
T=$FIXTURES/trees

need_packages debootstrap skopeo jq curl busybox-static
"$BENCH_DIR/registry.sh" start >/dev/null
mkdir -p "$L" "$T" "$FIXTURES/oci" "$FIXTURES/stats"

fresh() { [ "$FORCE" = 1 ] || [ ! -s "$1" ]; }

# mktar TREE OUT.tar.gz [MTIME]: a reproducible gzip tar of TREE's contents (no "./" entry).
mktar() {
    local tree=$1 out=$2 mtime=${3:-$MTIME}
    local entries
    mapfile -t entries < <(cd "$tree" && LC_ALL=C ls -A)
    log "layer $(basename "$out")"
    LC_ALL=C tar -C "$tree" --sort=name --format=pax \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        --mtime="@$mtime" --numeric-owner -cf - -- "${entries[@]}" \
        | gzip -n -6 > "$out.tmp"
    mv "$out.tmp" "$out"
}

# --- debian-base ---------------------------------------------------------------------
debian_base_tree() {
    local root=$FIXTURES/rootfs-debian-base new=$FIXTURES/rootfs-debian-base.new
    [ -d "$root" ] && return 0
    if [ ! -e "$new.ok" ]; then
        rm -rf "$new"
        log "debootstrap --variant=minbase bookworm (a few minutes)"
        debootstrap --variant=minbase bookworm "$new" "$MIRROR" > "$FIXTURES/debootstrap.log"
        touch "$new.ok"
    fi
    # shellcheck disable=SC2016 # dpkg-query's format, not shell
    chroot "$new" dpkg-query -W -f '${Package} ${Version}\n' > "$FIXTURES/debian-base.packages"
    # Clean it the way Docker base images are cleaned.
    rm -rf "$new"/var/lib/apt/lists/* "$new"/var/cache/apt/*.bin \
        "$new"/var/cache/apt/archives/*.deb "$new"/var/cache/apt/archives/partial/* \
        "$new"/var/cache/debconf/*-old "$new"/var/lib/dpkg/*-old \
        "${new:?}"/dev/* "$new"/tmp/* "$new"/run/* "$new"/var/log/bootstrap.log
    find "$new/var/log" -type f -exec truncate -s 0 {} +
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$new/etc/hosts"
    echo localhost > "$new/etc/hostname"
    : > "$new/etc/resolv.conf"
    : > "$new/etc/machine-id"
    echo "debian-base-1" > "$new/etc/image-build-id"
    mv "$new" "$root"
    rm -f "$new.ok"
}

debian_base_layers() {
    local root=$FIXTURES/rootfs-debian-base rebuilt=$T/rootfs-debian-base-rebuilt
    fresh "$L/debian-base.tar.gz" && mktar "$root" "$L/debian-base.tar.gz"
    if fresh "$L/debian-base-rebuilt.tar.gz"; then
        # Hardlinked copy, then a new build id (a new file, so the original stays as it is).
        rm -rf "$rebuilt"
        cp -al "$root" "$rebuilt"
        rm "$rebuilt/etc/image-build-id"
        echo "debian-base-1-rebuilt" > "$rebuilt/etc/image-build-id"
        # Every mtime 30 days later: the tar's clamped mtime moves with them.
        mktar "$rebuilt" "$L/debian-base-rebuilt.tar.gz" $((MTIME + 30 * 86400))
    fi
}

# --- etcd ----------------------------------------------------------------------------
etcd_layers() {
    local pk=$T/etcd-packages ex=$T/etcd-exports debs=$FIXTURES/debs
    if fresh "$L/etcd-packages.tar.gz"; then
        rm -rf "$pk" && mkdir -p "$pk" "$debs"
        if ! compgen -G "$debs/etcd-server_*.deb" >/dev/null || ! compgen -G "$debs/etcd-client_*.deb" >/dev/null; then
            (cd "$debs" && apt-get download -q etcd-server etcd-client)
        fi
        for d in "$debs"/etcd-server_*.deb "$debs"/etcd-client_*.deb; do dpkg-deb -x "$d" "$pk"; done
        (cd "$debs" && printf '%s\n' *.deb) > "$FIXTURES/etcd.packages"
        install -m 0755 "$SRC/etcd/etcd-env.sh" "$pk/usr/bin/etcd-env.sh"
        mktar "$pk" "$L/etcd-packages.tar.gz"
    fi
    if fresh "$L/etcd-exports.tar.gz"; then
        rm -rf "$ex" && mkdir -p "$ex/exports"
        for f in config.json.template service.template tmpfiles.template manifest.json; do
            install -m 0644 "$SRC/upstream-etcd/$f" "$ex/exports/$f"
        done
        # What upstream's Dockerfile puts into /exports/hostfs.
        install -D -m 0755 "$pk/usr/bin/etcdctl" "$ex/exports/hostfs/usr/local/bin/etcdctl"
        mkdir -p "$ex/exports/hostfs/etc/etcd"
        sed -e "/^ETCD_DATA_DIR/d" -e "s|^ETCD_NAME=|#ETCD_NAME=|" < "$SRC/etcd/etcd.conf" \
            > "$ex/exports/hostfs/etc/etcd/etcd.conf"
        chmod 0644 "$ex/exports/hostfs/etc/etcd/etcd.conf"
        mktar "$ex" "$L/etcd-exports.tar.gz"
    fi
}

# --- hello ---------------------------------------------------------------------------
hello_layer() {
    local n=$1 h=$T/hello-$1
    fresh "$L/hello-$n.tar.gz" || return 0
    rm -rf "$h" && mkdir -p "$h/bin" "$h/etc"
    install -m 0755 /bin/busybox "$h/bin/busybox"
    busybox --list-full | grep -v '^linuxrc$' | while read -r a; do
        mkdir -p "$h/$(dirname "$a")"
        [ -e "$h/$a" ] || ln -s /bin/busybox "$h/$a"
    done
    install -m 0644 "$SRC/hello/passwd" "$h/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$h/etc/group"
    echo "hello from version $n" > "$h/etc/hello.conf"
    mkdir -p "$h/exports"
    for f in "$SRC"/hello/exports/*; do install -m 0644 "$f" "$h/exports/"; done
    mktar "$h" "$L/hello-$n.tar.gz"
}

# --- big -----------------------------------------------------------------------------
big_layers() {
    local b=$T/big part pids=()
    if [ ! -e "$b.ok" ] || [ "$FORCE" = 1 ]; then
        rm -rf "$b"
        log "generating big:1's files (about 1 GB)"
        python3 "$BENCH_DIR/lib/genbig.py" "$b"
        touch "$b.ok"
    fi
    for part in small medium large mixed; do
        if fresh "$L/big-$part.tar.gz"; then
            mktar "$b/$part" "$L/big-$part.tar.gz" & pids+=($!)
        fi
        # two at a time: this machine has two cores
        if [ ${#pids[@]} -ge 2 ]; then wait "${pids[@]}"; pids=(); fi
    done
    [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
}

# --- OCI layouts and push ------------------------------------------------------------
# The digest of the manifest the registry serves for NAME:TAG, or nothing.
registry_digest() {
    local raw
    raw=$(skopeo inspect --tls-verify=false --raw "docker://$REGISTRY/$1" 2>/dev/null) || return 0
    printf '%s' "$raw" | sha256sum | sed 's/^/sha256:/; s/ .*//'
}

# image NAME TAG LABEL... -- LAYER...
image() {
    local name=$1 tag=$2 labels=() layers=()
    shift 2
    while [ "$1" != -- ]; do labels+=(--label "$1"); shift; done
    shift
    layers=("$@")
    local dir=$FIXTURES/oci/$name stats=$FIXTURES/stats/$name:$tag.json rebuild=0 l
    [ -s "$stats" ] || rebuild=1
    for l in "${layers[@]}"; do [ "$l" -nt "$stats" ] && rebuild=1; done
    if [ $rebuild = 1 ]; then
        python3 "$BENCH_DIR/lib/mkoci.py" --out "$dir" --tag "$tag" "${labels[@]}" \
            --stats "$stats" "${layers[@]}" >/dev/null
    fi
    local want have
    want=$(jq -r .manifest_digest "$stats")
    have=$(registry_digest "$name:$tag")
    if [ "$have" != "$want" ]; then
        log "push $name:$tag"
        skopeo copy -q --dest-tls-verify=false "oci:$dir:$tag" "docker://$REGISTRY/$name:$tag"
        have=$(registry_digest "$name:$tag")
        [ "$have" = "$want" ] || die "$name:$tag: the registry has $have, the layout $want"
    fi
    printf '%s:%s\t%s\n' "$name" "$tag" "$want"
}

debian_base_tree
debian_base_layers
etcd_layers
hello_layer 1
hello_layer 2
[ "$BIG" = 0 ] || big_layers

image debian-base 1 -- "$L/debian-base.tar.gz"
image debian-base-rebuilt 1 -- "$L/debian-base-rebuilt.tar.gz"
image etcd 3.4 atomic.type=system -- \
    "$L/debian-base.tar.gz" "$L/etcd-packages.tar.gz" "$L/etcd-exports.tar.gz"
image hello 1 atomic.type=system -- "$L/hello-1.tar.gz"
image hello 2 atomic.type=system -- "$L/hello-2.tar.gz"
if [ "$BIG" != 0 ]; then
    image big 1 -- "$L"/big-small.tar.gz "$L"/big-medium.tar.gz "$L"/big-large.tar.gz "$L"/big-mixed.tar.gz
fi
