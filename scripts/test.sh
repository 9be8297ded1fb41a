#!/usr/bin/env bash
# Sets up (see setup.sh) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
install_reqs "$TANDEM_ROOT/tests/requirements.txt" test
# tests/test_browser.py drives Debian's chromium: installed when missing where this runs as root with apt-get (else
# that test skips, saying why).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[tandem] installing chromium for tests/test_browser.py"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium fonts-liberation; } >/dev/null || echo "[tandem] could not install chromium: tests/test_browser.py skips"
fi
cd "$TANDEM_ROOT"
[ $# -gt 0 ] || set -- tests   # tests/pytest.ini roots pytest below the package
exec "$PY" -m pytest "$@"
