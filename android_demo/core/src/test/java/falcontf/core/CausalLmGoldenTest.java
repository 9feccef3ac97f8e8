package falcontf.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/**
 * The Java loop and tokenizer against the real causal-LM export run by the Python
 * host loop (falcon_tf.lite.FalconCausalLM on the TFLite interpreter), as recorded by
 * fixtures/make_causal_lm_golden.py in golden/causal_lm/.
 */
public class CausalLmGoldenTest {
    private static final Map<String, Object> GOLDEN = Golden.json("causal_lm/generation.json");
    private static final Manifest.CausalLmInfo LM =
            Manifest.parse(Golden.text("causal_lm/manifest.json"), "causal_lm/manifest.json").causalLm();
    private static final BpeTokenizer TOKENIZER =
            BpeTokenizer.fromJson(Golden.text("causal_lm/tokenizer/tokenizer.json"), "causal_lm/tokenizer.json");

    /**
     * Replays the recorded calls: each run must ask for the recorded signature with the
     * recorded tokens, input_pos and mask; a decode gets the logits row the interpreter
     * returned, a prefill none (null), as the export's prefill returns none. With
     * {@code prefillLogits} a prefill returns L rows of NaN instead, as a file exported
     * when prefill still had logits would (rows that must go unread).
     */
    static final class ReplayModel implements CausalLm {
        final List<Map<String, Object>> calls;
        int next;
        boolean prefillLogits;

        ReplayModel(List<Map<String, Object>> calls) {
            this.calls = calls;
        }

        @Override public int cacheLength() { return LM.cacheLength; }
        @Override public int vocabSize() { return LM.vocabularySize; }
        @Override public int[] prefillLengths() { return LM.prefillLengths; }
        @Override public int[] decodeWindows() { return LM.decodeWindows; }
        @Override public int[] prefillWindows() { return LM.prefillWindows; }
        @Override public void resetCache() { assertEquals("the cache is reset before the first call", 0, next); }

        @Override
        public float[] run(String signature, int[] tokens, int[] inputPos, float[] mask) {
            assertTrue("more calls than the Python loop made: " + signature + "@" + inputPos[0], next < calls.size());
            Map<String, Object> call = calls.get(next);
            String at = "call " + next + " (" + call.get("signature") + ")";
            next++;
            assertEquals(at, call.get("signature"), signature);
            assertArrayEquals(at + " tokens", Golden.ints(call.get("tokens")), tokens);
            assertArrayEquals(at + " input_pos", Golden.ints(call.get("input_pos")), inputPos);
            int[] allowed = Golden.ints(call.get("mask_allowed"));
            int cache = cacheLength();
            assertEquals(at + " mask size", allowed.length * cache, mask.length);
            for (int q = 0; q < allowed.length; q++) {
                for (int j = 0; j < cache; j++) {
                    float want = j < allowed[q] ? 0f : FalconContract.MASK_VALUE;
                    assertEquals(at + " mask[" + q + "][" + j + "]", want, mask[q * cache + j], 0f);
                }
            }
            int vocab = vocabSize();
            if (FalconContract.isPrefill(signature)) {
                assertEquals(at + ": a prefill records no logits", null, call.get("logits"));
                if (!prefillLogits) return null;
                float[] unread = new float[tokens.length * vocab];
                Arrays.fill(unread, Float.NaN);
                return unread;
            }
            assertEquals(at + ": decode's one row", 0L, call.get("logits_row"));
            float[] recorded = decodeRow((String) call.get("logits"));
            assertEquals(vocab, recorded.length);
            return recorded;
        }
    }

    static float[] decodeRow(String base64) {
        ByteBuffer bytes = ByteBuffer.wrap(Base64.getDecoder().decode(base64)).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[bytes.remaining() / 4];
        bytes.asFloatBuffer().get(out);
        return out;
    }

    private static List<Map<String, Object>> cases() {
        List<Map<String, Object>> out = new ArrayList<>();
        for (Object c : (List<?>) GOLDEN.get("cases")) out.add(Golden.map(c));
        return out;
    }

    private static Map<String, Object> named(String name) {
        for (Map<String, Object> c : cases()) {
            if (name.equals(c.get("name"))) return c;
        }
        throw new AssertionError("no golden case " + name);
    }

    private static Generator.Result replay(Map<String, Object> c, int maxNewTokens) {
        return replay(c, maxNewTokens, false);
    }

    private static Generator.Result replay(Map<String, Object> c, int maxNewTokens, boolean prefillLogits) {
        List<Map<String, Object>> calls = new ArrayList<>();
        for (Object call : (List<?>) c.get("calls")) calls.add(Golden.map(call));
        ReplayModel model = new ReplayModel(calls);
        model.prefillLogits = prefillLogits;
        Generator.Result r = new Generator(model).generate(Golden.ints(c.get("prompt")), maxNewTokens,
                Sampler.greedy(), LM.stopTokenIds, null);
        assertEquals(c.get("name") + ": every recorded call was made", calls.size(), model.next);
        return r;
    }

    @Test
    public void goldenMatchesTheManifest() {
        assertEquals(((Long) GOLDEN.get("cache_length")).intValue(), LM.cacheLength);
        assertEquals(((Long) GOLDEN.get("vocabulary_size")).intValue(), LM.vocabularySize);
        assertArrayEquals(Golden.ints(GOLDEN.get("stop_token_ids")), LM.stopTokenIds);
        assertEquals(3, cases().size());
    }

    @Test
    public void generatorReproducesThePythonLoopCallByCall() {
        for (Map<String, Object> c : cases()) {
            int[] prompt = Golden.ints(c.get("prompt"));
            int[] generated = Golden.ints(c.get("generated"));
            int maxLength = ((Long) c.get("max_length")).intValue();
            Generator.Result r = replay(c, maxLength - prompt.length);
            assertArrayEquals((String) c.get("name"), generated, r.tokens);
            assertEquals(prompt.length, r.promptTokens);
        }
    }

    @Test
    public void prefillLogitsOfAnOlderExportAreNotRead() {
        // The same calls and tokens when every prefill returns rows of NaN.
        for (Map<String, Object> c : cases()) {
            int[] prompt = Golden.ints(c.get("prompt"));
            int maxLength = ((Long) c.get("max_length")).intValue();
            Generator.Result r = replay(c, maxLength - prompt.length, true);
            assertArrayEquals((String) c.get("name"), Golden.ints(c.get("generated")), r.tokens);
        }
    }

    @Test
    public void thePythonLoopDecodesThePromptsLastToken() {
        // Every case: prefill calls for the prompt but its last token, then a decode of
        // that token at its position, whose logits give the first new token.
        for (Map<String, Object> c : cases()) {
            String name = (String) c.get("name");
            int[] prompt = Golden.ints(c.get("prompt"));
            List<?> calls = (List<?>) c.get("calls");
            int prefills = 0;
            while (FalconContract.isPrefill((String) Golden.map(calls.get(prefills)).get("signature"))) {
                assertEquals(name, null, Golden.map(calls.get(prefills)).get("logits"));
                prefills++;
            }
            Map<String, Object> first = Golden.map(calls.get(prefills));
            assertArrayEquals(name, new int[] {prompt[prompt.length - 1]}, Golden.ints(first.get("tokens")));
            assertArrayEquals(name, new int[] {prompt.length - 1}, Golden.ints(first.get("input_pos")));
            assertEquals(name, Golden.ints(c.get("generated")).length, calls.size() - prefills);
        }
    }

    @Test
    public void promptsSpanningChunksAndTheCacheEndAreCovered() {
        // The recorded cases exercise a padded prefill chunk after a full one, prefill
        // chunks within the file's window 32 (windowed_prefill_<L>_32) and past it
        // (prefill_<L>), decodes below the window (decode_32) and past it (decode), and a
        // run that stops because prompt and new tokens fill the cache.
        Map<String, Object> ids = named("ids");
        List<?> calls = (List<?>) ids.get("calls");
        assertEquals(19, Golden.ints(ids.get("prompt")).length);
        assertEquals("windowed_prefill_16_32", Golden.map(calls.get(0)).get("signature"));
        assertEquals("windowed_prefill_8_32", Golden.map(calls.get(1)).get("signature"));
        assertArrayEquals(new int[] {16, 17, 18, 19, 20, 21, 22, 23}, Golden.ints(Golden.map(calls.get(1)).get("input_pos")));
        assertEquals("decode_32", Golden.map(calls.get(2)).get("signature"));
        assertArrayEquals(new int[] {18}, Golden.ints(Golden.map(calls.get(2)).get("input_pos")));
        assertArrayEquals(new int[] {32}, LM.decodeWindows);
        assertArrayEquals(new int[] {32}, LM.prefillWindows);
        List<String> endPrefills = new ArrayList<>();
        for (Object call : (List<?>) named("cache_end").get("calls")) {
            String signature = (String) Golden.map(call).get("signature");
            if (FalconContract.isPrefill(signature)) endPrefills.add(signature);
        }
        assertEquals(Arrays.asList("windowed_prefill_16_32", "windowed_prefill_16_32", "prefill_16",
                "prefill_16"), endPrefills);
        int below = 0, past = 0;
        for (Map<String, Object> c : cases()) {
            for (Object call : (List<?>) c.get("calls")) {
                String signature = (String) Golden.map(call).get("signature");
                if (FalconContract.isPrefill(signature)) continue;
                int position = Golden.ints(Golden.map(call).get("input_pos"))[0];
                assertEquals(c.get("name") + " at " + position, position < 32 ? "decode_32" : "decode", signature);
                if (position < 32) below++; else past++;
            }
        }
        assertTrue("decodes below the window and past it", below > 0 && past > 0);

        Map<String, Object> end = named("cache_end");
        int promptLength = Golden.ints(end.get("prompt")).length;
        assertEquals(LM.cacheLength, promptLength + Golden.ints(end.get("generated")).length);
        // No token limit: the Java loop stops on its own where the cache is full.
        Generator.Result r = replay(end, 1000);
        assertArrayEquals(Golden.ints(end.get("generated")), r.tokens);
        assertEquals(Generator.StopReason.CACHE_FULL, r.stopReason);
    }

    @Test
    public void tokenizerGivesThePythonPromptAndText() {
        Map<String, Object> c = named("text");
        String text = (String) c.get("text");
        int[] textIds = Golden.ints(c.get("text_ids"));
        assertArrayEquals(textIds, TOKENIZER.encode(text));
        // The prompt is the start token, then the text's ids (as FalconEngine builds it).
        int[] prompt = Golden.ints(c.get("prompt"));
        assertEquals(LM.startTokenId, prompt[0]);
        assertArrayEquals(textIds, Arrays.copyOfRange(prompt, 1, prompt.length));

        int[] generated = Golden.ints(c.get("generated"));
        assertEquals(c.get("generated_text"), TOKENIZER.decode(generated));
        // generate()'s text: prompt and continuation with start and end tokens dropped.
        int[] all = new int[prompt.length + generated.length];
        System.arraycopy(prompt, 0, all, 0, prompt.length);
        System.arraycopy(generated, 0, all, prompt.length, generated.length);
        int[] kept = Arrays.stream(all).filter(t -> t != LM.startTokenId && !contains(LM.stopTokenIds, t)).toArray();
        String output = (String) c.get("output_text");
        assertNotNull(output);
        assertEquals(output, TOKENIZER.decode(kept));
        assertFalse("the continuation is not empty", TOKENIZER.decode(generated).isEmpty());
    }

    private static boolean contains(int[] values, int value) {
        return Arrays.stream(values).anyMatch(v -> v == value);
    }
}
