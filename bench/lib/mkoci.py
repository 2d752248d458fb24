#!/usr/bin/env python3
"""Write a reproducible OCI image layout from gzip layer blobs.

Usage: mkoci.py --out DIR --tag TAG [--label K=V]... [--env K=V]... [--cmd JSON]
                [--stats FILE] LAYER.tar.gz...

The blobs are hardlinked (or copied) into DIR/blobs/sha256. Config, manifest and
index are JSON with sorted keys and fixed dates, so the same layers always give the same
manifest digest. --stats writes what report.py shows about the fixture: layer count,
compressed and uncompressed bytes, and the entry counts of every layer.
"""
import argparse
import gzip
import hashlib
import json
import os
import shutil
import tarfile

CREATED = "2023-11-14T22:13:20Z"  # @1700000000, the mtime of every layer entry


class HashingReader:
    """Reads a stream, keeping its SHA-256 and length."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, size=-1):
        b = self.f.read(size)
        self.h.update(b)
        self.n += len(b)
        return b


def scan_layer(path):
    """Digest, sizes and entry counts of one gzip tar layer."""
    counts = {"files": 0, "dirs": 0, "symlinks": 0, "hardlinks": 0, "other": 0}
    with open(path, "rb") as raw:
        comp = hashlib.sha256()
        while chunk := raw.read(1 << 20):
            comp.update(chunk)
        size = raw.tell()
    with gzip.open(path, "rb") as gz:
        r = HashingReader(gz)
        with tarfile.open(fileobj=r, mode="r|") as tar:
            for m in tar:
                key = ("files" if m.isreg() else "dirs" if m.isdir() else
                       "symlinks" if m.issym() else "hardlinks" if m.islnk() else "other")
                counts[key] += 1
        while r.read(1 << 20):  # the end-of-archive blocks and padding count too
            pass
    return {"digest": "sha256:" + comp.hexdigest(), "size": size,
            "diff_id": "sha256:" + r.h.hexdigest(), "uncompressed": r.n, **counts}


def put_blob(out, data=None, path=None, digest=None):
    if data is not None:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
    dest = os.path.join(out, "blobs", "sha256", digest.split(":", 1)[1])
    if not os.path.exists(dest):
        if data is not None:
            with open(dest, "wb") as f:
                f.write(data)
        else:
            try:
                os.link(path, dest)
            except OSError:
                shutil.copyfile(path, dest)
    return digest


def dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--label", action="append", default=[])
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--cmd", default='["/bin/sh"]')
    ap.add_argument("--stats")
    ap.add_argument("layers", nargs="+")
    a = ap.parse_args()

    os.makedirs(os.path.join(a.out, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')

    layers = [scan_layer(p) for p in a.layers]
    for p, l in zip(a.layers, layers):
        put_blob(a.out, path=p, digest=l["digest"])

    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + a.env,
            "Cmd": json.loads(a.cmd),
            "Labels": dict(kv.split("=", 1) for kv in a.label),
        },
        "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layers]},
        "history": [{"created": CREATED, "created_by": "bench/make-fixtures.sh"} for _ in layers],
    }
    cdata = dumps(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put_blob(a.out, data=cdata), "size": len(cdata)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": l["digest"], "size": l["size"]} for l in layers],
    }
    mdata = dumps(manifest)
    mdigest = put_blob(a.out, data=mdata)

    index_path = os.path.join(a.out, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != a.tag]
    index["manifests"].append({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": mdigest, "size": len(mdata),
        "annotations": {"org.opencontainers.image.ref.name": a.tag}})
    with open(index_path, "wb") as f:
        f.write(dumps(index))

    if a.stats:
        stats = {"manifest_digest": mdigest, "layers": layers,
                 "compressed": sum(l["size"] for l in layers),
                 "uncompressed": sum(l["uncompressed"] for l in layers)}
        for k in ("files", "dirs", "symlinks", "hardlinks"):
            stats[k] = sum(l[k] for l in layers)
        with open(a.stats, "w") as f:
            json.dump(stats, f, indent=1, sort_keys=True)
    print(mdigest)


if __name__ == "__main__":
    main()
