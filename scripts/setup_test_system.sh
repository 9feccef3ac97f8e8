#!/usr/bin/env bash
# What `make test` runs before the tests: as root with apt-get, installs the
# software Vulkan GPU (setup_gpu.sh) and the JDK with JUnit (setup_jvm.sh), each
# a no-op where already present. Otherwise installs nothing and says, in one
# line each, which tests will skip and how to enable them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    bash "$here/setup_gpu.sh"
    bash "$here/setup_jvm.sh"
    exit 0
fi
if [ ! -f /usr/share/vulkan/icd.d/lvp_icd.json ]; then
    echo "make test: GPU-delegate tests will skip (no lavapipe); enable them with 'sudo bash scripts/setup_gpu.sh'"
fi
if ! command -v javac >/dev/null || [ ! -f /usr/share/java/junit4.jar ]; then
    echo "make test: JVM tests will skip (no JDK or JUnit 4); enable them with 'sudo bash scripts/setup_jvm.sh'"
fi
