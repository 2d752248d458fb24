#!/bin/bash
# make bench: syscont against the manual skopeo+ostree recipe and podman 4.3, on the same
# images, in the same run, with hyperfine. Writes the raw results to
# /var/tmp/syscont-bench/results/<UTC time>/ and the report to docs/performance.md.
#
# Tunables (environment):
#   RUNS=5        hyperfine runs per scenario and tool
#   RUNS_BIG=3    runs for big:1
#   BIG=1         0 skips big:1 (its fixture, its cold pull and its RSS figure)
#   RSS_RUNS=3    runs behind each peak-RSS figure
#   SETTLE=40     seconds to wait before timing, after deleting old state
#   TOOLS="syscont recipe podman"
#   ONLY=""       scenario names to run (default: all): cold-hello update-hello cold-debian-base
#                 rebuilt cold-etcd warm-etcd noop-etcd cold-big floor disk rss service startup
#   SYNC_TRACE=1  strace one cold etcd pull for its sync calls, and time it untraced with and
#                 without syncfs (syncs.tsv, syncwall.tsv); 0 to leave it out
#   REPORT=docs/performance.md   where the report goes ("" for none)
set -euo pipefail
# shellcheck source=bench/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

RUNS=${RUNS:-5}
RUNS_BIG=${RUNS_BIG:-3}
RSS_RUNS=${RSS_RUNS:-3}
BIG=${BIG:-1}
TOOLS=${TOOLS:-syscont recipe podman}
ONLY=${ONLY:-}
REPORT=${REPORT-$PROJECT_DIR/docs/performance.md}
export BIG

[ "$(id -u)" -eq 0 ] || die "run as root: syscont, ostree (bare repo) and podman are measured rootful"
[ -x "$SYSCONT" ] || die "$SYSCONT is missing; build it with make release"
need_packages podman hyperfine crun runc debootstrap jq time curl skopeo ostree

started=$(date +%s)
RESULTS=${RESULTS:-$BENCH_DATA/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS/raw"
ln -sfn "$RESULTS" "$BENCH_DATA/results/latest"
log "results: $RESULTS"

"$BENCH_DIR/registry.sh" start
"$BENCH_DIR/make-fixtures.sh" > "$RESULTS/fixtures.tsv"
cp "$FIXTURES"/stats/*.json "$RESULTS/raw/"

want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

# --- machine facts -------------------------------------------------------------------
first_line() { "$@" 2>/dev/null | head -1 || true; }
{
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'cpu\t%s\n' "$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    printf 'memory\t%s\n' "$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'os\t%s\n' "$(. /etc/os-release && echo "$PRETTY_NAME")"
    printf 'filesystem\t%s\n' "$(findmnt -n -o FSTYPE,SOURCE,OPTIONS -T "$BENCH_DATA")"
    printf 'syscont\t%s\n' "$(first_line "$SYSCONT" --version) ($(git -C "$PROJECT_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown))"
    printf 'skopeo\t%s\n' "$(first_line skopeo --version)"
    printf 'ostree\t%s\n' "$(ostree --version | sed -n "s/^ *Version: *'\(.*\)'/libostree \1/p")"
    printf 'podman\t%s\n' "$(first_line podman --version)"
    printf 'runc\t%s\n' "$(first_line runc --version)"
    printf 'crun\t%s\n' "$(first_line crun --version)"
    printf 'conmon\t%s\n' "$(first_line conmon --version)"
    printf 'hyperfine\t%s\n' "$(first_line hyperfine --version)"
} > "$RESULTS/machine.tsv"
printf 'RUNS\t%s\nRUNS_BIG\t%s\nRSS_RUNS\t%s\nBIG\t%s\n' "$RUNS" "$RUNS_BIG" "$RSS_RUNS" "$BIG" \
    > "$RESULTS/settings.tsv"

# --- leftovers of an earlier run, then let ext4 settle (machine note 4) ----------------
deleted=$(empty_trash "$WORK")
log "deleted $deleted entries left by an earlier run"
settle
# Other work on the machine when timing starts (after the settle wait, so a build just
# before does not count), and again at the end.
printf 'load_before\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RESULTS/machine.tsv"
printf 'busy_before\t%s\n' "$(cpu_busy 5)" >> "$RESULTS/machine.tsv"

# --- timed scenarios -----------------------------------------------------------------
printf 'scenario\ttool\timage\truns\tmedian\tmin\tmax\tmean\tuser\tsystem\n' > "$RESULTS/times.tsv"

# timed NAME RUNS IMAGE MODE [PREP_IMAGE...]
# MODE: checkout (pull + checkout), pull (pull only), keep (pull only, state reused).
timed() {
    local name=$1 runs=$2 image=$3 mode=$4 tool json prep
    shift 4
    want "$name" || return 0
    for tool in $TOOLS; do
        json=$RESULTS/raw/$name-$tool.json
        prep="$BENCH_DIR/lib/prepare.sh $tool $*"
        [ "$mode" = keep ] && prep="$BENCH_DIR/lib/prepare.sh --keep $tool $*"
        log "$name: $tool ($runs runs)"
        hyperfine -N --style basic --runs "$runs" --prepare "$prep" --export-json "$json" \
            "$BENCH_DIR/lib/pull.sh $tool $WORK/$tool $image $([ "$mode" = checkout ] && echo checkout)" \
            | sed -n 's/^ *\(Time\|Range\)/  \1/p' >&2
        jq -r --arg s "$name" --arg t "$tool" --arg i "$image" \
            '.results[0] | [$s, $t, $i, (.times | length), .median, .min, .max, .mean, .user, .system] | @tsv' \
            "$json" >> "$RESULTS/times.tsv"
    done
}

timed cold-hello "$RUNS" hello:1 checkout
timed update-hello "$RUNS" hello:2 checkout hello:1
timed cold-debian-base "$RUNS" debian-base:1 checkout
timed rebuilt "$RUNS" debian-base-rebuilt:1 checkout debian-base:1
timed cold-etcd "$RUNS" etcd:3.4 checkout
timed warm-etcd "$RUNS" etcd:3.4 checkout debian-base:1
timed noop-etcd "$RUNS" etcd:3.4 keep etcd:3.4
[ "$BIG" = 0 ] || timed cold-big "$RUNS_BIG" big:1 checkout

# --- this machine's floor for the cold pulls, measured now ---------------------------------
if want floor; then
    floor_images="hello:1 debian-base:1 etcd:3.4"
    [ "$BIG" = 0 ] || floor_images="$floor_images big:1"
    # shellcheck disable=SC2086
    "$BENCH_DIR/lib/floor.sh" "$RESULTS" "$RUNS" $floor_images
fi

# --- disk use --------------------------------------------------------------------------
# One du call per measurement, so hardlinks are counted once: the first path is the store,
# the others only add what the store does not already hold.
du_row() { # TOOL SEQUENCE AFTER
    local tool=$1 state=$WORK/$1 paths=() sizes inodes
    case $tool in
    syscont) paths=("$state/repo" "$state/checkouts") ;;
    recipe) paths=("$state/repo" "$state/checkouts" "$state/oci") ;;
    podman) paths=("$state/storage") ;;
    esac
    sync
    mapfile -t sizes < <(du -s --block-size=1 "${paths[@]}" | cut -f1)
    inodes=$(find "${paths[0]}" -xdev -printf '%i\n' | sort -u | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$2" "$3" "${sizes[0]}" "${sizes[1]:-}" \
        "${sizes[2]:-}" "$inodes" >> "$RESULTS/disk.tsv"
}
if want disk; then
    printf 'tool\tsequence\tafter\tstore\tcheckouts\tstaging\tstore_inodes\n' > "$RESULTS/disk.tsv"
    for tool in $TOOLS; do
        log "disk: $tool"
        "$BENCH_DIR/lib/prepare.sh" "$tool" >/dev/null
        for image in debian-base:1 debian-base-rebuilt:1 etcd:3.4; do
            "$BENCH_DIR/lib/pull.sh" "$tool" "$WORK/$tool" "$image" checkout >/dev/null
            du_row "$tool" base "$image"
        done
        "$BENCH_DIR/lib/prepare.sh" "$tool" hello:1
        du_row "$tool" hello hello:1
        "$BENCH_DIR/lib/pull.sh" "$tool" "$WORK/$tool" hello:2 >/dev/null
        du_row "$tool" hello hello:2
    done
fi

# --- peak RSS (GNU time -v; a process's figure covers the children it waited for) -------
rss() { # SCENARIO TOOLS IMAGE [PREP_IMAGE...]
    local scenario=$1 tools=$2 image=$3 tool i out
    shift 3
    for tool in $tools; do
        [[ " $TOOLS " == *" $tool "* ]] || continue
        for i in $(seq "$RSS_RUNS"); do
            log "rss: $tool $scenario ($i/$RSS_RUNS)"
            "$BENCH_DIR/lib/prepare.sh" "$tool" "$@" >/dev/null
            out=$RESULTS/raw/rss-$scenario-$tool-$i.txt
            if [ "$tool" = syscont ]; then
                # the binary itself, so the figure is syscont's (or its skopeo proxy's)
                /usr/bin/time -v -o "$out" "$SYSCONT" -q --repo "$WORK/syscont/repo" \
                    --checkout-path "$WORK/syscont/checkouts" pull --tls-verify=false \
                    "docker://$REGISTRY/$image" >/dev/null
            else
                /usr/bin/time -v -o "$out" "$BENCH_DIR/lib/pull.sh" "$tool" "$WORK/$tool" "$image"
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$image" "$i" \
                "$(sed -n 's/^\tMaximum resident set size (kbytes): //p' "$out")" \
                "$(sed -n 's/^\tElapsed (wall clock) time (h:mm:ss or m:ss): //p' "$out")" \
                "$scenario" >> "$RESULTS/rss.tsv"
        done
    done
}
if want rss; then
    printf 'tool\timage\trun\tmaxrss_kib\telapsed\tscenario\n' > "$RESULTS/rss.tsv"
    # every pull scenario for syscont; the cold etcd and big pulls for the others too
    rss cold-hello syscont hello:1
    rss update-hello syscont hello:2 hello:1
    rss cold-debian-base syscont debian-base:1
    rss rebuilt syscont debian-base-rebuilt:1 debian-base:1
    rss cold-etcd "$TOOLS" etcd:3.4
    rss warm-etcd syscont etcd:3.4 debian-base:1
    rss noop-etcd syscont etcd:3.4 etcd:3.4
    [ "$BIG" = 0 ] || rss cold-big "$TOOLS" big:1
fi

# --- where a cold pull waits for the disk: its sync calls, and the same pull without them
if [ "${SYNC_TRACE:-1}" = 1 ] && [[ " $TOOLS " == *" syscont "* ]]; then
    need_packages strace
    printf 'variant\tcall\tcount\tseconds\twall\n' > "$RESULTS/syncs.tsv"
    for variant in normal nosyncfs; do
        "$BENCH_DIR/lib/prepare.sh" syscont >/dev/null
        out=$RESULTS/raw/syncs-$variant.txt
        start=$(date +%s.%N)
        env $([ $variant = nosyncfs ] && echo OSTREE_SUPPRESS_SYNCFS=1) \
            strace -f --seccomp-bpf -T -e trace=syncfs,fsync,fdatasync -o "$out" \
            "$SYSCONT" -q --repo "$WORK/syscont/repo" --checkout-path "$WORK/syscont/checkouts" \
            pull --tls-verify=false "docker://$REGISTRY/etcd:3.4" >/dev/null
        wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.3f", b - a}')
        # With -f, strace prefixes each line with the thread id; a call that another
        # thread interrupts is split into `call(… <unfinished ...>` and `<... call
        # resumed>… <seconds>`: count the starts, add up the times wherever they stand.
        for call in syncfs fsync fdatasync; do
            awk -v v=$variant -v c=$call -v w="$wall" '
                $2 ~ "^" c "\\(" { n++ }
                ($2 ~ "^" c "\\(" || ($2 == "<..." && $3 == c)) && match($0, /<[0-9.]+>$/) {
                    s += substr($0, RSTART + 1, RLENGTH - 2)
                }
                END { printf "%s\t%s\t%d\t%.4f\t%s\n", v, c, n, s, w }' "$out" \
                >> "$RESULTS/syncs.tsv"
        done
    done
    # strace stops the pull at every signal, and skopeo's Go runtime sends many (SIGURG):
    # the same two variants again, untraced, for their wall times.
    pull="-q --repo $WORK/syscont/repo --checkout-path $WORK/syscont/checkouts pull --tls-verify=false docker://$REGISTRY/etcd:3.4"
    # shellcheck disable=SC2086
    hyperfine -N --style none --runs "$RUNS" --prepare "$BENCH_DIR/lib/prepare.sh syscont" \
        --export-json "$RESULTS/raw/syncs-untraced.json" \
        -n normal "$SYSCONT $pull" -n nosyncfs "env OSTREE_SUPPRESS_SYNCFS=1 $SYSCONT $pull" >/dev/null
    printf 'variant\truns\tmedian\tmin\tmax\n' > "$RESULTS/syncwall.tsv"
    jq -r '.results[] | [.command, (.times | length), .median, .min, .max] | @tsv' \
        "$RESULTS/raw/syncs-untraced.json" >> "$RESULTS/syncwall.tsv"
fi

# --- syscont's start-up: `syscont --version`, warm and with the page cache dropped --------
if want startup && [[ " $TOOLS " == *" syscont "* ]]; then
    log "startup: syscont --version"
    hyperfine -N --style none --runs 20 --warmup 3 --export-json "$RESULTS/raw/startup-warm.json" \
        "$SYSCONT --version" >/dev/null
    hyperfine -N --style none --runs 5 --prepare "sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches'" \
        --export-json "$RESULTS/raw/startup-cold.json" "$SYSCONT --version" >/dev/null
    printf 'kind\truns\tmedian\tmin\tmax\n' > "$RESULTS/startup.tsv"
    for kind in warm cold; do
        jq -r --arg k $kind '.results[0] | [$k, (.times | length), .median, .min, .max] | @tsv' \
            "$RESULTS/raw/startup-$kind.json" >> "$RESULTS/startup.tsv"
    done
fi

# --- the service side on a real systemd (booted in a private namespace where systemd is
# not PID 1, as the tests and the demo do) ---------------------------------------------------
if want service && [[ " $TOOLS " == *" syscont "* ]]; then
    need_packages runc strace python3
    # shellcheck source=demo/testbed.sh
    . "$PROJECT_DIR/demo/testbed.sh"
    log "service: booting a systemd"
    tb_boot >&2
    trap tb_stop EXIT
    printf 'metric\truns\tmedian\tmin\tmax\tnote\n' > "$RESULTS/service.tsv"
    tb python3 "$BENCH_DIR/lib/service.py" "$SYSCONT" "$REGISTRY" "$RUNS" >> "$RESULTS/service.tsv"
    tb_stop
    trap - EXIT
fi

printf 'load_after\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RESULTS/machine.tsv"
printf 'busy_after\t%s\n' "$(cpu_busy 5)" >> "$RESULTS/machine.tsv"
printf 'duration_s\t%s\n' "$(( $(date +%s) - started ))" >> "$RESULTS/settings.tsv"

# --- report, then clean up (nothing is timed any more) ----------------------------------
if [ -n "$REPORT" ]; then
    python3 "$BENCH_DIR/report.py" "$RESULTS" > "$REPORT.tmp"
    mv "$REPORT.tmp" "$REPORT"
    log "report: $REPORT"
fi
deleted=$(empty_trash "$WORK")
log "done in $(( $(date +%s) - started )) s; deleted $deleted entries of scratch state"
