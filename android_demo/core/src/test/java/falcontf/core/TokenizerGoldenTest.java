package falcontf.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.Test;

/** The Java tokenizer against Hugging Face tokenizers' ids for the golden corpus. */
public class TokenizerGoldenTest {
    private static final Map<String, Object> CASES = Golden.json("tokenizer_cases.json");

    private static List<?> texts() {
        return (List<?>) CASES.get("texts");
    }

    private static void checkTokenizer(String name) {
        Map<String, Object> expected = Golden.map(Golden.map(CASES.get("tokenizers")).get(name));
        String file = (String) expected.get("file");
        BpeTokenizer tokenizer = BpeTokenizer.fromJson(Golden.text(file), file);
        List<?> ids = (List<?>) expected.get("ids");
        List<?> decoded = (List<?>) expected.get("decoded");
        assertTrue("corpus is not empty", texts().size() > 10);
        for (int i = 0; i < texts().size(); i++) {
            String text = (String) texts().get(i);
            int[] want = Golden.ints(ids.get(i));
            assertArrayEquals(name + " encode(" + text + ")", want, tokenizer.encode(text));
            assertEquals(name + " decode(" + text + ")", decoded.get(i), tokenizer.decode(want));
        }
    }

    @Test
    public void byteLevelMatchesHuggingFace() {
        checkTokenizer("byte_level");
    }

    @Test
    public void prefixSpaceMatchesHuggingFace() {
        checkTokenizer("prefix_space");
    }

    @Test
    public void falconStyleSequenceMatchesHuggingFace() {
        checkTokenizer("falcon_style");
    }

    @Test
    public void streamingDecodeEqualsWholeDecode() {
        BpeTokenizer tokenizer = BpeTokenizer.fromJson(Golden.text("tokenizer_byte_level.json"), "t");
        for (Object text : texts()) {
            int[] ids = tokenizer.encode((String) text);
            BpeTokenizer.StreamDecoder stream = tokenizer.streamDecoder(false);
            StringBuilder out = new StringBuilder();
            for (int id : ids) {
                String piece = stream.push(id);
                // A piece never ends in half a surrogate pair or a replacement character.
                assertTrue(piece.isEmpty() || !Character.isHighSurrogate(piece.charAt(piece.length() - 1)));
                assertTrue(!piece.contains("\uFFFD"));
                out.append(piece);
            }
            out.append(stream.finish());
            assertEquals(tokenizer.decode(ids), out.toString());
        }
    }

    @Test
    public void streamingHoldsBackSplitCharacters() {
        BpeTokenizer tokenizer = BpeTokenizer.fromJson(Golden.text("tokenizer_byte_level.json"), "t");
        // One id per byte of the rocket emoji (4 UTF-8 bytes): nothing shows until the last.
        byte[] bytes = "\uD83D\uDE80".getBytes(java.nio.charset.StandardCharsets.UTF_8);
        BpeTokenizer.StreamDecoder stream = tokenizer.streamDecoder(false);
        for (int i = 0; i < bytes.length; i++) {
            int id = tokenizer.tokenToId(String.valueOf(ByteLevel.byteToChar(bytes[i])));
            assertTrue(id >= 0);
            assertEquals(i < bytes.length - 1 ? "" : "\uD83D\uDE80", stream.push(id));
        }
        assertEquals("", stream.finish());
    }

    @Test
    public void skipSpecialLeavesOutEndOfText() {
        BpeTokenizer tokenizer = BpeTokenizer.fromJson(Golden.text("tokenizer_byte_level.json"), "t");
        int eot = tokenizer.tokenToId("<|endoftext|>");
        assertTrue(tokenizer.isSpecial(eot));
        int[] ids = tokenizer.encode("Hello<|endoftext|>world");
        assertEquals("Hello<|endoftext|>world", tokenizer.decode(ids));
        assertEquals("Helloworld", tokenizer.decode(ids, true));
        BpeTokenizer.StreamDecoder stream = tokenizer.streamDecoder(true);
        StringBuilder out = new StringBuilder();
        for (int id : ids) out.append(stream.push(id));
        assertEquals("Helloworld", out.append(stream.finish()).toString());
    }

    @Test
    public void byteAlphabetIsABijection() {
        boolean[] seen = new boolean[512];
        for (int b = 0; b < 256; b++) {
            char c = ByteLevel.byteToChar(b);
            assertTrue(c < 512 && !seen[c]);
            seen[c] = true;
            assertEquals(b, ByteLevel.charToByte(c));
        }
        assertEquals('Ġ', ByteLevel.byteToChar(' '));
        assertEquals('Ċ', ByteLevel.byteToChar('\n'));
        assertEquals(-1, ByteLevel.charToByte('€'));
    }
}
