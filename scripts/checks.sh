#!/usr/bin/env bash
# The static checks: lint, format, types, import layers. Runs them all and
# fails if any failed. Uses the project's .venv (made by `./dev test`) when it
# exists, else the tools on PATH.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=""
[ -x .venv/bin/python ] && bin=.venv/bin/

failed=()
check() {
  local name="$1"; shift
  echo "== $name: $*"
  if ! "$@"; then
    failed+=("$name")
  fi
}

check lint "${bin}ruff" check .
check format "${bin}ruff" format --check .
check types "${bin}mypy" src
check imports "${bin}lint-imports"

if [ ${#failed[@]} -gt 0 ]; then
  echo "checks failed: ${failed[*]}" >&2
  exit 1
fi
echo "all checks passed"
