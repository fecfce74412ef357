#!/usr/bin/env bash
# Create .venv with a Python >= 3.12 found on this machine and install the project into it.
# Sourced by scripts/test and scripts/demo; idempotent (re-installs only when pyproject.toml changed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

find_python() {
    local candidates=(python3.13 python3.12 python3)
    local c
    for c in "${candidates[@]}"; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    # pyenv installs that the shims refuse without PYENV_VERSION
    for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3 \
             /usr/local/bin/python3.13 /usr/local/bin/python3.12 /usr/bin/python3.13 /usr/bin/python3.12; do
        if [ -x "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            echo "$c"; return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    PY="$(find_python)" || { echo "error: django-tasks-shared needs Python >= 3.12 (Django 6); none found on PATH or under ~/.pyenv" >&2; exit 1; }
    echo "bootstrap: creating .venv with $PY ($("$PY" --version))" >&2
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    echo "bootstrap: installing django-tasks-shared[test,bench] into .venv" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test,bench]" >&2
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"

# The interpreters of the supported Python versions for nox (noxfile.py), as directories to put
# on PATH: pyenv's shims refuse `python3.12` without PYENV_VERSION, so each one's own bin/.
supported_python_dirs() {
    local minor c dirs=""
    for minor in 3.12 3.13; do
        if command -v "python$minor" >/dev/null 2>&1 && "python$minor" -c '' 2>/dev/null; then
            continue
        fi
        for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$minor".*/bin/python"$minor" \
                 /usr/local/bin/python"$minor" /usr/bin/python"$minor"; do
            if [ -x "$c" ] && "$c" -c '' 2>/dev/null; then
                dirs="$dirs:$(dirname "$c")"; break
            fi
        done
    done
    echo "${dirs#:}"
}

# The browser tests (tests/test_web_browser.py) drive Debian's chromium through Playwright; never a
# downloaded browser. Installed here when missing and we may (root, apt-get present: CI is a fresh
# Debian machine as root); otherwise those tests skip, saying why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian's chromium for the browser tests" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >/dev/null 2>&1 \
        || echo "bootstrap: warning: could not install chromium; the browser tests will skip" >&2
fi
