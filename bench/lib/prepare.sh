#!/bin/bash
# prepare.sh [--keep] TOOL [IMAGE...]: set up the state a timed run starts from.
#
# The tool's old state is moved into the trash (never deleted here: see machine note 4 in
# the reference measurement), a new empty state is made, and each IMAGE is pulled into it
# (not timed). With --keep, a state already prepared with the same images is reused
# (for the no-op pull, which changes nothing). Ends with sync, so that no tool pays for
# the previous one's dirty pages.
set -euo pipefail
# shellcheck source=bench/lib/common.sh
. "$(dirname "$0")/common.sh"

keep=0
if [ "${1:-}" = --keep ]; then keep=1; shift; fi
tool=$1
shift
state=$WORK/$tool
want="$tool $*"

if [ $keep = 1 ] && [ "$(cat "$state/.prepared" 2>/dev/null)" = "$want" ]; then
    sync
    exit 0
fi

trash "$state"
mkdir -p "$state/checkouts"
# podman creates its database and run directory on first use; do that untimed.
[ "$tool" = podman ] && "$BENCH_DIR/lib/podman.sh" "$state" images -q >/dev/null
for image in "$@"; do
    "$BENCH_DIR/lib/pull.sh" "$tool" "$state" "$image" >/dev/null
done
echo "$want" > "$state/.prepared"
sync
