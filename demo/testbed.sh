# A systemd to run the demo against, sourced by demo.sh.
#
# Where systemd is PID 1, that systemd is used. Elsewhere (a container, a build machine)
# the machine's own systemd boots as PID 1 of a private PID and mount namespace, over an
# overlay of / whose changes land on a tmpfs: nothing on the machine's disk changes, and
# it shares the machine's network, so a registry on 127.0.0.1 is reachable.
#
# Provides: tb_boot, tb CMD... (run a command there), tb_stop.

TB_PID=
TB_UNSHARE=

tb_init_script() {
    cat <<'INIT'
set -e
mount --make-rprivate /
R=$(mktemp -d /run/syscont-demo-root.XXXXXX)
mount -t tmpfs -o size=4g tmpfs "$R"
mkdir -p "$R/upper" "$R/work" "$R/merged"
mount -t overlay overlay -o "lowerdir=/,upperdir=$R/upper,workdir=$R/work" "$R/merged"
mount --rbind /dev "$R/merged/dev"
mkdir -p "$R/merged/.oldroot"
# Only the distribution's units boot: services this machine enabled stay off.
rm -rf "$R"/merged/etc/systemd/system/*.wants "$R"/merged/etc/systemd/system/*.requires
# skopeo's blob-info cache is a database the machine's own skopeo keeps writing; a copy
# taken up from under it could be torn. The testbed starts its own.
rm -rf "$R"/merged/var/lib/containers/cache
cd "$R/merged"
pivot_root . .oldroot
exec /lib/systemd/systemd --system --unit=multi-user.target </dev/null >/dev/null 2>&1
INIT
}

tb_boot() {
    if [ "$(cat /proc/1/comm)" = systemd ]; then
        echo "systemd is PID 1 here: using it."
        tb() { "$@"; }
        return
    fi
    echo "systemd is not PID 1 here: booting this machine's systemd in a private namespace."
    setsid unshare --pid --mount --fork --kill-child sh -c "$(tb_init_script)" \
        </dev/null >/dev/null 2>&1 &
    TB_UNSHARE=$!
    local i
    for i in $(seq 300); do
        TB_PID=$(pgrep -P "$TB_UNSHARE" || true)
        if [ -n "$TB_PID" ] && [ -S "/proc/$TB_PID/root/run/systemd/private" ]; then
            break
        fi
        sleep 0.1
    done
    [ -S "/proc/$TB_PID/root/run/systemd/private" ] || { echo "systemd did not start" >&2; return 1; }
    tb() { nsenter -t "$TB_PID" -m -p -- env -u DBUS_SYSTEM_BUS_ADDRESS "$@"; }
    local state
    for i in $(seq 1200); do
        state=$(tb systemctl is-system-running 2>/dev/null || true)
        case "$state" in running | degraded) break ;; esac
        sleep 0.1
    done
    echo "systemd (PID $TB_PID on this machine, PID 1 inside) is $state."
}

tb_stop() {
    if [ -n "$TB_PID" ]; then
        kill -9 "$TB_PID" 2>/dev/null || true
        wait "$TB_UNSHARE" 2>/dev/null || true
        TB_PID=
    fi
}
