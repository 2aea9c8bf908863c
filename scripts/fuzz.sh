#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, one after another,
# and prints per target the executions, exec/s, corpus size and crashes found.
# Exits non-zero if any target found a crash, hang or out-of-memory input.
#
# Usage: scripts/fuzz.sh [seconds-per-target]      (default 60)
# Environment:
#   FUZZ_TARGETS    space-separated subset of targets (default: all)
#   FUZZ_SANITIZER  address (default) or none
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets a stable
# toolchain accept them. Found inputs land in fuzz/artifacts/<target>/, the
# growing corpus in fuzz/corpus/<target>/ and the run logs in fuzz/logs/ (all
# ignored by git); the committed seed corpus is fuzz/seeds/<target>/.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [seconds-per-target]" >&2
    exit 2
fi
sanitizer="${FUZZ_SANITIZER:-address}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
cd "$root"

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir "$fuzz_dir")
fi

# Build everything once up front, so the time budget goes to fuzzing.
cargo fuzz build --fuzz-dir "$fuzz_dir" -s "$sanitizer"

# A single input running longer than this is reported as a hang.
timeout_s=$(( seconds < 25 ? seconds : 25 ))
count_files() { find "$1" -maxdepth 1 -type f 2>/dev/null | wc -l; }
stat_of() { sed -n "s/^stat::$1: *//p" "$2" | tail -n 1; }

summary=()
failed=0
for target in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$target"
    artifacts="$fuzz_dir/artifacts/$target"
    # Not in the artifacts directory: cargo-fuzz shows the newest file there as the crash.
    log="$fuzz_dir/logs/$target.log"
    mkdir -p "$corpus" "$artifacts" "$fuzz_dir/logs"
    before=$(find "$artifacts" -maxdepth 1 -type f \
        \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort)
    seeds=()
    [ -d "$fuzz_dir/seeds/$target" ] && seeds=("$fuzz_dir/seeds/$target")

    echo "== $target: ${seconds}s" >&2
    set +e
    cargo fuzz run --fuzz-dir "$fuzz_dir" -s "$sanitizer" "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout="$timeout_s" \
        -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e

    after=$(find "$artifacts" -maxdepth 1 -type f \
        \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort)
    new=$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d')
    crashes=$(printf '%s' "$new" | grep -c . || true)
    execs=$(stat_of number_of_executed_units "$log")
    rate=$(stat_of average_exec_per_sec "$log")
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        # Died without leaving an input behind (build error, sanitizer abort ...).
        crashes=1
        new="(no artifact; see $log)"
    fi
    summary+=("$(printf '%-26s %12s execs %8s exec/s %7s corpus %3s crashes' \
        "$target" "${execs:-?}" "${rate:-?}" "$(count_files "$corpus")" "$crashes")")
    if [ "$crashes" -gt 0 ]; then
        failed=1
        echo "$target found:" >&2
        printf '  %s\n' $new >&2
        echo "  log: $log" >&2
        echo "  minimize: RUSTC_BOOTSTRAP=1 cargo fuzz tmin --fuzz-dir fuzz -s $sanitizer $target <artifact>" >&2
    fi
done

echo
printf '%s\n' "${summary[@]}"
exit "$failed"
