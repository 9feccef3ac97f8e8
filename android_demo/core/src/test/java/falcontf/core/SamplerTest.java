package falcontf.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.Test;

public class SamplerTest {
    private static final Map<String, Object> GOLDEN = Golden.json("sampling_cases.json");

    @Test
    public void splitMix64MatchesTheReferenceSequence() {
        // Seed 0: the first outputs of Vigna's reference implementation.
        SplitMix64 zero = new SplitMix64(0);
        assertEquals(0xE220A8397B1DCDAFL, zero.nextLong());
        assertEquals(0x6E789E6AA1B965F4L, zero.nextLong());
        assertEquals(0x06C45D188009454FL, zero.nextLong());
        // And the Python reference's values for the golden seed.
        Map<String, Object> check = Golden.map(GOLDEN.get("rng_check"));
        SplitMix64 rng = new SplitMix64(Long.parseUnsignedLong((String) check.get("seed")));
        for (Object next : (List<?>) check.get("next")) {
            assertEquals(Long.parseUnsignedLong((String) next), rng.nextLong());
        }
        for (Object next : (List<?>) check.get("next_double")) {
            assertEquals((Double) next, rng.nextDouble(), 0.0);
        }
    }

    @Test
    public void goldenDrawsOverRecordedLogits() {
        List<?> rows = (List<?>) GOLDEN.get("logits");
        List<?> cases = (List<?>) GOLDEN.get("cases");
        assertEquals(12, cases.size());
        for (Object item : cases) {
            Map<String, Object> c = Golden.map(item);
            Sampler sampler = Sampler.create(((Number) c.get("temperature")).doubleValue(),
                    ((Long) c.get("top_k")).intValue(), ((Number) c.get("top_p")).doubleValue(),
                    Long.parseUnsignedLong((String) c.get("seed")));
            int[] stops = Golden.ints(c.get("stop_token_ids"));
            int[] drawn = new int[rows.size()];
            int n = 0;
            for (Object row : rows) {
                float[] logits = Golden.floats(row);
                drawn[n] = sampler.sample(logits, 0, logits.length);
                boolean stop = false;
                for (int s : stops) stop |= s == drawn[n];
                n++;
                if (stop) break;
            }
            assertArrayEquals(c.get("name") + " " + c.get("stop_token_ids"), Golden.ints(c.get("expected")),
                    java.util.Arrays.copyOf(drawn, n));
        }
    }

    @Test
    public void sameSeedSameDrawsOtherSeedOtherDraws() {
        float[] logits = {0.1f, 0.5f, 0.3f, 0.2f, 0.4f, 0.0f, 0.35f, 0.25f};
        int[] a = draws(Sampler.create(1.0, 0, 1.0, 99), logits, 64);
        int[] b = draws(Sampler.create(1.0, 0, 1.0, 99), logits, 64);
        int[] c = draws(Sampler.create(1.0, 0, 1.0, 100), logits, 64);
        assertArrayEquals(a, b);
        assertNotEquals(java.util.Arrays.toString(a), java.util.Arrays.toString(c));
    }

    @Test
    public void cutsRestrictTheCandidates() {
        float[] logits = {0f, 3f, 1f, 3f, -2f};
        assertEquals(1, Sampler.greedy().sample(logits, 0, 5)); // first of the tied maxima
        Set<Integer> topK = new HashSet<>();
        Set<Integer> hot = new HashSet<>();
        for (long seed = 0; seed < 300; seed++) {
            topK.add(Sampler.create(1.0, 2, 1.0, seed).sample(logits, 0, 5));
            hot.add(Sampler.create(5.0, 0, 1.0, seed).sample(logits, 0, 5));
            assertEquals(1, Sampler.create(1.0, 0, 1e-9, seed).sample(logits, 0, 5));
            assertEquals(1, Sampler.create(1.0, 1, 1.0, seed).sample(logits, 0, 5));
        }
        assertEquals(new HashSet<>(java.util.Arrays.asList(1, 3)), topK);
        assertEquals(5, hot.size());
    }

    @Test
    public void samplesARowAtAnOffset() {
        float[] twoRows = {9f, 0f, 0f, 0f, 0f, 9f};
        assertEquals(0, Sampler.greedy().sample(twoRows, 0, 3));
        assertEquals(2, Sampler.greedy().sample(twoRows, 3, 3));
        assertThrows(IllegalArgumentException.class, () -> Sampler.greedy().sample(twoRows, 4, 3));
    }

    @Test
    public void badSettingsAndNaNLogitsAreNamed() {
        assertTrue(assertThrows(IllegalArgumentException.class, () -> Sampler.create(-1, 0, 1, 0))
                .getMessage().startsWith("temperature must be"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> Sampler.create(Double.NaN, 0, 1, 0))
                .getMessage().startsWith("temperature must be"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> Sampler.create(1, -3, 1, 0))
                .getMessage().startsWith("topK must be"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> Sampler.create(1, 0, 0, 0))
                .getMessage().startsWith("topP must be"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> Sampler.create(1, 0, 1.5, 0))
                .getMessage().startsWith("topP must be"));
        String m = assertThrows(IllegalStateException.class,
                () -> Sampler.greedy().sample(new float[] {0f, Float.NaN}, 0, 2)).getMessage();
        assertTrue(m, m.contains("NaN logits"));
    }

    private static int[] draws(Sampler sampler, float[] logits, int n) {
        int[] out = new int[n];
        for (int i = 0; i < n; i++) out[i] = sampler.sample(logits, 0, logits.length);
        return out;
    }
}
