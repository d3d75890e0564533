#!/usr/bin/env bash
# Data integrity under random operations: fsx on a fresh vaultfs mount, every optional
# operation on (mmap read/write, fallocate, punch hole, copy_file_range, sendfile), with
# FSX_STRICT=1 so an unsupported operation fails instead of being skipped.
# Usage: scripts/fsx.sh [CHUNK_SIZE=4096] [OPS=20000] [SEED...=1 2 3]
# FSX_SPARSE=1 runs it on a vault made by `init --sparse` (holes stored unwritten).
# Last line: "N passed, M failed" (one test per seed). Exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
chunk=${1:-4096}
ops=${2:-20000}
shift $(( $# > 2 ? 2 : $# ))
seeds=("$@")
((${#seeds[@]})) || seeds=(1 2 3)
bin=$PWD/target/debug/vaultfs
[[ -x $bin ]] || cargo build --locked

work=$(mktemp -d /tmp/vaultfs-fsx.XXXXXX)
export XDG_STATE_HOME=$work/state
cleanup() {
    # A plain unmount waits for the daemon to exit, so nothing writes into $work while it
    # is removed; lazy only if something still holds the mount.
    "$bin" unmount "$work/mnt" 2>/dev/null || "$bin" unmount --lazy "$work/mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/mnt"
echo "fsx password" > "$work/pw"
sparse=()
[[ ${FSX_SPARSE:-0} == 1 ]] && sparse=(--sparse)
"$bin" init --passfile "$work/pw" --scrypt-logn 10 --no-recovery-key --chunk-size "$chunk" "${sparse[@]}" "$work/vault" >/dev/null
"$bin" mount --passfile "$work/pw" "$work/vault" "$work/mnt"
echo "fsx: chunk size $chunk, $ops operations, seeds ${seeds[*]}${sparse:+, sparse vault}"
FSX_STRICT=${FSX_STRICT:-1} bash ../shared/conformance/fsx.sh "$work/mnt" "$ops" "${seeds[@]}"
