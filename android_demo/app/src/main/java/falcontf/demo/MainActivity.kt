package falcontf.demo

import android.os.Bundle
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import androidx.lifecycle.Lifecycle
import androidx.lifecycle.lifecycleScope
import androidx.lifecycle.repeatOnLifecycle
import falcontf.core.Sampler
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.Job
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch

/** What the screen shows; written from any thread, drawn on the main thread. */
data class UiState(
    val status: String = "Loading…",
    val output: String = "",
    val speed: String = "",
    val ready: Boolean = false,
    val generating: Boolean = false,
)

class MainActivity : AppCompatActivity() {
    private lateinit var engine: FalconEngine
    private val state = MutableStateFlow(UiState())
    private var generation: Job? = null
    private var delegate = ""

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val status = findViewById<TextView>(R.id.status)
        val prompt = findViewById<EditText>(R.id.prompt)
        val maxTokens = findViewById<EditText>(R.id.max_tokens)
        val greedy = findViewById<CheckBox>(R.id.greedy)
        val button = findViewById<Button>(R.id.generate)
        val output = findViewById<TextView>(R.id.output)
        val speed = findViewById<TextView>(R.id.speed)

        engine = FalconEngine(applicationContext)
        lifecycleScope.launch {
            repeatOnLifecycle(Lifecycle.State.STARTED) {
                state.collect { s ->
                    status.text = s.status
                    output.text = s.output
                    speed.text = s.speed
                    button.isEnabled = s.ready
                    button.setText(if (s.generating) R.string.stop else R.string.generate)
                }
            }
        }
        lifecycleScope.launch {
            try {
                val loaded = engine.load { message -> state.update { it.copy(status = message) } }
                delegate = loaded.delegate
                state.update { it.copy(status = "${loaded.description}\nRunning on: ${loaded.delegate}", ready = true) }
            } catch (e: CancellationException) {
                throw e
            } catch (e: Exception) {
                // Missing or damaged assets, an unreadable tokenizer, a model LiteRT refuses.
                state.update { it.copy(status = "Cannot start: ${e.message ?: e.javaClass.simpleName}", ready = false) }
            }
        }

        button.setOnClickListener {
            generation?.let { running ->
                running.cancel()
                return@setOnClickListener
            }
            val limit = maxTokens.text.toString().toIntOrNull()
            if (limit == null || limit <= 0) {
                state.update { it.copy(speed = "Max new tokens must be a positive whole number.") }
                return@setOnClickListener
            }
            val sampler = if (greedy.isChecked) Sampler.greedy()
                else Sampler.create(0.8, 40, 0.95, System.nanoTime())
            val text = prompt.text.toString()
            generation = lifecycleScope.launch {
                state.update { it.copy(output = text, speed = "", generating = true) }
                try {
                    val result = engine.generate(text, limit, sampler) { p ->
                        state.update {
                            it.copy(output = text + p.text,
                                speed = "%d tokens, %.1f tokens/s on %s".format(p.newTokens, p.tokensPerSecond, delegate))
                        }
                    }
                    state.update {
                        it.copy(speed = "%d prompt tokens at %.1f tokens/s; %d new at %.1f tokens/s on %s (%s). %s".format(
                            result.promptTokens, result.prefillTokensPerSecond(), result.tokens.size,
                            result.decodeTokensPerSecond(), delegate, sampler, result.message))
                    }
                } catch (e: CancellationException) {
                    state.update { it.copy(speed = it.speed + " — stopped.") }
                } catch (e: Exception) {
                    state.update { it.copy(speed = "Generation failed: ${e.message ?: e.javaClass.simpleName}") }
                } finally {
                    state.update { it.copy(generating = false) }
                    generation = null
                }
            }
        }
    }

    override fun onDestroy() {
        generation?.cancel()
        engine.close()
        super.onDestroy()
    }
}
