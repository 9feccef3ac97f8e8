package falcontf.core;

/**
 * SplitMix64 (Steele, Lea and Flood, 2014): a 64-bit state advanced by a fixed odd
 * constant and mixed. Defined here rather than borrowed from java.util so the
 * sequence is fixed by this file alone and reproducible elsewhere
 * (android_demo/fixtures/make_golden.py implements the same in Python).
 */
public final class SplitMix64 {
    private long state;

    public SplitMix64(long seed) {
        state = seed;
    }

    /** The next 64 bits. */
    public long nextLong() {
        state += 0x9E3779B97F4A7C15L;
        long z = state;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** Uniform in [0, 1): the top 53 bits over 2^53. */
    public double nextDouble() {
        return (nextLong() >>> 11) * 0x1.0p-53;
    }
}
