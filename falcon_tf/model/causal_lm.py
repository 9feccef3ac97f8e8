"""FalconCausalLM: the backbone with its tied LM head, and text generation.

Generation keeps a key/value cache of fixed capacity: one prefill over the
prompts, then one decode step per token. Prompts of different lengths share
one batch right-padded: row b's token t sits in cache slot t, so decode
writes each row at its own slot. The prefill and the whole decode loop run in
one XLA-compiled function, compiled once per batch size, prompt bucket and
cache size (powers of two), never per prompt length or `max_length`; the
sampler's numbers and the seed are tensors, so changing them recompiles
nothing.
"""

import os

import numpy as np

from falcon_tf.runtime import generation as _generation
from falcon_tf.artifacts import contract
from falcon_tf.runtime import samplers as _samplers
from falcon_tf._keras import keras, tf
from falcon_tf.model.attention_bias import causal_cache_mask
from falcon_tf.model.backbone import tensor_dim
from falcon_tf.json_file import read_json

ops = keras.ops

# Falcon's context length; the default cache capacity.
DEFAULT_CACHE_LENGTH = contract.CACHE_LENGTH
TASK_FILE = "task.json"  # keras-hub's whole-task config in a preset
_MIN_BUCKET = 16


def _bucket(n, cap):
    """The power of two at least n (and _MIN_BUCKET), at most cap."""
    size = _MIN_BUCKET
    while size < n:
        size *= 2
    return min(size, cap)


def scatter_write(positions):
    """A cache writer for XLA: row b's new entries go to slots positions[b]
    (b, L), in place, in every key/value head."""
    shape = tf.shape(positions)
    batch, length = shape[0], shape[1]

    def write(cache, new):  # cache (b, kv, C, d), new (b, kv, L, d)
        kv_heads = tf.shape(cache)[1]
        grid = (batch, kv_heads, length)
        rows = tf.broadcast_to(tf.range(batch)[:, None, None], grid)
        heads = tf.broadcast_to(tf.range(kv_heads)[None, :, None], grid)
        slots = tf.broadcast_to(positions[:, None, :], grid)
        indices = tf.stack([rows, heads, slots], axis=-1)  # (b, kv, L, 3)
        return tf.tensor_scatter_nd_update(cache, indices, new)

    return write


def untied_head_message(reason):
    return (f"{reason}. FalconCausalLM ties its LM head to the token embedding, which this "
            f"checkpoint does not; FalconBackbone.from_preset loads its backbone.")


def _holds_text(inputs):
    """True when `inputs` (any nesting of dicts, lists, arrays, tensors) holds strings."""
    for leaf in tf.nest.flatten(inputs):
        if isinstance(leaf, (str, bytes)):
            return True
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind in "USO":
            return True
        if tf.is_tensor(leaf) and leaf.dtype == tf.string:
            return True
    return False


def _as_numpy(inputs):
    """Tensors in a generate request -> numpy (strings stay strings)."""
    return tf.nest.map_structure(lambda v: v.numpy() if tf.is_tensor(v) else v, inputs)


def _slice(data, start, end):
    return None if data is None else data[start:end]


@keras.saving.register_keras_serializable(package="falcon_tf")
class FalconCausalLM(keras.Model):
    """Falcon with its LM head tied to the token embedding (keras-hub's
    `FalconCausalLM`), training on text, and `generate`.

    Args:
        backbone: a `falcon_tf.FalconBackbone`.
        tokenizer: a `falcon_tf.FalconTokenizer` without a preprocessor, or
            None (then `generate` takes token ids only). With a preprocessor,
            its tokenizer.
        cache_length: capacity of the key/value cache: the longest sequence,
            prompt included, that `generate` produces.
        preprocessor: a `falcon_tf.FalconCausalLMPreprocessor`, or None. With
            one, `fit`, `evaluate` and `predict` take text (it tokenizes and
            packs it) and `generate` takes and returns text.
        compile: compile with the defaults of `compile()` now, so `fit` works
            without calling it.

    Called on `{"token_ids", "padding_mask"}` it returns logits
    (batch, seq, vocabulary) in float32.

    Example:

    >>> from falcon_tf import FalconCausalLM
    >>> lm = FalconCausalLM.from_preset("falcon_tiny_random")
    >>> out = lm.generate([[1, 2, 3], [4, 5]], max_length=8, stop_token_ids=None)
    >>> [len(row) for row in out]
    [8, 8]
    >>> history = lm.fit(["the cat sat on the mat"], batch_size=1, verbose=0)
    >>> isinstance(lm.generate("the cat", max_length=12), str)
    True
    """

    def __init__(self, backbone, tokenizer=None, cache_length=DEFAULT_CACHE_LENGTH,
                 preprocessor=None, compile=True, **kwargs):
        from falcon_tf.model.backbone import FalconBackbone

        unknown = sorted(set(kwargs) - {"name", "trainable"})
        if unknown:
            raise ValueError(f"FalconCausalLM got unknown argument(s) {', '.join(unknown)}; it "
                             f"takes backbone, tokenizer, cache_length, preprocessor, compile, "
                             f"name and trainable.")
        self._check_preprocessor(preprocessor)
        if preprocessor is not None:  # keras-hub's form: the tokenizer rides in it
            if tokenizer is not None and tokenizer is not preprocessor.tokenizer:
                raise ValueError("Pass `tokenizer` or `preprocessor`, not both.")
            tokenizer = preprocessor.tokenizer
        tokenizer = self._as_tokenizer(tokenizer)
        if not isinstance(backbone, FalconBackbone):
            raise ValueError(f"`backbone` must be a falcon_tf.FalconBackbone; received "
                             f"{type(backbone).__name__}.")
        contract.check_cache_length(cache_length)
        if not isinstance(compile, bool):
            raise ValueError(f"`compile` must be True or False; received {compile!r}.")
        if getattr(backbone, "untied_lm_head", None):
            raise ValueError(untied_head_message(backbone.untied_lm_head))
        if tokenizer is not None and tokenizer.has_vocabulary and \
                tokenizer.vocabulary_size() > backbone.vocabulary_size:
            raise ValueError(
                f"The tokenizer has {tokenizer.vocabulary_size()} tokens but the backbone's "
                f"vocabulary_size is {backbone.vocabulary_size}.")
        inputs = backbone.input
        hidden = backbone(inputs)
        logits = ops.cast(backbone.token_embedding(hidden, reverse=True), "float32")
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.backbone = backbone
        self._tokenizer = tokenizer
        self._preprocessor = preprocessor
        self.cache_length = cache_length
        self.sampler = _samplers.resolve("greedy")
        self.generate_function = None
        self._generate_functions = {}
        self._step_functions = {}
        if compile:
            self.compile()

    @staticmethod
    def _check_preprocessor(preprocessor):
        from falcon_tf.text.causal_lm_preprocessor import FalconCausalLMPreprocessor

        if preprocessor is not None and not isinstance(preprocessor, FalconCausalLMPreprocessor):
            raise ValueError(f"`preprocessor` must be a falcon_tf.FalconCausalLMPreprocessor or "
                             f"None; received {type(preprocessor).__name__}.")

    @staticmethod
    def _as_tokenizer(tokenizer):
        from falcon_tf.text.bpe import ByteLevelBPE
        from falcon_tf.text.tokenizer import FalconTokenizer

        if tokenizer is None or isinstance(tokenizer, FalconTokenizer):
            return tokenizer
        if isinstance(tokenizer, ByteLevelBPE):
            return FalconTokenizer(_tokenizer=tokenizer)
        raise ValueError(f"`tokenizer` must be a falcon_tf.FalconTokenizer or None; received "
                         f"{type(tokenizer).__name__}.")

    @property
    def preprocessor(self):
        """The `FalconCausalLMPreprocessor`, or None (then `fit`, `evaluate`
        and `predict` take token ids). May be set to None and back."""
        return self._preprocessor

    @preprocessor.setter
    def preprocessor(self, value):
        self._check_preprocessor(value)
        self._preprocessor = value
        if value is not None:
            self._tokenizer = value.tokenizer

    @property
    def tokenizer(self):
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value):
        self._tokenizer = self._as_tokenizer(value)

    def __call__(self, inputs, *args, **kwargs):
        if _holds_text(inputs):
            raise ValueError(
                "FalconCausalLM was called on text; calling the model does not preprocess. "
                "Use fit, evaluate, predict or generate, which do, or call it on "
                "`preprocessor(text)[0]`.")
        return super().__call__(inputs, *args, **kwargs)

    def quantize(self, mode=None, **kwargs):
        """Keras's `quantize` (e.g. "int8") on every layer that supports it, the
        tied embedding included; compiled generation is traced again after."""
        self.backbone.quantize(mode, **kwargs)
        self._forget_compiled()
        self.train_function = self.test_function = self.predict_function = None

    def _forget_compiled(self):
        self._generate_functions.clear()
        self._step_functions.clear()
        self.generate_function = None

    # --- training: keras-hub's compile defaults, text through the preprocessor ---

    def compile(self, optimizer="auto", loss="auto", *, weighted_metrics="auto",
                sampler="greedy", **kwargs):
        """keras.Model.compile with keras-hub's defaults, and the sampler
        `generate` uses.

        Args:
            optimizer: "auto" (Adam, learning rate 2e-5) or any Keras optimizer.
            loss: "auto" (sparse categorical cross-entropy on the logits) or any
                Keras loss.
            weighted_metrics: "auto" (sparse categorical accuracy, weighted by
                the padding mask) or a list of metrics.
            sampler: "greedy", "top_k", "top_p", "temperature" (or keras-hub's
                "random"), a `falcon_tf.runtime.samplers.Sampler`, or a keras-hub
                sampler object with a counterpart here.
            **kwargs: the rest of keras.Model.compile.
        """
        sampler = _samplers.resolve(sampler)  # checked before anything changes
        if isinstance(optimizer, str) and optimizer == "auto":
            optimizer = keras.optimizers.Adam(2e-5)
        if isinstance(loss, str) and loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if isinstance(weighted_metrics, str) and weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy()]
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics,
                        **kwargs)
        self.sampler = sampler
        self.generate_function = None

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None:
            config = {**config, "sampler": self.sampler.get_config()}
        return config

    def compile_from_config(self, config):
        """What `keras.models.load_model` calls: the saved optimizer, loss,
        metrics and sampler."""
        from keras.saving import deserialize_keras_object

        config = dict(config)
        sampler = _samplers.Sampler.from_config(config.pop("sampler", {"name": "greedy"}))
        self.compile(**deserialize_keras_object(config), sampler=sampler)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _preprocessed(self, x, y=None, sample_weight=None, batch_size=None, shuffle=False):
        """A batched tf.data.Dataset of (x, y, sample_weight) made by the
        preprocessor from text `x` (a list, array or dataset of strings);
        `shuffle` reorders a list's samples each epoch."""
        if isinstance(x, tf.data.Dataset):
            if y is not None or sample_weight is not None:
                raise ValueError("With a tf.data.Dataset as `x`, `y` and `sample_weight` must "
                                 "be None.")
            return x.map(self._preprocess_element, num_parallel_calls=tf.data.AUTOTUNE)
        if isinstance(x, (str, bytes)):
            raise ValueError("`x` must be a batch of texts (a list of strings), not one string.")
        data = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        dataset = tf.data.Dataset.from_tensor_slices(data)
        if shuffle:
            dataset = dataset.shuffle(len(x), reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size or 32)
        return dataset.map(self._preprocess_element, num_parallel_calls=tf.data.AUTOTUNE)

    def _preprocess_element(self, *element):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
            element[0] if len(element) == 1 else element)
        return self.preprocessor(x, y=y, sample_weight=sample_weight)

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None, validation_data=None,
            validation_split=None, **kwargs):
        """keras.Model.fit; with a preprocessor, `x` is text (a list or dataset
        of strings) and the labels are made from it."""
        if self.preprocessor is None:
            return super().fit(x, y, batch_size=batch_size, sample_weight=sample_weight,
                               validation_data=validation_data,
                               validation_split=validation_split or 0.0, **kwargs)
        if validation_split and validation_data is None:
            if isinstance(x, tf.data.Dataset):
                raise ValueError("`validation_split` needs `x` as a list or array of texts, "
                                 "not a tf.data.Dataset.")
            split = int(len(x) * (1.0 - validation_split))
            if not 0 < split < len(x):
                raise ValueError(f"`validation_split` {validation_split} leaves no sample on "
                                 f"one side of {len(x)}.")
            validation_data = (_slice(x, split, None), _slice(y, split, None),
                               _slice(sample_weight, split, None))
            x, y, sample_weight = (_slice(x, 0, split), _slice(y, 0, split),
                                   _slice(sample_weight, 0, split))
        # Shuffled here, before batching; a dataset passed in keeps its order.
        shuffle = kwargs.pop("shuffle", True)
        data = self._preprocessed(x, y, sample_weight, batch_size,
                                  shuffle=bool(shuffle) and not isinstance(x, tf.data.Dataset))
        if validation_data is not None:
            if not isinstance(validation_data, tf.data.Dataset):
                validation_data = keras.utils.unpack_x_y_sample_weight(validation_data)
            else:
                validation_data = (validation_data, None, None)
            validation_data = self._preprocessed(*validation_data, batch_size=batch_size)
        return super().fit(data, validation_data=validation_data, shuffle=False, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        """keras.Model.evaluate; with a preprocessor, `x` is text."""
        if self.preprocessor is None or kwargs.get("_use_cached_eval_dataset"):
            return super().evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight,
                                    **kwargs)
        return super().evaluate(self._preprocessed(x, y, sample_weight, batch_size), **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        """keras.Model.predict; with a preprocessor, `x` is text. Returns the
        logits (batch, sequence_length, vocabulary)."""
        if self.preprocessor is None:
            return super().predict(x, batch_size=batch_size, **kwargs)
        return super().predict(self._preprocessed(x, batch_size=batch_size), **kwargs)

    def _on_batch(self, x, y=None, sample_weight=None):
        if self.preprocessor is None:
            return x, y, sample_weight
        return self.preprocessor(x, y=y, sample_weight=sample_weight)

    def train_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        return super().train_on_batch(*self._on_batch(x, y, sample_weight), **kwargs)

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        return super().test_on_batch(*self._on_batch(x, y, sample_weight), **kwargs)

    def predict_on_batch(self, x):
        return super().predict_on_batch(self._on_batch(x)[0])

    # --- Keras saving: `.keras` files and from_config(get_config()) ---

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable,
                  "backbone": keras.saving.serialize_keras_object(self.backbone),
                  "cache_length": self.cache_length}
        # Their vocabulary travels as an asset (Keras saves the tokenizer's).
        if self.preprocessor is not None:
            config["preprocessor"] = keras.saving.serialize_keras_object(self.preprocessor)
        elif self.tokenizer is not None:
            config["tokenizer"] = keras.saving.serialize_keras_object(self.tokenizer)
        return config

    @classmethod
    def from_config(cls, config):
        from falcon_tf.text.causal_lm_preprocessor import FalconCausalLMPreprocessor
        from falcon_tf.text.tokenizer import FalconTokenizer

        config = dict(config)
        backbone = config.pop("backbone", None)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        for key, kind in (("preprocessor", FalconCausalLMPreprocessor),
                          ("tokenizer", FalconTokenizer)):
            value = config.get(key)
            if isinstance(value, dict):
                expected = f"falcon_tf>{kind.__name__}"
                if value.get("registered_name") != expected:
                    raise ValueError(f"config `{key}` must be a {expected}; found "
                                     f"{value.get('registered_name')!r}.")
                config[key] = kind.from_config(value.get("config") or {})
        return cls(backbone, **config)

    # --- the cached forward, shared by generate and every exporter ---

    def cache_shape(self, batch, cache_length):
        c = self.backbone.falcon_config
        return contract.cache_shape(c.kv_heads, c.head_dim, cache_length, batch)

    def empty_cache(self, batch, cache_length):
        """Zeros for every layer's keys and values: [k_0, v_0, k_1, v_1, …]."""
        shape = self.cache_shape(batch, cache_length)
        dtype = self.backbone.compute_dtype
        return [tf.zeros(shape, dtype) for _ in range(2 * self.backbone.num_layers)]

    def call_with_cache(self, token_ids, positions, mask_bias, caches, write=None, embed=None,
                        window=None, project=None):
        """One cached forward over new tokens: the backbone's `forward_cached`
        (see it for the arguments), then the LM head.

        write: by default an XLA scatter at `positions`.
        project: the LM head's projection, as in `head`.
        Returns (logits (b, L, vocabulary) float32, updated caches).
        """
        x, caches = self.backbone.forward_cached(
            token_ids, positions, mask_bias, caches, write or scatter_write(positions),
            embed, window)
        return self.head(x, project), caches

    def head(self, x, project=None):
        """The tied LM head over final hidden states -> logits float32.
        `project`: how hidden states become logits; by default the token
        embedding's reverse (exporters pass the table cut in blocks for the GPU)."""
        if project is not None:
            return ops.cast(project(x), "float32")
        return ops.cast(self.backbone.token_embedding(x, reverse=True), "float32")

    # --- generation ---

    def _prefill(self, prompt, lengths, cache_length):
        batch, length = tf.shape(prompt)[0], tf.shape(prompt)[1]
        positions = tf.broadcast_to(tf.range(length)[None, :], (batch, length))
        logits, caches = self.call_with_cache(
            prompt, positions, causal_cache_mask(positions, cache_length),
            self.empty_cache(batch, cache_length))
        return tf.gather(logits, lengths - 1, batch_dims=1), caches  # (b, vocab)

    def _start(self, prompt, lengths, max_length, k, p, temperature, seed, stop_ids,
               cache_length):
        """Prefill, then the first token. Returns the decode loop's state."""
        batch = tf.shape(prompt)[0]
        last, caches = self._prefill(prompt, lengths, cache_length)
        tokens = tf.pad(prompt, [[0, 0], [0, cache_length - tf.shape(prompt)[1]]])
        ends = lengths  # (b,): tokens so far; a row stops growing once done
        done = lengths >= max_length
        state = (tf.constant(0), tokens, caches, tf.zeros((batch,), tf.int32), ends, done)
        return self._emit(state, last, max_length, k, p, temperature, seed, stop_ids)

    def _emit(self, state, logits, max_length, k, p, temperature, seed, stop_ids):
        """Samples each row's next token from `logits` and appends it."""
        step, tokens, caches, _, ends, done = state
        token = _samplers.sample_tf(logits, k, p, temperature, seed, step)
        cache_length = tensor_dim(tokens, 1)
        slot = tf.minimum(ends, cache_length - 1)
        rows = tf.range(tf.shape(tokens)[0])
        current = tf.gather(tokens, slot, batch_dims=1)
        tokens = tf.tensor_scatter_nd_update(tokens, tf.stack([rows, slot], -1),
                                             tf.where(done, current, token))
        stopped = tf.reduce_any(token[:, None] == stop_ids[None, :], axis=-1)
        new_ends = tf.where(done, ends, ends + 1)
        done = done | stopped | (new_ends >= max_length)
        return step + 1, tokens, caches, token, new_ends, done

    def _decode(self, state, max_length, k, p, temperature, seed, stop_ids):
        """Feeds each row's last token, then samples the next."""
        step, tokens, caches, token, ends, done = state
        cache_length = tensor_dim(tokens, 1)
        positions = tf.minimum(ends - 1, cache_length - 1)[:, None]  # (b, 1)
        logits, caches = self.call_with_cache(
            token[:, None], positions, causal_cache_mask(positions, cache_length), caches)
        state = (step, tokens, caches, token, ends, done)
        return self._emit(state, logits[:, 0], max_length, k, p, temperature, seed, stop_ids)

    def generate_graph(self, prompt, lengths, max_length, k, p, temperature, seed, stop_ids,
                       cache_length):
        """The whole generation as TensorFlow ops (no Python between steps).

        prompt (b, P) int32 right-padded, lengths (b,), max_length: int32
        scalar; k, p, temperature: the sampler (`samplers.Sampler.parameters`);
        seed int32 scalar; stop_ids (s,) int32; cache_length: Python int >= P.
        Returns token_ids (b, cache_length) and the length of each row
        (prompt + generated, a stop token included); slots past it hold 0.
        """
        args = (max_length, k, p, temperature, seed, stop_ids)
        state = self._start(prompt, lengths, *args, cache_length)
        state = tf.while_loop(
            lambda *s: tf.reduce_any(~s[-1]),
            lambda *s: self._decode(s, *args),
            state, maximum_iterations=cache_length)
        return state[1], state[4]

    def _compiled_generate(self, cache_length):
        if cache_length not in self._generate_functions:
            self._generate_functions[cache_length] = tf.function(
                lambda *args: self.generate_graph(*args, cache_length),
                jit_compile=True, reduce_retracing=True)
        return self._generate_functions[cache_length]

    def _compiled_steps(self, cache_length):
        """(start, decode) compiled separately, for streaming."""
        if cache_length not in self._step_functions:
            start = tf.function(lambda *a: self._start(*a, cache_length), jit_compile=True)
            decode = tf.function(lambda s, *a: self._decode(s, *a), jit_compile=True)
            self._step_functions[cache_length] = (start, decode)
        return self._step_functions[cache_length]

    def _prepare(self, inputs, max_length, sampler, stop_token_ids, seed):
        preprocessor = self.preprocessor
        add_start = preprocessor.add_start_token if preprocessor is not None else True
        default = (min(preprocessor.sequence_length, self.cache_length)
                   if preprocessor is not None else None)
        request = _generation.prepare(
            _as_numpy(inputs), self.tokenizer, self.backbone.vocabulary_size, self.cache_length,
            max_length, self.sampler if sampler is None else sampler, stop_token_ids, seed,
            add_start_token=add_start, default_max_length=default)
        cache = _bucket(request.max_length, self.cache_length)
        bucket = _bucket(request.longest, cache)
        prompt = np.zeros((len(request.rows), bucket), np.int32)
        for i, row in enumerate(request.rows):
            prompt[i, :len(row)] = row
        k, p, temperature = request.sampler.parameters()
        args = (tf.constant(prompt), tf.constant([len(r) for r in request.rows], tf.int32),
                tf.constant(request.max_length, tf.int32), tf.constant(k, tf.int32),
                tf.constant(p, tf.float32), tf.constant(temperature, tf.float32),
                tf.constant(request.seed, tf.int32),
                tf.constant(request.stop_token_ids, tf.int32,
                            shape=[len(request.stop_token_ids)]))
        return request, cache, args

    def generate(self, inputs, max_length=None, sampler=None, stop_token_ids="auto",
                 seed=None, strip_prompt=False):
        """Generates until `max_length` tokens (prompt included) or a stop token.

        Args:
            inputs: a string or list of strings (or a string tensor; needs a
                tokenizer; the start token is prepended unless the
                preprocessor's `add_start_token` is False), a list of token-id
                lists of any lengths, or a dict of right-padded `token_ids`
                and `padding_mask` (keras-hub's form).
            max_length: total length of each sequence, at most `cache_length`.
                By default: a dict's own width (generation fills its
                padding); else the preprocessor's `sequence_length` (within
                `cache_length`); else `cache_length`.
            sampler: None (the one given to `compile`, greedy until then),
                "greedy", "top_k", "top_p", "temperature", or a
                `falcon_tf.runtime.samplers.Sampler` with its parameters.
            stop_token_ids: "auto" (the tokenizer's end token), a list of ids,
                or None (always generate to `max_length`).
            seed: int, makes sampling repeatable; None: the sampler's seed, or
                a fresh one.
            strip_prompt: return only the generated part.

        Returns what came in: a string, a list of strings, lists of ids, or a
        dict of `token_ids` and `padding_mask`. Every argument is checked
        before any compute.
        """
        self.make_generate_function()  # keras-hub's attribute, kept until compile
        request, cache, args = self._prepare(inputs, max_length, sampler, stop_token_ids, seed)
        tokens, ends = self._compiled_generate(cache)(*args)
        return request.format(tokens, ends, strip_prompt)

    def make_generate_function(self):
        """keras-hub's `generate_function`: called with a dict of right-padded
        `token_ids` and `padding_mask` and `stop_token_ids` (default None), it
        fills the padding through the XLA-compiled generation with the
        compiled sampler and returns the dict. Kept as `self.generate_function`
        until `compile` or `quantize` clears it."""
        if self.generate_function is None:
            def generate_function(inputs, stop_token_ids=None):
                return self.generate(inputs, stop_token_ids=stop_token_ids)

            self.generate_function = generate_function
        return self.generate_function

    def stream(self, inputs, max_length=None, sampler=None, stop_token_ids="auto",
               seed=None):
        """Like `generate`, yielding each step's new tokens as they come:
        a (batch,) int array per step (rows that have stopped repeat their
        last token; `generate` gives the final sequences)."""
        _, cache, args = self._prepare(inputs, max_length, sampler, stop_token_ids, seed)
        start, decode = self._compiled_steps(cache)
        loop_args = args[2:]
        state = start(*args)
        while True:
            done = state[-1].numpy()
            yield state[3].numpy()
            if done.all():
                return
            state = decode(state, *loop_args)

    # --- presets ---

    def save_to_preset(self, preset_dir):
        """The backbone in keras-hub's preset format (`FalconBackbone.save_to_preset`),
        the tokenizer and the preprocessor's settings
        (`FalconCausalLMPreprocessor.save_to_preset`), and for keras-hub's
        architecture keras-hub's task.json, so that keras-hub's
        `FalconCausalLM.from_preset` loads the preset (a quantized one included)
        as `from_preset(preset_dir)` does."""
        import json

        from falcon_tf.text import causal_lm_preprocessor as preprocessing
        from falcon_tf.artifacts import manifest
        from falcon_tf.checkpoints import keras_hub

        preset_dir = os.fspath(preset_dir)
        self.backbone.save_to_preset(preset_dir)
        preprocessor = None
        if self.preprocessor is not None:
            self.preprocessor.save_to_preset(preset_dir)
            preprocessor = self.preprocessor.keras_hub_document(
                read_json(os.path.join(preset_dir, preprocessing.KERAS_HUB_TOKENIZER_FILE),
                          "Preset file"))
        elif self.tokenizer is not None:
            preprocessing.save_tokenizer_to_preset(self.tokenizer, preset_dir)
        backbone = read_json(os.path.join(preset_dir, keras_hub.CONFIG_FILE), "Preset file")
        if backbone.get("registered_name") == keras_hub.KERAS_HUB_REGISTERED_NAME:
            task = {**keras_hub.keras_hub_identity("FalconCausalLM", "falcon_causal_lm"),
                    "config": {"backbone": backbone, "preprocessor": preprocessor,
                               "name": "falcon_causal_lm"}}
            manifest.atomic_write(os.path.join(preset_dir, TASK_FILE),
                                  json.dumps(task, indent=4) + "\n")
        elif os.path.exists(os.path.join(preset_dir, TASK_FILE)):  # an earlier save's
            os.remove(os.path.join(preset_dir, TASK_FILE))

    @classmethod
    def from_preset(cls, preset, load_weights=True, cache_length=DEFAULT_CACHE_LENGTH,
                    **kwargs):
        """The backbone of `preset` (any handle `FalconBackbone.from_preset`
        takes) with a `FalconCausalLMPreprocessor` around its tokenizer when the
        preset has tokenizer files (the preset's preprocessor.json settings, if
        any). `kwargs`: `sequence_length`, `add_start_token` and
        `add_end_token` go to the preprocessor, the rest to the backbone."""
        from falcon_tf.model.backbone import FalconBackbone
        from falcon_tf.text.causal_lm_preprocessor import (FalconCausalLMPreprocessor,
                                                      preset_settings)
        from falcon_tf.checkpoints import handles
        from falcon_tf.text.tokenizer import FalconTokenizer

        settings = {k: kwargs.pop(k) for k in ("sequence_length", "add_start_token",
                                               "add_end_token") if k in kwargs}

        def with_preprocessor(backbone, tokenizer, directory=None):
            preprocessor = None
            if tokenizer is not None:
                found = preset_settings(directory) if directory is not None else {}
                preprocessor = FalconCausalLMPreprocessor(tokenizer, **{**found, **settings})
            return cls(backbone, preprocessor=preprocessor, cache_length=cache_length)

        builtin = FalconBackbone.presets.get(preset) if isinstance(preset, str) else None
        if builtin is not None and not load_weights:  # no download for fresh weights
            backbone = FalconBackbone.from_preset(preset, load_weights=False, **kwargs)
            shipped = "random_seed" in builtin or "embedded_dir" in builtin
            tokenizer = FalconTokenizer.from_preset(preset) if shipped else None
            return with_preprocessor(backbone, tokenizer)
        checkpoint = handles.resolve(preset)
        if checkpoint.untied_head:  # refused before any weight is read
            raise ValueError(untied_head_message(checkpoint.untied_head))
        backbone = FalconBackbone.from_preset(checkpoint.source, load_weights=load_weights,
                                              **kwargs)
        try:
            tokenizer = FalconTokenizer.from_preset(checkpoint.source)
        except FileNotFoundError:
            tokenizer = None
        return with_preprocessor(backbone, tokenizer, checkpoint.directory)
