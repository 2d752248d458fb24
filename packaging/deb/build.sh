#!/bin/bash
# Builds the Debian package of syscont from a staged tree, with dpkg-deb (no debhelper).
#
# Usage: packaging/deb/build.sh [OUTDIR]     (default OUTDIR: target/debian)
#
# By default it builds the release binaries with cargo. To package binaries built
# elsewhere (and run no cargo at all), set both:
#   SYSCONT_BIN=path/to/syscont  SYSCONT_GEN=path/to/syscont-gen
# Prints the path of the .deb on its last line.
set -euo pipefail
umask 022

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/packaging/deb"
outdir=$(realpath -m "${1:-$root/target/debian}")

if [ -z "${SYSCONT_BIN:-}" ] || [ -z "${SYSCONT_GEN:-}" ]; then
    (cd "$root" && ${CARGO:-cargo} build --release --bin syscont --bin syscont-gen)
    release="${CARGO_TARGET_DIR:-$root/target}/release"
    SYSCONT_BIN="$release/syscont"
    SYSCONT_GEN="$release/syscont-gen"
fi
for f in "$SYSCONT_BIN" "$SYSCONT_GEN"; do
    [ -x "$f" ] || { echo "build.sh: $f is not an executable" >&2; exit 1; }
done

# The version of the [package] section of Cargo.toml; a pre-release (1.0.0-rc.1) sorts
# before its release in Debian only with a tilde (1.0.0~rc.1).
version=$(awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version *=/ { print $2; exit }' "$root/Cargo.toml")
[ -n "$version" ] || { echo "build.sh: no version in Cargo.toml" >&2; exit 1; }
version=${version//-/\~}
arch=$(dpkg --print-architecture)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps expects the tree at debian/PACKAGE (with its DEBIAN/), beside a
# debian/control.
stage="$work/debian/syscont"

install -D -m 0755 "$SYSCONT_BIN" "$stage/usr/bin/syscont"
strip --strip-unneeded "$stage/usr/bin/syscont"

"$SYSCONT_GEN" "$work/gen"
install -d "$stage/usr/share/man/man1"
for page in "$work"/gen/man1/*.1; do
    gzip -9n <"$page" >"$stage/usr/share/man/man1/${page##*/}.gz"
done
chmod 0644 "$stage"/usr/share/man/man1/*
install -d "$stage/usr/share/man/man5"
gzip -9n <"$work/gen/man5/syscont-host.toml.5" >"$stage/usr/share/man/man5/syscont-host.toml.5.gz"
chmod 0644 "$stage/usr/share/man/man5/syscont-host.toml.5.gz"
install -D -m 0644 "$work/gen/completions/syscont.bash" \
    "$stage/usr/share/bash-completion/completions/syscont"
install -D -m 0644 "$work/gen/completions/_syscont" \
    "$stage/usr/share/zsh/vendor-completions/_syscont"
install -D -m 0644 "$work/gen/completions/syscont.fish" \
    "$stage/usr/share/fish/vendor_completions.d/syscont.fish"

install -d "$stage/lib/systemd/system"
install -m 0644 "$root"/units/*.service "$root"/units/*.timer "$stage/lib/systemd/system/"
install -D -m 0644 "$root/packaging/tmpfiles.d/syscont.conf" "$stage/usr/lib/tmpfiles.d/syscont.conf"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/syscont/README.md"
install -D -m 0644 "$root/packaging/copyright" "$stage/usr/share/doc/syscont/copyright"

install -d "$stage/DEBIAN"
# Shared libraries, from the packages that provide them on this machine.
libdepends=""
if command -v dpkg-shlibdeps >/dev/null; then
    printf 'Source: syscont\n\nPackage: syscont\nArchitecture: any\n' >"$work/debian/control"
    libdepends=$(cd "$work" && dpkg-shlibdeps -O debian/syscont/usr/bin/syscont |
        sed -n 's/^shlibs:Depends=//p')
fi
if [ -z "$libdepends" ]; then
    libdepends="libc6, libglib2.0-0, libostree-1-1"
fi

for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' |
    LC_ALL=C sort -z | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$stage/DEBIAN/md5sums"
installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: syscont
Version: $version
Architecture: $arch
Maintainer: syscont developers <syscont@localhost>
Installed-Size: $installed_size
Depends: $libdepends, skopeo, ostree, runc | crun, systemd, dbus
Section: admin
Priority: optional
Description: system containers from OCI images, run by systemd
 syscont pulls OCI images with skopeo into an OSTree repository, checks them
 out by hardlinks, and installs each as a systemd service run by runc, with
 its configuration, tmpfiles and host files rendered from the image's
 templates. Updates go to a second deployment, so a container that fails
 after an update is rolled back.
 .
 The package includes syscont-apply.service, which applies
 /etc/syscont/host.toml at boot, and a weekly timer that prunes unused image
 data.
CONTROL

mkdir -p "$outdir"
deb="$outdir/syscont_${version}_${arch}.deb"
dpkg-deb --build --root-owner-group "$stage" "$deb" >/dev/null
echo "$deb"
