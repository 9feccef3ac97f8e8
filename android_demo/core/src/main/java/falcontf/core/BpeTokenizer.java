package falcontf.core;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.text.Normalizer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A byte-level BPE tokenizer read from a Hugging Face tokenizer.json (GPT-2 style,
 * as Falcon's), giving the same ids as Hugging Face {@code tokenizers} with
 * {@code add_special_tokens=False}.
 *
 * <p>Encoding: added tokens (such as {@code <|endoftext|>}) are cut out of the text
 * first, whole, leftmost and longest first; the text between them is normalized, split
 * by the pre-tokenizer and each piece merged by BPE rank. Decoding maps the byte-level
 * characters back to bytes and reads them as UTF-8 (malformed bytes become U+FFFD).
 *
 * <pre>{@code
 * BpeTokenizer tokenizer = BpeTokenizer.fromJson(text, "tokenizer.json");
 * int[] ids = tokenizer.encode("Hello world<|endoftext|>");
 * String back = tokenizer.decode(ids);
 * }</pre>
 */
public final class BpeTokenizer {
    private final Map<String, Integer> vocab;
    private final String[] idToToken;
    private final Map<String, Integer> mergeRanks;
    private final Map<String, Integer> addedTokens;
    private final boolean[] special;
    private final PreTokenizer preTokenizer;
    private final Normalizer.Form normalization;
    private final Integer unknownId;
    private final boolean ignoreMerges;
    private final Map<String, int[]> cache = new HashMap<>();

    private BpeTokenizer(Map<String, Integer> vocab, String[] idToToken, Map<String, Integer> mergeRanks,
                         Map<String, Integer> addedTokens, boolean[] special, PreTokenizer preTokenizer,
                         Normalizer.Form normalization, Integer unknownId, boolean ignoreMerges) {
        this.vocab = vocab;
        this.idToToken = idToToken;
        this.mergeRanks = mergeRanks;
        this.addedTokens = addedTokens;
        this.special = special;
        this.preTokenizer = preTokenizer;
        this.normalization = normalization;
        this.unknownId = unknownId;
        this.ignoreMerges = ignoreMerges;
    }

    /** Reads a tokenizer.json stream (UTF-8); {@code source} names it in errors. */
    public static BpeTokenizer read(InputStream in, String source) throws IOException {
        ByteArrayOutputStream buffer = new ByteArrayOutputStream();
        byte[] chunk = new byte[1 << 16];
        for (int n; (n = in.read(chunk)) > 0; ) {
            buffer.write(chunk, 0, n);
        }
        return fromJson(new String(buffer.toByteArray(), StandardCharsets.UTF_8), source);
    }

    /** Parses tokenizer.json text; errors name {@code source} and the field at fault. */
    public static BpeTokenizer fromJson(String text, String source) {
        Map<String, Object> root = Json.parseObject(text, source);
        Map<String, Object> model = Json.object(root, "model", source);
        String where = source + ": model";
        Object type = model.get("type");
        if (type != null && !"BPE".equals(type)) {
            throw new IllegalArgumentException(where + ": type `" + type + "` is not supported; expected BPE.");
        }
        for (String unsupported : new String[] {"continuing_subword_prefix", "end_of_word_suffix"}) {
            Object value = model.get(unsupported);
            if (value != null && !"".equals(value)) {
                throw new IllegalArgumentException(where + ": `" + unsupported + "` is not supported.");
            }
        }
        if (Json.flag(model, "byte_fallback", false, where)) {
            throw new IllegalArgumentException(where + ": `byte_fallback: true` is not supported.");
        }
        Object dropout = model.get("dropout");
        if (dropout instanceof Number && ((Number) dropout).doubleValue() > 0) {
            throw new IllegalArgumentException(where + ": BPE dropout is not supported at inference.");
        }

        Map<String, Object> vocabJson = Json.object(model, "vocab", where);
        Map<String, Integer> vocab = new HashMap<>(vocabJson.size() * 2);
        int maxId = -1;
        for (Map.Entry<String, Object> entry : vocabJson.entrySet()) {
            long id = Json.integer(entry.getValue(), where + ".vocab[\"" + entry.getKey() + "\"]");
            if (id < 0 || id > Integer.MAX_VALUE - 1) {
                throw new IllegalArgumentException(where + ".vocab[\"" + entry.getKey() + "\"]: id " + id + " out of range.");
            }
            vocab.put(entry.getKey(), (int) id);
            maxId = Math.max(maxId, (int) id);
        }

        List<Object> merges = Json.list(model, "merges", where);
        Map<String, Integer> ranks = new HashMap<>(merges.size() * 2);
        for (int rank = 0; rank < merges.size(); rank++) {
            Object merge = merges.get(rank);
            String left;
            String right;
            if (merge instanceof String) {
                String s = (String) merge;
                int space = s.indexOf(' ');
                if (space <= 0 || space != s.lastIndexOf(' ') || space == s.length() - 1) {
                    throw new IllegalArgumentException(where + ".merges[" + rank + "]: expected \"left right\", found \"" + s + "\".");
                }
                left = s.substring(0, space);
                right = s.substring(space + 1);
            } else if (merge instanceof List && ((List<?>) merge).size() == 2
                    && ((List<?>) merge).get(0) instanceof String && ((List<?>) merge).get(1) instanceof String) {
                left = (String) ((List<?>) merge).get(0);
                right = (String) ((List<?>) merge).get(1);
            } else {
                throw new IllegalArgumentException(where + ".merges[" + rank + "]: expected a string or a pair of strings.");
            }
            if (!vocab.containsKey(left + right)) {
                throw new IllegalArgumentException(where + ".merges[" + rank + "]: the merged token \"" + left + right + "\" is not in the vocabulary.");
            }
            ranks.putIfAbsent(pairKey(left, right), rank);
        }

        Map<String, Integer> added = new HashMap<>();
        List<Integer> specialIds = new ArrayList<>();
        Object addedJson = root.get("added_tokens");
        if (addedJson != null) {
            if (!(addedJson instanceof List)) {
                throw new IllegalArgumentException(source + ": field `added_tokens` must be an array.");
            }
            List<?> items = (List<?>) addedJson;
            for (int i = 0; i < items.size(); i++) {
                String at = source + ": added_tokens[" + i + "]";
                if (!(items.get(i) instanceof Map)) {
                    throw new IllegalArgumentException(at + " must be an object.");
                }
                @SuppressWarnings("unchecked")
                Map<String, Object> token = (Map<String, Object>) items.get(i);
                String content = Json.string(token, "content", at);
                if (content.isEmpty()) {
                    throw new IllegalArgumentException(at + ": `content` is empty.");
                }
                int id = (int) Json.integer(token.get("id"), at + ".id");
                for (String flag : new String[] {"lstrip", "rstrip", "single_word"}) {
                    if (Json.flag(token, flag, false, at)) {
                        throw new IllegalArgumentException(at + " (\"" + content + "\"): `" + flag + ": true` is not supported.");
                    }
                }
                added.put(content, id);
                maxId = Math.max(maxId, id);
                if (Json.flag(token, "special", false, at)) {
                    specialIds.add(id);
                }
            }
        }

        String[] idToToken = new String[maxId + 1];
        for (Map.Entry<String, Integer> entry : vocab.entrySet()) {
            idToToken[entry.getValue()] = entry.getKey();
        }
        for (Map.Entry<String, Integer> entry : added.entrySet()) {
            idToToken[entry.getValue()] = entry.getKey();
        }
        boolean[] special = new boolean[maxId + 1];
        for (int id : specialIds) {
            special[id] = true;
        }

        Integer unknownId = null;
        Object unk = model.get("unk_token");
        if (unk instanceof String) {
            unknownId = vocab.get(unk);
            if (unknownId == null) {
                throw new IllegalArgumentException(where + ": unk_token \"" + unk + "\" is not in the vocabulary.");
            }
        }

        readDecoder(root.get("decoder"), source + ": decoder");
        return new BpeTokenizer(vocab, idToToken, ranks, added, special,
                PreTokenizer.fromJson(root.get("pre_tokenizer"), source + ": pre_tokenizer"),
                readNormalizer(root.get("normalizer"), source + ": normalizer"),
                unknownId, Json.flag(model, "ignore_merges", false, where));
    }

    private static Normalizer.Form readNormalizer(Object json, String where) {
        if (json == null) {
            return null;
        }
        Object type = json instanceof Map ? ((Map<?, ?>) json).get("type") : null;
        if ("NFC".equals(type)) return Normalizer.Form.NFC;
        if ("NFD".equals(type)) return Normalizer.Form.NFD;
        if ("NFKC".equals(type)) return Normalizer.Form.NFKC;
        if ("NFKD".equals(type)) return Normalizer.Form.NFKD;
        throw new IllegalArgumentException(where + ": type `" + type
                + "` is not supported (supported: null, NFC, NFD, NFKC, NFKD).");
    }

    private static void readDecoder(Object json, String where) {
        Object type = json instanceof Map ? ((Map<?, ?>) json).get("type") : null;
        if (!"ByteLevel".equals(type)) {
            throw new IllegalArgumentException(where + ": type `" + type
                    + "` is not supported; this tokenizer reads byte-level BPE (decoder ByteLevel).");
        }
    }

    private static String pairKey(String left, String right) {
        return left.length() + ":" + left + right;
    }

    /** The number of ids, added tokens included (the largest id plus one). */
    public int vocabSize() {
        return idToToken.length;
    }

    /** The id of a token (vocabulary or added), or -1 when there is none. */
    public int tokenToId(String token) {
        Integer id = addedTokens.get(token);
        if (id == null) id = vocab.get(token);
        return id == null ? -1 : id;
    }

    /** The token string of an id, as stored in tokenizer.json. */
    public String idToToken(int id) {
        checkId(id);
        return idToToken[id];
    }

    /** Whether an id is an added token marked special (e.g. {@code <|endoftext|>}). */
    public boolean isSpecial(int id) {
        return id >= 0 && id < special.length && special[id];
    }

    /** Token ids of {@code text}, without any template (no BOS or EOS added). */
    public int[] encode(String text) {
        if (text == null) {
            throw new IllegalArgumentException("Cannot tokenize null text.");
        }
        IntList ids = new IntList();
        int start = 0;
        int i = 0;
        while (i < text.length()) {
            String match = longestAddedTokenAt(text, i);
            if (match == null) {
                i++;
                continue;
            }
            encodeOrdinary(text.substring(start, i), ids);
            ids.add(addedTokens.get(match));
            i += match.length();
            start = i;
        }
        encodeOrdinary(text.substring(start), ids);
        return ids.toArray();
    }

    private String longestAddedTokenAt(String text, int i) {
        String best = null;
        for (String token : addedTokens.keySet()) {
            if ((best == null || token.length() > best.length()) && text.startsWith(token, i)) {
                best = token;
            }
        }
        return best;
    }

    private void encodeOrdinary(String segment, IntList ids) {
        if (segment.isEmpty()) {
            return;
        }
        if (normalization != null) {
            segment = Normalizer.normalize(segment, normalization);
        }
        List<String> pieces = new ArrayList<>();
        pieces.add(segment);
        for (String piece : preTokenizer.apply(pieces)) {
            for (int id : bpe(piece)) {
                ids.add(id);
            }
        }
    }

    /** Merges one pre-tokenized piece by rank, lowest first and leftmost on ties. */
    private int[] bpe(String word) {
        int[] cached = cache.get(word);
        if (cached != null) {
            return cached;
        }
        int[] result;
        Integer whole = vocab.get(word);
        if (ignoreMerges && whole != null) {
            result = new int[] {whole};
        } else {
            List<String> symbols = new ArrayList<>();
            for (int i = 0; i < word.length(); ) {
                int next = word.offsetByCodePoints(i, 1);
                symbols.add(word.substring(i, next));
                i = next;
            }
            while (symbols.size() > 1) {
                int bestRank = Integer.MAX_VALUE;
                int bestAt = -1;
                for (int k = 0; k + 1 < symbols.size(); k++) {
                    Integer rank = mergeRanks.get(pairKey(symbols.get(k), symbols.get(k + 1)));
                    if (rank != null && rank < bestRank) {
                        bestRank = rank;
                        bestAt = k;
                    }
                }
                if (bestAt < 0) {
                    break;
                }
                symbols.set(bestAt, symbols.get(bestAt) + symbols.get(bestAt + 1));
                symbols.remove(bestAt + 1);
            }
            IntList ids = new IntList();
            for (String symbol : symbols) {
                Integer id = vocab.get(symbol);
                if (id != null) {
                    ids.add(id);
                } else if (unknownId != null) {
                    ids.add(unknownId);
                }
                // No unk_token: Hugging Face drops the symbol; so do we.
            }
            result = ids.toArray();
        }
        if (cache.size() > 50_000) {
            cache.clear();
        }
        cache.put(word, result);
        return result;
    }

    /** Text of {@code ids}, special tokens included. */
    public String decode(int[] ids) {
        return decode(ids, false);
    }

    /** Text of {@code ids}; with {@code skipSpecial} special tokens are left out. */
    public String decode(int[] ids, boolean skipSpecial) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        for (int id : ids) {
            if (!(skipSpecial && isSpecial(id))) {
                appendBytes(id, bytes);
            }
        }
        return new String(bytes.toByteArray(), StandardCharsets.UTF_8);
    }

    /** The bytes one token stands for. */
    public byte[] tokenBytes(int id) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        appendBytes(id, bytes);
        return bytes.toByteArray();
    }

    private void appendBytes(int id, ByteArrayOutputStream out) {
        checkId(id);
        String token = idToToken[id];
        byte[] mapped = new byte[token.length()];
        for (int i = 0; i < token.length(); i++) {
            int b = ByteLevel.charToByte(token.charAt(i));
            if (b < 0) {
                // Not spelled in the byte-level alphabet (an added token such as
                // "<|endoftext|>" with other characters): its own UTF-8 bytes.
                mapped = token.getBytes(StandardCharsets.UTF_8);
                break;
            }
            mapped[i] = (byte) b;
        }
        out.write(mapped, 0, mapped.length);
    }

    private void checkId(int id) {
        if (id < 0 || id >= idToToken.length || idToToken[id] == null) {
            throw new IllegalArgumentException("Token id " + id + " is not in the tokenizer's vocabulary (ids 0.."
                    + (idToToken.length - 1) + ").");
        }
    }

    /** A decoder for streaming: text appears as soon as its UTF-8 bytes are complete. */
    public StreamDecoder streamDecoder(boolean skipSpecial) {
        return new StreamDecoder(this, skipSpecial);
    }

    /** Turns ids arriving one by one into text pieces, holding back split characters. */
    public static final class StreamDecoder {
        private final BpeTokenizer tokenizer;
        private final boolean skipSpecial;
        private byte[] pending = new byte[0];

        StreamDecoder(BpeTokenizer tokenizer, boolean skipSpecial) {
            this.tokenizer = tokenizer;
            this.skipSpecial = skipSpecial;
        }

        /** The text completed by this token (possibly empty). */
        public String push(int id) {
            if (skipSpecial && tokenizer.isSpecial(id)) {
                return "";
            }
            byte[] more = tokenizer.tokenBytes(id);
            byte[] all = Arrays.copyOf(pending, pending.length + more.length);
            System.arraycopy(more, 0, all, pending.length, more.length);
            int cut = completeLength(all);
            pending = Arrays.copyOfRange(all, cut, all.length);
            return new String(all, 0, cut, StandardCharsets.UTF_8);
        }

        /** Whatever is held back, malformed bytes as U+FFFD. */
        public String finish() {
            String rest = new String(pending, StandardCharsets.UTF_8);
            pending = new byte[0];
            return rest;
        }

        /** Length of the prefix that does not end inside an unfinished UTF-8 sequence. */
        private static int completeLength(byte[] b) {
            int n = b.length;
            for (int back = 1; back <= Math.min(3, n); back++) {
                int c = b[n - back] & 0xFF;
                if (c < 0x80) {
                    return n;
                }
                if (c >= 0xC0) {
                    int need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
                    return back < need ? n - back : n;
                }
            }
            return n;
        }
    }

    /** A growable int array. */
    static final class IntList {
        private int[] data = new int[16];
        private int size;

        void add(int value) {
            if (size == data.length) data = Arrays.copyOf(data, size * 2);
            data[size++] = value;
        }

        int[] toArray() {
            return Arrays.copyOf(data, size);
        }
    }
}
