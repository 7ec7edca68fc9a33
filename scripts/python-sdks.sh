#!/usr/bin/env bash
# Installs the third-party protocol clients the tests drive tether with, into a virtual
# environment of the project's own: the Agent Client Protocol SDK (`agent-client-protocol`,
# the editor side of `tether acp`) and the official MCP SDK (`mcp`, the AI-program side of
# `tether mcp`), both from PyPI, at pinned versions. Idempotent: an environment that already
# has them is left alone.
#
#   scripts/python-sdks.sh          # -> target/python-sdk/bin/python
#
# Tests find the interpreter through TETHER_PYTHON (set by scripts/test.sh), else at
# target/python-sdk/bin/python.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${TETHER_PYTHON_VENV:-$ROOT/target/python-sdk}"
ACP_VERSION="0.12.1"
MCP_VERSION="2.3.0"

want() {
    "$VENV/bin/python" - "$ACP_VERSION" "$MCP_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
ok = version("agent-client-protocol") == sys.argv[1] and version("mcp") == sys.argv[2]
sys.exit(0 if ok else 1)
PY
}

if [ -x "$VENV/bin/python" ] && want; then
    echo "python SDKs: present in $VENV"
    exit 0
fi
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || { echo "python-sdks: python3 is needed (Debian: apt-get install python3 python3-venv)" >&2; exit 1; }
echo "==> creating $VENV (agent-client-protocol $ACP_VERSION, mcp $MCP_VERSION)"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "agent-client-protocol==$ACP_VERSION" "mcp==$MCP_VERSION"
want || { echo "python-sdks: the installed versions do not match" >&2; exit 1; }
echo "python SDKs: installed in $VENV"
