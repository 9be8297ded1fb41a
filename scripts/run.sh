#!/usr/bin/env bash
# Sets up (see setup.sh) and starts ComfyUI with Tandem loaded, UI on http://127.0.0.1:8188
# (CPU mode where torch sees no GPU). Extra arguments go to ComfyUI's main.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
args=(--listen 127.0.0.1 --port "${PORT:-8188}")
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || args+=(--cpu)
cd "$COMFYUI_PATH"
exec "$PY" main.py "${args[@]}" "$@"
