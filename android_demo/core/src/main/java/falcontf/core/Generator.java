package falcontf.core;

import java.util.Arrays;

/**
 * The prefill/decode loop over a {@link CausalLm}, the same as the Python host loop
 * over the exported file (falcon_tf/lite/causal_lm.py; golden-tested against it).
 *
 * <p>The prefill signatures only fill the cache (they return no logits), so the prompt
 * but its last token goes through them in chunks from slot 0: for the tokens left, the
 * shortest prefill length that holds them all, else the longest, among the lengths whose
 * chunk ends within the cache (the export's cache update writes a chunk whole, so one
 * running past the cache end would land over earlier slots); tokens too near the cache
 * end for any prefill length go to {@code decode} one by one. Each chunk runs on the
 * smallest {@code windowed_prefill_<L>_<W>} of the file whose window holds it (it reads W
 * slots, not the whole cache), else on {@code prefill_<L>}. A chunk shorter than
 * its signature is padded with token 0 at the following positions; no real query can
 * see those slots (the mask allows a query at position p only slots 0..p), and the
 * following tokens overwrite them. Then the prompt's last token goes to {@code decode} at
 * its position n - 1, and its logits give the first new token; a one-token prompt
 * needs no prefill at all. Each new token is then fed to {@code decode} at the next
 * position. Every decode runs on the smallest {@code decode_<W>} of the file whose
 * window holds its position (it reads W slots, not the whole cache), else on
 * {@code decode}. For example a 9-token prompt with prefill lengths {4, 8}: prefill_8 at 0
 * (tokens 0..7), decode of token 8 at 8 (its logits give the first new token), then
 * decode of each new token at 9, 10, ... Generation
 * stops at a stop token, at {@code maxNewTokens}, when the listener asks to, or when
 * prompt and new tokens fill the cache (as Python's {@code max_length <= cache_length}),
 * with a message saying which.
 *
 * <p>Timing: {@link Result#prefillNanos} covers the prefill chunks and the decode of the
 * prompt's last token, i.e. reading the whole prompt up to the first new token's
 * logits; {@link Result#decodeNanos} and {@link Result#decodeSteps} cover the decodes of
 * the new tokens only.
 */
public final class Generator {
    /** Why generation ended. */
    public enum StopReason { STOP_TOKEN, MAX_TOKENS, CACHE_FULL, CANCELLED }

    /** Receives each new token as it is drawn; returning false stops generation. */
    public interface Listener {
        boolean onToken(int tokenId);
    }

    /**
     * What a run produced, with timings: {@code prefillNanos} from the first prefill
     * chunk to the first new token's logits (the decode of the prompt's last token
     * included), {@code decodeNanos} over the {@code decodeSteps} decodes of new tokens.
     */
    public static final class Result {
        public final int[] tokens;
        public final int promptTokens;
        public final StopReason stopReason;
        public final String message;
        public final long prefillNanos;
        public final long decodeNanos;
        public final int decodeSteps;

        Result(int[] tokens, int promptTokens, StopReason stopReason, String message,
               long prefillNanos, long decodeNanos, int decodeSteps) {
            this.tokens = tokens;
            this.promptTokens = promptTokens;
            this.stopReason = stopReason;
            this.message = message;
            this.prefillNanos = prefillNanos;
            this.decodeNanos = decodeNanos;
            this.decodeSteps = decodeSteps;
        }

        /** Decode throughput: tokens per second over the decode steps (0 when none ran). */
        public double decodeTokensPerSecond() {
            return decodeSteps == 0 || decodeNanos <= 0 ? 0 : decodeSteps * 1e9 / decodeNanos;
        }

        /**
         * Prompt throughput: prompt tokens per second over {@link #prefillNanos} (the
         * prefill chunks and the decode of the prompt's last token).
         */
        public double prefillTokensPerSecond() {
            return prefillNanos <= 0 ? 0 : promptTokens * 1e9 / prefillNanos;
        }
    }

    private final CausalLm model;
    private final int cacheLength;
    private final int vocab;
    private final int[] prefillLengths;
    private final int[] decodeWindows;
    private final int[] prefillWindows;

    public Generator(CausalLm model) {
        this.model = model;
        this.cacheLength = model.cacheLength();
        this.vocab = model.vocabSize();
        if (cacheLength <= 0 || vocab <= 0) {
            throw new IllegalArgumentException("The model reports cache length " + cacheLength
                    + " and vocabulary " + vocab + "; both must be positive.");
        }
        int[] lengths = model.prefillLengths().clone();
        Arrays.sort(lengths);
        if (lengths.length == 0) {
            throw new IllegalArgumentException("The model has no " + FalconContract.PREFILL_PREFIX
                    + "<L> signature to read a prompt with.");
        }
        for (int length : lengths) {
            if (length <= 0) {
                throw new IllegalArgumentException("Prefill length " + length + " must be positive.");
            }
        }
        this.prefillLengths = lengths;
        this.decodeWindows = windows(model.decodeWindows(), "Decode");
        this.prefillWindows = windows(model.prefillWindows(), "Prefill");
    }

    /** {@code windows} sorted, each checked to be in [1, cacheLength). */
    private int[] windows(int[] windows, String what) {
        windows = windows.clone();
        Arrays.sort(windows);
        for (int window : windows) {
            if (window <= 0 || window >= cacheLength) {
                throw new IllegalArgumentException(what + " window " + window + " must be in [1, "
                        + cacheLength + "), below the cache length.");
            }
        }
        return windows;
    }

    /**
     * Generates up to {@code maxNewTokens} tokens after {@code prompt}. The tokens
     * returned include the stop token when one ended the run.
     */
    public Result generate(int[] prompt, int maxNewTokens, Sampler sampler, int[] stopTokens, Listener listener) {
        if (prompt == null || prompt.length == 0) {
            throw new IllegalArgumentException("The prompt has no tokens; type some text first.");
        }
        if (maxNewTokens <= 0) {
            throw new IllegalArgumentException("maxNewTokens must be positive; received " + maxNewTokens + ".");
        }
        if (prompt.length > cacheLength) {
            throw new IllegalArgumentException("The prompt has " + prompt.length + " tokens; the model's cache holds "
                    + cacheLength + ". Shorten the prompt or export with a longer cache.");
        }
        for (int token : prompt) {
            checkToken(token, "prompt");
        }
        if (prompt.length >= cacheLength) {
            return new Result(new int[0], prompt.length, StopReason.CACHE_FULL, "Stopped: the prompt's "
                    + prompt.length + " tokens fill the model's cache of " + cacheLength
                    + " positions; there is no room for a new token.", 0, 0, 0);
        }
        model.resetCache();

        long start = System.nanoTime();
        int last = prompt.length - 1;
        int position = 0;
        while (position < last) {
            int left = last - position;
            int length = chunkLength(left, cacheLength - position);
            if (length == 0) {  // no prefill length fits before the cache end
                for (; position < last; position++) decode(prompt[position], position);
                break;
            }
            int used = Math.min(left, length);
            int[] tokens = new int[length];
            System.arraycopy(prompt, position, tokens, 0, used);
            // A prefill returns no logits (a file exported earlier returns some: not read).
            model.run(prefillSignature(position, length), tokens, inputPos(position, length),
                    mask(position, length));
            position += used;
        }
        float[] logits = decode(prompt[last], last);
        position = prompt.length;
        long prefillNanos = System.nanoTime() - start;

        TokenBuffer out = new TokenBuffer();
        long decodeNanos = 0;
        int decodeSteps = 0;
        StopReason reason;
        String message;
        while (true) {
            int token = sampler.sample(logits, 0, vocab);
            out.add(token);
            boolean keepGoing = listener == null || listener.onToken(token);
            if (contains(stopTokens, token)) {
                reason = StopReason.STOP_TOKEN;
                message = "Stopped at stop token " + token + ".";
                break;
            }
            if (!keepGoing) {
                reason = StopReason.CANCELLED;
                message = "Stopped on request.";
                break;
            }
            if (out.size() >= maxNewTokens) {
                reason = StopReason.MAX_TOKENS;
                message = "Stopped after " + maxNewTokens + " new tokens (the limit).";
                break;
            }
            if (position + 1 >= cacheLength) {
                reason = StopReason.CACHE_FULL;
                message = "Stopped: the model's cache of " + cacheLength + " positions is full ("
                        + prompt.length + " prompt + " + out.size() + " new tokens).";
                break;
            }
            long stepStart = System.nanoTime();
            logits = decode(token, position);
            decodeNanos += System.nanoTime() - stepStart;
            decodeSteps++;
            position++;
        }
        return new Result(out.toArray(), prompt.length, reason, message, prefillNanos, decodeNanos, decodeSteps);
    }

    /**
     * The prefill length for the next prompt chunk, among those no longer than {@code room}
     * (the slots left before the cache end): the shortest holding all {@code left} tokens,
     * else the longest; 0 when none fits.
     */
    private int chunkLength(int left, int room) {
        int longest = 0;
        for (int length : prefillLengths) {
            if (length > room) break;
            if (length >= left) return length;
            longest = length;
        }
        return longest;
    }

    /**
     * The signature for a prefill chunk of {@code length} at {@code start}: the smallest
     * {@code windowed_prefill_<L>_<W>} whose window holds the chunk, else {@code prefill_<L>}.
     */
    private String prefillSignature(int start, int length) {
        for (int window : prefillWindows) {
            if (start + length <= window) {
                return FalconContract.windowedPrefillSignature(length, window);
            }
        }
        return FalconContract.prefillSignature(length);
    }

    /** input_pos of a run over positions start .. start + length - 1. */
    private static int[] inputPos(int start, int length) {
        int[] inputPos = new int[length];
        for (int i = 0; i < length; i++) inputPos[i] = start + i;
        return inputPos;
    }

    /**
     * The causal mask of a run over positions start .. start + length - 1: row i allows
     * slots 0 .. start + i.
     */
    private float[] mask(int start, int length) {
        float[] mask = new float[length * cacheLength];
        Arrays.fill(mask, FalconContract.MASK_VALUE);
        for (int i = 0; i < length; i++) {
            Arrays.fill(mask, i * cacheLength, i * cacheLength + start + i + 1, 0f);
        }
        return mask;
    }

    /**
     * One decode step of {@code token} at {@code position}, on the smallest
     * {@code decode_<W>} whose window holds the position, else {@code decode}; returns its
     * vocab logits, checked.
     */
    private float[] decode(int token, int position) {
        String signature = FalconContract.DECODE_SIGNATURE;
        for (int window : decodeWindows) {
            if (position < window) {
                signature = FalconContract.decodeWindowSignature(window);
                break;
            }
        }
        float[] logits = model.run(signature, new int[] {token}, inputPos(position, 1), mask(position, 1));
        if (logits == null || logits.length != vocab) {
            throw new IllegalStateException("Signature " + signature + " returned "
                    + (logits == null ? "no" : String.valueOf(logits.length)) + " logits; expected 1 x "
                    + vocab + ".");
        }
        return logits;
    }

    private void checkToken(int token, String where) {
        if (token < 0 || token >= vocab) {
            throw new IllegalArgumentException("Token id " + token + " in the " + where
                    + " is outside the model's vocabulary of " + vocab + ".");
        }
    }

    private static boolean contains(int[] values, int value) {
        if (values == null) return false;
        for (int v : values) {
            if (v == value) return true;
        }
        return false;
    }

    /** A growable int array. */
    private static final class TokenBuffer {
        private int[] data = new int[64];
        private int size;

        void add(int value) {
            if (size == data.length) data = Arrays.copyOf(data, size * 2);
            data[size++] = value;
        }

        int size() {
            return size;
        }

        int[] toArray() {
            return Arrays.copyOf(data, size);
        }
    }
}
