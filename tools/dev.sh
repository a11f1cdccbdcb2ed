#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash tools/dev.sh demo [ARGS...]   set up .venv (first time) and run `emstream demo`
#   bash tools/dev.sh test [ARGS...]   set up .venv (first time) and run the whole test suite
#   bash tools/dev.sh setup            only set up
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${EMSTREAM_VENV:-$here/.venv}"
py="${PYTHON:-python3}"

setup() {
  local stamp="$venv/.emstream-installed"
  if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
  fi
  # Reinstall when the dependency list changed.
  local want; want="$(cat pyproject.toml tools/constraints.txt | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "emstream: installing into $venv (first run or changed dependencies: a few minutes;" \
         "pip's progress follows)" >&2
    "$venv/bin/python" -m pip install -q --no-cache-dir --upgrade pip
    # torch is pinned to a CPU wheel in constraints.txt: an open range pulls a multi-GB CUDA build.
    # One line per package (not -q): a quiet install looks hung for minutes.
    # (pipefail: a failing pip stops here; grep finding nothing does not)
    "$venv/bin/python" -m pip install --no-cache-dir --progress-bar off -c tools/constraints.txt -e ".[all,test]" \
      | { grep --line-buffered -E "^(Collecting|Successfully installed)" || true; } >&2
    echo "$want" > "$stamp"
    echo "emstream: installed" >&2
  fi
}

cmd="${1:-demo}"; shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$venv/bin/emstream" demo "$@" ;;
  test)
    setup
    export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
    set +e
    "$venv/bin/python" -m pytest "$@"
    rc=$?
    set -e
    # pytest exit 5 means "no tests were collected": that is a failure here, not a pass.
    if [ "$rc" -eq 5 ]; then echo "no tests ran: failing" >&2; exit 1; fi
    exit "$rc"
    ;;
  *) echo "usage: bash tools/dev.sh {demo|test|setup} [ARGS...]" >&2; exit 2 ;;
esac
