#!/usr/bin/env bash
# Sets up (see setup.sh) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
install_reqs "$TANDEM_ROOT/tests/requirements.txt" test
cd "$TANDEM_ROOT"
[ $# -gt 0 ] || set -- tests   # tests/pytest.ini roots pytest below the package
exec "$PY" -m pytest "$@"
