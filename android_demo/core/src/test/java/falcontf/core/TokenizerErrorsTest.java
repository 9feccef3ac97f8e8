package falcontf.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import org.junit.Test;

/** Unreadable or unsupported tokenizer.json files fail with a message naming the problem. */
public class TokenizerErrorsTest {
    private static String message(String json) {
        return assertThrows(IllegalArgumentException.class,
                () -> BpeTokenizer.fromJson(json, "assets/tokenizer.json")).getMessage();
    }

    private static final String DECODER = "\"decoder\": {\"type\": \"ByteLevel\"}";

    @Test
    public void notJson() {
        String m = message("{\"model\": ");
        assertTrue(m, m.startsWith("assets/tokenizer.json: invalid JSON at line 1"));
    }

    @Test
    public void missingModel() {
        String m = message("{" + DECODER + "}");
        assertTrue(m, m.contains("field `model` must be an object (missing or null)"));
    }

    @Test
    public void wrongModelType() {
        String m = message("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}, " + DECODER + "}");
        assertTrue(m, m.contains("type `WordPiece` is not supported"));
    }

    @Test
    public void badMerge() {
        String m = message("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}, "
                + DECODER + "}");
        assertTrue(m, m.contains("merges[0]: the merged token \"ab\" is not in the vocabulary"));
        m = message("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"ab\"]}, " + DECODER + "}");
        assertTrue(m, m.contains("merges[0]: expected \"left right\""));
    }

    @Test
    public void unsupportedPreTokenizer() {
        String m = message("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                + "\"pre_tokenizer\": {\"type\": \"Metaspace\"}, " + DECODER + "}");
        assertTrue(m, m.contains("pre_tokenizer: pre-tokenizer type `Metaspace` is not supported"));
    }

    @Test
    public void unsupportedDecoder() {
        String m = message("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                + "\"decoder\": {\"type\": \"WordPiece\"}}");
        assertTrue(m, m.contains("decoder: type `WordPiece` is not supported"));
    }

    @Test
    public void unknownIdInDecode() {
        BpeTokenizer tokenizer = BpeTokenizer.fromJson("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, "
                + "\"ab\": 2}, \"merges\": [[\"a\", \"b\"]]}, " + DECODER + "}", "t");
        assertEquals(2, tokenizer.encode("ab")[0]);
        String m = assertThrows(IllegalArgumentException.class, () -> tokenizer.decode(new int[] {5})).getMessage();
        assertEquals("Token id 5 is not in the tokenizer's vocabulary (ids 0..2).", m);
    }

    @Test
    public void symbolsOutsideTheVocabularyAreDroppedWithoutUnk() {
        BpeTokenizer tokenizer = BpeTokenizer.fromJson("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                + "\"merges\": []}, " + DECODER + "}", "t");
        assertEquals(2, tokenizer.encode("aza").length);
    }
}
