#!/usr/bin/env bash
# The machine-level components the test suite drives for real: podman with the runc runtime (crun refuses
# hybrid cgroup layouts), busybox-static (a root filesystem for test images, no registry needed), CRIU
# >= 4.1 in .cache/criu (scripts/install-criu.sh), Chromium for the dashboard's browser tests and npm for
# the dashboard's libraries. Installs what is missing when run as root on
# Debian/Ubuntu; elsewhere it says what is missing and leaves the tests to skip with a reason (they never
# skip when CI=true).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

want_debs=(podman runc busybox-static iptables uidmap chromium fonts-dejavu-core)
missing=()
for pkg in "${want_debs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# npm may come with another distribution of Node.js than Debian's: only the command matters.
command -v npm >/dev/null || missing+=(npm)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    [ ${#missing[@]} -eq 0 ] || echo "install-system-deps: not root or no apt-get; missing: ${missing[*]} (container and CRIU tests will skip)"
    exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-system-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${missing[@]}" >/dev/null
fi
"$here/scripts/install-criu.sh" "$here/.cache/criu"
