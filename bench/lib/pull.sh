#!/bin/bash
# pull.sh TOOL STATE IMAGE [checkout]: the timed unit of work, one command per tool.
#
#   syscont  syscont pull, then (with "checkout") syscont images checkout into a new rootfs
#   recipe   skopeo copy to an oci: dir, ostree commit --tree=tar= of every layer not yet
#            committed, then (with "checkout") ostree checkout --union --whiteouts
#            --require-hardlinks of every layer into a new rootfs
#   podman   podman pull (podman has no rootfs to check out: overlay assembles it when a
#            container starts)
#
# STATE is the tool's directory under /var/tmp/syscont-bench/work; IMAGE is NAME:TAG in the
# local registry.
set -euo pipefail
tool=$1 state=$2 image=$3 checkout=${4:-}
here=$(dirname "$0")
reg=${REGISTRY:-127.0.0.1:5000}
rootfs=$state/checkouts/rootfs-$(date +%s%N)

case $tool in
syscont)
    s=("${SYSCONT:?}" -q --repo "$state/repo" --checkout-path "$state/checkouts")
    "${s[@]}" pull --tls-verify=false "docker://$reg/$image"
    if [ "$checkout" = checkout ]; then
        "${s[@]}" images checkout "$reg/$image" "$rootfs"
    fi
    ;;
recipe)
    repo=$state/repo oci=$state/oci ref=${image//:/-}
    [ -d "$repo/objects" ] || ostree init --repo="$repo" --mode=bare
    skopeo copy -q --src-tls-verify=false "docker://$reg/$image" "oci:$oci:$ref"
    manifest=$(jq -r --arg r "$ref" \
        '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $r) | .digest' \
        "$oci/index.json")
    mapfile -t layers < <(jq -r '.layers[].digest | sub("^sha256:"; "")' \
        "$oci/blobs/sha256/${manifest#sha256:}")
    for l in "${layers[@]}"; do
        ostree --repo="$repo" rev-parse "ociimage/$l" >/dev/null 2>&1 && continue
        ostree --repo="$repo" commit --branch="ociimage/$l" --tree=tar="$oci/blobs/sha256/$l" \
            --tar-autocreate-parents --no-bindings --timestamp=1970-01-01T00:00:00Z \
            -s "layer sha256:$l" >/dev/null
    done
    if [ "$checkout" = checkout ]; then
        mkdir -p "$state/checkouts"
        for l in "${layers[@]}"; do
            ostree --repo="$repo" checkout --union --whiteouts --require-hardlinks \
                --fsync=false "ociimage/$l" "$rootfs"
        done
    fi
    ;;
podman)
    "$here/podman.sh" "$state" pull -q --tls-verify=false "$reg/$image" >/dev/null
    ;;
*)
    echo "pull.sh: unknown tool $tool" >&2
    exit 2
    ;;
esac
