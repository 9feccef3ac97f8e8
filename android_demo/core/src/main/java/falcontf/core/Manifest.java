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
 * {@code "files"} listing). The {@code "causal_lm"} section holds {@code variants}
 * (name to entry with {@code file}), {@code cache_len}, the prefill lengths (as
 * {@code prefill_lengths}, or read from {@code prefill_<L>} signature names) and the
 * start and stop token ids.
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

    /** The causal LM section: what the app needs to drive the exported model. */
    public static final class CausalLmInfo {
        public final Map<String, FileEntry> variants;
        public final int cacheLength;
        public final int[] prefillLengths;
        public final int[] stopTokenIds;
        /** -1 when the model has none. */
        public final int startTokenId;

        CausalLmInfo(Map<String, FileEntry> variants, int cacheLength, int[] prefillLengths, int[] stopTokenIds,
                     int startTokenId) {
            this.variants = variants;
            this.cacheLength = cacheLength;
            this.prefillLengths = prefillLengths;
            this.stopTokenIds = stopTokenIds;
            this.startTokenId = startTokenId;
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
        List<String> signatureNames = new ArrayList<>();
        collectSignatureNames(lm.get("signatures"), signatureNames);
        for (Map.Entry<String, Object> v : variantsJson.entrySet()) {
            String at = where + ".variants." + v.getKey();
            if (!(v.getValue() instanceof Map)) {
                throw new IllegalArgumentException(at + " must be an object.");
            }
            @SuppressWarnings("unchecked")
            Map<String, Object> entry = (Map<String, Object>) v.getValue();
            variants.put(v.getKey(), fileEntry(Json.string(entry, "file", at), entry, at));
            Object signatures = entry.containsKey("signatures") ? entry.get("signatures") : entry.get("signature");
            collectSignatureNames(signatures, signatureNames);
        }
        if (variants.isEmpty()) {
            throw new IllegalArgumentException(where + ": `variants` is empty.");
        }
        int cacheLength = positive(lm.get("cache_len"), where + ".cache_len");

        int[] prefill;
        if (lm.get("prefill_lengths") != null) {
            List<Object> lengths = Json.list(lm, "prefill_lengths", where);
            prefill = new int[lengths.size()];
            for (int i = 0; i < prefill.length; i++) {
                prefill[i] = positive(lengths.get(i), where + ".prefill_lengths[" + i + "]");
            }
        } else {
            prefill = signatureNames.stream().mapToInt(FalconContract::prefillLength).filter(l -> l > 0)
                    .distinct().toArray();
        }
        Arrays.sort(prefill);
        if (prefill.length == 0) {
            throw new IllegalArgumentException(where + ": no prefill lengths (neither `prefill_lengths` nor "
                    + FalconContract.PREFILL_PREFIX + "<L> signatures).");
        }
        for (int length : prefill) {
            if (length > cacheLength) {
                throw new IllegalArgumentException(where + ": prefill length " + length + " exceeds cache_len " + cacheLength + ".");
            }
        }

        int[] stops;
        if (lm.get("stop_token_ids") != null) {
            List<Object> ids = Json.list(lm, "stop_token_ids", where);
            stops = new int[ids.size()];
            for (int i = 0; i < stops.length; i++) {
                stops[i] = nonNegative(ids.get(i), where + ".stop_token_ids[" + i + "]");
            }
        } else if (lm.get("stop_token_id") != null) {
            stops = new int[] {nonNegative(lm.get("stop_token_id"), where + ".stop_token_id")};
        } else {
            stops = new int[0];
        }
        int start = lm.get("start_token_id") == null ? -1 : nonNegative(lm.get("start_token_id"), where + ".start_token_id");
        return new CausalLmInfo(Collections.unmodifiableMap(variants), cacheLength, prefill, stops, start);
    }

    private static void collectSignatureNames(Object signatures, List<String> out) {
        if (signatures instanceof Map) {
            for (Object key : ((Map<?, ?>) signatures).keySet()) out.add((String) key);
        } else if (signatures instanceof List) {
            for (Object name : (List<?>) signatures) {
                if (name instanceof String) out.add((String) name);
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

    private static int positive(Object value, String where) {
        long v = Json.integer(value, where);
        if (v <= 0 || v > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(where + " must be a positive integer; found " + v + ".");
        }
        return (int) v;
    }

    private static int nonNegative(Object value, String where) {
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
