#!/bin/bash
# floor.sh RESULTS_DIR RUNS IMAGE...: this machine's floor for "pull + import" of each
# image, measured in this run. The model is the reference's: fetch the compressed blobs,
# inflate them, sha256 the compressed and the uncompressed bytes, and create the entries
# on ext4. Each stage is timed alone (hyperfine); a stage costs the larger of its median
# wall-clock time and the CPU time it used (user + system of the command and its children,
# and for the fetch also the registry's), so a stage that kept both cores busy counts as the
# one-core work it is. "1 core" adds the stages up; "2 cores" is max(slowest stage, 1-core
# total / 2). Writes RESULTS_DIR/floor.tsv.
#
# The fastest tools on the machine stand for each stage: igzip (ISA-L) to inflate, or
# pigz when it is missing; openssl (SHA-NI) to hash; GNU tar to create the files.
set -euo pipefail
# shellcheck source=bench/lib/common.sh
. "$(dirname "$0")/common.sh"

results=$1 runs=$2
shift 2
need_packages isal pigz openssl curl
inflater=igzip
command -v igzip >/dev/null || inflater=pigz

layers_of() { # IMAGE -> layer tarballs in the fixture cache, in order
    local L=$FIXTURES/layers
    case $1 in
    hello:1) echo "$L/hello-1.tar.gz" ;;
    debian-base:1) echo "$L/debian-base.tar.gz" ;;
    etcd:3.4) echo "$L/debian-base.tar.gz $L/etcd-packages.tar.gz $L/etcd-exports.tar.gz" ;;
    big:1) echo "$L/big-small.tar.gz $L/big-medium.tar.gz $L/big-large.tar.gz $L/big-mixed.tar.gz" ;;
    *) die "no floor model for $1" ;;
    esac
}

median() { # hyperfine JSON -> median seconds
    jq -r '.results[0].median' "$1"
}

# CPU seconds (user + system) the registry has used so far.
registry_cpu() {
    local pid
    pid=$(cat "$BENCH_DATA/registry/registry.pid" 2>/dev/null) || { echo 0; return; }
    awk -v hz="$(getconf CLK_TCK)" '{printf "%.4f\n", ($14 + $15) / hz}' "/proc/$pid/stat" \
        2>/dev/null || echo 0
}

stage() { # NAME JSON CMD [PREPARE]
    local name=$1 json=$2 cmd=$3 prep=${4:-true} before after
    before=$(registry_cpu)
    hyperfine -N --style none --runs "$runs" --warmup 1 --prepare "$prep" \
        --export-json "$json" "$cmd" >/dev/null
    after=$(registry_cpu)
    # The registry's CPU per run (the warmup run included), next to hyperfine's figures.
    jq --argjson r "$(awk -v a="$before" -v b="$after" -v n="$((runs + 1))" \
        'BEGIN {printf "%.6f", (b - a) / n}')" '.results[0].registry_cpu = $r' "$json" \
        > "$json.tmp" && mv "$json.tmp" "$json"
    log "floor: $name $(median "$json") s"
}

shm=$(mktemp -d /dev/shm/syscont-floor.XXXXXX)
scratch=$WORK/floor
trap 'rm -rf "$shm"' EXIT
printf 'image\tfetch\tinflate\tsha256\tcreate\tone_core\ttwo_cores\tinflater\n' > "$results/floor.tsv"
for image in "$@"; do
    read -r -a layers <<< "$(layers_of "$image")"
    repo=${image%%:*}
    urls=() tars=()
    for l in "${layers[@]}"; do
        hex=$(sha256sum "$l" | cut -d' ' -f1)
        urls+=("http://$REGISTRY/v2/$repo/blobs/sha256:$hex")
        t=$shm/$(basename "$l" .gz)
        gzip -dc "$l" > "$t"
        tars+=("$t")
    done
    tag=${image//:/-}
    stage "$image fetch" "$results/raw/floor-$tag-fetch.json" \
        "sh -c 'for u in ${urls[*]}; do curl -sf -o /dev/null \$u || exit 1; done'"
    stage "$image inflate" "$results/raw/floor-$tag-inflate.json" \
        "sh -c 'for l in ${layers[*]}; do $inflater -dc \$l > /dev/null || exit 1; done'"
    stage "$image sha256" "$results/raw/floor-$tag-sha256.json" \
        "openssl dgst -sha256 ${layers[*]} ${tars[*]}"
    # A fresh directory each run; the previous one goes to the trash (nothing is deleted
    # while timing, see common.sh).
    stage "$image create" "$results/raw/floor-$tag-create.json" \
        "sh -c 'mkdir $scratch/x && for t in ${tars[*]}; do tar -xf \$t -C $scratch/x || exit 1; done'" \
        "sh -c 'mkdir -p $scratch && if [ -e $scratch/x ]; then mkdir -p $TRASH && mv $scratch/x \$(mktemp -d $TRASH/floor.XXXXXX)/; fi'"
    python3 - "$results" "$tag" "$image" "$inflater" <<'PY' >> "$results/floor.tsv"
import json, sys
res, tag, image, inflater = sys.argv[1:]
def cost(stage):
    r = json.load(open(f"{res}/raw/floor-{tag}-{stage}.json"))["results"][0]
    cpu = r["user"] + r["system"] + (r.get("registry_cpu", 0) if stage == "fetch" else 0)
    return max(r["median"], cpu)
m = {s: cost(s) for s in ("fetch", "inflate", "sha256", "create")}
one = sum(m.values())
two = max(max(m.values()), one / 2)
print("\t".join([image] + [f"{m[s]:.4f}" for s in ("fetch", "inflate", "sha256", "create")]
                + [f"{one:.4f}", f"{two:.4f}", inflater]))
PY
    rm -f "${tars[@]}"
done
