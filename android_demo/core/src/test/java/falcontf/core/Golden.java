package falcontf.core;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

/** Reads the golden files written by android_demo/fixtures/make_golden.py. */
final class Golden {
    private Golden() {}

    static String text(String name) {
        try (InputStream in = Golden.class.getResourceAsStream("/golden/" + name)) {
            if (in == null) {
                throw new IllegalStateException("golden/" + name + " not on the test classpath");
            }
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    static Map<String, Object> json(String name) {
        return Json.parseObject(text(name), name);
    }

    static int[] ints(Object list) {
        List<?> items = (List<?>) list;
        int[] out = new int[items.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = ((Long) items.get(i)).intValue();
        }
        return out;
    }

    static float[] floats(Object list) {
        List<?> items = (List<?>) list;
        float[] out = new float[items.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = ((Number) items.get(i)).floatValue();
        }
        return out;
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> map(Object value) {
        return (Map<String, Object>) value;
    }
}
