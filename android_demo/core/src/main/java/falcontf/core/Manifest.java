package falcontf.core;

import java.io.IOException;
import java.io.InputStream;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Reads an artifact's manifest.json: the files it lists with their sha256 and size
 * (paths relative to the artifact directory), and the causal LM's section.
 *
 * <p>Files are gathered from the whole document, in the two shapes the exporters
 * write: an object with {@code "file"}, {@code "sha256"} and {@code "bytes"} (a
 * variant's entry), and a map from paths to {@code {"sha256", "bytes"}} (a
 * {@code "files"} listing). {@link #causalLm()} reads the section the causal-LM
 * export writes (converters/export_tflite_causal_lm.py) and {@link #tokenizer()} the
 * tokenizer's (converters/export_tokenizer.py); the tests read a manifest.json
 * written by that exporter (golden/causal_lm/, from fixtures/make_causal_lm_golden.py).
 */
public final class Manifest {
    /** One listed file: where it is and what it must hash to. */
    public static final class FileEntry {
        public final String path;
        public final String sha256;
        public final long bytes;

        FileEntry(String path, String sha256, long bytes) {
            this.path = path;
            this.sha256 = sha256;
            this.bytes = bytes;
        }
    }

    /** A tensor of a signature, as the manifest records it. */
    public static final class TensorSpec {
        public final int[] shape;
        public final String dtype;

        TensorSpec(int[] shape, String dtype) {
            this.shape = shape;
            this.dtype = dtype;
        }

        @Override
        public String toString() {
            return dtype + " " + Arrays.toString(shape);
        }
    }

    /** A signature's inputs and outputs by tensor name. */
    public static final class Signature {
        public final Map<String, TensorSpec> inputs;
        public final Map<String, TensorSpec> outputs;

        Signature(Map<String, TensorSpec> inputs, Map<String, TensorSpec> outputs) {
            this.inputs = inputs;
            this.outputs = outputs;
        }
    }

    /** The {@code tokenizer} section: the tokenizer file and its special ids. */
    public static final class TokenizerInfo {
        public final FileEntry file;
        /** -1 when the tokenizer has none. */
        public final int startTokenId;
        public final int endTokenId;
        public final int padTokenId;
        public final int vocabularySize;

        TokenizerInfo(FileEntry file, int startTokenId, int endTokenId, int padTokenId, int vocabularySize) {
            this.file = file;
            this.startTokenId = startTokenId;
            this.endTokenId = endTokenId;
            this.padTokenId = padTokenId;
            this.vocabularySize = vocabularySize;
        }
    }

    /** The causal LM section: what the app needs to drive the exported model. */
    public static final class CausalLmInfo {
        public final Map<String, FileEntry> variants;
        public final int cacheLength;
        public final int[] prefillLengths;
        /** The W of the {@code decode_<W>} signatures (none in a manifest that lists none). */
        public final int[] decodeWindows;
        /**
         * The W of the {@code windowed_prefill_<L>_<W>} signatures, one per prefill length
         * L <= W (none in a manifest that lists none).
         */
        public final int[] prefillWindows;
        public final int[] stopTokenIds;
        /** -1 when the model has none. */
        public final int startTokenId;
        public final int numLayers;
        public final int kvHeads;
        public final int headDim;
        public final int vocabularySize;
        /**
         * {@code decode}, every {@code decode_<W>}, every {@code prefill_<L>} and every
         * {@code windowed_prefill_<L>_<W>}, checked against the contract (a decode's outputs
         * are logits and the caches, a prefill's the caches only).
         */
        public final Map<String, Signature> signatures;

        CausalLmInfo(Map<String, FileEntry> variants, int cacheLength, int[] prefillLengths, int[] decodeWindows,
                     int[] prefillWindows, int[] stopTokenIds, int startTokenId, int numLayers, int kvHeads, int headDim, int vocabularySize,
                     Map<String, Signature> signatures) {
            this.variants = variants;
            this.cacheLength = cacheLength;
            this.prefillLengths = prefillLengths;
            this.decodeWindows = decodeWindows;
            this.prefillWindows = prefillWindows;
            this.stopTokenIds = stopTokenIds;
            this.startTokenId = startTokenId;
            this.numLayers = numLayers;
            this.kvHeads = kvHeads;
            this.headDim = headDim;
            this.vocabularySize = vocabularySize;
            this.signatures = signatures;
        }

        /** The named variant, or the first of fp16, fp32, then any when {@code name} is null. */
        public FileEntry variant(String name) {
            if (name == null || name.isEmpty()) {
                for (String preferred : new String[] {"fp16", "fp32"}) {
                    if (variants.containsKey(preferred)) return variants.get(preferred);
                }
                return variants.values().iterator().next();
            }
            FileEntry entry = variants.get(name);
            if (entry == null) {
                throw new IllegalArgumentException("Variant \"" + name + "\" is not in the manifest's causal_lm section; "
                        + "exported variants: " + String.join(", ", variants.keySet()) + ".");
            }
            return entry;
        }
    }

    public static final int FORMAT_VERSION = 1;

    private final String source;
    private final Map<String, Object> root;
    private final Map<String, FileEntry> files;

    private Manifest(String source, Map<String, Object> root, Map<String, FileEntry> files) {
        this.source = source;
        this.root = root;
        this.files = files;
    }

    public static Manifest parse(String json, String source) {
        Map<String, Object> root = Json.parseObject(json, source);
        Object version = root.get("format_version");
        if (!(version instanceof Long) || (Long) version != FORMAT_VERSION) {
            throw new IllegalArgumentException(source + ": field `format_version` must be " + FORMAT_VERSION
                    + "; found " + version + ".");
        }
        Map<String, FileEntry> files = new TreeMap<>();
        collectFiles(root, source, files);
        return new Manifest(source, root, Collections.unmodifiableMap(files));
    }

    /** Every listed file, by path relative to the artifact directory. */
    public Map<String, FileEntry> files() {
        return files;
    }

    /** The entry for {@code path}, or an error saying the manifest does not list it. */
    public FileEntry file(String path) {
        FileEntry entry = files.get(path);
        if (entry == null) {
            throw new IllegalArgumentException(source + " does not list " + path
                    + ", so its checksum cannot be checked. Export again with the current falcon-tf.");
        }
        return entry;
    }

    /** The {@code preset} field, or null. */
    public String preset() {
        Object preset = root.get("preset");
        return preset instanceof String ? (String) preset : null;
    }

    /**
     * The {@code tokenizer} section that every export with a tokenizer writes: its one
     * file ({@link FalconContract#TOKENIZER_FILE}) and the special token ids.
     */
    public TokenizerInfo tokenizer() {
        Object section = root.get("tokenizer");
        if (!(section instanceof Map)) {
            throw new IllegalArgumentException(source + " has no `tokenizer` section: the export has no tokenizer. "
                    + "Export from a preset with tokenizer files (or pass one) with the current falcon-tf.");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> tok = (Map<String, Object>) section;
        String where = source + ": tokenizer";
        Map<String, Object> listed = Json.object(tok, "files", where);
        Object entry = listed.get(FalconContract.TOKENIZER_FILE);
        if (!(entry instanceof Map)) {
            throw new IllegalArgumentException(where + ".files does not list " + FalconContract.TOKENIZER_FILE
                    + " (it lists " + String.join(", ", listed.keySet()) + ").");
        }
        @SuppressWarnings("unchecked")
        FileEntry file = fileEntry(FalconContract.TOKENIZER_FILE, (Map<String, Object>) entry,
                where + ".files." + FalconContract.TOKENIZER_FILE);
        return new TokenizerInfo(file, optionalId(tok.get("start_token_id"), where + ".start_token_id"),
                optionalId(tok.get("end_token_id"), where + ".end_token_id"),
                optionalId(tok.get("pad_token_id"), where + ".pad_token_id"),
                positive(tok.get("vocabulary_size"), where + ".vocabulary_size"));
    }

    /**
     * The {@code causal_lm} section that {@code falcon-tf export --format tflite --task causal_lm}
     * writes, checked: the variants' files, the shapes ({@code cache_len}, {@code prefill_lengths},
     * {@code num_layers}, {@code kv_heads}, {@code head_dim}, {@code vocabulary_size}), the mask
     * value (must be the contract's), the start and stop ids, and every signature's tensors
     * against {@link FalconContract}.
     */
    public CausalLmInfo causalLm() {
        Object section = root.get("causal_lm");
        if (!(section instanceof Map)) {
            String preset = preset() == null ? "<preset>" : preset();
            throw new IllegalArgumentException(source + " has no `causal_lm` section: the causal LM was not exported. Run "
                    + "`falcon-tf export --preset " + preset + " --format tflite --task causal_lm` first.");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> lm = (Map<String, Object>) section;
        String where = source + ": causal_lm";
        Map<String, Object> variantsJson = Json.object(lm, "variants", where);
        Map<String, FileEntry> variants = new LinkedHashMap<>();
        for (Map.Entry<String, Object> v : variantsJson.entrySet()) {
            String at = where + ".variants." + v.getKey();
            if (!(v.getValue() instanceof Map)) {
                throw new IllegalArgumentException(at + " must be an object.");
            }
            @SuppressWarnings("unchecked")
            Map<String, Object> entry = (Map<String, Object>) v.getValue();
            variants.put(v.getKey(), fileEntry(Json.string(entry, "file", at), entry, at));
        }
        if (variants.isEmpty()) {
            throw new IllegalArgumentException(where + ": `variants` is empty.");
        }
        int cacheLength = positive(lm.get("cache_len"), where + ".cache_len");
        int numLayers = positive(lm.get("num_layers"), where + ".num_layers");
        int kvHeads = positive(lm.get("kv_heads"), where + ".kv_heads");
        int headDim = positive(lm.get("head_dim"), where + ".head_dim");
        int vocab = positive(lm.get("vocabulary_size"), where + ".vocabulary_size");

        Object maskValue = lm.get("mask_value");
        if (!(maskValue instanceof Number) || ((Number) maskValue).floatValue() != FalconContract.MASK_VALUE) {
            throw new IllegalArgumentException(where + ".mask_value is " + maskValue + "; this app builds masks with "
                    + FalconContract.MASK_VALUE + ". Export again with the falcon-tf this app was built with.");
        }

        int[] prefill = sortedPositives(lm, "prefill_lengths", where);
        if (prefill.length == 0) {
            throw new IllegalArgumentException(where + ": `prefill_lengths` is empty.");
        }
        for (int length : prefill) {
            if (length > cacheLength) {
                throw new IllegalArgumentException(where + ": prefill length " + length + " exceeds cache_len " + cacheLength + ".");
            }
        }

        // Manifests written before decode_<W> (windowed_prefill_<L>_<W>) have no
        // `decode_windows` (`prefill_windows`).
        int[] windows = windowsBelow(lm, "decode_windows", "decode", cacheLength, where);
        int[] prefillWindows = windowsBelow(lm, "prefill_windows", "prefill", cacheLength, where);

        Map<String, Object> signaturesJson = Json.object(lm, "signatures", where);
        Map<String, Signature> signatures = new LinkedHashMap<>();
        // prefill_<L> for each L, decode, decode_<W> for each W (all decodes have L = 1),
        // then windowed_prefill_<L>_<W> for each W and L <= W.
        List<String> names = new ArrayList<>();
        List<Integer> wanted = new ArrayList<>();
        List<Boolean> prefills = new ArrayList<>();
        for (int length : prefill) {
            names.add(FalconContract.prefillSignature(length));
            wanted.add(length);
            prefills.add(true);
        }
        names.add(FalconContract.DECODE_SIGNATURE);
        wanted.add(1);
        prefills.add(false);
        for (int window : windows) {
            names.add(FalconContract.decodeWindowSignature(window));
            wanted.add(1);
            prefills.add(false);
        }
        for (int window : prefillWindows) {
            for (int length : prefill) {
                if (length > window) break;
                names.add(FalconContract.windowedPrefillSignature(length, window));
                wanted.add(length);
                prefills.add(true);
            }
        }
        for (int k = 0; k < names.size(); k++) {
            String name = names.get(k);
            String at = where + ".signatures." + name;
            if (!(signaturesJson.get(name) instanceof Map)) {
                throw new IllegalArgumentException(where + ".signatures lacks `" + name + "` (it has "
                        + String.join(", ", signaturesJson.keySet()) + ").");
            }
            @SuppressWarnings("unchecked")
            Map<String, Object> sig = (Map<String, Object>) signaturesJson.get(name);
            Signature signature = new Signature(specs(Json.object(sig, "inputs", at), at + ".inputs"),
                    specs(Json.object(sig, "outputs", at), at + ".outputs"));
            checkSignature(signature, wanted.get(k), prefills.get(k), cacheLength, numLayers, kvHeads, headDim,
                    vocab, at);
            signatures.put(name, signature);
        }

        int[] stops = new int[0];
        if (lm.get("stop_token_ids") != null) {
            List<Object> ids = Json.list(lm, "stop_token_ids", where);
            stops = new int[ids.size()];
            for (int i = 0; i < stops.length; i++) {
                stops[i] = tokenId(ids.get(i), vocab, where + ".stop_token_ids[" + i + "]");
            }
        }
        int start = lm.get("start_token_id") == null ? -1 : tokenId(lm.get("start_token_id"), vocab, where + ".start_token_id");
        return new CausalLmInfo(Collections.unmodifiableMap(variants), cacheLength, prefill, windows,
                prefillWindows, stops, start,
                numLayers, kvHeads, headDim, vocab, Collections.unmodifiableMap(signatures));
    }

    private static Map<String, TensorSpec> specs(Map<String, Object> json, String where) {
        Map<String, TensorSpec> out = new LinkedHashMap<>();
        for (Map.Entry<String, Object> e : json.entrySet()) {
            String at = where + "." + e.getKey();
            if (!(e.getValue() instanceof Map)) {
                throw new IllegalArgumentException(at + " must be an object with `shape` and `dtype`.");
            }
            @SuppressWarnings("unchecked")
            Map<String, Object> spec = (Map<String, Object>) e.getValue();
            List<Object> dims = Json.list(spec, "shape", at);
            int[] shape = new int[dims.size()];
            for (int i = 0; i < shape.length; i++) shape[i] = positive(dims.get(i), at + ".shape[" + i + "]");
            out.put(e.getKey(), new TensorSpec(shape, Json.string(spec, "dtype", at)));
        }
        return out;
    }

    /**
     * The contract's tensors for a signature of length L, with their dtypes and shapes:
     * decode returns logits and the caches; a prefill returns the caches only (a manifest
     * written when prefill still returned logits [1, L, vocab] records them too: accepted,
     * as the Generator never reads a prefill's logits).
     */
    private static void checkSignature(Signature sig, int length, boolean prefill, int cacheLength, int numLayers,
                                       int kvHeads, int headDim, int vocab, String where) {
        Map<String, TensorSpec> inputs = new TreeMap<>();
        Map<String, TensorSpec> outputs = new TreeMap<>();
        inputs.put(FalconContract.TOKENS, new TensorSpec(new int[] {1, length}, "int32"));
        inputs.put(FalconContract.INPUT_POS, new TensorSpec(new int[] {length}, "int32"));
        inputs.put(FalconContract.MASK, new TensorSpec(new int[] {1, 1, length, cacheLength}, "float32"));
        if (!prefill || sig.outputs.containsKey(FalconContract.LOGITS)) {
            outputs.put(FalconContract.LOGITS, new TensorSpec(new int[] {1, length, vocab}, "float32"));
        }
        for (String cache : FalconContract.cacheNames(numLayers)) {
            TensorSpec spec = new TensorSpec(new int[] {1, kvHeads, cacheLength, headDim}, "float32");
            inputs.put(cache, spec);
            outputs.put(cache, spec);
        }
        compare(sig.inputs, inputs, where + ".inputs");
        compare(sig.outputs, outputs, where + ".outputs");
    }

    private static void compare(Map<String, TensorSpec> found, Map<String, TensorSpec> expected, String where) {
        if (!found.keySet().equals(expected.keySet())) {
            throw new IllegalArgumentException(where + " are " + new TreeMap<>(found).keySet() + "; the contract needs "
                    + expected.keySet() + ".");
        }
        for (Map.Entry<String, TensorSpec> e : expected.entrySet()) {
            TensorSpec got = found.get(e.getKey());
            if (!got.dtype.equals(e.getValue().dtype) || !Arrays.equals(got.shape, e.getValue().shape)) {
                throw new IllegalArgumentException(where + "." + e.getKey() + " is " + got + "; expected "
                        + e.getValue() + " from the section's sizes.");
            }
        }
    }

    @SuppressWarnings("unchecked")
    private static void collectFiles(Object node, String where, Map<String, FileEntry> out) {
        if (node instanceof Map) {
            Map<String, Object> map = (Map<String, Object>) node;
            if (map.get("file") instanceof String && map.containsKey("sha256")) {
                add(out, fileEntry((String) map.get("file"), map, where), where);
            }
            for (Map.Entry<String, Object> e : map.entrySet()) {
                Object value = e.getValue();
                String at = where + "." + e.getKey();
                if (value instanceof Map && ((Map<?, ?>) value).containsKey("sha256")
                        && !((Map<?, ?>) value).containsKey("file")) {
                    add(out, fileEntry(e.getKey(), (Map<String, Object>) value, at), at);
                } else {
                    collectFiles(value, at, out);
                }
            }
        } else if (node instanceof List) {
            List<Object> list = (List<Object>) node;
            for (int i = 0; i < list.size(); i++) collectFiles(list.get(i), where + "[" + i + "]", out);
        }
    }

    private static void add(Map<String, FileEntry> out, FileEntry entry, String where) {
        FileEntry before = out.get(entry.path);
        if (before != null && (!before.sha256.equals(entry.sha256) || before.bytes != entry.bytes)) {
            throw new IllegalArgumentException(where + ": " + entry.path + " is listed twice with different checksums.");
        }
        out.put(entry.path, entry);
    }

    private static FileEntry fileEntry(String path, Map<String, Object> entry, String where) {
        if (path.isEmpty() || path.startsWith("/") || path.contains("\\") || path.equals("..")
                || path.startsWith("../") || path.contains("/../") || path.endsWith("/..")) {
            throw new IllegalArgumentException(where + ": file path \"" + path
                    + "\" must be relative to the artifact directory and stay inside it.");
        }
        String sha = Json.string(entry, "sha256", where);
        if (!sha.matches("[0-9a-f]{64}")) {
            throw new IllegalArgumentException(where + ": `sha256` of " + path + " must be 64 lowercase hex digits.");
        }
        long bytes = Json.integer(entry.get("bytes"), where + ".bytes");
        if (bytes < 0) {
            throw new IllegalArgumentException(where + ".bytes must not be negative.");
        }
        return new FileEntry(path, sha, bytes);
    }

    /** The list {@code key} of {@code object}, each a positive integer, sorted. */
    /**
     * The optional sorted windows under {@code key} (none when absent), each checked to be below
     * {@code cacheLength}.
     */
    private static int[] windowsBelow(Map<String, Object> lm, String key, String what, int cacheLength,
                                      String where) {
        int[] windows = lm.get(key) == null ? new int[0] : sortedPositives(lm, key, where);
        for (int window : windows) {
            if (window >= cacheLength) {
                throw new IllegalArgumentException(where + ": " + what + " window " + window
                        + " is not below cache_len " + cacheLength + ".");
            }
        }
        return windows;
    }

    private static int[] sortedPositives(Map<String, Object> object, String key, String where) {
        List<Object> list = Json.list(object, key, where);
        int[] values = new int[list.size()];
        for (int i = 0; i < values.length; i++) {
            values[i] = positive(list.get(i), where + "." + key + "[" + i + "]");
        }
        Arrays.sort(values);
        return values;
    }

    private static int positive(Object value, String where) {
        long v = Json.integer(value, where);
        if (v <= 0 || v > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(where + " must be a positive integer; found " + v + ".");
        }
        return (int) v;
    }

    private static int tokenId(Object value, int vocab, String where) {
        long v = Json.integer(value, where);
        if (v < 0 || v >= vocab) {
            throw new IllegalArgumentException(where + " must be a token id in [0, " + vocab + "); found " + v + ".");
        }
        return (int) v;
    }

    private static int optionalId(Object value, String where) {
        if (value == null) return -1;
        long v = Json.integer(value, where);
        if (v < 0 || v > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(where + " must be a token id >= 0; found " + v + ".");
        }
        return (int) v;
    }

    /** The hex sha256 of a stream, read to its end. */
    public static String sha256(InputStream in) throws IOException {
        MessageDigest digest;
        try {
            digest = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is not available on this runtime.", e);
        }
        byte[] buffer = new byte[1 << 16];
        for (int n; (n = in.read(buffer)) > 0; ) {
            digest.update(buffer, 0, n);
        }
        StringBuilder hex = new StringBuilder(64);
        for (byte b : digest.digest()) {
            hex.append(Character.forDigit((b >> 4) & 0xF, 16)).append(Character.forDigit(b & 0xF, 16));
        }
        return hex.toString();
    }

    /**
     * Checks one file's content against its entry; {@code location} names the copy
     * being checked (an asset, a path) in the message.
     */
    public static void verify(FileEntry entry, InputStream content, String location) throws IOException {
        CountingStream counted = new CountingStream(content);
        String actual = sha256(counted);
        if (counted.count != entry.bytes || !actual.equals(entry.sha256)) {
            throw new IllegalArgumentException("Checksum mismatch: " + location + " (" + counted.count
                    + " bytes, sha256 " + actual + ") differs from manifest.json's record for " + entry.path + " ("
                    + entry.bytes + " bytes, sha256 " + entry.sha256 + "); the file was changed or damaged. "
                    + "Copy the assets again, or export again.");
        }
    }

    private static final class CountingStream extends java.io.FilterInputStream {
        long count;

        CountingStream(InputStream in) {
            super(in);
        }

        @Override
        public int read(byte[] b, int off, int len) throws IOException {
            int n = super.read(b, off, len);
            if (n > 0) count += n;
            return n;
        }

        @Override
        public int read() throws IOException {
            int c = super.read();
            if (c >= 0) count++;
            return c;
        }
    }
}
