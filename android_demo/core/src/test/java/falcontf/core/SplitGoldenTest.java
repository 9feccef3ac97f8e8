package falcontf.core;

import static org.junit.Assert.assertEquals;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** The Split pre-tokenizer's delimiter behaviors against Hugging Face tokenizers. */
public class SplitGoldenTest {
    @Test
    public void everyBehaviorMatchesHuggingFace() {
        Map<String, Object> golden = Golden.json("split_cases.json");
        List<?> texts = (List<?>) golden.get("texts");
        int checked = 0;
        for (Object item : (List<?>) golden.get("cases")) {
            Map<String, Object> c = Golden.map(item);
            String behavior = toHuggingFaceName((String) c.get("behavior"));
            String json = "{\"type\": \"Split\", \"pattern\": {\"Regex\": " + quote((String) c.get("pattern"))
                    + "}, \"behavior\": \"" + behavior + "\", \"invert\": false}";
            PreTokenizer split = PreTokenizer.fromJson(Json.parse(json, "split"), "split");
            List<?> pieces = (List<?>) c.get("pieces");
            for (int i = 0; i < texts.size(); i++) {
                List<String> input = new ArrayList<>(Collections.singletonList((String) texts.get(i)));
                assertEquals(c.get("pattern") + " " + behavior + " on " + texts.get(i),
                        pieces.get(i), split.apply(input));
                checked++;
            }
        }
        assertEquals(50, checked);
    }

    private static String toHuggingFaceName(String snake) {
        StringBuilder out = new StringBuilder();
        for (String part : snake.split("_")) {
            out.append(Character.toUpperCase(part.charAt(0))).append(part.substring(1));
        }
        return out.toString();
    }

    private static String quote(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }
}
