#!/usr/bin/env bash
# Build the stand-in's base image from Debian's archive with debootstrap and import it
# into Docker, tagged by a hash of its recipe. A later run with the same recipe finds
# the image and returns at once. Prints the image reference on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
recipe_hash=$( (cat "$here/packages.txt" "$here/build-base.sh") | sha256sum | cut -c1-12)
image="fibreflow-standin-base:$recipe_hash"
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"; exit 0
fi
command -v debootstrap >/dev/null || { echo "build-base: debootstrap is missing; run 'make setup'" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "build-base: debootstrap needs root" >&2; exit 1; }
mirror=${STANDIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/standin-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
pkgs=$(grep -vE '^\s*(#|$)' "$here/packages.txt" | paste -sd, -)
echo "build-base: debootstrap bookworm ($pkgs) into $root" >&2
debootstrap --variant=minbase --include="$pkgs" bookworm "$root" "$mirror" >/var/tmp/standin-debootstrap.log 2>&1 \
  || { tail -n 30 /var/tmp/standin-debootstrap.log >&2; exit 1; }
# Keep the image small: no package lists or caches, no docs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
# Services must not start at package configuration or at import.
rm -f "$root"/etc/nginx/sites-enabled/default
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "build-base: imported $image" >&2
echo "$image"
