#!/bin/bash
# podman STATE ARGS...: podman 4.3 as the benchmark runs it (rootful, overlay, no systemd),
# with its storage under STATE instead of /var/lib/containers/storage, on the same
# filesystem. Used by pull.sh and prepare.sh.
set -euo pipefail
state=$1
shift
exec podman --root "$state/storage" --runroot "$state/run" --tmpdir "$state/run/libpod" \
    --storage-driver overlay --cgroup-manager=cgroupfs --events-backend=file "$@"
