#!/usr/bin/env bash
# vaultfs in one minute: a throw-away vault in a temp dir, mounted, a few files and a
# directory written, the plaintext view shown beside the encrypted backing directory, read
# back, unmounted and removed. Usage: scripts/demo.sh   (builds vaultfs first if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --locked
bin=$PWD/target/debug/vaultfs
if [[ $(id -u) != 0 ]] && ! command -v fusermount3 >/dev/null; then
    echo "demo: FUSE needs root or fusermount3 (apt-get install fuse3)" >&2
    exit 1
fi

work=$(mktemp -d /tmp/vaultfs-demo.XXXXXX)
export XDG_STATE_HOME=$work/state
cleanup() {
    # A plain unmount waits for the daemon to exit, so nothing writes into $work while it
    # is removed; lazy only if something still holds the mount.
    "$bin" unmount "$work/mnt" 2>/dev/null || "$bin" unmount --lazy "$work/mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/mnt"
echo "demo password" > "$work/password"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "vaultfs init (a fast scrypt setting, for the demo only)"
"$bin" init --passfile "$work/password" --scrypt-logn 12 --recovery-key-file "$work/recovery-key" "$work/vault"

step "vaultfs mount"
"$bin" mount --passfile "$work/password" "$work/vault" "$work/mnt"
echo "mounted $work/vault on $work/mnt"

step "writing files through the mount"
m=$work/mnt
echo "Meeting notes: the launch moves to Tuesday." > "$m/notes.txt"
mkdir -p "$m/Photos/2026 Holiday"
head -c 300000 /dev/urandom > "$m/Photos/2026 Holiday/beach.jpg"
printf 'a name longer than most sync services allow: %0200d\n' 0 > "$m/$(printf 'very-long-file-name-%.0s' {1..10}).txt"
ln -s notes.txt "$m/latest-notes"

step "plaintext view (what you see)"
(cd "$m" && find . -mindepth 1 | sort | while read -r p; do
    if [[ -L $p ]]; then printf '%10s  %s -> %s\n' link "$p" "$(readlink "$p")"
    elif [[ -d $p ]]; then printf '%10s  %s/\n' dir "$p"
    else printf '%10d  %s\n' "$(stat -c %s "$p")" "$p"; fi
done)

step "backing directory (what the cloud, NAS or thief sees)"
(cd "$work/vault" && find . -mindepth 1 | sort | while read -r p; do
    if [[ -L $p ]]; then printf '%10s  %s -> %.40s...\n' link "$p" "$(readlink "$p")"
    elif [[ -d $p ]]; then printf '%10s  %s/\n' dir "$p"
    else printf '%10d  %s\n' "$(stat -c %s "$p")" "$p"; fi
done)

step "reading back"
cat "$m/notes.txt"
cat "$m/latest-notes"
echo "beach.jpg: $(stat -c %s "$m/Photos/2026 Holiday/beach.jpg") bytes, sha256 $(sha256sum "$m/Photos/2026 Holiday/beach.jpg" | cut -c1-16)..."
if grep -rq "launch moves" "$work/vault"; then echo "LEAK: plaintext found in the backing directory" >&2; exit 1; fi
echo "no plaintext in the backing directory"

step "vaultfs status (no password needed)"
"$bin" status "$work/vault" | head -12

step "vaultfs unmount, and clean up"
"$bin" unmount "$work/mnt"
echo "unmounted; removing $work"
