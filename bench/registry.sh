#!/bin/bash
# A local docker-registry (distribution) on 127.0.0.1:5000 for the benchmark fixtures.
# Usage: bench/registry.sh [start|stop|status]   (default: start; every action is idempotent)
# Storage and logs: /var/tmp/syscont-bench/registry (kept across runs).
set -euo pipefail
# shellcheck source=bench/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

REG_DIR=$BENCH_DATA/registry
PIDFILE=$REG_DIR/registry.pid

answers() { curl -fsS -o /dev/null --max-time 2 "http://$REGISTRY/v2/" 2>/dev/null; }
ours() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case ${1:-start} in
start)
    if ours && answers; then
        echo "registry: running on $REGISTRY (pid $(cat "$PIDFILE"))"
        exit 0
    fi
    if answers; then
        die "something else already serves $REGISTRY; stop it or set REGISTRY=HOST:PORT"
    fi
    need_packages docker-registry curl
    mkdir -p "$REG_DIR/storage"
    cat > "$REG_DIR/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog: {disabled: true}
storage:
  filesystem: {rootdirectory: $REG_DIR/storage}
  delete: {enabled: true}
http:
  addr: $REGISTRY
YML
    setsid docker-registry serve "$REG_DIR/config.yml" >>"$REG_DIR/registry.log" 2>&1 </dev/null &
    echo $! > "$PIDFILE"
    for _ in $(seq 100); do
        answers && { echo "registry: started on $REGISTRY (pid $(cat "$PIDFILE"))"; exit 0; }
        ours || break
        sleep 0.1
    done
    tail -5 "$REG_DIR/registry.log" >&2
    die "the registry did not start (log: $REG_DIR/registry.log)"
    ;;
stop)
    if ours; then
        pid=$(cat "$PIDFILE")
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        echo "registry: stopped"
    else
        echo "registry: not running"
    fi
    rm -f "$PIDFILE"
    ;;
status)
    if ours && answers; then
        echo "registry: running on $REGISTRY (pid $(cat "$PIDFILE")), storage $REG_DIR/storage"
    else
        echo "registry: not running"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
