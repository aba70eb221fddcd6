#!/usr/bin/env bash
# Fuzzes one target for a while in one process on one core (libFuzzer without
# -jobs/-workers): bash fuzz/run.sh TARGET SECONDS
# New inputs go to corpus/TARGET; the seeds (seeds/make_seeds.py) are read
# too when present. Needs cargo-fuzz and a nightly toolchain (or
# RUSTC_BOOTSTRAP=1 with stable). -s none: the engine forbids unsafe code
# but for its counting allocator, and without AddressSanitizer the build is
# smaller and the runs faster on a shared machine.
set -euo pipefail
cd "$(dirname "$0")"
target="$1"
seconds="${2:-600}"
mkdir -p "corpus/$target"
seeds=()
if [ -d "seeds/$target" ]; then seeds=("seeds/$target"); fi
dict=()
if [ -f "dict/$target.dict" ]; then dict=("-dict=dict/$target.dict"); fi
exec cargo +nightly fuzz run -s none --release "$target" "corpus/$target" "${seeds[@]}" -- \
  -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=4096 \
  -print_final_stats=1 "${dict[@]}"
