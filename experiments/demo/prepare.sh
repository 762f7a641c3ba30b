#!/usr/bin/env bash
# `make demo` set-up beyond Python packages: the Fashion-MNIST Debian package (the demo's data) and
# Chromium (plotly's PNG export; without it the demo writes HTML only and says so).
set -uo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo -n"; fi
need=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    echo "demo: installing ${need[*]} (apt)"
    if ! ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null); then
        echo "demo: could not install ${need[*]}; install them with apt (Fashion-MNIST is required, chromium optional)" >&2
    fi
fi
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ]; then
    echo "demo: Fashion-MNIST is missing: apt-get install dataset-fashion-mnist" >&2
    exit 1
fi
exit 0
