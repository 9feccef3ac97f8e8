package falcontf.core;

/**
 * The export contract's names, as falcon_tf/artifacts/contract.py defines them; the test
 * tests/test_android_contract.py fails if any value here drifts from that file.
 *
 * <p>Causal LM, batch 1: {@code prefill_<L>} and {@code decode} (L = 1) take
 * tokens int32 [1, L], input_pos int32 [L] (the cache slots written), mask float32
 * [1, 1, L, cache_len] (0 where attention is allowed, MASK_VALUE elsewhere) and
 * kv_cache_k_i / kv_cache_v_i float32 [1, kv_heads, cache_len, head_dim] (head-major, as
 * attention reads them: no step transposes a whole cache). They return
 * the updated caches under the same names; {@code decode} also returns logits float32
 * [1, 1, vocab], {@code prefill_<L>} returns no logits (it only fills the caches; files
 * exported earlier returned logits [1, L, vocab] there too, which a host ignores). A
 * host prefills the prompt but its last token, then decodes that token for the first
 * logits. Files may also have {@code decode_<W>} signatures: decode's inputs and outputs,
 * attending only the first W slots, for a position below W ({@link Generator} takes the
 * smallest that holds the position, as the Python host does), and
 * {@code windowed_prefill_<L>_<W>} signatures: prefill_<L>'s inputs and outputs, attending
 * only the first W slots, for a chunk that ends by slot W (one for every prefill length
 * L <= W of each prefill window W; the name does not start with "prefill", which LiteRT-LM
 * would take for a prefill of any position).
 */
public final class FalconContract {
    private FalconContract() {}

    public static final String PREFILL_PREFIX = "prefill_";
    public static final String WINDOWED_PREFILL_PREFIX = "windowed_prefill_";
    public static final String DECODE_SIGNATURE = "decode";
    public static final String TOKENS = "tokens";
    public static final String INPUT_POS = "input_pos";
    public static final String MASK = "mask";
    public static final String LOGITS = "logits";
    public static final String CACHE_K_PREFIX = "kv_cache_k_";
    public static final String CACHE_V_PREFIX = "kv_cache_v_";
    /** Additive mask value for a forbidden key; finite in float16 (the GPU delegate's precision). */
    public static final float MASK_VALUE = -30000.0f;

    /** Files the device side reads, relative to the artifact directory. */
    public static final String TOKENIZER_FILE = "tokenizer/tokenizer.json";
    public static final String MANIFEST_FILE = "manifest.json";

    /** The prefill signature for prompts of {@code length} tokens. */
    public static String prefillSignature(int length) {
        return PREFILL_PREFIX + length;
    }

    /** Cache tensor names in layer order: k_0, v_0, k_1, v_1, ... */
    public static String[] cacheNames(int numLayers) {
        String[] names = new String[2 * numLayers];
        for (int i = 0; i < numLayers; i++) {
            names[2 * i] = CACHE_K_PREFIX + i;
            names[2 * i + 1] = CACHE_V_PREFIX + i;
        }
        return names;
    }

    /** The decode signature that attends only the first {@code window} slots. */
    public static String decodeWindowSignature(int window) {
        return DECODE_SIGNATURE + "_" + window;
    }

    /** The prefill signature for chunks of {@code length} tokens attending the first {@code window} slots. */
    public static String windowedPrefillSignature(int length, int window) {
        return WINDOWED_PREFILL_PREFIX + length + "_" + window;
    }

    /**
     * {L, W} of a "windowed_prefill_L_W" name, or null for any other name.
     */
    public static int[] windowedPrefill(String signature) {
        if (signature == null || !signature.startsWith(WINDOWED_PREFILL_PREFIX)) return null;
        String rest = signature.substring(WINDOWED_PREFILL_PREFIX.length());
        int split = rest.indexOf('_');
        if (split < 0) return null;
        int length = positiveSuffix(rest.substring(0, split), "");
        int window = positiveSuffix(rest.substring(split + 1), "");
        return length > 0 && window > 0 ? new int[] {length, window} : null;
    }

    /** Whether {@code signature} is a prefill (prefill_L or windowed_prefill_L_W): caches only. */
    public static boolean isPrefill(String signature) {
        return prefillLength(signature) > 0 || windowedPrefill(signature) != null;
    }

    /** The L of a "prefill_L" name, or -1 for any other name. */
    public static int prefillLength(String signature) {
        return positiveSuffix(signature, PREFILL_PREFIX);
    }

    /** The W of a "decode_W" name, or -1 for any other name. */
    public static int decodeWindow(String signature) {
        return positiveSuffix(signature, DECODE_SIGNATURE + "_");
    }

    /** The positive number after {@code prefix} in {@code signature}, or -1. */
    private static int positiveSuffix(String signature, String prefix) {
        if (signature == null || !signature.startsWith(prefix)) return -1;
        String digits = signature.substring(prefix.length());
        if (digits.isEmpty() || digits.length() > 9) return -1;
        for (int i = 0; i < digits.length(); i++) {
            if (digits.charAt(i) < '0' || digits.charAt(i) > '9') return -1;
        }
        int value = Integer.parseInt(digits);
        return value > 0 ? value : -1;
    }
}
