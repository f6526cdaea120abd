#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (`fuzz/`, cargo
# fuzz with libFuzzer), each target for FUZZ_SECONDS (default 20: the short
# bounded run `make test` does; `make fuzz FUZZ_SECONDS=600` explores).
#
# Each run starts from the committed seeds and regressions, plus the
# corpus earlier runs on this machine grew (fuzz/corpus, not committed). A
# crash stops with its input under fuzz/artifacts/<target>/: copy it to
# fuzz/regressions/<target>/ with the fix, and `cargo test` (the unit test
# `fuzzing::tests::committed_inputs_hold`) replays it from then on.
#
# The machine's one stable toolchain builds the targets: `-s none` asks for
# no sanitizer (sanitizers need nightly), which keeps libFuzzer's coverage
# instrumentation and `cfg(fuzzing)`; `--debug-assertions` keeps Rust's
# overflow checks and `debug_assert!`s on in the optimised build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_EACH=${FUZZ_SECONDS:-20}
# libFuzzer's random seed: fixed by `make test` (FUZZ_SEED=20261130, so CI
# explores the same way each time), drawn and printed otherwise, so that a
# finding can be explored again.
SEED=${FUZZ_SEED:-$(( (RANDOM << 15 | RANDOM) + 1 ))}
echo "== fuzz seed $SEED"
TARGETS=${FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^lxgate-fuzz$')}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz@0.13.2
fi

echo "== building the fuzz targets"
(cd fuzz && cargo fuzz build --sanitizer none --release --debug-assertions)

# The targets run as built (not through `cargo fuzz run`, which would
# rebuild first whenever a source file changed since).
host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="${CARGO_TARGET_DIR:-fuzz/target}/$host/release"
failed=()
for t in $TARGETS; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    inputs=("fuzz/corpus/$t" "fuzz/seeds/$t")
    [ -d "fuzz/regressions/$t" ] && inputs+=("fuzz/regressions/$t")
    echo "== fuzz $t for ${SECONDS_EACH}s"
    # New inputs go to the first corpus directory only; the seeds stay as
    # committed. 2 GiB RSS and 10 s per input are what one input may take.
    log="fuzz/artifacts/$t/last-run.log"
    if "$bin_dir/$t" "${inputs[@]}" \
        -artifact_prefix="fuzz/artifacts/$t/" -seed="$SEED" \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 \
        -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(Done|stat::(new_units_added|peak_rss_mb))' "$log" || true
    else
        # What failed and the input that did it; the whole run is in $log.
        grep -E -A12 'panicked at|ERROR: libFuzzer' "$log" | head -n 40 || true
        grep -E 'Test unit written to' "$log" || true
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found failures in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzzing: ${SECONDS_EACH}s each, no failure in: ${TARGETS//$'\n'/ }"
