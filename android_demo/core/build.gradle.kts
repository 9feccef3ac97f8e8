// The app's plain-Java logic (tokenizer, samplers, generation loop, manifest).
// No dependencies, so it also builds and tests without Gradle:
// android_demo/scripts/test_core.sh (javac + JUnit 4), which `make test` runs.
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

dependencies {
    testImplementation(libs.junit)
}
