#!/usr/bin/env bash
# Install CRIU >= 4.1 from Debian trixie's packages into a folder of the project's, without touching the
# system: Debian 12's CRIU 3.17 fails `criu check` on current kernels (vDSO), and upgrading the system's
# libc to trixie's is out of the question. apt runs with a private source list, state and cache, so no
# system package is upgraded and apt's own configuration is left as it was; nothing is compiled; every
# byte comes from Debian's package archive. The packages are unpacked with `dpkg -x` and run through
# their own dynamic loader by the `criu` wrapper this script writes:
#
#   scripts/install-criu.sh [DEST]      (default: .cache/criu in the repository)
#   DEST/criu check                     -> "Looks good."
#
# Workers find CRIU on PATH or through their `criu_path` setting; point either at DEST/criu.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dest=$(realpath -m "${1:-$here/.cache/criu}")
mirror=${PERDURE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=trixie
want=4.1

if [ -x "$dest/criu" ] && "$dest/criu" --version 2>/dev/null | grep -Eq "^Version: (4\.([1-9]|[1-9][0-9])|[5-9])"; then
    echo "CRIU already in $dest: $("$dest/criu" --version | head -n1)"
    exit 0
fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
    echo "install-criu: needs apt-get and dpkg (Debian or Ubuntu)" >&2
    exit 1
}
arch=$(dpkg --print-architecture)
case $arch in
    amd64) triplet=x86_64-linux-gnu; loader=ld-linux-x86-64.so.2 ;;
    arm64) triplet=aarch64-linux-gnu; loader=ld-linux-aarch64.so.1 ;;
    *) echo "install-criu: unsupported architecture $arch" >&2; exit 1 ;;
esac

work="$dest.apt"
rm -rf "$work" "$dest.new"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$dest.new/root"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" > "$work/sources.list"
apt_opts=(
    -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::State::status=/dev/null"
    -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -q
)
apt-get "${apt_opts[@]}" update >/dev/null

# criu and the closure of its run-time dependencies, libc included (trixie's CRIU needs glibc >= 2.38).
mapfile -t packages < <(
    apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances criu |
        grep -E '^[a-z0-9][a-z0-9+.-]*$' | sort -u
)
# Packages that only matter to a whole system (maintainer scripts, the shell, configuration) are not needed
# to run one binary through its own loader.
skip='^(debconf|dpkg|perl-base|base-files|bash|coreutils|tar|sysvinit-utils|init-system-helpers|debianutils|libdebconfclient0|usr-is-merged|gcc-[0-9]+-base)$'
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | grep -Ev "$skip")
(cd "$work/debs" && apt-get "${apt_opts[@]}" download "${packages[@]}" >/dev/null)
for deb in "$work/debs"/*.deb; do
    dpkg -x "$deb" "$dest.new/root"
done

root_libs="\$root/usr/lib/$triplet:\$root/lib/$triplet"
cat > "$dest.new/criu" <<WRAPPER
#!/bin/sh
# CRIU from Debian $suite, run through its own loader and libraries (written by scripts/install-criu.sh).
root="\$(dirname "\$(readlink -f "\$0")")/root"
exec "\$root/usr/lib/$triplet/$loader" --library-path "$root_libs" "\$root/usr/sbin/criu" "\$@"
WRAPPER
chmod 0755 "$dest.new/criu"
"$dest.new/criu" --version | grep -q "^Version: " || { echo "install-criu: the unpacked criu does not run" >&2; exit 1; }
rm -rf "$dest"
mv "$dest.new" "$dest"
rm -rf "$work"
echo "CRIU installed in $dest: $("$dest/criu" --version | head -n1) (>= $want wanted)"
