#!/usr/bin/env bash
# Static checks of the deployment files (no Docker engine on the project's
# machines): docker-compose.yml against the Compose Specification schema, and the
# Dockerfile's structure against the repo. Needs the venv made by scripts/testbed.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${LXGATE_TESTBED_PYTHON:-$ROOT/target/testbed-venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "check-static: $PY not found; run scripts/testbed.sh first" >&2
    exit 1
fi
export LXGATE_TESTBED_PYTHON="$PY"

"$PY" scripts/check-compose.py --self-test docker-compose.yml
bash scripts/check-dockerfile.sh Dockerfile
echo "check-static: ok"
