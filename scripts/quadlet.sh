#!/usr/bin/env bash
# Prints the path of a Quadlet generator newer than this host's Podman,
# for validating the units fleet writes (ROOTLESS.md §9.6): Debian trixie's
# podman package, downloaded once and unpacked (never installed) into a
# cache, so the host's apt state and packages are untouched. Fails loudly.
set -euo pipefail
CACHE=${FLEET_QUADLET_CACHE:-/var/cache/fleet-test/quadlet}
Q="$CACHE/x/usr/libexec/podman/quadlet"
if [ -x "$Q" ]; then echo "$Q"; exit 0; fi
mkdir -p "$CACHE/lists/partial" "$CACHE/cache/archives/partial"
chmod 755 "$CACHE"   # apt's _apt user must read it
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" > "$CACHE/sources.list"
APT=(-o "Dir::Etc::SourceList=$CACHE/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$CACHE/lists" -o "Dir::Cache=$CACHE/cache"
     -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)
apt-get "${APT[@]}" update -qq >&2
(cd "$CACHE" && apt-get "${APT[@]}" download podman >&2 2>/dev/null || apt-get "${APT[@]}" download podman >&2)
dpkg-deb -x "$CACHE"/podman_*.deb "$CACHE/x"
"$Q" -version >&2
echo "$Q"
