#!/usr/bin/env python3
"""Fails when the tests, the demo, the benchmark or syscont itself run a program that no
package of packaging/deps.sh (or of a script's own need_packages list) provides.

A machine where someone installed a package by hand runs such a test fine, and so does
CI on that machine; a fresh one does not. This check reads what the code runs:

- in Rust: `Command::new("prog")`, and absolute paths of programs in string literals;
- in shell scripts and the Makefile: the first word of every command;

and asks dpkg which package owns each program. The package must be listed, be what a
listed package depends on, or be one that every Debian system has (Essential, or of
priority required). A program named by
its absolute path or by `Command::new` that no installed package provides fails too.
Paths that exist only inside test images are listed in IMAGE_PATHS.
"""
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Programs that live inside the images the tests build, not on the host.
IMAGE_PATHS = {
    "/usr/bin/run.sh", "/usr/bin/tool", "/usr/bin/flanneld.sh", "/usr/bin/etcd-env.sh",
    "/usr/bin/sd-notify", "/bin/httpd", "/bin/base", "/bin/evil", "/usr/bin/atomic",
    # The runtime column of `containers list`, truncated as Atomic truncated it.
    "/usr/bin/r",
    # syscont itself, as the package installs it.
    "/usr/bin/syscont",
}

SOURCES = ["src", "tests", "demo", "bench", "fuzz/run.sh", "packaging", "Makefile", ".ci"]


def listed_packages():
    pkgs = set()
    text = open(os.path.join(ROOT, "packaging/deps.sh")).read()
    block = re.search(r"packages=\((.*?)\n\)", text, re.S).group(1)
    for line in block.splitlines():
        line = line.split("#", 1)[0]
        pkgs.update(w for w in line.split() if not w.startswith('"$'))
    for path in files(["bench", "demo"]):
        if path.endswith(".sh"):
            for m in re.finditer(r"need_packages ([^\n;|&]+)", open(path).read()):
                pkgs.update(w for w in m.group(1).split() if re.match(r"^[a-z0-9][a-z0-9.+-]+$", w))
    return pkgs


def files(roots):
    for r in roots:
        p = os.path.join(ROOT, r)
        if os.path.isfile(p):
            yield p
            continue
        for d, dirs, fs in os.walk(p):
            dirs[:] = [x for x in dirs if x not in ("target", "corpus", "artifacts", "work")]
            for f in fs:
                yield os.path.join(d, f)


def dpkg_database():
    """Every installed package's files, and its Essential, Priority and dependencies."""
    owners = {}
    info = "/var/lib/dpkg/info"
    for f in os.listdir(info):
        if f.endswith(".list"):
            pkg = f[:-5].split(":")[0]
            for line in open(os.path.join(info, f), errors="replace"):
                owners.setdefault(line.rstrip("\n"), pkg)
    fmt = "${Package}\t${Essential}\t${Priority}\t${Pre-Depends}, ${Depends}\t${Provides}\n"
    r = subprocess.run(["dpkg-query", "-W", "-f=" + fmt], capture_output=True, text=True, check=True)
    meta = {}
    provided_by = {}
    for line in r.stdout.splitlines():
        name, essential, prio, deps, provides = (line.split("\t") + [""] * 5)[:5]
        alts = [[a.strip().split()[0].split(":")[0] for a in d.split("|") if a.strip()]
                for d in deps.split(",") if d.strip()]
        meta[name] = (essential == "yes" or prio == "required", alts)
        for p in provides.split(","):
            if p.strip():
                provided_by.setdefault(p.strip().split()[0], []).append(name)
    return owners, meta, provided_by


def closure(listed, meta, provided_by):
    """The listed packages and everything they depend on, as installed."""
    seen, todo = set(), list(listed)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for alts in meta.get(p, (False, []))[1]:
            for a in alts:
                for real in [a] + provided_by.get(a, []):
                    if real in meta:
                        todo.append(real)
    return seen


def owner(path, owners):
    """The package that owns `path` (trying the merged-/usr aliases), or None."""
    cands = {path, os.path.realpath(path)}
    for c in list(cands):
        cands.add(c[4:] if c.startswith("/usr/") else "/usr" + c)
    for c in cands:
        if c in owners:
            return owners[c]
    return None


def uses():
    """(program, strict, where): strict programs must resolve."""
    out = []
    word = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")
    for path in files(SOURCES):
        rel = os.path.relpath(path, ROOT)
        try:
            text = open(path).read()
        except UnicodeDecodeError:
            continue
        if path.endswith(".rs"):
            for m in re.finditer(r'Command::new\("([^"]+)"\)', text):
                out.append((m.group(1), True, rel))
            for m in re.finditer(r'"(/(?:usr/)?s?bin/[A-Za-z0-9_.+-]+|/(?:usr/)?lib/systemd/systemd[A-Za-z0-9_.+-]*)"', text):
                out.append((m.group(1), True, rel))
            # Programs run in a testbed: `exec(&["prog", …` and `command(&["prog", …`.
            for m in re.finditer(r'(?:exec|command)\(&\["([A-Za-z][A-Za-z0-9_.+-]*)"', text):
                out.append((m.group(1), False, rel))
        elif path.endswith(".sh") or os.path.basename(path) in ("Makefile", "run", "postinst", "prerm", "postrm", "build.sh"):
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("#"):
                    continue
                for seg in re.split(r"\|\||&&|[;|]|\$\(|`|\bthen\b|\bdo\b|\belse\b", line):
                    w = seg.strip().split()
                    if w and word.match(w[0]) and "=" not in w[0]:
                        out.append((w[0], False, rel))
    return out


def main():
    owners, meta, provided_by = dpkg_database()
    allowed = closure(listed_packages(), meta, provided_by)
    bad = []
    seen = set()
    for prog, strict, where in uses():
        if (prog, where) in seen or prog in IMAGE_PATHS:
            continue
        seen.add((prog, where))
        path = prog if prog.startswith("/") else shutil.which(prog)
        if path is None or not os.path.exists(path):
            if strict:
                bad.append(f"{where}: runs {prog}, which no installed package provides; add its package to packaging/deps.sh")
            continue
        pkg = owner(path, owners)
        if pkg is None:
            if strict and not path.startswith(ROOT):
                bad.append(f"{where}: runs {prog} ({path}), which no package owns")
            continue
        if pkg not in allowed and not meta.get(pkg, (False, []))[0]:
            bad.append(f"{where}: runs {prog} from the package {pkg}, which packaging/deps.sh does not install")
    if bad:
        print("check-programs: programs the project runs that a fresh machine would lack:", file=sys.stderr)
        for b in sorted(set(bad)):
            print("  " + b, file=sys.stderr)
        return 1
    print(f"check-programs: every program the project runs comes from a listed package ({len(seen)} uses checked).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
