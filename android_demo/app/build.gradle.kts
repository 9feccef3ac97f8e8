plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

android {
    namespace = "falcontf.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "falcontf.demo"
        // 26 (Android 8.0): java.nio and java.util.stream used by :core, and what
        // LiteRT's GPU delegate needs (OpenGL ES 3.1 / OpenCL) is common from there on.
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
    androidResources {
        // The interpreter memory-maps the model straight from the APK: keep it stored.
        noCompress += "tflite"
    }
    sourceSets["main"].assets.srcDir(layout.buildDirectory.dir("generated/falconAssets"))
}

dependencies {
    implementation(project(":core"))
    implementation(libs.litert)
    implementation(libs.litert.gpu)
    implementation(libs.litert.gpu.api)
    implementation(libs.kotlinx.coroutines.android)
    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.appcompat)
    implementation(libs.androidx.lifecycle.runtime.ktx)
}

// copyFalconAssets: the chosen preset's causal LM variant, tokenizer.json and
// manifest.json from `falcon-tf export`'s artifacts/ into the app's assets (under
// falcon/), each file's sha256 and size checked against the manifest. The work is
// core's AssetPackager, which the JVM tests cover.
val falconTool: Configuration by configurations.creating
dependencies { falconTool(project(":core")) }

val falconAssetsDir = layout.buildDirectory.dir("generated/falconAssets/falcon")
val copyFalconAssets by tasks.registering(JavaExec::class) {
    group = "falcon"
    description = "Copies artifacts/<falconPreset> into the app's assets and checks their sha256."
    val preset = providers.gradleProperty("falconPreset")
    val variant = providers.gradleProperty("falconVariant").orElse("")
    val artifacts = rootProject.layout.projectDirectory.dir(
        providers.gradleProperty("falconArtifacts").orElse("../artifacts"))
    classpath = falconTool
    mainClass.set("falcontf.core.AssetPackager")
    inputs.dir(artifacts.map { it.dir(preset.get()) })
    outputs.dir(falconAssetsDir)
    argumentProviders.add(CommandLineArgumentProvider {
        val args = mutableListOf("--artifacts", artifacts.get().asFile.path, "--preset", preset.get(),
            "--out", falconAssetsDir.get().asFile.path)
        if (variant.get().isNotEmpty()) args += listOf("--variant", variant.get())
        args
    })
    doFirst { delete(falconAssetsDir) }
}
tasks.named("preBuild") { dependsOn(copyFalconAssets) }
