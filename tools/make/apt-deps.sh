#!/usr/bin/env bash
# Installs the Debian packages given as arguments, only those missing, so a
# re-run costs one dpkg-query. `apt-get update` runs once, only when needed.
set -euo pipefail

missing=()
for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    exit 0
fi

sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || { echo "apt: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
echo "apt: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Bounded: a dead mirror must fail the run, not hang it.
"${sudo[@]}" timeout 600 apt-get update -qq
"${sudo[@]}" timeout 1200 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
