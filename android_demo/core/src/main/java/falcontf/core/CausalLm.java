package falcontf.core;

/**
 * The exported causal LM as the generation loop sees it: one call per signature run,
 * the KV cache kept inside. The app implements it over the LiteRT interpreter; tests
 * implement it with fake models.
 *
 * <p>Shapes follow {@link FalconContract}: for a signature of length L, {@code tokens}
 * and {@code inputPos} hold L values and {@code mask} holds L * cacheLength() values
 * (row-major [1, 1, L, cacheLength]; a {@code decode_<W>} too). A decode run returns vocabSize() logits
 * (row-major [1, 1, vocab]); a {@code prefill_<L>} run only fills the cache and returns
 * no logits. Each run writes its L tokens' keys and values to the cache slots in
 * {@code inputPos} and carries the cache over to the next run.
 */
public interface CausalLm {
    /** Positions the KV cache holds (the longest prompt plus generation). */
    int cacheLength();

    /** Logits per token. */
    int vocabSize();

    /** The lengths L that have a {@code prefill_<L>} signature. */
    int[] prefillLengths();

    /**
     * The windows W that have a {@code decode_<W>} signature (decode attending only the
     * first W slots, with decode's inputs and outputs); none by default.
     */
    default int[] decodeWindows() {
        return new int[0];
    }

    /**
     * The windows W that have a {@code windowed_prefill_<L>_<W>} signature for every prefill
     * length L <= W (prefill attending only the first W slots, with prefill_<L>'s inputs and
     * outputs); none by default.
     */
    default int[] prefillWindows() {
        return new int[0];
    }

    /**
     * Runs {@code signature} ("decode", "decode_W", "prefill_L" or "windowed_prefill_L_W").
     * For a decode, returns its vocabSize() logits; for a prefill, returns null (the caller
     * ignores whatever a prefill returns, so an implementation over a file exported when
     * prefill still had logits may return them or null).
     */
    float[] run(String signature, int[] tokens, int[] inputPos, float[] mask);

    /** Empties the cache before a new prompt (stale slots are masked anyway). */
    void resetCache();
}
