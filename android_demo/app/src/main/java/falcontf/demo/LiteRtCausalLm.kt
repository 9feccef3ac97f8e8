package falcontf.demo

import falcontf.core.CausalLm
import falcontf.core.FalconContract
import java.io.Closeable
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate

/**
 * The exported causal LM on LiteRT: the interpreter, the GPU delegate when the
 * device's compatibility list allows it (CPU with XNNPACK otherwise, or when the
 * delegate refuses the model), and every buffer a run needs. The KV caches live in
 * two sets of direct buffers, read from one and written to the other, swapped after
 * each run.
 *
 * Not thread-safe, and the GPU delegate must be used on the thread that created it:
 * [FalconEngine] creates, runs and closes it on its one executor thread.
 */
class LiteRtCausalLm(model: ByteBuffer, cpuThreads: Int, source: String) : CausalLm, Closeable {
    /** Which backend runs the model, and why, for the UI. */
    val delegateDescription: String

    /** Decoder layers, counted from decode's kv_cache_k_<i> inputs. */
    val numLayers: Int
        get() = cacheNames.size / 2

    private val interpreter: Interpreter
    private val gpuDelegate: GpuDelegate?
    private val cacheNames: List<String>
    private val cacheBytes: Int
    private val cacheLen: Int
    private val vocab: Int
    private val prefill: IntArray
    private val windows: IntArray
    private val prefillWindowList: IntArray
    private var cacheIn: Map<String, ByteBuffer>
    private var cacheOut: Map<String, ByteBuffer>
    private val scratch = HashMap<String, ByteBuffer>()

    init {
        var gpu: GpuDelegate? = null
        var opened: Interpreter? = null
        var description: String
        val compatibility = CompatibilityList()
        try {
            if (compatibility.isDelegateSupportedOnThisDevice) {
                try {
                    gpu = GpuDelegate(compatibility.bestOptionsForThisDevice)
                    opened = Interpreter(model, Interpreter.Options().addDelegate(gpu))
                    description = "GPU delegate"
                } catch (e: Exception) {
                    // The delegate refused an op or failed to initialise: fall back, say why.
                    gpu?.close()
                    gpu = null
                    description = "CPU (XNNPACK, $cpuThreads threads): the GPU delegate failed: ${e.message}"
                }
            } else {
                description = "CPU (XNNPACK, $cpuThreads threads): GPU delegate not supported on this device"
            }
        } finally {
            compatibility.close()
        }
        if (opened == null) {
            model.rewind()
            opened = Interpreter(model, Interpreter.Options().setNumThreads(cpuThreads).setUseXNNPACK(true))
        }
        interpreter = opened
        gpuDelegate = gpu
        delegateDescription = description

        try {
            val signatures = interpreter.signatureKeys.toList()
            require(FalconContract.DECODE_SIGNATURE in signatures) {
                "$source has no `${FalconContract.DECODE_SIGNATURE}` signature (it has $signatures); " +
                    "export the causal LM with --task causal_lm."
            }
            prefill = signatures.map { FalconContract.prefillLength(it) }.filter { it > 0 }.sorted().toIntArray()
            require(prefill.isNotEmpty()) { "$source has no ${FalconContract.PREFILL_PREFIX}<L> signature." }
            // decode_<W>: decode's tensors, attending the first W slots; Generator takes them below W.
            windows = signatures.map { FalconContract.decodeWindow(it) }.filter { it > 0 }.sorted().toIntArray()
            // windowed_prefill_<L>_<W>: prefill's tensors, attending the first W slots; Generator
            // takes them for a chunk that ends by W.
            prefillWindowList = signatures.mapNotNull { FalconContract.windowedPrefill(it)?.get(1) }
                .distinct().sorted().toIntArray()
            val decodeInputs = interpreter.getSignatureInputs(FalconContract.DECODE_SIGNATURE).toSet()
            for (name in listOf(FalconContract.TOKENS, FalconContract.INPUT_POS, FalconContract.MASK)) {
                require(name in decodeInputs) { "$source: signature decode lacks input `$name` (has $decodeInputs)." }
            }
            val layers = decodeInputs.count { it.startsWith(FalconContract.CACHE_K_PREFIX) }
            cacheNames = FalconContract.cacheNames(layers).toList()
            require(layers > 0 && decodeInputs.containsAll(cacheNames)) {
                "$source: decode's cache inputs are not ${FalconContract.CACHE_K_PREFIX}i / " +
                    "${FalconContract.CACHE_V_PREFIX}i pairs (has $decodeInputs)."
            }
            val cache = interpreter.getInputTensorFromSignature(cacheNames[0], FalconContract.DECODE_SIGNATURE)
            require(cache.dataType() == DataType.FLOAT32 && cache.shape().size == 4) {
                "$source: ${cacheNames[0]} must be float32 [1, kv_heads, cache_len, head_dim]; " +
                    "it is ${cache.dataType()} ${cache.shape().contentToString()}."
            }
            cacheLen = cache.shape()[2]
            cacheBytes = cache.numBytes()
            val logits = interpreter.getOutputTensorFromSignature(FalconContract.LOGITS, FalconContract.DECODE_SIGNATURE)
            vocab = logits.shape().last()
            cacheIn = cacheNames.associateWith { direct(cacheBytes) }
            cacheOut = cacheNames.associateWith { direct(cacheBytes) }
        } catch (e: Exception) {
            close()
            throw e
        }
    }

    override fun cacheLength() = cacheLen

    override fun vocabSize() = vocab

    override fun prefillLengths(): IntArray = prefill.clone()

    override fun decodeWindows(): IntArray = windows.clone()

    override fun prefillWindows(): IntArray = prefillWindowList.clone()

    override fun resetCache() {
        // Stale slots are masked out, but a masked NaN still poisons the softmax sum.
        val zeros = ByteArray(minOf(cacheBytes, 1 shl 20))
        for (buffer in cacheIn.values) {
            buffer.clear()
            while (buffer.hasRemaining()) buffer.put(zeros, 0, minOf(zeros.size, buffer.remaining()))
            buffer.clear()
        }
    }

    /** Decode's logits; null for a prefill, which only fills the caches. */
    override fun run(signature: String, tokens: IntArray, inputPos: IntArray, mask: FloatArray): FloatArray? {
        val length = tokens.size
        val inputs = HashMap<String, Any>()
        inputs[FalconContract.TOKENS] = buffer("tokens$length", 4 * length).apply { asIntBuffer().put(tokens) }
        inputs[FalconContract.INPUT_POS] = buffer("pos$length", 4 * length).apply { asIntBuffer().put(inputPos) }
        inputs[FalconContract.MASK] = buffer("mask$length", 4 * mask.size).apply { asFloatBuffer().put(mask) }
        val outputs = HashMap<String, Any>()
        // A prefill has no logits output (a file exported earlier has one there: left unbound, unread).
        val logits = if (FalconContract.isPrefill(signature)) null
            else buffer("logits$length", 4 * length * vocab)
        if (logits != null) outputs[FalconContract.LOGITS] = logits
        for (name in cacheNames) {
            inputs[name] = cacheIn.getValue(name).rewind()
            outputs[name] = cacheOut.getValue(name).rewind()
        }
        interpreter.runSignature(inputs, outputs, signature)
        cacheIn = cacheOut.also { cacheOut = cacheIn }
        if (logits == null) return null
        val result = FloatArray(length * vocab)
        logits.rewind()
        logits.asFloatBuffer().get(result)
        return result
    }

    private fun buffer(key: String, bytes: Int): ByteBuffer =
        scratch.getOrPut(key) { direct(bytes) }.apply { clear() }

    private fun direct(bytes: Int): ByteBuffer = ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder())

    override fun close() {
        interpreter.close()
        gpuDelegate?.close()
    }
}
