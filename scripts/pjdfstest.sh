#!/usr/bin/env bash
# POSIX conformance: pjdfstest on a fresh vaultfs mount, as root, with --allow-other.
# Usage: scripts/pjdfstest.sh [CHUNK_SIZE]     (default 4096; uses target/debug/vaultfs)
# Last line: "N passed, M failed, K skipped" from ../shared/conformance/pjdfstest.sh.
# Exit status: non-zero if any test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
chunk=${1:-4096}
bin=$PWD/target/debug/vaultfs
[[ -x $bin ]] || cargo build --locked
[[ $(id -u) == 0 ]] || { echo "pjdfstest.sh: must run as root (pjdfstest switches users)" >&2; exit 2; }

work=$(mktemp -d /tmp/vaultfs-pjdfstest.XXXXXX)
chmod 755 "$work"    # every directory on the path must be searchable by nobody
export XDG_STATE_HOME=$work/state
cleanup() {
    # A plain unmount waits for the daemon to exit, so nothing writes into $work while it
    # is removed; lazy only if something still holds the mount.
    "$bin" unmount "$work/mnt" 2>/dev/null || "$bin" unmount --lazy "$work/mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/mnt"
echo "pjdfstest password" > "$work/pw"
"$bin" init --passfile "$work/pw" --scrypt-logn 10 --no-recovery-key --chunk-size "$chunk" "$work/vault" >/dev/null
"$bin" mount --passfile "$work/pw" --allow-other "$work/vault" "$work/mnt"
chmod 755 "$work/mnt"
bash ../shared/conformance/pjdfstest.sh "$work/mnt"
