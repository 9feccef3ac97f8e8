package falcontf.core;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * One pre-tokenization step of a tokenizer.json: it turns each piece of text into
 * smaller pieces. The kinds Falcon's and GPT-2's tokenizers use are supported
 * (ByteLevel, Punctuation, Digits, Split and a Sequence of them); any other is
 * refused with its name, so a tokenizer is never half understood.
 */
public abstract class PreTokenizer {
    /** Splits each piece; the result replaces the input list. */
    public abstract List<String> apply(List<String> pieces);

    /** How a split treats the delimiters it finds (Hugging Face's names). */
    enum Behavior { REMOVED, ISOLATED, MERGED_WITH_PREVIOUS, MERGED_WITH_NEXT, CONTIGUOUS }

    /** Reads the {@code pre_tokenizer} field; null means none (the text stays one piece). */
    @SuppressWarnings("unchecked")
    static PreTokenizer fromJson(Object json, String where) {
        if (json == null) {
            return new Sequence(new ArrayList<>());
        }
        if (!(json instanceof Map)) {
            throw new IllegalArgumentException(where + " must be an object or null.");
        }
        Map<String, Object> config = (Map<String, Object>) json;
        String type = Json.string(config, "type", where);
        switch (type) {
            case "Sequence": {
                List<PreTokenizer> steps = new ArrayList<>();
                List<Object> items = Json.list(config, "pretokenizers", where);
                for (int i = 0; i < items.size(); i++) {
                    steps.add(fromJson(items.get(i), where + ".pretokenizers[" + i + "]"));
                }
                return new Sequence(steps);
            }
            case "ByteLevel":
                return new ByteLevelStep(Json.flag(config, "add_prefix_space", false, where),
                        Json.flag(config, "use_regex", true, where));
            case "Punctuation":
                return new CharSplit(CharSplit.PUNCTUATION,
                        behavior(config.get("behavior") == null ? "Isolated" : config.get("behavior"), where));
            case "Digits":
                return new CharSplit(CharSplit.NUMERIC,
                        Json.flag(config, "individual_digits", false, where)
                                ? Behavior.ISOLATED : Behavior.CONTIGUOUS);
            case "Split": {
                if (Json.flag(config, "invert", false, where)) {
                    throw new IllegalArgumentException(where + ": Split with `invert: true` is not supported.");
                }
                Map<String, Object> pattern = Json.object(config, "pattern", where);
                Pattern regex;
                if (pattern.get("Regex") instanceof String) {
                    regex = Pattern.compile((String) pattern.get("Regex"));
                } else if (pattern.get("String") instanceof String) {
                    regex = Pattern.compile(Pattern.quote((String) pattern.get("String")));
                } else {
                    throw new IllegalArgumentException(where + ": Split's `pattern` must hold `Regex` or `String`.");
                }
                return new RegexSplit(regex, behavior(config.get("behavior"), where));
            }
            default:
                throw new IllegalArgumentException(where + ": pre-tokenizer type `" + type
                        + "` is not supported (supported: Sequence, ByteLevel, Punctuation, Digits, Split).");
        }
    }

    private static Behavior behavior(Object name, String where) {
        if ("Removed".equals(name)) return Behavior.REMOVED;
        if ("Isolated".equals(name)) return Behavior.ISOLATED;
        if ("MergedWithPrevious".equals(name)) return Behavior.MERGED_WITH_PREVIOUS;
        if ("MergedWithNext".equals(name)) return Behavior.MERGED_WITH_NEXT;
        if ("Contiguous".equals(name)) return Behavior.CONTIGUOUS;
        throw new IllegalArgumentException(where + ": unknown split behavior " + name + ".");
    }

    /**
     * Cuts {@code text} at the given delimiter spans (sorted, non-overlapping) and
     * arranges the delimiters as {@code behavior} says; empty pieces are dropped.
     */
    static void splitAt(String text, List<int[]> delimiters, Behavior behavior, List<String> out) {
        // Alternating pieces covering the text: [start, end, isDelimiter].
        List<int[]> parts = new ArrayList<>();
        int previous = 0;
        for (int[] d : delimiters) {
            if (d[0] == d[1]) continue;
            if (d[0] > previous) parts.add(new int[] {previous, d[0], 0});
            parts.add(new int[] {d[0], d[1], 1});
            previous = d[1];
        }
        if (previous < text.length()) parts.add(new int[] {previous, text.length(), 0});

        List<int[]> merged = new ArrayList<>();
        switch (behavior) {
            case REMOVED:
                for (int[] p : parts) if (p[2] == 0) merged.add(p);
                break;
            case ISOLATED:
                merged.addAll(parts);
                break;
            case MERGED_WITH_PREVIOUS: {
                boolean previousDelimiter = false;
                for (int[] p : parts) {
                    if (p[2] == 1 && !previousDelimiter && !merged.isEmpty()) {
                        merged.get(merged.size() - 1)[1] = p[1];
                    } else {
                        merged.add(p.clone());
                    }
                    previousDelimiter = p[2] == 1;
                }
                break;
            }
            case MERGED_WITH_NEXT: {
                boolean nextDelimiter = false;
                List<int[]> reversed = new ArrayList<>();
                for (int k = parts.size() - 1; k >= 0; k--) {
                    int[] p = parts.get(k);
                    if (p[2] == 1 && !nextDelimiter && !reversed.isEmpty()) {
                        reversed.get(reversed.size() - 1)[0] = p[0];
                    } else {
                        reversed.add(p.clone());
                    }
                    nextDelimiter = p[2] == 1;
                }
                for (int k = reversed.size() - 1; k >= 0; k--) merged.add(reversed.get(k));
                break;
            }
            case CONTIGUOUS: {
                int previousKind = -1;
                for (int[] p : parts) {
                    if (p[2] == previousKind) {
                        merged.get(merged.size() - 1)[1] = p[1];
                    } else {
                        merged.add(p.clone());
                    }
                    previousKind = p[2];
                }
                break;
            }
        }
        for (int[] p : merged) {
            if (p[1] > p[0]) out.add(text.substring(p[0], p[1]));
        }
    }

    static final class Sequence extends PreTokenizer {
        private final List<PreTokenizer> steps;

        Sequence(List<PreTokenizer> steps) {
            this.steps = steps;
        }

        @Override
        public List<String> apply(List<String> pieces) {
            for (PreTokenizer step : steps) {
                pieces = step.apply(pieces);
            }
            return pieces;
        }
    }

    /** GPT-2's split, then each piece spelled in the byte-level alphabet. */
    static final class ByteLevelStep extends PreTokenizer {
        private final boolean addPrefixSpace;
        private final boolean useRegex;

        ByteLevelStep(boolean addPrefixSpace, boolean useRegex) {
            this.addPrefixSpace = addPrefixSpace;
            this.useRegex = useRegex;
        }

        @Override
        public List<String> apply(List<String> pieces) {
            List<String> out = new ArrayList<>();
            for (String piece : pieces) {
                if (addPrefixSpace && !piece.startsWith(" ")) {
                    piece = " " + piece;
                }
                List<String> split = new ArrayList<>();
                if (useRegex) {
                    splitAt(piece, ByteLevel.split(piece), Behavior.ISOLATED, split);
                } else {
                    split.add(piece);
                }
                for (String s : split) {
                    out.add(ByteLevel.encode(s));
                }
            }
            return out;
        }
    }

    /** Splits on single characters that satisfy a test (punctuation, numeric). */
    static final class CharSplit extends PreTokenizer {
        static final int PUNCTUATION = 0;
        static final int NUMERIC = 1;
        private final int test;
        private final Behavior behavior;

        CharSplit(int test, Behavior behavior) {
            this.test = test;
            this.behavior = behavior;
        }

        private boolean matches(int c) {
            if (test == NUMERIC) {
                // Rust's char::is_numeric: the N* categories, so '²' and '½' count too;
                // after ByteLevel that includes alphabet characters standing for bytes.
                int type = Character.getType(c);
                return type == Character.DECIMAL_DIGIT_NUMBER || type == Character.LETTER_NUMBER
                        || type == Character.OTHER_NUMBER;
            }
            // Rust's char::is_ascii_punctuation, or a Unicode punctuation category (P*).
            if (c < 0x80) {
                return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40)
                        || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
            }
            switch (Character.getType(c)) {
                case Character.CONNECTOR_PUNCTUATION:
                case Character.DASH_PUNCTUATION:
                case Character.START_PUNCTUATION:
                case Character.END_PUNCTUATION:
                case Character.INITIAL_QUOTE_PUNCTUATION:
                case Character.FINAL_QUOTE_PUNCTUATION:
                case Character.OTHER_PUNCTUATION:
                    return true;
                default:
                    return false;
            }
        }

        @Override
        public List<String> apply(List<String> pieces) {
            List<String> out = new ArrayList<>();
            for (String piece : pieces) {
                List<int[]> delimiters = new ArrayList<>();
                for (int i = 0; i < piece.length(); ) {
                    int c = piece.codePointAt(i);
                    int next = i + Character.charCount(c);
                    if (matches(c)) delimiters.add(new int[] {i, next});
                    i = next;
                }
                splitAt(piece, delimiters, behavior, out);
            }
            return out;
        }
    }

    static final class RegexSplit extends PreTokenizer {
        private final Pattern pattern;
        private final Behavior behavior;

        RegexSplit(Pattern pattern, Behavior behavior) {
            this.pattern = pattern;
            this.behavior = behavior;
        }

        @Override
        public List<String> apply(List<String> pieces) {
            List<String> out = new ArrayList<>();
            for (String piece : pieces) {
                List<int[]> delimiters = new ArrayList<>();
                Matcher m = pattern.matcher(piece);
                while (m.find()) {
                    delimiters.add(new int[] {m.start(), m.end()});
                }
                splitAt(piece, delimiters, behavior, out);
            }
            return out;
        }
    }
}
