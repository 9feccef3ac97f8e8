package falcontf.core;

import java.util.ArrayList;
import java.util.List;

/**
 * GPT-2's byte-level alphabet and its pre-tokenization split.
 *
 * <p>Every UTF-8 byte maps to one printable character (printable Latin-1 bytes to
 * themselves, the rest to U+0100 onwards), so BPE works on strings that can hold any
 * byte. The split reproduces the regular expression Hugging Face's ByteLevel
 * pre-tokenizer uses,
 * {@code 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+},
 * as a hand-written scanner: {@code \s} there is Unicode White_Space, which
 * java.util.regex only gives with a flag that Android's regex engine treats
 * differently, and a scanner behaves the same on both.
 */
public final class ByteLevel {
    private static final char[] BYTE_TO_CHAR = new char[256];
    private static final int[] CHAR_TO_BYTE = new int[512];

    static {
        java.util.Arrays.fill(CHAR_TO_BYTE, -1);
        int next = 256;
        for (int b = 0; b < 256; b++) {
            boolean printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            char c = printable ? (char) b : (char) next++;
            BYTE_TO_CHAR[b] = c;
            CHAR_TO_BYTE[c] = b;
        }
    }

    private ByteLevel() {}

    /** The alphabet character standing for one byte. */
    public static char byteToChar(int b) {
        return BYTE_TO_CHAR[b & 0xFF];
    }

    /** The byte an alphabet character stands for, or -1 when it is not in the alphabet. */
    public static int charToByte(char c) {
        return c < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[c] : -1;
    }

    /** Text as its UTF-8 bytes spelled in the byte-level alphabet. */
    public static String encode(String text) {
        byte[] bytes = text.getBytes(java.nio.charset.StandardCharsets.UTF_8);
        char[] out = new char[bytes.length];
        for (int i = 0; i < bytes.length; i++) {
            out[i] = BYTE_TO_CHAR[bytes[i] & 0xFF];
        }
        return new String(out);
    }

    private static final int SPACE = 0;
    private static final int LETTER = 1;
    private static final int NUMBER = 2;
    private static final int OTHER = 3;

    /** Unicode White_Space, which is what {@code \s} means in Hugging Face's regex engine. */
    static boolean isWhitespace(int c) {
        return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680
                || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F
                || c == 0x205F || c == 0x3000;
    }

    private static int category(int c) {
        if (isWhitespace(c)) {
            return SPACE;
        }
        switch (Character.getType(c)) {
            case Character.UPPERCASE_LETTER:
            case Character.LOWERCASE_LETTER:
            case Character.TITLECASE_LETTER:
            case Character.MODIFIER_LETTER:
            case Character.OTHER_LETTER:
                return LETTER;
            case Character.DECIMAL_DIGIT_NUMBER:
            case Character.LETTER_NUMBER:
            case Character.OTHER_NUMBER:
                return NUMBER;
            default:
                return OTHER;
        }
    }

    private static final String[] CONTRACTIONS = {"s", "t", "re", "ve", "m", "ll", "d"};

    /** The [start, end) spans (UTF-16 indices) of GPT-2's split; they cover the text. */
    public static List<int[]> split(String text) {
        List<int[]> spans = new ArrayList<>();
        int n = text.length();
        int i = 0;
        while (i < n) {
            int end = matchAt(text, i);
            spans.add(new int[] {i, end});
            i = end;
        }
        return spans;
    }

    private static int matchAt(String text, int i) {
        int n = text.length();
        int c = text.codePointAt(i);
        if (c == '\'') {
            for (String suffix : CONTRACTIONS) {
                if (text.startsWith(suffix, i + 1)) {
                    return i + 1 + suffix.length();
                }
            }
        }
        int cls = category(c);
        if (c == ' ' && i + 1 < n) {
            int nextClass = category(text.codePointAt(i + 1));
            if (nextClass != SPACE) {
                return runOf(text, i + 1, nextClass);
            }
        }
        if (cls != SPACE) {
            return runOf(text, i, cls);
        }
        // \s+(?!\S): the whitespace run, less its last character when a non-space
        // follows (that character then leads the next piece); else \s+.
        int end = runOf(text, i, SPACE);
        if (end < n) {
            int last = text.offsetByCodePoints(end, -1);
            if (last > i) {
                return last;
            }
        }
        return end;
    }

    private static int runOf(String text, int i, int cls) {
        int n = text.length();
        while (i < n) {
            int c = text.codePointAt(i);
            if (category(c) != cls) {
                break;
            }
            i += Character.charCount(c);
        }
        return i;
    }
}
