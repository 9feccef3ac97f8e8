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

/**
 * The manifest reader on the manifest.json that the causal-LM exporter wrote
 * (golden/causal_lm/, from fixtures/make_causal_lm_golden.py), and on edits of it.
 */
public class ManifestTest {
    /** The exporter's manifest, as written. */
    static final String REAL = Golden.text("causal_lm/manifest.json");
    static final byte[] TOKENIZER = Golden.text("causal_lm/tokenizer/tokenizer.json").getBytes(StandardCharsets.UTF_8);
    static final String MODEL_PATH = "tflite/falcon_tiny_random_causal_lm_fp32.tflite";

    static String sha(byte[] data) {
        try {
            return Manifest.sha256(new ByteArrayInputStream(data));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    @Test
    public void sha256OfKnownInput() {
        assertEquals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                sha("abc".getBytes(StandardCharsets.US_ASCII)));
    }

    @Test
    public void readsTheExportersCausalLmSection() {
        Manifest m = Manifest.parse(REAL, "manifest.json");
        assertEquals("falcon_tiny_random", m.preset());
        Manifest.CausalLmInfo lm = m.causalLm();
        assertEquals(64, lm.cacheLength);
        assertArrayEquals(new int[] {8, 16}, lm.prefillLengths);
        assertEquals(2, lm.numLayers);
        assertEquals(4, lm.kvHeads);
        assertEquals(16, lm.headDim);
        assertEquals(1024, lm.vocabularySize);
        assertArrayEquals(new int[] {256}, lm.stopTokenIds);
        assertEquals(256, lm.startTokenId);
        assertArrayEquals(new int[] {32}, lm.decodeWindows);
        assertArrayEquals(new int[] {32}, lm.prefillWindows);
        assertEquals(Arrays.asList("prefill_8", "prefill_16", "decode", "decode_32", "windowed_prefill_8_32",
                "windowed_prefill_16_32"), List.copyOf(lm.signatures.keySet()));
        Manifest.Signature decode = lm.signatures.get(FalconContract.DECODE_SIGNATURE);
        assertArrayEquals(new int[] {1, 1, 1, 64}, decode.inputs.get(FalconContract.MASK).shape);
        // The caches are head-major: [1, kv_heads, cache_len, head_dim].
        assertArrayEquals(new int[] {1, 4, 64, 16}, decode.inputs.get("kv_cache_k_0").shape);
        // decode returns logits and the caches; a prefill the caches only.
        assertArrayEquals(new int[] {1, 1, 1024}, decode.outputs.get(FalconContract.LOGITS).shape);
        assertEquals(Arrays.asList("kv_cache_k_0", "kv_cache_k_1", "kv_cache_v_0", "kv_cache_v_1"),
                List.copyOf(lm.signatures.get("prefill_16").outputs.keySet()));
        assertFalse(lm.signatures.get("prefill_8").outputs.containsKey(FalconContract.LOGITS));
        assertEquals("int32", decode.inputs.get(FalconContract.INPUT_POS).dtype);
        assertEquals(MODEL_PATH, lm.variant(null).path);
        assertEquals(MODEL_PATH, lm.variant("fp32").path);
        assertEquals("Variant \"int4\" is not in the manifest's causal_lm section; exported variants: fp32.",
                assertThrows(IllegalArgumentException.class, () -> lm.variant("int4")).getMessage());
        assertTrue(m.files().containsKey(MODEL_PATH));
        assertTrue(m.files().containsKey(FalconContract.TOKENIZER_FILE));
    }

    @Test
    public void readsTheTokenizerSectionAndItsChecksumHolds() throws IOException {
        Manifest.TokenizerInfo tok = Manifest.parse(REAL, "manifest.json").tokenizer();
        assertEquals(FalconContract.TOKENIZER_FILE, tok.file.path);
        assertEquals(TOKENIZER.length, tok.file.bytes);
        assertEquals(256, tok.startTokenId);
        assertEquals(256, tok.endTokenId);
        assertEquals(0, tok.padTokenId);
        assertEquals(1024, tok.vocabularySize);
        // The committed tokenizer.json is the file this manifest describes.
        Manifest.verify(tok.file, new ByteArrayInputStream(TOKENIZER), "golden tokenizer.json");
        assertEquals(BpeTokenizer.fromJson(new String(TOKENIZER, StandardCharsets.UTF_8), "t").vocabSize(),
                tok.vocabularySize);
    }

    @Test
    public void missingSectionsNameTheExportCommand() {
        String msg = error(REAL.replace("\"causal_lm\": {", "\"backbone\": {"));
        assertEquals("m.json has no `causal_lm` section: the causal LM was not exported. Run "
                + "`falcon-tf export --preset falcon_tiny_random --format tflite --task causal_lm` first.", msg);
        String tok = assertThrows(IllegalArgumentException.class,
                () -> Manifest.parse(REAL.replace("\"tokenizer\": {", "\"vocab\": {"), "m.json").tokenizer()).getMessage();
        assertTrue(tok, tok.startsWith("m.json has no `tokenizer` section"));
    }

    @Test
    public void badFieldsAreNamed() {
        assertTrue(error(REAL.replace("\"format_version\": 1", "\"format_version\": 2"))
                .contains("`format_version` must be 1; found 2"));
        assertTrue(error(REAL.replace("\"cache_len\": 64", "\"cache_len\": \"64\"")).contains(
                "causal_lm.cache_len must be an integer"));
        assertTrue(error(REAL.replace("\"mask_value\": -30000.0", "\"mask_value\": -1000000000.0")).contains(
                "causal_lm.mask_value is -1.0E9; this app builds masks with -30000.0"));
        assertTrue(error(REAL.replaceFirst("\"prefill_lengths\": \\[[^\\]]*\\]", "\"prefill_lengths\": [128]"))
                .contains("prefill length 128 exceeds cache_len 64"));
        assertTrue(error(REAL.replaceFirst("\"prefill_lengths\": \\[[^\\]]*\\]", "\"prefill_lengths\": [8, 16, 32]"))
                .contains("causal_lm.signatures lacks `prefill_32` (it has decode, decode_32, prefill_16, prefill_8, windowed_prefill_16_32, windowed_prefill_8_32)"));
        // A listed decode window needs its signature, below the cache length.
        assertTrue(error(REAL.replaceFirst("\"decode_windows\": \\[[^\\]]*\\]", "\"decode_windows\": [32, 48]"))
                .contains("causal_lm.signatures lacks `decode_48` (it has decode, decode_32, prefill_16, prefill_8, windowed_prefill_16_32, windowed_prefill_8_32)"));
        assertTrue(error(REAL.replaceFirst("\"decode_windows\": \\[[^\\]]*\\]", "\"decode_windows\": [64]"))
                .contains("causal_lm: decode window 64 is not below cache_len 64."));
        // A manifest written before decode_<W> (no `decode_windows`) is read without windows.
        Manifest.CausalLmInfo old = Manifest.parse(REAL.replaceFirst("\"decode_windows\": \\[[^\\]]*\\],", ""),
                "m.json").causalLm();
        assertArrayEquals(new int[0], old.decodeWindows);
        // The same for prefill windows: a listed one needs a signature per prefill length
        // up to it, below the cache length; an older manifest has none.
        assertTrue(error(REAL.replaceFirst("\"prefill_windows\": \\[[^\\]]*\\]", "\"prefill_windows\": [16, 32]"))
                .contains("causal_lm.signatures lacks `windowed_prefill_8_16`"));
        assertTrue(error(REAL.replaceFirst("\"prefill_windows\": \\[[^\\]]*\\]", "\"prefill_windows\": [64]"))
                .contains("causal_lm: prefill window 64 is not below cache_len 64."));
        assertTrue(error(REAL.replaceFirst("\"prefill_windows\": \\[[^\\]]*\\]", "\"prefill_windows\": [0]"))
                .contains("prefill_windows"));
        Manifest.CausalLmInfo older = Manifest.parse(REAL.replaceFirst("\"prefill_windows\": \\[[^\\]]*\\],", ""),
                "m.json").causalLm();
        assertArrayEquals(new int[0], older.prefillWindows);
        assertTrue(error(REAL.replaceFirst("\"stop_token_ids\": \\[[^\\]]*\\]", "\"stop_token_ids\": [1024]"))
                .contains("stop_token_ids[0] must be a token id in [0, 1024); found 1024"));
        assertTrue(error(REAL.replace(MODEL_PATH, "../../etc/x")).contains(
                "must be relative to the artifact directory"));
        assertTrue(error(REAL.replaceFirst("\"sha256\": \"[0-9a-f]{8}", "\"sha256\": \"XYZ"))
                .contains("must be 64 lowercase hex digits"));
        assertTrue(assertThrows(IllegalArgumentException.class,
                () -> Manifest.parse(REAL, "m.json").file("tflite/none.tflite")).getMessage()
                .startsWith("m.json does not list tflite/none.tflite"));
    }

    @Test
    public void signaturesAreCheckedAgainstTheContract() {
        // A renamed tensor (the first input_pos is decode's, keys being sorted).
        String renamed = error(REAL.replaceFirst("\"input_pos\"", "\"input_positions\""));
        assertTrue(renamed, renamed.startsWith("m.json: causal_lm.signatures.decode.inputs are [input_positions, "));
        assertTrue(renamed, renamed.contains("the contract needs [input_pos, "));
        // Sizes that disagree with the tensors recorded for the signatures.
        assertEquals("m.json: causal_lm.signatures.prefill_8.inputs.kv_cache_k_0 is float32 [1, 4, 64, 16]; "
                + "expected float32 [1, 2, 64, 16] from the section's sizes.",
                error(REAL.replace("\"kv_heads\": 4", "\"kv_heads\": 2")));
        assertTrue(error(REAL.replace("\"num_layers\": 2", "\"num_layers\": 3")).contains("kv_cache_k_2"));
    }

    /** REAL with one more tensor first in the outputs of {@code signature}. */
    private static String withOutput(String signature, String name, int... shape) {
        int section = REAL.indexOf("\"" + signature + "\": {");
        int at = REAL.indexOf("\"outputs\": {", section) + "\"outputs\": {".length();
        assertTrue(signature, section >= 0 && at > section);
        String[] dims = Arrays.stream(shape).mapToObj(String::valueOf).toArray(String[]::new);
        return REAL.substring(0, at) + "\"" + name + "\": {\"dtype\": \"float32\", \"shape\": ["
                + String.join(", ", dims) + "]}, " + REAL.substring(at);
    }

    @Test
    public void prefillOutputsAreTheCachesOnlyAndOldManifestsWithLogitsAreRead() {
        // A manifest written when prefill returned logits [1, L, vocab] is still read.
        String old = withOutput("prefill_8", FalconContract.LOGITS, 1, 8, 1024);
        Manifest.CausalLmInfo lm = Manifest.parse(old, "m.json").causalLm();
        assertArrayEquals(new int[] {1, 8, 1024}, lm.signatures.get("prefill_8").outputs.get(FalconContract.LOGITS).shape);
        // Its logits are still checked against the section's sizes.
        assertEquals("m.json: causal_lm.signatures.prefill_8.outputs.logits is float32 [1, 1, 1024]; "
                + "expected float32 [1, 8, 1024] from the section's sizes.",
                error(withOutput("prefill_8", FalconContract.LOGITS, 1, 1, 1024)));
        // Any other extra output of a prefill is named.
        assertEquals("m.json: causal_lm.signatures.prefill_16.outputs are [hidden, kv_cache_k_0, kv_cache_k_1, "
                + "kv_cache_v_0, kv_cache_v_1]; the contract needs [kv_cache_k_0, kv_cache_k_1, kv_cache_v_0, "
                + "kv_cache_v_1].", error(withOutput("prefill_16", "hidden", 1, 16, 64)));
    }

    @Test
    public void decodeMustReturnLogits() {
        String noLogits = REAL.replaceFirst(",\\s*\"logits\": \\{\\s*\"dtype\": \"float32\",\\s*\"shape\": "
                + "\\[\\s*1,\\s*1,\\s*1024\\s*\\]\\s*\\}", "");
        assertTrue("the decode logits were removed", noLogits.length() < REAL.length());
        assertEquals("m.json: causal_lm.signatures.decode.outputs are [kv_cache_k_0, kv_cache_k_1, kv_cache_v_0, "
                + "kv_cache_v_1]; the contract needs [kv_cache_k_0, kv_cache_k_1, kv_cache_v_0, kv_cache_v_1, logits].",
                error(noLogits));
        assertEquals("m.json: causal_lm.signatures.decode.outputs.logits is float32 [1, 1, 1024]; "
                + "expected float32 [1, 1, 2048] from the section's sizes.",
                error(REAL.replaceFirst("\"vocabulary_size\": 1024", "\"vocabulary_size\": 2048")));
    }

    private static String error(String json) {
        return assertThrows(IllegalArgumentException.class, () -> Manifest.parse(json, "m.json").causalLm()).getMessage();
    }

    @Test
    public void verifyNamesSizeAndChecksum() throws IOException {
        Manifest.FileEntry entry = Manifest.parse(REAL, "m").file(FalconContract.TOKENIZER_FILE);
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

    // AssetPackager, on a temporary artifact directory laid out as the exporter writes it.
    // The .tflite is not committed (729 KB): a stand-in file takes its place, and the
    // manifest's record of it is replaced by the stand-in's size and sha256.

    static final byte[] MODEL = "a stand-in for the exported flatbuffer".getBytes(StandardCharsets.UTF_8);

    private Path tmp;

    @Before
    public void makeArtifacts() throws IOException {
        tmp = Files.createTempDirectory("falcon-assets");
        Path dir = tmp.resolve("artifacts/falcon_tiny_random");
        Files.createDirectories(dir.resolve("tflite"));
        Files.createDirectories(dir.resolve("tokenizer"));
        Files.write(dir.resolve(MODEL_PATH), MODEL);
        Files.write(dir.resolve(FalconContract.TOKENIZER_FILE), TOKENIZER);
        Manifest.FileEntry real = Manifest.parse(REAL, "m").causalLm().variant("fp32");
        String manifest = REAL.replace(real.sha256, sha(MODEL))
                .replace("\"bytes\": " + real.bytes + ",", "\"bytes\": " + MODEL.length + ",");
        Files.write(dir.resolve("manifest.json"), manifest.getBytes(StandardCharsets.UTF_8));
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
        List<String> written = AssetPackager.copy(tmp.resolve("artifacts"), "falcon_tiny_random", "fp32", out);
        assertEquals(Arrays.asList(MODEL_PATH, FalconContract.TOKENIZER_FILE, "manifest.json",
                AssetPackager.SELECTION_FILE), written);
        assertArrayEquals(MODEL, Files.readAllBytes(out.resolve(MODEL_PATH)));
        assertArrayEquals(TOKENIZER, Files.readAllBytes(out.resolve(FalconContract.TOKENIZER_FILE)));
        assertEquals("{\"preset\": \"falcon_tiny_random\", \"variant\": \"fp32\", \"model\": \"" + MODEL_PATH + "\"}\n",
                new String(Files.readAllBytes(out.resolve(AssetPackager.SELECTION_FILE)), StandardCharsets.UTF_8));
        // The app's reader accepts what the packager wrote.
        Manifest copied = Manifest.parse(new String(Files.readAllBytes(out.resolve("manifest.json")),
                StandardCharsets.UTF_8), "copied");
        assertEquals(64, copied.causalLm().cacheLength);
    }

    @Test
    public void packagerRefusesDamagedOrMissingFiles() throws IOException {
        Path out = tmp.resolve("assets/falcon");
        Path artifacts = tmp.resolve("artifacts");
        Path tokenizer = artifacts.resolve("falcon_tiny_random").resolve(FalconContract.TOKENIZER_FILE);
        Files.write(tokenizer, "{}".getBytes(StandardCharsets.UTF_8));
        String msg = assertThrows(IllegalArgumentException.class,
                () -> AssetPackager.copy(artifacts, "falcon_tiny_random", null, out)).getMessage();
        assertTrue(msg, msg.startsWith("Checksum mismatch: " + tokenizer));
        assertFalse("no half-copied file is left", Files.exists(out.resolve("tokenizer/tokenizer.json.tmp")));
        assertFalse(Files.exists(out.resolve(FalconContract.TOKENIZER_FILE)));

        Files.delete(artifacts.resolve("falcon_tiny_random").resolve(MODEL_PATH));
        NoSuchFileException missing = assertThrows(NoSuchFileException.class,
                () -> AssetPackager.copy(artifacts, "falcon_tiny_random", "fp32", out));
        assertTrue(missing.getMessage().contains("falcon_tiny_random_causal_lm_fp32.tflite"));

        NoSuchFileException noPreset = assertThrows(NoSuchFileException.class,
                () -> AssetPackager.copy(artifacts, "other", null, out));
        assertTrue(noPreset.getMessage(), noPreset.getMessage().contains(
                "falcon-tf export --preset other --format tflite --task causal_lm"));
    }
}
