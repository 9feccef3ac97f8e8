package falcontf.demo

import android.content.Context
import falcontf.core.AssetPackager
import falcontf.core.BpeTokenizer
import falcontf.core.FalconContract
import falcontf.core.Generator
import falcontf.core.Json
import falcontf.core.Manifest
import falcontf.core.Sampler
import java.io.Closeable
import java.io.FileNotFoundException
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
import java.util.concurrent.Executors
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.isActive
import kotlinx.coroutines.withContext

/**
 * Owns everything generation needs: one executor thread (the interpreter and its GPU
 * delegate are created, run and closed there), the [LiteRtCausalLm] with its buffers,
 * and the tokenizer. Created with the activity and closed with it.
 */
class FalconEngine(private val context: Context) : Closeable {
    private val executor = Executors.newSingleThreadExecutor { Thread(it, "falcon-engine") }
    private val dispatcher = executor.asCoroutineDispatcher()
    private var model: LiteRtCausalLm? = null
    private var tokenizer: BpeTokenizer? = null
    private var stopTokens = IntArray(0)
    private var startToken = -1

    /** What loading found, for the UI. */
    data class Loaded(val description: String, val delegate: String)

    /** Streaming progress of one generation. */
    data class Progress(val text: String, val newTokens: Int, val tokensPerSecond: Double)

    /** Reads and checks the assets, opens the model; throws with a message for the UI. */
    suspend fun load(onStatus: (String) -> Unit): Loaded = withContext(dispatcher) {
        val selection = Json.parseObject(readAsset(AssetPackager.SELECTION_FILE), ASSETS + AssetPackager.SELECTION_FILE)
        val manifest = Manifest.parse(readAsset(FalconContract.MANIFEST_FILE), ASSETS + FalconContract.MANIFEST_FILE)
        val lm = manifest.causalLm()
        val variant = selection["variant"] as? String
        val modelEntry = lm.variant(variant)
        val tokenizerInfo = manifest.tokenizer()
        val tokenizerEntry = tokenizerInfo.file

        for (entry in listOf(tokenizerEntry, modelEntry)) {
            onStatus("Checking ${entry.path} (${entry.bytes / (1 shl 20)} MiB)…")
            openAsset(entry.path).use { Manifest.verify(entry, it, ASSETS + entry.path) }
        }
        onStatus("Reading the tokenizer…")
        val tok = openAsset(FalconContract.TOKENIZER_FILE).use { BpeTokenizer.read(it, ASSETS + FalconContract.TOKENIZER_FILE) }
        onStatus("Opening the model…")
        val opened = LiteRtCausalLm(mapModel(modelEntry.path), CPU_THREADS, ASSETS + modelEntry.path)
        // The file must be the one the manifest describes (the Generator builds its
        // chunks and masks from these numbers).
        val mismatch = when {
            opened.cacheLength() != lm.cacheLength ->
                "a cache of ${opened.cacheLength()} positions; manifest.json says ${lm.cacheLength}"
            opened.vocabSize() != lm.vocabularySize ->
                "a vocabulary of ${opened.vocabSize()}; manifest.json says ${lm.vocabularySize}"
            !opened.prefillLengths().contentEquals(lm.prefillLengths) ->
                "prefill lengths ${opened.prefillLengths().joinToString("/")}; manifest.json says " +
                    lm.prefillLengths.joinToString("/")
            !opened.decodeWindows().contentEquals(lm.decodeWindows) ->
                "decode windows [${opened.decodeWindows().joinToString("/")}]; manifest.json says [" +
                    lm.decodeWindows.joinToString("/") + "]"
            !opened.prefillWindows().contentEquals(lm.prefillWindows) ->
                "prefill windows [${opened.prefillWindows().joinToString("/")}]; manifest.json says [" +
                    lm.prefillWindows.joinToString("/") + "]"
            opened.numLayers != lm.numLayers ->
                "${opened.numLayers} layers of KV cache; manifest.json says ${lm.numLayers}"
            else -> null
        }
        if (mismatch != null) {
            opened.close()
            throw IllegalArgumentException("${modelEntry.path} has $mismatch. Copy the assets again.")
        }
        if (opened.vocabSize() < tok.vocabSize()) {
            opened.close()
            throw IllegalArgumentException("The model's vocabulary (${opened.vocabSize()}) is smaller than the " +
                "tokenizer's (${tok.vocabSize()}): they come from different exports.")
        }
        model = opened
        tokenizer = tok
        startToken = lm.startTokenId
        // As Python's stop_token_ids="auto": the export's stop ids, else the tokenizer's end token.
        stopTokens = if (lm.stopTokenIds.isNotEmpty()) lm.stopTokenIds
            else if (tokenizerInfo.endTokenId >= 0) intArrayOf(tokenizerInfo.endTokenId) else IntArray(0)
        Loaded("${selection["preset"]} ${variant ?: ""}: cache ${lm.cacheLength}, prefill " +
            lm.prefillLengths.joinToString("/"), opened.delegateDescription)
    }

    /**
     * Generates on the engine thread, handing each newly completed piece of text to
     * [onProgress] (from that thread). Cancelling the calling coroutine stops it.
     */
    suspend fun generate(prompt: String, maxNewTokens: Int, sampler: Sampler,
                         onProgress: (Progress) -> Unit): Generator.Result = withContext(dispatcher) {
        val lm = checkNotNull(model) { "The model is not loaded." }
        val tok = checkNotNull(tokenizer)
        val encoded = tok.encode(prompt)
        val ids = if (startToken >= 0) intArrayOf(startToken) + encoded else encoded
        val stream = tok.streamDecoder(true)
        val text = StringBuilder()
        var count = 0
        var firstTokenAt = 0L
        val job = coroutineContext
        Generator(lm).generate(ids, maxNewTokens, sampler, stopTokens) { token ->
            count++
            val now = System.nanoTime()
            if (count == 1) firstTokenAt = now
            text.append(stream.push(token))
            val rate = if (count > 1) (count - 1) * 1e9 / (now - firstTokenAt) else 0.0
            onProgress(Progress(text.toString(), count, rate))
            job.isActive
        }.also {
            text.append(stream.finish())
            onProgress(Progress(text.toString(), it.tokens.size, it.decodeTokensPerSecond()))
        }
    }

    private fun readAsset(name: String): String = openAsset(name).use { String(it.readBytes(), Charsets.UTF_8) }

    private fun openAsset(name: String) = try {
        context.assets.open(ASSETS + name)
    } catch (e: FileNotFoundException) {
        throw FileNotFoundException("Asset $ASSETS$name is missing: build with the copyFalconAssets task " +
            "after `falcon-tf export --preset <preset> --format tflite --task causal_lm` (see android_demo/README.md).")
    }

    /** Memory-maps the model from the APK (stored uncompressed), else reads it into memory. */
    private fun mapModel(name: String): ByteBuffer = try {
        context.assets.openFd(ASSETS + name).use { fd ->
            fd.createInputStream().channel.use { channel ->
                channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
            }
        }
    } catch (e: IOException) {
        val bytes = openAsset(name).use { it.readBytes() }
        ByteBuffer.allocateDirect(bytes.size).order(ByteOrder.nativeOrder()).put(bytes).apply { rewind() }
    }

    override fun close() {
        executor.execute {
            model?.close()
            model = null
        }
        executor.shutdown()
    }

    private companion object {
        const val ASSETS = "falcon/"
        const val CPU_THREADS = 4
    }
}
