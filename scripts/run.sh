#!/usr/bin/env bash
# Sets up (see setup.sh) and starts ComfyUI with Tandem loaded, UI on http://127.0.0.1:8188
# (CPU mode where torch sees no GPU). Extra arguments go to ComfyUI's main.py.
# --demo (first argument) also puts the CPU demo's random-weight model files in ComfyUI's models folder
# (scripts/demo.py) and turns on latent previews: open the template "Tandem demo (CPU)" and run it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
args=(--listen 127.0.0.1 --port "${PORT:-8188}")
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || args+=(--cpu)
if [ "${1:-}" = "--demo" ]; then
  shift
  "$PY" "$TANDEM_ROOT/scripts/demo.py" "$COMFYUI_PATH/models"
  args+=(--preview-method latent2rgb)
  echo "[tandem] demo: in ComfyUI open Templates > Extensions > ComfyUI-Tandem > Tandem demo (CPU) and press Run"
fi
cd "$COMFYUI_PATH"
exec "$PY" main.py "${args[@]}" "$@"
