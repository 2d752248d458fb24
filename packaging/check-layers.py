#!/usr/bin/env python3
"""Fails when an import in src/ runs against the layers, or when modules import each other
in a circle.

The folders of src/ are layers, and each may use only the layers below it:

    cli
    container, build
    store, template, host, fleet
    image
    util (and error.rs)

Layers on one line do not use each other. An import is any `crate::LAYER` path in the
code (a `use` line or a path written inline), and `super::` inside a folder. Within a
layer, files may use each other, but never in a circle: the module graph of the whole
crate has no cycle. main.rs, lib.rs, the feature-gated fuzzing.rs and src/bin/ sit above
everything and are not checked.

Run from anywhere; prints each offence with the file and the line, and exits 1 on any.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

RANK = {
    "cli": 5,
    "container": 4,
    "build": 4,
    "store": 3,
    "template": 3,
    "host": 3,
    "fleet": 3,
    "image": 2,
    "util": 1,
    "error": 1,
}
SKIP = {"main.rs", "lib.rs", "fuzzing.rs"}

PATH_RE = re.compile(r"\bcrate::((?:[a-z_][a-z0-9_]*)(?:::[a-z_][a-z0-9_]*)*)")
SUPER_RE = re.compile(r"\bsuper::([a-z_][a-z0-9_]*)")


def module_of(rel):
    """`store/pull.rs` -> ['store', 'pull']; `store/mod.rs` -> ['store']."""
    parts = rel[:-3].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def strip_comments_and_tests(text):
    """The code without comments, string contents and `#[cfg(test)]` modules."""
    out = []
    in_tests = False
    depth = 0
    for line in text.splitlines():
        if not in_tests and re.match(r"\s*#\[cfg\(test\)\]", line):
            in_tests = True
            depth = 0
            seen_open = False
            out.append("")
            continue
        if in_tests:
            depth += line.count("{") - line.count("}")
            if "{" in line:
                seen_open = True
            if seen_open and depth <= 0:
                in_tests = False
            out.append("")
            continue
        code = re.sub(r'"(\\.|[^"\\])*"', '""', line)
        code = code.split("//", 1)[0]
        out.append(code)
    return out


def main():
    files = {}
    for dirpath, _, names in os.walk(SRC):
        for n in names:
            if not n.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, n), SRC)
            if rel in SKIP or rel.startswith("bin/"):
                continue
            files[rel] = module_of(rel)
    modules = {tuple(m): rel for rel, m in files.items()}

    def resolve(path):
        """The longest module prefix of a `crate::` path."""
        parts = path.split("::")
        for i in range(len(parts), 0, -1):
            if tuple(parts[:i]) in modules:
                return tuple(parts[:i])
        return None

    errors = []
    edges = {}
    for rel, mod in sorted(files.items()):
        layer = mod[0]
        if layer not in RANK:
            errors.append(f"src/{rel}: not in a known layer ({', '.join(sorted(RANK))})")
            continue
        text = open(os.path.join(SRC, rel), encoding="utf-8").read()
        for lineno, code in enumerate(strip_comments_and_tests(text), 1):
            targets = [resolve(p) for p in PATH_RE.findall(code)]
            for name in SUPER_RE.findall(code):
                # `super` of fleet/records.rs and of fleet/mod.rs is their parent module.
                up = tuple(mod[:-1]) + (name,)
                targets.append(up if up in modules else None)
            for t in targets:
                if t is None or t == tuple(mod):
                    continue
                edges.setdefault(tuple(mod), set()).add(t)
                other = t[0]
                if other == layer:
                    continue
                if RANK.get(other, 99) >= RANK[layer]:
                    errors.append(
                        f"src/{rel}:{lineno}: {'::'.join(mod)} uses {'::'.join(t)}: "
                        f"{layer} may only use layers below it"
                    )

    # Cycles in the module graph (Tarjan's strongly connected components).
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            strong(v)
    for comp in sccs:
        names = ", ".join("::".join(m) for m in comp)
        errors.append(f"modules that use each other in a circle: {names}")

    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"check-layers: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"check-layers: {len(files)} modules, imports run one way, no circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
