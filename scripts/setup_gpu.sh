#!/usr/bin/env bash
# Installs what ai-edge-litert's GPU accelerator needs on a machine without a GPU:
# Mesa's lavapipe software Vulkan driver, version 24 or newer (Dawn rejects
# bookworm's 22.3), from Debian bookworm-backports. Needs root and apt; does
# nothing where a new enough driver is already installed.
set -euo pipefail

have_lavapipe() {
    local v
    v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
    [ -n "$v" ] && [ -f /usr/share/vulkan/icd.d/lvp_icd.json ] && [ "${v%%.*}" -ge 24 ] 2>/dev/null
}

if have_lavapipe; then
    echo "setup_gpu: lavapipe $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) present"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup_gpu: not root or no apt-get; GPU-delegate tests will be skipped" >&2
    exit 0
fi
. /etc/os-release
if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" \
        > /etc/apt/sources.list.d/falcon-tf-backports.list
    target=(-t bookworm-backports)
else
    target=()
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${target[@]}" mesa-vulkan-drivers >/dev/null
have_lavapipe && echo "setup_gpu: installed lavapipe $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
