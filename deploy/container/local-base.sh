#!/usr/bin/env bash
# A base image made from Debian's packages, for building the image where no container registry
# is reachable (`make image-local`, `make image-test`): debootstrap's minimal Debian with Python 3
# and venv, imported into podman's store as TAG. The Debian mirror is the one this machine's apt
# already uses (its sources list), so nothing about a host is written into the repository.
#
# Usage: deploy/container/local-base.sh TAG [SUITE]
set -euo pipefail
tag=${1:?usage: local-base.sh TAG [SUITE]}
suite=${2:-bookworm}

if podman image exists "$tag"; then
    echo "local base: $tag exists (podman rmi $tag to make it anew)"
    exit 0
fi
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "local base: $tool not found (apt-get install $tool)" >&2; exit 1; }
done

# The first source serving SUITE itself, in either format apt reads: one-line
# (`deb [options] URI SUITE COMPONENTS`) or deb822 (`URIs:` and `Suites:` in one stanza).
shopt -s nullglob
sources=()
for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -r "$file" ] && sources+=("$file")
done
shopt -u nullglob
mirror=$(
    [ ${#sources[@]} -gt 0 ] && awk -v suite="$suite" '
        FNR == 1 { uris = ""; suites = "" }
        /^deb[ \t]/ {
            sub(/^deb[ \t]+(\[[^]]*\][ \t]+)?/, "")
            split($0, word, /[ \t]+/)
            if (word[2] == suite) { print word[1]; exit }
        }
        /^URIs:/ { uris = $2 }
        /^Suites:/ { suites = " " substr($0, 8) " " }
        /^[ \t]*$/ { uris = ""; suites = "" }
        uris != "" && index(suites, " " suite " ") { print uris; exit }
    ' "${sources[@]}"
)
if [ -z "$mirror" ]; then
    echo "local base: no apt source for $suite in /etc/apt/sources.list{,.d/}" >&2
    exit 1
fi

rootfs=$(mktemp -d -t rerank-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "local base: debootstrap $suite (minbase, python3, python3-venv) into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -20 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"
# What a build never needs and a run never reads: apt's lists and caches, docs and man pages.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
tar --numeric-owner -C "$rootfs" -c . | podman import --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "local base: $tag imported"
