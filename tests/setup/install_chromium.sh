#!/usr/bin/env bash
# Installs Debian's chromium (headless) for the browser test, tests/test_web_ui.py.
#
# `make test` runs this before pytest. It is quiet and idempotent, and it never
# fails: when it cannot install (not root and no passwordless sudo, no apt-get,
# apt failed), it writes why to $STATUS_FILE and exits 0; the browser test then
# skips and quotes that line. apt's own output goes to $LOG_FILE.
set -u

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STATE_DIR="$ROOT/.stepflow/test-setup"
STATUS_FILE="$STATE_DIR/chromium.status"
LOG_FILE="$STATE_DIR/chromium-install.log"
mkdir -p "$STATE_DIR"

done_with() { # done_with MESSAGE: record the outcome, exit 0 whatever it was
    echo "$1" >"$STATUS_FILE"
    exit 0
}

if [ -n "${STEPFLOW_CHROMIUM:-}" ] && [ -x "${STEPFLOW_CHROMIUM}" ]; then
    done_with "ok: STEPFLOW_CHROMIUM=$STEPFLOW_CHROMIUM"
fi
if [ -x /usr/bin/chromium ]; then
    done_with "ok: /usr/bin/chromium is installed"
fi
if [ "${STEPFLOW_SKIP_BROWSER_INSTALL:-}" = "1" ]; then
    done_with "not installed: STEPFLOW_SKIP_BROWSER_INSTALL=1"
fi
if ! command -v apt-get >/dev/null 2>&1; then
    done_with "not installed: no apt-get on this machine (install chromium yourself, or set STEPFLOW_CHROMIUM to a Chromium/Chrome binary)"
fi

if [ "$(id -u)" = "0" ]; then
    AS_ROOT=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    AS_ROOT=(sudo -n)
else
    done_with "not installed: not root and no passwordless sudo (run: sudo apt-get install -y --no-install-recommends chromium)"
fi

apt_install() {
    "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive timeout 900 \
        apt-get install -y -q -o DPkg::Lock::Timeout=120 --no-install-recommends chromium \
        >>"$LOG_FILE" 2>&1
}

echo "test setup: installing Debian's chromium for the browser test (log: $LOG_FILE)"
start=$(date +%s)
# The package lists may be missing or stale on a fresh machine: refresh them and try again.
if ! apt_install; then
    "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive timeout 300 \
        apt-get update -q -o DPkg::Lock::Timeout=120 >>"$LOG_FILE" 2>&1
    if ! apt_install; then
        done_with "not installed: apt-get install chromium failed (see $LOG_FILE: $(tail -n 1 "$LOG_FILE"))"
    fi
fi
if [ ! -x /usr/bin/chromium ]; then
    done_with "not installed: apt-get succeeded but /usr/bin/chromium is missing (see $LOG_FILE)"
fi
echo "test setup: chromium installed in $(($(date +%s) - start)) s"
done_with "ok: installed by tests/setup/install_chromium.sh"
