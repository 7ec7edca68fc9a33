#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz / libFuzzer of what a peer's bytes go through:
#   link_frame  — the link frame decoder (tether_proto::link::LinkFrame::decode), run by the
#                 agent on every frame from the hub;
#   hub_alerts  — the hub's path for an agent's frame into its store: decode (or the probe
#                 of an oversized frame), the alert edge checks, the SQLite commit, reading
#                 back, the acknowledgement accounting.
#
#   scripts/fuzz.sh            # fuzz every target for 60 s each
#   scripts/fuzz.sh 600        # ... for 10 minutes each
#   FUZZ_TARGET=hub_alerts FUZZ_JOBS=2 scripts/fuzz.sh 300
#
# What it does:
#   1. installs cargo-fuzz (`cargo install cargo-fuzz --locked`) if it is missing;
#   2. builds fuzz/ (a separate cargo project, excluded from the main workspace) and runs the
#      target for N seconds, starting from the seed frames in fuzz/seeds/<target>/ and the
#      corpus it has grown in fuzz/corpus/<target>/ (git-ignored);
#   3. exits non-zero if libFuzzer found a crash; the input is saved under
#      fuzz/artifacts/<target>/ — reproduce it with
#      `scripts/fuzz.sh --repro fuzz/artifacts/<target>/crash-…`.
#
# Toolchain: cargo-fuzz needs nightly-only compiler flags (-Zsanitizer=address,
# -Cpasses=sancov-module, …). If a nightly toolchain is installed (`rustup toolchain list`),
# it is used (FUZZ_TOOLCHAIN=stable forces stable). Otherwise the stable toolchain is used with RUSTC_BOOTSTRAP=1, which lets stable
# rustc accept the -Z flags (stable ships the AddressSanitizer runtime for
# x86_64-unknown-linux-gnu). RUSTC_BOOTSTRAP is meant for building the compiler itself; it is
# fine for a fuzzing build, never for release builds. Set FUZZ_SANITIZER=none to build
# without ASan (faster; the decoder is safe Rust, so ASan mostly guards the dependencies).
#
# The always-on, stable counterpart runs with `cargo test`: crates/tether-link/tests/decoder_fuzz.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(link_frame hub_alerts)
if [[ -n "${FUZZ_TARGET:-}" ]]; then targets=("$FUZZ_TARGET"); fi
jobs="${FUZZ_JOBS:-1}"
sanitizer="${FUZZ_SANITIZER:-address}"

if [[ "${1:-}" == "--repro" ]]; then
    repro="${2:?usage: scripts/fuzz.sh --repro <crash file>}"
    seconds=0
else
    seconds="${1:-60}"
    [[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [seconds] | --repro <file>" >&2; exit 2; }
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# FUZZ_TOOLCHAIN=auto (default: nightly when installed), nightly, or stable.
choice="${FUZZ_TOOLCHAIN:-auto}"
if [[ "$choice" == auto ]]; then
    if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then choice=nightly; else choice=stable; fi
fi
toolchain=()
if [[ "$choice" == nightly ]]; then
    toolchain=(+nightly)
    echo "==> using the nightly toolchain"
else
    export RUSTC_BOOTSTRAP=1
    echo "==> stable rustc with RUSTC_BOOTSTRAP=1"
fi

cd fuzz
if [[ -n "${repro:-}" ]]; then
    # The target is the artifact's directory name: fuzz/artifacts/<target>/crash-…
    target="${FUZZ_TARGET:-$(basename "$(dirname "$repro")")}"
    case "$repro" in /*) ;; *) repro="../$repro" ;; esac
    exec cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" "$target" "$repro"
fi

for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "==> fuzzing $target for ${seconds}s (jobs: $jobs, sanitizer: $sanitizer)"
    cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" --jobs "$jobs" "$target" \
        "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -print_final_stats=1
    echo "==> $target: no crash in ${seconds}s; corpus: fuzz/corpus/$target ($(ls "corpus/$target" | wc -l) inputs)"
done
