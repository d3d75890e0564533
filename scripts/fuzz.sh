#!/usr/bin/env bash
# Fuzzes every parser of on-disk data with cargo fuzz on the stable toolchain (-s none: no
# sanitizer, which needs nightly), each for SECONDS. Installs cargo-fuzz if needed.
# Usage: scripts/fuzz.sh [SECONDS=60] [TARGET...=header chunk names blobs keystore]
# New crashes are kept in fuzz/artifacts/TARGET/; the last line is "N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")
((${#targets[@]})) || targets=(header chunk names blobs keystore)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
passed=0 failed=0
for t in "${targets[@]}"; do
    # A scratch copy of the seed corpus: new inputs found by this run stay out of git.
    work=$(mktemp -d)
    cp -r "fuzz/corpus/$t/." "$work/"
    if (cd fuzz && cargo fuzz run -s none "$t" "$work" -- -max_total_time="$secs" -rss_limit_mb=2048) >"$work.log" 2>&1; then
        echo "$t: PASS ($(grep -oE '#[0-9]+' "$work.log" | tail -1 | tr -d '#') runs in ${secs}s)"
        passed=$((passed + 1))
    else
        echo "$t: FAIL (log: $work.log)"
        tail -20 "$work.log"
        failed=$((failed + 1))
    fi
    rm -rf "$work"
done
echo "$passed passed, $failed failed"
