package falcontf.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.stream.Stream;
import org.junit.After;
import org.junit.Before;
import org.junit.Test;

public class ManifestTest {
    static final byte[] MODEL = "not really a flatbuffer".getBytes(StandardCharsets.UTF_8);
    static final byte[] TOKENIZER = "{\"model\": {}}".getBytes(StandardCharsets.UTF_8);

    static String sha(byte[] data) {
        try {
            return Manifest.sha256(new ByteArrayInputStream(data));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** A manifest in the exporters' shape: a files listing plus a causal_lm section. */
    static String manifest(String causalLm) {
        return "{\"format_version\": 1, \"preset\": \"tiny\",\n"
                + " \"tokenizer\": {\"files\": {\"tokenizer/tokenizer.json\": {\"sha256\": \"" + sha(TOKENIZER)
                + "\", \"bytes\": " + TOKENIZER.length + "}}},\n"
                + " \"tflite\": {\"variants\": {\"fp32\": {\"file\": \"tflite/tiny_fp32.tflite\", \"sha256\": \""
                + sha(MODEL) + "\", \"bytes\": " + MODEL.length + ", \"parity\": {\"max_abs\": 0.0}}}}"
                + (causalLm == null ? "" : ",\n \"causal_lm\": " + causalLm) + "}";
    }

    static String causalLm(String extra) {
        return "{\"variants\": {\"fp32\": {\"file\": \"tflite/tiny_lm_fp32.tflite\", \"sha256\": \"" + sha(MODEL)
                + "\", \"bytes\": " + MODEL.length + ", \"signatures\": {\"prefill_32\": {}, \"prefill_8\": {}, "
                + "\"decode\": {}}}, \"fp16\": {\"file\": \"tflite/tiny_lm_fp16.tflite\", \"sha256\": \"" + sha(MODEL)
                + "\", \"bytes\": " + MODEL.length + "}}, \"cache_len\": 64" + extra + "}";
    }

    @Test
    public void sha256OfKnownInput() {
        assertEquals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                sha("abc".getBytes(StandardCharsets.US_ASCII)));
    }

    @Test
    public void readsFilesAndCausalLmSection() {
        Manifest m = Manifest.parse(manifest(causalLm(", \"stop_token_ids\": [11, 0], \"start_token_id\": 11")), "m.json");
        assertEquals(Arrays.asList("tflite/tiny_fp32.tflite", "tflite/tiny_lm_fp16.tflite", "tflite/tiny_lm_fp32.tflite",
                "tokenizer/tokenizer.json"), Arrays.asList(m.files().keySet().toArray()));
        assertEquals(TOKENIZER.length, m.file("tokenizer/tokenizer.json").bytes);
        Manifest.CausalLmInfo lm = m.causalLm();
        assertEquals(64, lm.cacheLength);
        assertArrayEquals(new int[] {8, 32}, lm.prefillLengths);
        assertArrayEquals(new int[] {11, 0}, lm.stopTokenIds);
        assertEquals(11, lm.startTokenId);
        assertEquals("tflite/tiny_lm_fp16.tflite", lm.variant(null).path);
        assertEquals("tflite/tiny_lm_fp32.tflite", lm.variant("fp32").path);
        assertEquals("Variant \"int4\" is not in the manifest's causal_lm section; exported variants: fp32, fp16.",
                assertThrows(IllegalArgumentException.class, () -> lm.variant("int4")).getMessage());
    }

    @Test
    public void explicitPrefillLengthsWin() {
        Manifest m = Manifest.parse(manifest(causalLm(", \"prefill_lengths\": [16, 4]")), "m.json");
        assertArrayEquals(new int[] {4, 16}, m.causalLm().prefillLengths);
        assertArrayEquals(new int[0], m.causalLm().stopTokenIds);
        assertEquals(-1, m.causalLm().startTokenId);
    }

    @Test
    public void missingSectionNamesTheExportCommand() {
        String msg = assertThrows(IllegalArgumentException.class,
                () -> Manifest.parse(manifest(null), "assets/manifest.json").causalLm()).getMessage();
        assertEquals("assets/manifest.json has no `causal_lm` section: the causal LM was not exported. Run "
                + "`falcon-tf export --preset tiny --format tflite --task causal_lm` first.", msg);
    }

    @Test
    public void badFieldsAreNamed() {
        assertTrue(error("{\"format_version\": 2}").contains("`format_version` must be 1; found 2"));
        assertTrue(error(manifest(causalLm(", \"prefill_lengths\": [128]"))).contains("prefill length 128 exceeds cache_len 64"));
        assertTrue(error(manifest(causalLm("").replace("\"cache_len\": 64", "\"cache_len\": \"64\""))).contains(
                "causal_lm.cache_len must be an integer"));
        assertTrue(error(manifest(causalLm(", \"stop_token_ids\": [-1]"))).contains("stop_token_ids[0] must be a token id"));
        assertTrue(error(manifest(causalLm("")).replace("tflite/tiny_lm_fp32", "../../etc/x")).contains(
                "must be relative to the artifact directory"));
        assertTrue(error(manifest(causalLm("")).replaceFirst("\"sha256\": \"[0-9a-f]{8}", "\"sha256\": \"XYZ"))
                .contains("must be 64 lowercase hex digits"));
        assertTrue(error(manifest(causalLm("").replace("\"prefill_32\": {}, \"prefill_8\": {}, ", ""))).contains(
                "no prefill lengths"));
        assertTrue(assertThrows(IllegalArgumentException.class,
                () -> Manifest.parse(manifest(null), "m.json").file("tflite/none.tflite")).getMessage()
                .startsWith("m.json does not list tflite/none.tflite"));
    }

    private static String error(String json) {
        return assertThrows(IllegalArgumentException.class, () -> Manifest.parse(json, "m.json").causalLm()).getMessage();
    }

    @Test
    public void verifyNamesSizeAndChecksum() throws IOException {
        Manifest.FileEntry entry = Manifest.parse(manifest(null), "m").file("tokenizer/tokenizer.json");
        Manifest.verify(entry, new ByteArrayInputStream(TOKENIZER), "asset tokenizer.json");
        byte[] damaged = TOKENIZER.clone();
        damaged[3] ^= 1;
        String msg = assertThrows(IllegalArgumentException.class,
                () -> Manifest.verify(entry, new ByteArrayInputStream(damaged), "asset tokenizer.json")).getMessage();
        assertTrue(msg, msg.startsWith("Checksum mismatch: asset tokenizer.json (" + TOKENIZER.length + " bytes, sha256 "
                + sha(damaged) + ") differs from manifest.json's record for tokenizer/tokenizer.json"));
        byte[] truncated = Arrays.copyOf(TOKENIZER, 4);
        assertTrue(assertThrows(IllegalArgumentException.class,
                () -> Manifest.verify(entry, new ByteArrayInputStream(truncated), "x")).getMessage().contains("(4 bytes"));
    }

    // AssetPackager, on a temporary artifact directory.

    private Path tmp;

    @Before
    public void makeArtifacts() throws IOException {
        tmp = Files.createTempDirectory("falcon-assets");
        Path dir = tmp.resolve("artifacts/tiny");
        Files.createDirectories(dir.resolve("tflite"));
        Files.createDirectories(dir.resolve("tokenizer"));
        Files.write(dir.resolve("tflite/tiny_lm_fp32.tflite"), MODEL);
        Files.write(dir.resolve("tflite/tiny_lm_fp16.tflite"), MODEL);
        Files.write(dir.resolve("tokenizer/tokenizer.json"), TOKENIZER);
        Files.write(dir.resolve("manifest.json"), manifest(causalLm("")).getBytes(StandardCharsets.UTF_8));
    }

    @After
    public void removeArtifacts() throws IOException {
        try (Stream<Path> walk = Files.walk(tmp)) {
            walk.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        }
    }

    @Test
    public void packagerCopiesAndVerifies() throws IOException {
        Path out = tmp.resolve("assets/falcon");
        List<String> written = AssetPackager.copy(tmp.resolve("artifacts"), "tiny", "fp32", out);
        assertEquals(Arrays.asList("tflite/tiny_lm_fp32.tflite", "tokenizer/tokenizer.json", "manifest.json",
                AssetPackager.SELECTION_FILE), written);
        assertArrayEquals(MODEL, Files.readAllBytes(out.resolve("tflite/tiny_lm_fp32.tflite")));
        assertFalse(Files.exists(out.resolve("tflite/tiny_lm_fp16.tflite")));
        assertEquals("{\"preset\": \"tiny\", \"variant\": \"fp32\", \"model\": \"tflite/tiny_lm_fp32.tflite\"}\n",
                new String(Files.readAllBytes(out.resolve(AssetPackager.SELECTION_FILE)), StandardCharsets.UTF_8));
        // The app's reader accepts what the packager wrote.
        Manifest copied = Manifest.parse(new String(Files.readAllBytes(out.resolve("manifest.json")),
                StandardCharsets.UTF_8), "copied");
        assertEquals(64, copied.causalLm().cacheLength);
    }

    @Test
    public void packagerRefusesDamagedOrMissingFiles() throws IOException {
        Path out = tmp.resolve("assets/falcon");
        Files.write(tmp.resolve("artifacts/tiny/tokenizer/tokenizer.json"), "{}".getBytes(StandardCharsets.UTF_8));
        String msg = assertThrows(IllegalArgumentException.class,
                () -> AssetPackager.copy(tmp.resolve("artifacts"), "tiny", null, out)).getMessage();
        assertTrue(msg, msg.startsWith("Checksum mismatch: " + tmp.resolve("artifacts/tiny/tokenizer/tokenizer.json")));
        assertFalse("no half-copied file is left", Files.exists(out.resolve("tokenizer/tokenizer.json.tmp")));
        assertFalse(Files.exists(out.resolve("tokenizer/tokenizer.json")));

        Files.delete(tmp.resolve("artifacts/tiny/tflite/tiny_lm_fp16.tflite"));
        NoSuchFileException missing = assertThrows(NoSuchFileException.class,
                () -> AssetPackager.copy(tmp.resolve("artifacts"), "tiny", "fp16", out));
        assertTrue(missing.getMessage().contains("tiny_lm_fp16.tflite"));

        NoSuchFileException noPreset = assertThrows(NoSuchFileException.class,
                () -> AssetPackager.copy(tmp.resolve("artifacts"), "other", null, out));
        assertTrue(noPreset.getMessage(), noPreset.getMessage().contains(
                "falcon-tf export --preset other --format tflite --task causal_lm"));
    }
}
