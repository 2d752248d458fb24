#!/usr/bin/env python3
"""service.py SYSCONT REGISTRY RUNS: the service side of syscont, timed on a real systemd.

Runs inside a booted systemd (bench/run.sh boots one with demo/testbed.sh where systemd
is not PID 1) and prints TSV rows on stdout: metric, runs, median, min, max (seconds),
then a note. Everything it creates lives in that systemd's private overlay.

- install-start: `syscont install --start` of hello:1, until it returns;
- install-to-active: from that return until systemd reports the unit active;
- systemctl-start: `systemctl start` of the installed, stopped unit, until active;
- systemctl-stop: `systemctl stop` of it (what an update waits for before it starts the
  new deployment);
- runc-run: `runc run -d` of the same bundle (the deployment), until it returns;
- update: `containers update --rebase` between hello:1 and hello:2 of the running
  container, `--probation 0`, end to end (pull not included: both images are stored);
- list-N: `containers list --all` with N = 1, 10, 50 installed containers, and the number
  of D-Bus method calls one listing makes to systemd (from strace).
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

SYSCONT, REGISTRY, RUNS = sys.argv[1], sys.argv[2], int(sys.argv[3])
IMG1, IMG2 = f"{REGISTRY}/hello:1", f"{REGISTRY}/hello:2"
POLL = 0.002


def run(*cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"service.py: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return r


def detached(*cmd):
    """A command that leaves a process behind holding its stdio (runc run -d)."""
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    if r.returncode != 0:
        sys.exit(f"service.py: {' '.join(cmd)} failed ({r.returncode})")


def sc(*args, check=True):
    return run(SYSCONT, *args, check=check)


def active(unit):
    r = run("systemctl", "show", "-p", "ActiveState", "--value", unit, check=False)
    return r.stdout.strip() == "active"


def until_active(unit, timeout=60.0):
    t0 = time.perf_counter()
    while not active(unit):
        if time.perf_counter() - t0 > timeout:
            sys.exit(f"service.py: {unit} did not become active")
        time.sleep(POLL)
    return time.perf_counter()


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def row(metric, values, note=""):
    values = sorted(values)
    print(f"{metric}\t{len(values)}\t{statistics.median(values):.6f}\t{values[0]:.6f}\t"
          f"{values[-1]:.6f}\t{note}", flush=True)


def main():
    for img in (IMG1, IMG2):
        sc("pull", "--tls-verify=false", f"docker://{img}")

    # install --start, and how long after it returns the unit is active
    inst, to_active = [], []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        sc("install", "--start", "--name", "svc", IMG1)
        t1 = time.perf_counter()
        t2 = until_active("svc.service")
        inst.append(t1 - t0)
        to_active.append(t2 - t1)
        sc("uninstall", "svc")
    row("install-start", inst)
    row("install-to-active", to_active)

    # systemctl start of the installed unit, until active
    sc("install", "--name", "svc", IMG1)
    starts, stops = [], []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        run("systemctl", "start", "svc.service")
        t1 = until_active("svc.service")
        starts.append(t1 - t0)
        stops.append(timed(lambda: run("systemctl", "stop", "svc.service")))
    row("systemctl-start", starts)
    row("systemctl-stop", stops)

    # runc run -d of the same bundle (the unit is stopped meanwhile)
    bundle = os.path.realpath(os.path.join(deployments(), "svc"))
    root = "/run/syscont-bench-runc"
    runs = []
    for _ in range(RUNS):
        runs.append(timed(lambda: detached("runc", "--root", root, "run", "-d", "--bundle",
                                           bundle, "bench-runc")))
        run("runc", "--root", root, "delete", "-f", "bench-runc")
    row("runc-run", runs, bundle)

    # containers update of the running container, end to end
    run("systemctl", "start", "svc.service")
    until_active("svc.service")
    updates = []
    for i in range(RUNS):
        target = IMG2 if i % 2 == 0 else IMG1
        updates.append(timed(lambda: sc("containers", "update", "--rebase", target,
                                        "--probation", "0", "svc")))
    row("update", updates)
    sc("uninstall", "svc")

    # containers list with 1, 10 and 50 containers, running
    installed = 0
    for n in (1, 10, 50):
        while installed < n:
            installed += 1
            sc("install", "--start", "--name", f"list{installed}", IMG1)
        sc("containers", "list", "--all")  # warm
        calls = dbus_calls()
        row(f"list-{n}", [timed(lambda: sc("containers", "list", "--all")) for _ in range(RUNS)],
            f"{calls} D-Bus call{'' if calls == 1 else 's'} to systemd per listing")



def deployments():
    """The checkout path (root's default: the testbed's own /var/lib)."""
    return "/var/lib/containers/atomic"


def dbus_calls():
    """Method calls to systemd in one `containers list` (strace of its socket writes)."""
    if not shutil.which("strace"):
        return "?"
    out = "/run/syscont-bench-strace.txt"
    run("strace", "-f", "-s", "2048", "-e", "trace=sendmsg,sendto,write,writev", "-o", out,
        SYSCONT, "containers", "list", "--all")
    text = open(out, errors="replace").read()
    # Each call names systemd once as its destination (NUL-terminated in the header).
    return len(re.findall(r"org\.freedesktop\.systemd1\\0", text))


if __name__ == "__main__":
    main()
