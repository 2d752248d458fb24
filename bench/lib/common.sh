# Shared settings and functions for the benchmark scripts. Source it; do not run it.
# shellcheck shell=bash

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROJECT_DIR=$(cd "$BENCH_DIR/.." && pwd)

# Everything large lives outside git, on the filesystem that also holds /var/lib.
export BENCH_DATA=${BENCH_DATA:-/var/tmp/syscont-bench}
export FIXTURES=$BENCH_DATA/fixtures     # build cache: rootfs trees, layer blobs, OCI layouts
export WORK=$BENCH_DATA/work             # per-tool state: WORK/<tool>
export TRASH=$BENCH_DATA/trash           # old state, moved aside; emptied at the end of a run
export REGISTRY=${REGISTRY:-127.0.0.1:5000}
export SYSCONT=${SYSCONT:-$PROJECT_DIR/target/release/syscont}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Install the Debian packages a script needs, only when some are missing.
need_packages() {
    "$PROJECT_DIR/packaging/deps.sh" "$@"
}

# Move DIR aside into the trash on the same filesystem. Deleting thousands of inodes
# makes ext4 create files 5-15x slower for about 30 s, so nothing is deleted while
# timings run; empty_trash does it at the end.
trash() {
    local dir=$1
    [ -e "$dir" ] || return 0
    mkdir -p "$TRASH"
    mv "$dir" "$(mktemp -d "$TRASH/$(basename "$dir").XXXXXX")/"
}

# Delete the trash (and leftover state). Prints the number of deleted entries so the
# caller can decide whether to let ext4 settle before timing anything.
empty_trash() {
    local n=0 m d
    for d in "$TRASH" "$@"; do
        [ -e "$d" ] || continue
        # podman's overlay driver may leave mounts below its storage.
        { findmnt -rn -o TARGET | grep -F "$d/" || true; } | sort -r | while read -r m; do
            umount -l "$m" || true
        done
        n=$((n + $(find "$d" -xdev 2>/dev/null | wc -l)))
        rm -rf --one-file-system "$d"
    done
    echo "$n"
}

# Seconds to wait after a mass delete before the timed runs (see machine note 4).
settle() {
    local secs=${SETTLE:-40}
    [ "$secs" -gt 0 ] || return 0
    log "waiting ${secs}s for ext4 to settle after deleting files"
    sleep "$secs"
}

# Percent of all CPU time that anything used during SECS seconds (default 5), measured
# while the benchmark itself is idle: other work on the machine.
cpu_busy() {
    local secs=${1:-5} a b
    read -r -a a < /proc/stat
    sleep "$secs"
    read -r -a b < /proc/stat
    local total=0 idle i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    idle=$(( (b[4] - a[4]) + (b[5] - a[5]) ))
    [ "$total" -gt 0 ] || { echo 0; return; }
    echo $(( 100 * (total - idle) / total ))
}
