#!/usr/bin/env bash
# `make e2e-vllm`: fairgate in front of two real vLLM servers (CPU build, tiny local model).
#
# Uses the engines named in FAIRGATE_REAL_VLLM_URLS (comma-separated) if set; otherwise starts
# two with the real-vLLM tool (REAL_VLLM_TOOLS, default ../shared/tools/real-vllm; its
# setup.sh runs first if needed) on ports 8100 and 8200, and stops them afterwards. Each
# engine gets an 80 MB KV cache (40,960 tokens), so that load shows in its metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ -z "${FAIRGATE_REAL_VLLM_URLS:-}" ]; then
  TOOLS=${REAL_VLLM_TOOLS:-../shared/tools/real-vllm}
  [ -d "$TOOLS" ] || { echo "no real-vLLM tool at $TOOLS (set REAL_VLLM_TOOLS)" >&2; exit 2; }
  STATE="${REAL_VLLM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/real-vllm}"
  [ -x "$STATE/venv/bin/python" ] || bash "$TOOLS/setup.sh"
  PORTS=(8100 8200)
  trap 'for p in "${PORTS[@]}"; do bash "$TOOLS/stop.sh" "$p" >/dev/null 2>&1 || true; done' EXIT
  for p in "${PORTS[@]}"; do KV_CACHE_BYTES=${KV_CACHE_BYTES:-80M} bash "$TOOLS/serve.sh" "$p" >/dev/null; done
  export FAIRGATE_REAL_VLLM_URLS="http://127.0.0.1:8100,http://127.0.0.1:8200"
fi
"$PY" -m pytest tests/integration/test_real_vllm.py -v "$@"
