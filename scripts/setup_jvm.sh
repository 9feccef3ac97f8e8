#!/usr/bin/env bash
# Installs what android_demo's JVM core tests need (android_demo/scripts/test_core.sh):
# a JDK 17 and JUnit 4 with Hamcrest, from Debian's packages. Needs root and apt;
# does nothing where they are already installed.
set -euo pipefail

have_jvm() {
    command -v javac >/dev/null && command -v java >/dev/null \
        && [ -f /usr/share/java/junit4.jar ] && [ -f /usr/share/java/hamcrest-core.jar ]
}

if have_jvm; then
    echo "setup_jvm: $(javac -version 2>&1), junit4 and hamcrest present"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "setup_jvm: no apt-get; install a JDK 17, JUnit 4 and Hamcrest by hand" >&2
    exit 1
fi
run=()
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "setup_jvm: not root and no sudo; run as root to install openjdk-17-jdk-headless junit4 libhamcrest-java" >&2
        exit 1
    fi
    run=(sudo)
fi
# Slim Debian images lack this folder, and the JDK's postinst fails without it.
"${run[@]}" mkdir -p /usr/share/man/man1
"${run[@]}" apt-get update -qq
"${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    openjdk-17-jdk-headless junit4 libhamcrest-java >/dev/null
have_jvm && echo "setup_jvm: installed $(javac -version 2>&1), junit4 and hamcrest"
