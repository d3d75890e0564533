#!/usr/bin/env bash
# xfstests (the kernel's filesystem suite) on vaultfs, through ../shared/conformance/xfstests.sh:
# backing directories on a loop-mounted ext4 image, never on the root disk. As root.
# Usage: scripts/xfstests.sh [TESTS...]   (default "-g quick"; e.g. "generic/003 generic/120")
# Uses target/release/vaultfs (built if missing). Results: /var/tmp/xfstests-run/results.
# Exit status: non-zero if a test failed that docs/RELIABILITY.md does not list as expected
# (scripts/xfstests-expected.txt: one test per line, "# reason" after it).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "xfstests.sh: must run as root" >&2; exit 2; }
bin=$PWD/target/release/vaultfs
[[ -x $bin ]] || cargo build --locked --release
# mount(8) runs mount.fuse3 with a sanitized PATH, so `mount -t fuse.vaultfs` finds only a
# vaultfs in a system directory: this build goes in /usr/local/bin for the run, and out after.
link=/usr/local/bin/vaultfs
if [[ -e $link || -L $link ]]; then
    echo "xfstests.sh: $link exists: remove it first (this script puts its build there for the run)" >&2
    exit 2
fi
out=$(mktemp)
# A copy: a rebuild during the run must not change the binary under the mounts.
copy=$(mktemp -d)/vaultfs
cp "$bin" "$copy"
trap 'rm -f "$out" "$link"; rm -rf "$(dirname "$copy")"' EXIT
ln -sf "$copy" "$link"
set +e
bash ../shared/conformance/xfstests.sh --fs vaultfs --bin "$copy" "$@" | tee "$out"
set -e
expected=$(sed 's/#.*//' scripts/xfstests-expected.txt | tr -s ' \n' '\n' | grep . || true)
unexpected=$(awk '/^FAIL /{print $2}' "$out" | grep -vxF -f <(echo "$expected") || true)
if [[ -n $unexpected ]]; then
    echo "xfstests.sh: unexpected failures:" $unexpected >&2
    exit 1
fi
grep -q '^xfstests: ' "$out" || { echo "xfstests.sh: the runner printed no summary" >&2; exit 1; }
echo "xfstests.sh: no unexpected failure"
