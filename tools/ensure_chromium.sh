#!/usr/bin/env bash
# `make test` runs tests/test_panel_in_browser.py in the system's Chromium (Playwright's own browser download
# is not reachable from this project's machines). Installs it where it can (root with apt-get); otherwise
# stops with the one line that says what to do, before the suite starts.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "make test: installing chromium with apt-get (for tests/test_panel_in_browser.py)"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
    exit 0
  fi
fi
echo "make test needs Chromium for tests/test_panel_in_browser.py: install it (sudo apt-get install chromium), then run make test again" >&2
exit 1
