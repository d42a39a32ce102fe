#!/usr/bin/env bash
# Builds the coverage-guided fuzz targets with libFuzzer on the stable toolchain and runs each
# for a while. Fails (exit 1) on the first target that crashes, printing the input's path.
#
#   agent/fuzz/run.sh                       # smoke: every target for 15 s
#   agent/fuzz/run.sh --seconds 600 --target datagram_transport --jobs 2
#   agent/fuzz/run.sh --build-only
#
# Options: --seconds N (per target), --target NAME (repeatable), --jobs N (parallel libFuzzer
# jobs per target), --build-only, --list. The working corpus grows in agent/fuzz/corpus/<target>
# next to the committed seed-* files (only those are committed); crashes land in
# agent/fuzz/artifacts/<target>/. Build output goes to $CARGO_TARGET_DIR/fuzz, or
# agent/fuzz/target without one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

seconds=15
jobs=1
build_only=false
targets=()
all_targets=(datagram_open datagram_transport gossip_member key_file config_load kernel_cmdline
    installer_response token_and_state lb_upstreams)
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --target) targets+=("$2"); shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        --build-only) build_only=true; shift ;;
        --list) printf '%s\n' "${all_targets[@]}"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz: installing g++ (libFuzzer is C++)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi

# The instrumentation cargo-fuzz asks rustc for, spelled as stable codegen options: libFuzzer's
# inline 8-bit edge counters and PC table (coverage feedback), comparison tracing (so it can solve
# magic values and lengths), stack depth, plus debug assertions and overflow checks so that
# arithmetic bugs crash instead of wrapping. Only sanitizers (-Zsanitizer) need nightly; none is
# needed for safe Rust to report a panic. An explicit --target keeps these flags off build
# scripts and proc macros, which are not linked with libFuzzer.
host="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
build_args=()
for t in "${targets[@]}"; do build_args+=(--bin "$t"); done
start=$(date +%s)
cargo build --quiet --locked --release --target "$host" "${build_args[@]}"
echo "fuzz: built ${#targets[@]} target(s) in $(( $(date +%s) - start )) s"
$build_only && exit 0

bin="$CARGO_TARGET_DIR/$host/release"
dict_for() {
    case "$1" in
        datagram_open|datagram_transport) echo chitchat.dict ;;
        gossip_member|lb_upstreams) echo gossip.dict ;;
        config_load) echo config.dict ;;
        kernel_cmdline) echo cmdline.dict ;;
        *) echo "" ;;
    esac
}
max_len_for() {
    case "$1" in
        datagram_open|datagram_transport) echo 8192 ;;
        config_load|gossip_member|lb_upstreams) echo 4096 ;;
        *) echo 1024 ;;
    esac
}

failed=0
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    artifacts="artifacts/$t/"
    mkdir -p "$corpus" "$artifacts"
    log="$(mktemp)"
    args=(-max_total_time="$seconds" -max_len="$(max_len_for "$t")" -timeout=10 -rss_limit_mb=2048
        -artifact_prefix="$artifacts" -print_final_stats=1)
    dict="$(dict_for "$t")"
    [ -n "$dict" ] && args+=(-dict="$dict")
    if [ "$jobs" -gt 1 ]; then
        args+=(-jobs="$jobs" -workers="$jobs")
    fi
    if "$bin/$t" "${args[@]}" "$corpus" >"$log" 2>&1; then
        # the last status line: executions, coverage, corpus
        stats="$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -E 's/ +/ /g')"
        echo "fuzz: $t ok: ${stats:-no stats}"
    else
        failed=1
        echo "fuzz: $t FAILED"
        cat "$log" fuzz-*.log 2>/dev/null | grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' |
            head -5 || true
        cat "$log" fuzz-*.log 2>/dev/null | grep -o "written to $artifacts[^ ]*" | sed 's/^written to //' |
            sort -u | sed "s|^|fuzz: input: agent/fuzz/|" || true
        echo "fuzz: reproduce with: $bin/$t <input>"
    fi
    if [ "$jobs" -gt 1 ]; then
        # with jobs, libFuzzer writes each job's output to fuzz-<n>.log
        for job in fuzz-*.log; do
            [ -f "$job" ] || continue
            stats="$(grep -E '^#[0-9]+' "$job" | tail -1 | sed -E 's/ +/ /g')"
            echo "fuzz: $t ${job%.log}: ${stats:-no stats}"
        done
    fi
    rm -f "$log" fuzz-*.log
    # scratch dirs of target processes that have exited (see scratch_dir in src/lib.rs)
    for dir in /dev/shm/rke2-bootstrap-fuzz-* "${TMPDIR:-/tmp}"/rke2-bootstrap-fuzz-*; do
        [ -d "$dir" ] || continue
        kill -0 "${dir##*-}" 2>/dev/null || rm -rf "$dir"
    done
    [ "$failed" -eq 0 ] || break
done
exit "$failed"
