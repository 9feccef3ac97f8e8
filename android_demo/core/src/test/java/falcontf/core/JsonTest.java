package falcontf.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class JsonTest {
    private static String error(String text) {
        return assertThrows(IllegalArgumentException.class, () -> Json.parse(text, "x.json")).getMessage();
    }

    @Test
    public void values() {
        Map<String, Object> m = Json.parseObject(
                "\uFEFF{\"a\": [1, -2, 3.5, 1e3, -0.0, 9223372036854775808], \"b\": {\"c\": null}, "
                        + "\"d\": true, \"e\": false, \"f\": \"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude80\"}", "x");
        assertEquals(Arrays.asList(1L, -2L, 3.5, 1000.0, -0.0, 9.223372036854775808E18), m.get("a"));
        assertTrue(((Map<?, ?>) m.get("b")).containsKey("c"));
        assertNull(((Map<?, ?>) m.get("b")).get("c"));
        assertEquals(Boolean.TRUE, m.get("d"));
        assertEquals(Boolean.FALSE, m.get("e"));
        assertEquals("x\"\\/\b\f\n\r\t\u00e9\uD83D\uDE80", m.get("f"));
        assertEquals(Arrays.asList("a", "b", "d", "e", "f"), Arrays.asList(m.keySet().toArray()));
    }

    @Test
    public void emptyContainersAndWhitespace() {
        assertEquals(Arrays.asList(), Json.parse(" [ ] ", "x"));
        assertEquals(0, ((Map<?, ?>) Json.parse("\n{\r\n}\t", "x")).size());
        List<?> nested = (List<?>) Json.parse("[[[]], {}]", "x");
        assertEquals(2, nested.size());
    }

    @Test
    public void float32RoundTrip() {
        // Golden logits are float32 values written as shortest doubles: they come back exact.
        float f = 0.1f * 3;
        Object parsed = Json.parse(Double.toString((double) f), "x");
        assertEquals(f, ((Double) parsed).floatValue(), 0f);
    }

    @Test
    public void errorsNamePlace() {
        assertEquals("x.json: invalid JSON at line 2, column 9: expected ',' or '}' in an object.",
                error("{\"a\": 1,\n \"b\" 2}".replace("\"b\" 2", "\"b\": 2 3")));
        assertTrue(error("").contains("unexpected end of input"));
        assertTrue(error("[1, 2").contains("expected ',' or ']'"));
        assertTrue(error("{\"a\": 1} x").contains("unexpected text after the JSON value"));
        assertTrue(error("\"abc").contains("unterminated string"));
        assertTrue(error("\"a\nb\"").contains("control character U+000A inside a string"));
        assertTrue(error("\"\\q\"").contains("unknown escape \\q"));
        assertTrue(error("\"\\u12G4\"").contains("bad hex digit"));
        assertTrue(error("01").contains("unexpected text after"));
        assertTrue(error("1.").contains("expected a digit after '.'"));
        assertTrue(error("-").contains("expected a digit"));
        assertTrue(error("1e+").contains("expected a digit in the exponent"));
        assertTrue(error("tru").contains("unexpected character 't'"));
        assertTrue(error("[1,]").contains("unexpected character ']'"));
        assertTrue(error("{\"a\": 1, \"a\": 2}").contains("duplicate key \"a\""));
        assertTrue(error("{1: 2}").contains("expected a string key"));
        assertTrue(error("'a'").contains("unexpected character '''"));
        StringBuilder deep = new StringBuilder();
        for (int i = 0; i < 600; i++) deep.append('[');
        assertTrue(error(deep.toString()).contains("nesting deeper than 512"));
    }

    @Test
    public void topLevelMustBeObjectForParseObject() {
        String m = assertThrows(IllegalArgumentException.class, () -> Json.parseObject("[1]", "m.json")).getMessage();
        assertEquals("m.json: the top level must be a JSON object.", m);
    }
}
