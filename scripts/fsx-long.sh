#!/usr/bin/env bash
# Long fsx runs in resumable slices: one seed at a time (each a bounded run of OPS
# operations on a fresh mount); results are kept under target/fsx-long/, and a rerun skips
# the seeds already done. Figures go to docs/RELIABILITY.md.
# Usage: scripts/fsx-long.sh [CHUNK_SIZE=4096] [OPS=200000] [SEED...=11 12 13 14 15]
# Prints one line per seed and a last line "N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
chunk=${1:-4096}
ops=${2:-200000}
shift $(( $# > 2 ? 2 : $# ))
seeds=("$@")
((${#seeds[@]})) || seeds=(11 12 13 14 15)
out=target/fsx-long/chunk$chunk-ops$ops
mkdir -p "$out"
passed=0 failed=0
for seed in "${seeds[@]}"; do
    result=$out/seed-$seed
    if [[ ! -s $result ]]; then
        if line=$(scripts/fsx.sh "$chunk" "$ops" "$seed" 2>&1 | grep -E "^seed $seed:"); then :; else line="seed $seed: FAIL (no result)"; fi
        echo "$line" > "$result"
    fi
    cat "$result"
    if grep -q PASS "$result"; then passed=$((passed + 1)); else failed=$((failed + 1)); rm -f "$result"; fi
done
echo "$passed passed, $failed failed"
