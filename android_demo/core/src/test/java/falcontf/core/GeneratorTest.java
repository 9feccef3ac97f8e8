package falcontf.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class GeneratorTest {
    /**
     * A fake model with a real cache: it stores each run's tokens in the slots of
     * input_pos, and each row's next token is a hash of the tokens in the slots its
     * mask allows, in slot order. A generator that feeds wrong positions or masks, or
     * lets a query see padding or an unwritten slot, gets other tokens. Its prefill
     * returns no logits (null), as the current export's; {@code prefillLogits} makes it
     * return the hash rows for a prefill too, as files exported earlier did.
     */
    static class HashingModel implements CausalLm {
        final int cache;
        final int vocab;
        final int[] prefill;
        final int[] slots;
        final List<String> calls = new ArrayList<>();
        boolean prefillLogits;
        int[] windows = new int[0];
        int[] prefillWindows = new int[0];

        HashingModel(int cache, int vocab, int... prefill) {
            this.cache = cache;
            this.vocab = vocab;
            this.prefill = prefill;
            this.slots = new int[cache];
        }

        @Override public int cacheLength() { return cache; }
        @Override public int vocabSize() { return vocab; }
        @Override public int[] prefillLengths() { return prefill; }
        @Override public int[] decodeWindows() { return windows; }
        @Override public int[] prefillWindows() { return prefillWindows; }
        @Override public void resetCache() { Arrays.fill(slots, -1); }

        @Override
        public float[] run(String signature, int[] tokens, int[] inputPos, float[] mask) {
            int length = tokens.length;
            boolean decode = !FalconContract.isPrefill(signature);
            int[] windowed = FalconContract.windowedPrefill(signature);
            int window = windowed != null ? windowed[1] : FalconContract.decodeWindow(signature);
            int prefillLength = windowed != null ? windowed[0] : FalconContract.prefillLength(signature);
            assertTrue(signature, signature.equals(FalconContract.DECODE_SIGNATURE)
                    || (windowed == null && Arrays.stream(windows).anyMatch(w -> w == window))
                    || (Arrays.stream(prefill).anyMatch(p -> p == prefillLength)
                        && (windowed == null || Arrays.stream(prefillWindows).anyMatch(w -> w == window))));
            int expectedLength = decode ? 1 : prefillLength;
            assertEquals(signature, expectedLength, length);
            assertTrue(signature, expectedLength == 1 || Arrays.stream(prefill).anyMatch(p -> p == length));
            assertEquals(length, inputPos.length);
            assertEquals(length * cache, mask.length);
            calls.add(signature + "@" + inputPos[0]);
            // The export writes a chunk whole at its start: one running past the cache
            // end would land over earlier slots.
            assertTrue(signature + "@" + inputPos[0] + " runs past the cache end",
                    inputPos[0] + length <= cache);
            assertTrue(signature + "@" + inputPos[0] + " runs past its window",
                    windowed == null || inputPos[0] + length <= window);
            for (int i = 0; i < length; i++) {
                assertEquals("input_pos counts up from the chunk's start", inputPos[0] + i, inputPos[i]);
                assertTrue("input_pos is not negative", inputPos[i] >= 0);
                slots[inputPos[i]] = tokens[i];
            }
            float[] logits = new float[length * vocab];
            for (int i = 0; i < length; i++) {
                long hash = 17;
                for (int j = 0; j < cache; j++) {
                    float m = mask[i * cache + j];
                    assertTrue(m == 0f || m == FalconContract.MASK_VALUE);
                    if (m == 0f) {
                        // As the export: decode_<W> and windowed_prefill_<L>_<W> attend the
                        // first W slots only.
                        assertTrue(signature + " allows slot " + j, window < 0 || j < window);
                        assertTrue("a query sees an unwritten slot " + j, slots[j] >= 0);
                        hash = hash * 31 + slots[j] + 1;
                    }
                }
                logits[i * vocab + (int) Math.floorMod(hash, (long) vocab)] = 1f;
            }
            return decode || prefillLogits ? logits : null;
        }
    }

    /** The tokens the hashing model must produce: each the hash of everything before it. */
    static int[] expectedHashTokens(int[] prompt, int count, int vocab) {
        List<Integer> history = new ArrayList<>();
        for (int t : prompt) history.add(t);
        int[] out = new int[count];
        for (int k = 0; k < count; k++) {
            long hash = 17;
            for (int t : history) hash = hash * 31 + t + 1;
            out[k] = (int) Math.floorMod(hash, (long) vocab);
            history.add(out[k]);
        }
        return out;
    }

    private static int[] prompt(int n) {
        int[] p = new int[n];
        for (int i = 0; i < n; i++) p[i] = (i * 7 + 3) % 50;
        return p;
    }

    @Test
    public void promptShorterThanPrefillIsPadded() {
        // 5 tokens: the first 4 padded into prefill_8, the fifth decoded at 4.
        HashingModel model = new HashingModel(64, 50, 8, 32);
        Generator.Result r = new Generator(model).generate(prompt(5), 10, Sampler.greedy(), null, null);
        assertArrayEquals(expectedHashTokens(prompt(5), 10, 50), r.tokens);
        assertEquals(Generator.StopReason.MAX_TOKENS, r.stopReason);
        assertEquals(Arrays.asList("prefill_8@0", "decode@4", "decode@5"), model.calls.subList(0, 3));
        assertEquals(11, model.calls.size()); // prefill + the prompt's last token + 9 decodes
        assertEquals(9, r.decodeSteps);
        assertEquals(5, r.promptTokens);
    }

    @Test
    public void thePromptButItsLastTokenIsPrefilledThenDecoded() {
        // 9 tokens, prefill lengths {4, 8}: the first 8 fill prefill_8 exactly, and the
        // ninth is decoded at 8 for the first new token.
        HashingModel model = new HashingModel(64, 50, 4, 8);
        Generator.Result r = new Generator(model).generate(prompt(9), 3, Sampler.greedy(), null, null);
        assertEquals(Arrays.asList("prefill_8@0", "decode@8", "decode@9", "decode@10"), model.calls);
        assertArrayEquals(expectedHashTokens(prompt(9), 3, 50), r.tokens);
        assertEquals(2, r.decodeSteps);

        // 8 tokens: 7 padded into prefill_8, the eighth decoded at 7.
        HashingModel eight = new HashingModel(64, 50, 4, 8);
        Generator.Result e = new Generator(eight).generate(prompt(8), 2, Sampler.greedy(), null, null);
        assertEquals(Arrays.asList("prefill_8@0", "decode@7", "decode@8"), eight.calls);
        assertArrayEquals(expectedHashTokens(prompt(8), 2, 50), e.tokens);
    }

    @Test
    public void aOneTokenPromptIsOnlyDecoded() {
        HashingModel model = new HashingModel(64, 50, 4, 8);
        Generator.Result r = new Generator(model).generate(new int[] {7}, 4, Sampler.greedy(), null, null);
        assertEquals(Arrays.asList("decode@0", "decode@1", "decode@2", "decode@3"), model.calls);
        assertArrayEquals(expectedHashTokens(new int[] {7}, 4, 50), r.tokens);
        assertEquals(Generator.StopReason.MAX_TOKENS, r.stopReason);
        assertEquals(3, r.decodeSteps);
        assertEquals(1, r.promptTokens);

        // Cache 2: the prompt's token and one new token fill it.
        HashingModel tiny = new HashingModel(2, 50, 2);
        Generator.Result t = new Generator(tiny).generate(new int[] {7}, 4, Sampler.greedy(), null, null);
        assertEquals(Arrays.asList("decode@0"), tiny.calls);
        assertArrayEquals(expectedHashTokens(new int[] {7}, 1, 50), t.tokens);
        assertEquals(Generator.StopReason.CACHE_FULL, t.stopReason);
        assertEquals(0, t.decodeSteps);
    }

    @Test
    public void prefillLogitsAreIgnored() {
        // A file exported when prefill still returned logits generates the same tokens
        // with the same calls as one whose prefill returns none; for every prompt length
        // over the chunk boundaries.
        for (int n = 1; n <= 20; n++) {
            HashingModel none = new HashingModel(32, 50, 4, 8);
            HashingModel with = new HashingModel(32, 50, 4, 8);
            with.prefillLogits = true;
            Generator.Result a = new Generator(none).generate(prompt(n), 6, Sampler.greedy(), null, null);
            Generator.Result b = new Generator(with).generate(prompt(n), 6, Sampler.greedy(), null, null);
            assertArrayEquals("prompt of " + n, expectedHashTokens(prompt(n), 6, 50), a.tokens);
            assertArrayEquals("prompt of " + n, a.tokens, b.tokens);
            assertEquals("prompt of " + n, none.calls, with.calls);
        }
        // Whatever a prefill returns (here a wrong size) is not read.
        HashingModel odd = new HashingModel(32, 50, 4, 8) {
            @Override
            public float[] run(String signature, int[] tokens, int[] inputPos, float[] mask) {
                float[] logits = super.run(signature, tokens, inputPos, mask);
                return signature.equals(FalconContract.DECODE_SIGNATURE) ? logits : new float[3];
            }
        };
        assertArrayEquals(expectedHashTokens(prompt(11), 4, 50),
                new Generator(odd).generate(prompt(11), 4, Sampler.greedy(), null, null).tokens);
    }

    @Test
    public void longPromptIsPrefilledInChunks() {
        // 19 tokens: 18 prefilled (8, 8, then 2 padded into prefill_4), the last decoded at 18.
        HashingModel model = new HashingModel(64, 50, 4, 8);
        Generator.Result r = new Generator(model).generate(prompt(19), 6, Sampler.greedy(), null, null);
        assertArrayEquals(expectedHashTokens(prompt(19), 6, 50), r.tokens);
        assertEquals(Arrays.asList("prefill_8@0", "prefill_8@8", "prefill_4@16", "decode@18", "decode@19"),
                model.calls.subList(0, 5));
    }

    @Test
    public void chunksEndWithinTheCacheAsThePythonLoop() {
        // 15 tokens, cache 16: 14 prefilled, prefill_8 at 0, then the 6 left padded into
        // prefill_8 at slots 8..15; the last decoded at 14. The sequence may fill the
        // cache: one new token, then it is full.
        HashingModel model = new HashingModel(16, 50, 8);
        Generator.Result r = new Generator(model).generate(prompt(15), 5, Sampler.greedy(), null, null);
        assertEquals(Arrays.asList("prefill_8@0", "prefill_8@8", "decode@14"), model.calls);
        assertArrayEquals(expectedHashTokens(prompt(15), 1, 50), r.tokens);
        assertEquals(Generator.StopReason.CACHE_FULL, r.stopReason);

        // 11 tokens, cache 12: after prefill_8 at 0 only 4 slots are left, too few for
        // prefill_8, so tokens 8 and 9 are decoded one by one, then the last at 10.
        HashingModel tight = new HashingModel(12, 50, 8);
        Generator.Result t = new Generator(tight).generate(prompt(11), 5, Sampler.greedy(), null, null);
        assertEquals(Arrays.asList("prefill_8@0", "decode@8", "decode@9", "decode@10"), tight.calls);
        assertArrayEquals(expectedHashTokens(prompt(11), 1, 50), t.tokens);

        // With prefill_4 too, the two go into prefill_4 at 8, which ends at the cache end.
        HashingModel fits = new HashingModel(12, 50, 4, 8);
        Generator.Result f = new Generator(fits).generate(prompt(11), 5, Sampler.greedy(), null, null);
        assertEquals(Arrays.asList("prefill_8@0", "prefill_4@8", "decode@10"), fits.calls);
        assertArrayEquals(expectedHashTokens(prompt(11), 1, 50), f.tokens);
    }

    @Test
    public void eachDecodeTakesTheSmallestWindowHoldingItsPosition() {
        // Windows {4, 8}, cache 16, prefill {4}: the prompt's last token at 2 and the new
        // tokens at 3 on decode_4, 4..7 on decode_8, 8 on decode; same tokens as
        // without windows.
        HashingModel model = new HashingModel(16, 50, 4);
        model.windows = new int[] {8, 4};
        Generator.Result r = new Generator(model).generate(prompt(3), 7, Sampler.greedy(), null, null);
        assertArrayEquals(expectedHashTokens(prompt(3), 7, 50), r.tokens);
        assertEquals(Arrays.asList("prefill_4@0", "decode_4@2", "decode_4@3", "decode_8@4", "decode_8@5",
                "decode_8@6", "decode_8@7", "decode@8"), model.calls);

        HashingModel bad = new HashingModel(16, 50, 4);
        bad.windows = new int[] {16};
        assertEquals("Decode window 16 must be in [1, 16), below the cache length.",
                assertThrows(IllegalArgumentException.class, () -> new Generator(bad)).getMessage());
    }

    @Test
    public void eachPrefillChunkTakesTheSmallestWindowHoldingIt() {
        // Prefill windows {8, 16}, cache 32, prefill {4, 8}: the 22 tokens before the
        // prompt's last go 8 at 0 on windowed_prefill_8_8, 8 at 8 on windowed_prefill_8_16,
        // 6 padded into 8 at 16 on prefill_8 (it passes both windows); same tokens as
        // without windows.
        HashingModel model = new HashingModel(32, 50, 4, 8);
        model.prefillWindows = new int[] {16, 8};
        Generator.Result r = new Generator(model).generate(prompt(23), 3, Sampler.greedy(), null, null);
        assertArrayEquals(expectedHashTokens(prompt(23), 3, 50), r.tokens);
        assertEquals(Arrays.asList("windowed_prefill_8_8@0", "windowed_prefill_8_16@8", "prefill_8@16",
                "decode@22", "decode@23", "decode@24"), model.calls);
        // A 3-token prompt: 2 tokens padded into 4 at 0, on the smallest window.
        HashingModel small = new HashingModel(32, 50, 4, 8);
        small.prefillWindows = new int[] {16, 8};
        new Generator(small).generate(prompt(3), 1, Sampler.greedy(), null, null);
        assertEquals(Arrays.asList("windowed_prefill_4_8@0", "decode@2"), small.calls);

        HashingModel bad = new HashingModel(16, 50, 4);
        bad.prefillWindows = new int[] {0};
        assertEquals("Prefill window 0 must be in [1, 16), below the cache length.",
                assertThrows(IllegalArgumentException.class, () -> new Generator(bad)).getMessage());
    }

    @Test
    public void stopsWhenTheCacheIsFull() {
        HashingModel model = new HashingModel(10, 50, 4);
        Generator.Result r = new Generator(model).generate(prompt(4), 100, Sampler.greedy(), null, null);
        // Prompt and new tokens fill the 10 slots: 6 new tokens, the first 5 fed at 4..8.
        assertEquals(6, r.tokens.length);
        assertArrayEquals(expectedHashTokens(prompt(4), 6, 50), r.tokens);
        assertEquals(Generator.StopReason.CACHE_FULL, r.stopReason);
        assertEquals("Stopped: the model's cache of 10 positions is full (4 prompt + 6 new tokens).", r.message);
        assertEquals(Arrays.asList("prefill_4@0", "decode@3", "decode@4", "decode@5", "decode@6", "decode@7",
                "decode@8"), model.calls);
        assertEquals(5, r.decodeSteps);
    }

    @Test
    public void prefillTimeRunsToTheFirstLogits() {
        // Each run takes at least 2 ms: the prefill time covers both prefill chunks and
        // the decode of the prompt's last token, the decode time the new tokens' decodes.
        HashingModel slow = new HashingModel(64, 50, 4) {
            @Override
            public float[] run(String signature, int[] tokens, int[] inputPos, float[] mask) {
                try {
                    Thread.sleep(2);
                } catch (InterruptedException e) {
                    throw new AssertionError(e);
                }
                return super.run(signature, tokens, inputPos, mask);
            }
        };
        Generator.Result r = new Generator(slow).generate(prompt(7), 4, Sampler.greedy(), null, null);
        assertEquals(Arrays.asList("prefill_4@0", "prefill_4@4", "decode@6", "decode@7", "decode@8", "decode@9"),
                slow.calls);
        assertEquals(3, r.decodeSteps);
        assertTrue("prefill time " + r.prefillNanos, r.prefillNanos >= 3 * 2_000_000L);
        assertTrue("decode time " + r.decodeNanos, r.decodeNanos >= 3 * 2_000_000L);
        assertTrue(r.prefillTokensPerSecond() > 0 && r.decodeTokensPerSecond() > 0);
    }

    @Test
    public void promptFillingTheWholeCacheGivesNoToken() {
        HashingModel model = new HashingModel(8, 50, 8);
        Generator.Result r = new Generator(model).generate(prompt(8), 5, Sampler.greedy(), null, null);
        assertEquals(0, r.tokens.length);
        assertEquals(Generator.StopReason.CACHE_FULL, r.stopReason);
        assertEquals("Stopped: the prompt's 8 tokens fill the model's cache of 8 positions; there is no room for "
                + "a new token.", r.message);
        assertTrue(model.calls.isEmpty());
    }

    @Test
    public void stopTokenAndCancellation() {
        int[] expected = expectedHashTokens(prompt(3), 20, 50);
        HashingModel model = new HashingModel(64, 50, 4);
        int stop = expected[4];
        int firstStop = 0;
        while (expected[firstStop] != stop) firstStop++;
        Generator.Result r = new Generator(model).generate(prompt(3), 20, Sampler.greedy(), new int[] {stop}, null);
        assertEquals(Generator.StopReason.STOP_TOKEN, r.stopReason);
        assertArrayEquals(Arrays.copyOf(expected, firstStop + 1), r.tokens);

        List<Integer> streamed = new ArrayList<>();
        Generator.Result c = new Generator(new HashingModel(64, 50, 4)).generate(prompt(3), 20, Sampler.greedy(), null,
                token -> {
                    streamed.add(token);
                    return streamed.size() < 3;
                });
        assertEquals(Generator.StopReason.CANCELLED, c.stopReason);
        assertEquals(3, c.tokens.length);
        assertEquals(Arrays.asList(expected[0], expected[1], expected[2]), streamed);
    }

    /**
     * The golden logits as a model: the prefill returns none, each decode (the prompt's
     * last token first) the next row.
     */
    static final class RecordedModel implements CausalLm {
        final List<float[]> rows;
        int step;

        RecordedModel(List<float[]> rows) {
            this.rows = rows;
        }

        @Override public int cacheLength() { return 128; }
        @Override public int vocabSize() { return rows.get(0).length; }
        @Override public int[] prefillLengths() { return new int[] {16}; }
        @Override public void resetCache() { step = 0; }

        @Override
        public float[] run(String signature, int[] tokens, int[] inputPos, float[] mask) {
            if (!signature.equals(FalconContract.DECODE_SIGNATURE)) return null;
            return rows.get(step++).clone();
        }
    }

    @Test
    public void goldenSequencesThroughTheLoop() {
        Map<String, Object> golden = Golden.json("sampling_cases.json");
        List<float[]> rows = new ArrayList<>();
        for (Object row : (List<?>) golden.get("logits")) rows.add(Golden.floats(row));
        for (Object item : (List<?>) golden.get("cases")) {
            Map<String, Object> c = Golden.map(item);
            Sampler sampler = Sampler.create(((Number) c.get("temperature")).doubleValue(),
                    ((Long) c.get("top_k")).intValue(), ((Number) c.get("top_p")).doubleValue(),
                    Long.parseUnsignedLong((String) c.get("seed")));
            Generator.Result r = new Generator(new RecordedModel(rows)).generate(new int[] {1, 2, 3}, rows.size(),
                    sampler, Golden.ints(c.get("stop_token_ids")), null);
            assertArrayEquals((String) c.get("name"), Golden.ints(c.get("expected")), r.tokens);
        }
    }

    @Test
    public void badInputsAreNamed() {
        Generator g = new Generator(new HashingModel(8, 50, 4));
        assertTrue(assertThrows(IllegalArgumentException.class,
                () -> g.generate(new int[0], 5, Sampler.greedy(), null, null)).getMessage().contains("no tokens"));
        assertEquals("The prompt has 9 tokens; the model's cache holds 8. Shorten the prompt or export with a longer cache.",
                assertThrows(IllegalArgumentException.class,
                        () -> g.generate(prompt(9), 5, Sampler.greedy(), null, null)).getMessage());
        assertTrue(assertThrows(IllegalArgumentException.class,
                () -> g.generate(new int[] {50}, 5, Sampler.greedy(), null, null)).getMessage()
                .contains("Token id 50 in the prompt is outside the model's vocabulary of 50"));
        assertTrue(assertThrows(IllegalArgumentException.class,
                () -> g.generate(prompt(2), 0, Sampler.greedy(), null, null)).getMessage().contains("maxNewTokens"));
        assertEquals("The model has no prefill_<L> signature to read a prompt with.",
                assertThrows(IllegalArgumentException.class, () -> new Generator(new HashingModel(8, 50))).getMessage());
    }

    @Test
    public void wrongDecodeLogitsAreNamed() {
        CausalLm broken = new HashingModel(8, 50, 4) {
            @Override
            public float[] run(String signature, int[] tokens, int[] inputPos, float[] mask) {
                return new float[3];
            }
        };
        String m = assertThrows(IllegalStateException.class,
                () -> new Generator(broken).generate(prompt(2), 5, Sampler.greedy(), null, null)).getMessage();
        assertEquals("Signature decode returned 3 logits; expected 1 x 50.", m);

        CausalLm none = new HashingModel(8, 50, 4) {
            @Override
            public float[] run(String signature, int[] tokens, int[] inputPos, float[] mask) {
                return null;
            }
        };
        m = assertThrows(IllegalStateException.class,
                () -> new Generator(none).generate(prompt(1), 5, Sampler.greedy(), null, null)).getMessage();
        assertEquals("Signature decode returned no logits; expected 1 x 50.", m);
    }
}
