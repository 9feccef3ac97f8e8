package falcontf.core;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;

/**
 * Build-time tool (the app's {@code copyFalconAssets} Gradle task runs it): copies one
 * preset's causal LM variant, its tokenizer.json and manifest.json from
 * {@code artifacts/<preset>/} into an assets folder, checking each file's sha256 and
 * size against the manifest before and after the copy.
 *
 * <pre>
 * java falcontf.core.AssetPackager --artifacts ARTIFACTS_DIR --preset NAME [--variant fp16] --out ASSETS_DIR
 * </pre>
 *
 * The output keeps the artifact layout ({@code manifest.json}, {@code tflite/...},
 * {@code tokenizer/tokenizer.json}) and adds {@code selection.json} naming the chosen
 * variant for the app.
 */
public final class AssetPackager {
    public static final String SELECTION_FILE = "selection.json";

    private AssetPackager() {}

    /** Copies and checks; returns the paths written, relative to {@code out}. */
    public static List<String> copy(Path artifacts, String preset, String variant, Path out) throws IOException {
        Path artifactDir = artifacts.resolve(preset);
        Path manifestPath = artifactDir.resolve(FalconContract.MANIFEST_FILE);
        if (!Files.isRegularFile(manifestPath)) {
            throw new NoSuchFileException(manifestPath.toString(), null, "no manifest: export the causal LM first with "
                    + "`falcon-tf export --preset " + preset + " --format tflite --task causal_lm`");
        }
        Manifest manifest = Manifest.parse(new String(Files.readAllBytes(manifestPath), StandardCharsets.UTF_8),
                manifestPath.toString());
        Manifest.CausalLmInfo lm = manifest.causalLm();
        Manifest.FileEntry model = lm.variant(variant);
        Manifest.FileEntry tokenizer = manifest.tokenizer().file;

        List<String> written = new ArrayList<>();
        Files.createDirectories(out);
        for (Manifest.FileEntry entry : new Manifest.FileEntry[] {model, tokenizer}) {
            Path from = artifactDir.resolve(entry.path);
            if (!Files.isRegularFile(from)) {
                throw new NoSuchFileException(from.toString(), null, "listed in " + manifestPath + " but missing");
            }
            Path to = out.resolve(entry.path);
            Files.createDirectories(to.getParent());
            Path tmp = to.resolveSibling(to.getFileName() + ".tmp");
            Files.copy(from, tmp, StandardCopyOption.REPLACE_EXISTING);
            try (InputStream in = Files.newInputStream(tmp)) {
                Manifest.verify(entry, in, from.toString());
            } catch (IOException | RuntimeException e) {
                Files.deleteIfExists(tmp);
                throw e;
            }
            Files.move(tmp, to, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            written.add(entry.path);
        }
        Files.copy(manifestPath, out.resolve(FalconContract.MANIFEST_FILE), StandardCopyOption.REPLACE_EXISTING);
        written.add(FalconContract.MANIFEST_FILE);
        String selectedVariant = null;
        for (java.util.Map.Entry<String, Manifest.FileEntry> e : lm.variants.entrySet()) {
            if (e.getValue() == model) selectedVariant = e.getKey();
        }
        String selection = "{\"preset\": " + quote(preset) + ", \"variant\": " + quote(selectedVariant)
                + ", \"model\": " + quote(model.path) + "}\n";
        try (OutputStream o = Files.newOutputStream(out.resolve(SELECTION_FILE))) {
            o.write(selection.getBytes(StandardCharsets.UTF_8));
        }
        written.add(SELECTION_FILE);
        return written;
    }

    private static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') out.append('\\').append(c);
            else if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
            else out.append(c);
        }
        return out.append('"').toString();
    }

    public static void main(String[] args) {
        String artifacts = "artifacts";
        String preset = null;
        String variant = null;
        String out = null;
        for (int i = 0; i < args.length; i++) {
            String value = i + 1 < args.length ? args[i + 1] : null;
            switch (args[i]) {
                case "--artifacts": artifacts = value; i++; break;
                case "--preset": preset = value; i++; break;
                case "--variant": variant = value; i++; break;
                case "--out": out = value; i++; break;
                default:
                    fail("unknown argument " + args[i] + "; usage: --artifacts DIR --preset NAME [--variant V] --out DIR");
            }
        }
        if (preset == null || preset.isEmpty() || out == null || artifacts == null) {
            fail("--preset and --out are required (and --artifacts, default ./artifacts).");
        }
        try {
            for (String path : copy(Paths.get(artifacts), preset, variant, Paths.get(out))) {
                System.out.println("copied and verified " + path);
            }
        } catch (NoSuchFileException e) {
            fail("missing file " + e.getFile() + (e.getReason() == null ? "" : ": " + e.getReason()));
        } catch (IOException | IllegalArgumentException e) {
            fail(e.getMessage());
        }
    }

    private static void fail(String message) {
        System.err.println("copyFalconAssets: " + message);
        System.exit(1);
    }
}
