#!/usr/bin/env bash
# Builds android_demo/core with javac and runs its JUnit 4 tests: no Gradle, no
# network. Needs a JDK 17 and Debian's junit4 and libhamcrest-java
# (scripts/setup_jvm.sh installs them); without them it says so and skips.
# Output goes to android_demo/core/build/.
set -euo pipefail
core="$(cd "$(dirname "$0")/../core" && pwd)"
junit=${JUNIT_JAR:-/usr/share/java/junit4.jar}
hamcrest=${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}

if [ "${FALCON_TF_SKIP_JVM:-0}" = 1 ]; then
    echo "jvm: skipped (FALCON_TF_SKIP_JVM=1)"
    exit 0
fi
missing=""
command -v javac >/dev/null && command -v java >/dev/null || missing="a JDK (javac, java)"
for jar in "$junit" "$hamcrest"; do
    [ -f "$jar" ] || missing="${missing:+$missing, }$jar"
done
if [ -n "$missing" ]; then
    echo "jvm: skipped, missing $missing; run 'sudo bash scripts/setup_jvm.sh' (or 'make test' as root) to enable"
    exit 0
fi

build="$core/build/javac"
rm -rf "$build"
mkdir -p "$build/main" "$build/test"
find "$core/src/main/java" -name '*.java' > "$build/main.txt"
find "$core/src/test/java" -name '*.java' > "$build/test.txt"
javac --release 17 -Xlint:all -Werror -encoding UTF-8 -d "$build/main" @"$build/main.txt"
javac --release 17 -encoding UTF-8 -cp "$build/main:$junit" -d "$build/test" @"$build/test.txt"

classes=$(cd "$core/src/test/java" && find . -name '*Test.java' | sed 's|^\./||; s|\.java$||; s|/|.|g' | sort)
# Test resources are read from the source tree (the JVM tests' working directory).
cd "$core"
set +e
java -cp "$build/main:$build/test:$core/src/test/resources:$junit:$hamcrest" \
    org.junit.runner.JUnitCore $classes | tee "$build/junit.log"
status=${PIPESTATUS[0]}
set -e
# JUnitCore closes with "OK (N tests)" or "Tests run: N,  Failures: F"; say it plainly too.
ok=$(sed -n 's/^OK (\([0-9]*\) tests*)$/\1/p' "$build/junit.log")
if [ -n "$ok" ]; then
    echo "jvm: $ok passed, 0 failed"
else
    run=$(sed -n 's/^Tests run: \([0-9]*\), *Failures: \([0-9]*\)$/\1 \2/p' "$build/junit.log")
    if [ -n "$run" ]; then
        set -- $run
        echo "jvm: $(($1 - $2)) passed, $2 failed"
    fi
fi
exit "$status"
