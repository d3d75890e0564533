#!/usr/bin/env bash
# Regenerates man/vaultfs.1 from the clap definitions (src/cli/manpage.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
VAULTFS_WRITE_MAN=1 cargo test --locked --quiet --test manpage committed_man_page_is_up_to_date
echo "wrote man/vaultfs.1"
