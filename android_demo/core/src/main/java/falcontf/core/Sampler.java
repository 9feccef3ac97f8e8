package falcontf.core;

import java.util.Arrays;

/**
 * Picks the next token from a row of logits: greedy, or a seeded draw with
 * temperature, top-k and top-p.
 *
 * <p>The draw is defined step by step so another implementation can reproduce it
 * (android_demo/fixtures/make_golden.py does): in double precision, scaled = logit /
 * temperature; candidates sorted by scaled descending, then index ascending; the first
 * topK kept (0: all); weights exp(scaled - max); the shortest prefix whose running sum
 * reaches topP * total kept (topP = 1: all); u = nextDouble() * kept total; the first
 * candidate whose running sum exceeds u is the token.
 */
public final class Sampler {
    private final double temperature;
    private final int topK;
    private final double topP;
    private final SplitMix64 random;

    private Sampler(double temperature, int topK, double topP, long seed) {
        this.temperature = temperature;
        this.topK = topK;
        this.topP = topP;
        this.random = new SplitMix64(seed);
    }

    /** Always the most likely token (the lowest index among equal logits). */
    public static Sampler greedy() {
        return new Sampler(0, 0, 1, 0);
    }

    /**
     * A seeded sampler; {@code temperature} 0 means greedy, {@code topK} 0 means no
     * top-k cut, {@code topP} 1 means no nucleus cut.
     */
    public static Sampler create(double temperature, int topK, double topP, long seed) {
        if (!(temperature >= 0) || Double.isInfinite(temperature)) {
            throw new IllegalArgumentException("temperature must be a finite number >= 0; received " + temperature + ".");
        }
        if (topK < 0) {
            throw new IllegalArgumentException("topK must be >= 0 (0 keeps all tokens); received " + topK + ".");
        }
        if (!(topP > 0 && topP <= 1)) {
            throw new IllegalArgumentException("topP must be in (0, 1] (1 keeps all tokens); received " + topP + ".");
        }
        return new Sampler(temperature, topK, topP, seed);
    }

    public boolean isGreedy() {
        return temperature == 0;
    }

    /** A short description for the UI, e.g. "greedy" or "T=0.8 top-k 40 top-p 0.95". */
    @Override
    public String toString() {
        if (isGreedy()) return "greedy";
        return "T=" + temperature + (topK > 0 ? " top-k " + topK : "") + (topP < 1 ? " top-p " + topP : "");
    }

    /** The token for logits[offset, offset + vocab). */
    public int sample(float[] logits, int offset, int vocab) {
        if (vocab <= 0 || offset < 0 || offset + vocab > logits.length) {
            throw new IllegalArgumentException("logits row [" + offset + ", " + (offset + vocab)
                    + ") is outside an array of " + logits.length + ".");
        }
        for (int i = 0; i < vocab; i++) {
            if (Float.isNaN(logits[offset + i])) {
                throw new IllegalStateException("The model returned NaN logits (token " + i
                        + "); the model file or the delegate's computation is broken.");
            }
        }
        if (isGreedy()) {
            int best = 0;
            for (int i = 1; i < vocab; i++) {
                if (logits[offset + i] > logits[offset + best]) best = i;
            }
            return best;
        }
        double[] scaled = new double[vocab];
        Integer[] order = new Integer[vocab];
        for (int i = 0; i < vocab; i++) {
            scaled[i] = logits[offset + i] / temperature;
            order[i] = i;
        }
        Arrays.sort(order, (a, b) -> scaled[a] != scaled[b] ? Double.compare(scaled[b], scaled[a]) : Integer.compare(a, b));
        int kept = topK > 0 ? Math.min(topK, vocab) : vocab;
        double top = scaled[order[0]];
        double[] weights = new double[kept];
        double total = 0;
        for (int n = 0; n < kept; n++) {
            weights[n] = Math.exp(scaled[order[n]] - top);
            total += weights[n];
        }
        if (topP < 1) {
            double running = 0;
            for (int n = 0; n < kept; n++) {
                running += weights[n];
                if (running >= topP * total) {
                    kept = n + 1;
                    break;
                }
            }
            total = 0;
            for (int n = 0; n < kept; n++) total += weights[n];
        }
        double u = random.nextDouble() * total;
        double running = 0;
        for (int n = 0; n < kept; n++) {
            running += weights[n];
            if (u < running) return order[n];
        }
        return order[kept - 1];
    }
}
