package falcontf.core;

/**
 * The exported causal LM as the generation loop sees it: one call per signature run,
 * the KV cache kept inside. The app implements it over the LiteRT interpreter; tests
 * implement it with fake models.
 *
 * <p>Shapes follow {@link FalconContract}: for a signature of length L, {@code tokens}
 * and {@code inputPos} hold L values, {@code mask} holds L * cacheLength() values
 * (row-major [1, 1, L, cacheLength]), and the result holds L * vocabSize() logits
 * (row-major [1, L, vocab]). Each run writes its L tokens' keys and values to the
 * cache slots in {@code inputPos} and carries the cache over to the next run.
 */
public interface CausalLm {
    /** Positions the KV cache holds (the longest prompt plus generation). */
    int cacheLength();

    /** Logits per token. */
    int vocabSize();

    /** The lengths L that have a {@code prefill_<L>} signature. */
    int[] prefillLengths();

    /** Runs {@code signature} ("decode" or "prefill_L"); returns the logits. */
    float[] run(String signature, int[] tokens, int[] inputPos, float[] mask);

    /** Empties the cache before a new prompt (stale slots are masked anyway). */
    void resetCache();
}
