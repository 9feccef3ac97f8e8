"""Models too large for one conversion -> TFLite, one piece at a time.

The small-model route converts the whole float32 graph at once: the file is
capped at 2 GiB (about 510 M parameters in float32) and the converter holds
about 4.75 times the float32 weights while it freezes them. Here each piece
is converted and quantized alone, with the standard converter and the same
recipes (`export_tflite.quantize`):

  embedding   the token lookup, and what attention needs of the positions
  each block  its own layer's weights and, for the causal LM, its cache
  head        the final LayerNorm (and, for the causal LM, the tied LM head)

every piece holding every signature of the file (`prefill_<L>` and `decode`,
or `serving_default`). The int8 and int4 variants round a block's projections
with GPTQ just before converting that block: the calibration activations are
carried through the Keras blocks one at a time, so only one block's Hessians
exist at once, and they equal the whole-model pass's. `flatbuffer_stitch`
joins the pieces into one model (weights stored once across signatures, the
tied head on the embedding's bytes) and writes it with every buffer past the
FlatBuffer at an offset, the layout LiteRT reads for large models, atomically.

Memory: the Keras model's float32 weights once, one piece in conversion and
the graph; the buffers go to disk as they come. The written file is then run
in a child process importing only ai-edge-litert and numpy, and compared with
Keras logits computed beforehand.
"""

import json
import os
import subprocess
import sys
import tempfile
import types

import numpy as np

from converters import export_tflite
from converters.flatbuffer_stitch import Stitcher
from converters.stages import input_specs
from falcon_tf.artifacts import contract
from falcon_tf.progress import progress_bar

# Models from this size on take this route: their float32 file would pass the
# FlatBuffer cap (less a margin for the graph).
LARGE_ROUTE_PARAMETERS = int(export_tflite.FLATBUFFER_LIMIT * 0.95) // 4

HIDDEN, POSITION, MASK_BIAS, KEEP = "hidden", "position", "mask_bias", "keep"


def takes_large_route(parameter_count):
    """Whether a model of `parameter_count` parameters is exported piece by piece."""
    return parameter_count >= LARGE_ROUTE_PARAMETERS


class Piece(types.SimpleNamespace):
    """name; variables (the Keras variables it freezes); functions
    ({signature: tf.function}); block (the decoder block GPTQ rounds, or
    None); module (a tf.Module holding extra variables, or None)."""


def _spec(shape, dtype, name):
    import tensorflow as tf

    return tf.TensorSpec(shape, dtype, name)


def causal_lm_pieces(lm, cache_length, prefill_lengths, decode_windows=(),
                     int8_embedding=False, prefill_windows=()):
    """The causal LM's pieces, each with every prefill_<L>, decode, decode_<W>
    and windowed_prefill_<L>_<W> signature.

    Inputs and their specs are those of the small route's signatures
    (`export_tflite_causal_lm.signature_functions`); the pieces run the
    stages of `FalconBackbone.forward_cached` with the same cache writer and
    windows. `int8_embedding`: the lookup GATHERs rows of an int8 copy of the
    table (`export_tflite.embedding_rows_int8`), as the small route's int8 and
    int4 files do; the head keeps the table as the LM head's weight. Without
    it, a table too big for one GPU buffer is cut into column blocks for the
    lookup and the head (`export_tflite.split_table`), as the small route's
    float files do.
    """
    import tensorflow as tf

    from converters import export_tflite_causal_lm as small

    backbone = lm.backbone
    specs = {name: {s.name: s for s in fn.input_signature} for name, fn in
             small.signature_functions(lm, cache_length, prefill_lengths,
                                       decode_windows=decode_windows,
                                       prefill_windows=prefill_windows).items()}
    windows = {contract.decode_window_signature(w): w for w in decode_windows}
    windows.update({contract.windowed_prefill_signature(n, w): w for n, w in
                    contract.windowed_prefills(prefill_lengths, prefill_windows)})
    dtype = backbone.compute_dtype
    blocks = 1 if int8_embedding else export_tflite.table_blocks(backbone)
    module = tf.Module() if int8_embedding or blocks > 1 else None
    lookup = project = head_module = None
    if int8_embedding:
        lookup = export_tflite.int8_embedding_lookup(backbone, module)
    elif blocks > 1:
        lookup, project = export_tflite.split_table(backbone, module, blocks)
        head_module = tf.Module()
        head_module.table_blocks = module.table_blocks
    # What the embedding and head pieces hold, for sharing them across variants
    # (the head is the float table's, whole or in blocks, for every variant).
    head_kind = f"float/{blocks}"
    embedding_kind = "int8" if int8_embedding else head_kind

    def length(signature):
        return specs[signature][contract.TOKENS].shape[1]

    def attended(signature):
        return windows.get(signature, cache_length)

    def position_spec(signature):
        probe = backbone.attention_bias.cached_position(
            tf.zeros((1, length(signature)), tf.int32), attended(signature))
        return _spec(probe.shape, probe.dtype, POSITION)

    def embedding(signature):
        spec = specs[signature]

        @tf.function(input_signature=[spec[contract.TOKENS], spec[contract.INPUT_POS]])
        def embed(tokens, input_pos):
            x, position = backbone.embed_cached(tokens, input_pos[None, :], attended(signature),
                                          lookup)
            return {HIDDEN: x, POSITION: position}

        return embed

    def block(index, signature):
        spec = specs[signature]
        k_name, v_name = contract.cache_names(backbone.num_layers)[2 * index:2 * index + 2]
        hidden = _spec((1, length(signature), backbone.hidden_dim), dtype, HIDDEN)
        window = windows.get(signature)

        @tf.function(input_signature=[hidden, position_spec(signature),
                                      spec[contract.INPUT_POS], spec[contract.MASK],
                                      spec[k_name], spec[v_name]])
        def step(x, position, input_pos, mask, cache_key, cache_value):
            if window is not None:
                mask = mask[..., :window]
            x, cache_key, cache_value = backbone.block_cached(
                index, x, cache_key, cache_value, mask, position,
                small.cache_writer(input_pos, cache_length), window)
            return {HIDDEN: x, k_name: tf.cast(cache_key, spec[k_name].dtype),
                    v_name: tf.cast(cache_value, spec[v_name].dtype)}

        return step

    def head(signature):
        hidden = _spec((1, length(signature), backbone.hidden_dim), dtype, HIDDEN)

        @tf.function(input_signature=[hidden])
        def logits(x):
            return {contract.LOGITS: lm.head(backbone.final_layernorm(x), project)}

        return logits

    pieces = [Piece(name="embedding",
                    variables=[] if module is not None else backbone.token_embedding.variables,
                    functions={s: embedding(s) for s in specs}, block=None, module=module,
                    kind=embedding_kind)]
    for i, layer in enumerate(backbone.transformer_layers):
        pieces.append(Piece(name=layer.name, variables=layer.variables,
                            functions={s: block(i, s) for s in specs}, block=layer, module=None))
    # A prefill returns the caches only: the head serves the decode signatures,
    # and the stitcher drops the last block's work that only logits needed.
    pieces.append(Piece(name="head", variables=backbone.final_layernorm.variables
                        + ([] if project is not None else backbone.token_embedding.variables),
                        functions={s: head(s) for s in specs
                                   if not contract.is_prefill(s)},
                        block=None, module=head_module, kind=head_kind))
    names = contract.cache_names(backbone.num_layers)
    inputs = {s: list(spec) for s, spec in specs.items()}
    outputs = {s: ([] if contract.is_prefill(s) else [contract.LOGITS]) + names
               for s in specs}
    return pieces, inputs, outputs


def backbone_pieces(model, batch, seq, int8_embedding=False):
    """The backbone's pieces, signature `serving_default` at (batch, seq).
    `int8_embedding`: the table as int8 rows, as the small route's int8 and
    int4 files store it (`export_tflite.int8_embedding_lookup`)."""
    import tensorflow as tf

    spec = input_specs(contract.backbone_signature(batch, seq, model.hidden_dim))
    dtype = model.compute_dtype
    hidden = _spec((batch, seq, model.hidden_dim), dtype, HIDDEN)
    probe = model.attention_bias(tf.ones((batch, seq), tf.int32))
    bias = [_spec(t.shape, t.dtype, n) for t, n in zip(probe, (MASK_BIAS, KEEP, POSITION))]
    module = tf.Module() if int8_embedding else None
    lookup = (export_tflite.int8_embedding_lookup(model, module) if int8_embedding
              else model.token_embedding)

    @tf.function(input_signature=spec)
    def embed(token_ids, padding_mask):
        mask_bias, keep, position = model.attention_bias(padding_mask)
        return {HIDDEN: lookup(token_ids), MASK_BIAS: mask_bias, KEEP: keep,
                POSITION: position}

    def block(layer):
        @tf.function(input_signature=[hidden] + bias)
        def forward(x, mask_bias, keep, position):
            return {HIDDEN: layer(x, mask_bias, keep, position, training=False)}

        return forward

    @tf.function(input_signature=[hidden])
    def final(x):
        return {contract.SEQUENCE_OUTPUT: model.final_layernorm(x)}

    signature = contract.BACKBONE_SIGNATURE
    pieces = [Piece(name="embedding",
                    variables=[] if int8_embedding else model.token_embedding.variables,
                    functions={signature: embed}, block=None, module=module)]
    pieces += [Piece(name=layer.name, variables=layer.variables,
                     functions={signature: block(layer)}, block=layer, module=None)
               for layer in model.transformer_layers]
    pieces.append(Piece(name="head", variables=model.final_layernorm.variables,
                        functions={signature: final}, block=None, module=None))
    return (pieces, {signature: [contract.TOKEN_IDS, contract.PADDING_MASK]},
            {signature: [contract.SEQUENCE_OUTPUT]})


def keras_reference(lm, cache_length, prefill_lengths, seed=0):
    """`export_tflite_causal_lm.keras_reference` (the same prompt) computed with
    plain forwards, one per new token: no XLA compilation of `generate`,
    which at falcon-rw-1b's size costs minutes and gigabytes. Greedy tokens of
    the uncached forward are those of the cached loop (tested)."""
    rng = np.random.default_rng(seed)
    sequence = rng.integers(0, lm.backbone.vocabulary_size, max(prefill_lengths) + 3).tolist()
    prompt_length = len(sequence)
    new = min(8, cache_length - prompt_length)
    for step in range(new + 1):
        logits = lm({"token_ids": np.array([sequence], "int32"),
                     "padding_mask": np.ones((1, len(sequence)), "int32")}).numpy()[0]
        if step < new:
            sequence.append(int(logits[-1].argmax()))
    return prompt_length, sequence, logits[:len(sequence)]


class Calibration:
    """GPTQ's calibration inputs carried through the Keras blocks one at a time.

    `hessians(block, layers)` runs `block` on the current activations (one
    calibration row at a time, as `gptq.layer_hessians` runs the whole model),
    records its projections' Hessians and moves the activations past it.
    """

    def __init__(self, backbone, token_ids):
        token_ids = np.asarray(token_ids)
        if token_ids.ndim != 2 or not np.issubdtype(token_ids.dtype, np.integer):
            raise ValueError(f"`calibration` must be integer token ids of shape (rows, tokens); "
                             f"received {token_ids.dtype} {token_ids.shape}.")
        if token_ids.size and (token_ids.min() < 0 or
                               token_ids.max() >= backbone.vocabulary_size):
            raise ValueError(f"`calibration` ids must lie in [0, {backbone.vocabulary_size}).")
        self._bias = backbone.attention_bias(np.ones((1, token_ids.shape[1]), "int32"))
        self._x = [backbone.token_embedding(row[None].astype("int32")) for row in token_ids]

    def hessians(self, block, layers):
        from converters import gptq

        with gptq.recording(layers) as hessians:
            self._x = [block(x, *self._bias, training=False) for x in self._x]
        return hessians


# A piece holding at least this many bytes of weights is converted in a child
# process. The converter holds about five times a piece's weights and the
# exporting process keeps part of that after the conversion: at falcon-rw-1b's
# shape the head (the 412 MB table) raised the exporter's peak by 2.2 GiB and
# the first block's conversions left about 1 GiB behind.
CHILD_CONVERSION_BYTES = 64 * 2 ** 20

_CONVERT = """
import sys
import tensorflow as tf
saved, out, keys = sys.argv[1], sys.argv[2], sys.argv[3:]
data = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=keys).convert()
with open(out, "wb") as f:
    f.write(data)
"""


def _weight_bytes(piece):
    variables = list(piece.variables) + (list(piece.module.variables) if piece.module else [])
    return sum(int(np.prod(v.shape)) * np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize
               for v in variables)


def _convert(piece):
    """Bytes of `piece` converted to a float .tflite (in a child process from
    CHILD_CONVERSION_BYTES of weights on)."""
    import tensorflow as tf

    keys = list(piece.functions)
    with export_tflite.saved_signatures(types.SimpleNamespace(variables=piece.variables),
                                        piece.functions, piece.module) as saved:
        if _weight_bytes(piece) < CHILD_CONVERSION_BYTES:
            return tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=keys).convert()
        out = os.path.join(saved, "piece.tflite")
        proc = subprocess.run([sys.executable, "-c", _CONVERT, saved, out, *keys],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"Converting the piece {piece.name} failed:\n"
                               f"{proc.stderr[-3000:]}")
        with open(out, "rb") as f:
            return f.read()


class BlockTemplate:
    """The first block's converted graph, reused for the blocks after it.

    Every block has the same graph; only its weights differ. The first block
    is converted twice with probe values (distinct random numbers per
    variable, a different draw each time), and each buffer of the converted
    graph is traced to the variable it holds, as stored or transposed
    (FULLY_CONNECTED stores a kernel's transpose). Buffers that hold no
    variable must come out the same in both conversions (shapes, constants of
    the graph), or the template is refused (`None` from `make`) and every
    block is converted. A block's float piece, the first one's included, is
    then the template with its own variables written into the traced
    buffers: one conversion for all the blocks after the first.

    Probes rather than the block's own weights: weights that repeat (zero
    biases, unit LayerNorm gains, as a model not yet trained has) let the
    converter share or fold their buffers, and the graph would no longer
    show which buffer holds which variable.
    """

    def __init__(self, model, sources, first):
        self.model, self.sources, self.first = model, sources, first

    @classmethod
    def make(cls, piece):
        """The template of `piece` (a block), or None when its graph cannot be
        traced to its variables."""
        from converters.flatbuffer_stitch import read_piece

        if any(v.dtype != "float32" for v in piece.variables):
            return None
        own = [v.numpy() for v in piece.variables]
        conversions = []
        try:
            for seed in (0, 1):
                rng = np.random.default_rng(seed)
                probes = {}
                for j, v in enumerate(piece.variables):
                    value = rng.uniform(-1.0, 1.0, v.shape).astype(np.float32)
                    v.assign(value)
                    probes[value.tobytes()] = (j, False)
                    if value.ndim == 2:
                        probes[np.ascontiguousarray(value.T).tobytes()] = (j, True)
                conversions.append((read_piece(_convert(piece)), probes))
        finally:
            for v, value in zip(piece.variables, own):
                v.assign(value)
        (model, probes), (other, other_probes) = conversions
        if len(model.buffers) != len(other.buffers):
            return None

        def content(buffer):
            return b"" if buffer.data is None else bytes(buffer.data)

        sources = {}
        for i, (a, b) in enumerate(zip(model.buffers, other.buffers)):
            a, b = content(a), content(b)
            if a in probes:
                if other_probes.get(b) != probes[a]:
                    return None  # not the same variable in both conversions
                sources[i] = probes[a]
            elif a != b:
                return None  # a constant folded from weights: not a template
        if {j for j, _ in sources.values()} != set(range(len(own))):
            return None  # some variable is not stored as itself
        return cls(model, sources, piece)

    def piece(self, piece):
        """Bytes of `piece` (a later block) as a float .tflite."""
        from tensorflow.lite.tools import flatbuffer_utils

        values = [v.numpy() for v in piece.variables]
        for i, (j, transposed) in self.sources.items():
            value = values[j].T if transposed else values[j]
            self.model.buffers[i].data = np.frombuffer(
                np.ascontiguousarray(value, np.float32).tobytes(), np.uint8)
        # Its own names: tensors under its layer's scope, ports of its own cache.
        old, new = self.first.block.name.encode(), piece.block.name.encode()
        renamed = []
        for graph in self.model.subgraphs:
            for tensor in graph.tensors:
                renamed.append((tensor, tensor.name))
                tensor.name = tensor.name.replace(old, new)
        for signature in self.model.signatureDefs:
            key = signature.signatureKey.decode()
            ports = {a.name.encode(): b.name.encode() for a, b in zip(
                self.first.functions[key].input_signature, piece.functions[key].input_signature)}
            for port in signature.inputs + signature.outputs:
                renamed.append((port, port.name))
                port.name = ports.get(port.name, port.name)
        try:
            return flatbuffer_utils.convert_object_to_bytearray(self.model)
        finally:
            for item, name in renamed:
                item.name = name


def _same_layout(first, other):
    """Whether two blocks hold variables of the same shapes in the same order."""
    a, b = first.variables, other.variables
    return len(a) == len(b) and all(
        x.shape == y.shape and x.path.split("/", 1)[-1] == y.path.split("/", 1)[-1]
        for x, y in zip(a, b))


def write_pieces(pieces, inputs, outputs, variant, path, rounding="gptq", calibration=None,
                 backbone=None, description=None, recipes=None, converted=None):
    """Converts, quantizes and stitches `pieces` into `path` (atomically).

    int8 and int4 with `rounding="gptq"` round each block's projections just
    before that block converts, calibrated on `calibration` token ids (None:
    `gptq.default_calibration`) carried through `backbone`'s blocks.
    `recipes`: ai-edge-quantizer's rules per variant (`export_tflite.RECIPES`
    by default). `converted`: a dict the caller keeps across the variants of
    one model: the float pieces that no variant rounds (embedding, head; kept
    in unnamed temporary files, not in memory) and the block template are
    converted once for all of them. Returns the file's size in bytes.
    """
    from converters import gptq

    recipes = export_tflite.RECIPES if recipes is None else recipes
    recipe = recipes.get(variant)
    converted = {} if converted is None else converted
    carried = None
    if rounding == "gptq" and variant in ("int8", "int4"):
        if calibration is None:
            calibration = gptq.default_calibration(backbone.vocabulary_size)
        carried = Calibration(backbone, calibration)
    folder = os.path.dirname(os.path.abspath(path))
    first, template = converted.get("template", (None, None))
    with Stitcher(folder) as stitcher, progress_bar(
            description or f"{variant}: converting pieces", unit="piece") as progress:
        for done, piece in enumerate(pieces):
            kernels = {}
            if carried is not None and piece.block is not None:
                layers = gptq.quantized_layers(piece.block, recipe)
                hessians = carried.hessians(piece.block, list(layers))
                for layer, scheme in layers.items():  # each H dropped once used
                    kernels[layer] = gptq.gptq_round(layer.kernel.numpy(),
                                                     hessians.pop(layer), *scheme)
            with gptq.assigned(kernels):
                if piece.block is None:
                    data = _converted_once(converted, piece)
                else:
                    if first is None:
                        first, template = piece, BlockTemplate.make(piece)
                        converted["template"] = first, template
                    if template is not None and _same_layout(first, piece):
                        data = template.piece(piece)
                    else:
                        data = _convert(piece)
            stitcher.add(export_tflite.quantize(data, variant, recipes))
            del data, kernels
            _return_freed_memory()
            progress(done + 1, len(pieces))
        return stitcher.write(path, inputs, outputs)


def _return_freed_memory():
    """Hands the C heap's free pages back to the system (glibc's malloc_trim;
    nothing elsewhere). A piece's conversion, quantization and GPTQ free
    hundreds of MB in blocks that glibc otherwise keeps: at falcon-rw-1b's
    shape the exporting process grew by about 55 MB a block without it."""
    import ctypes

    try:  # the process's own symbols: libc's, without looking for it on disk
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc


def _converted_once(converted, piece):
    """`_convert(piece)` of a piece no variant rounds, through `converted`."""
    key = ("piece", piece.name, getattr(piece, "kind", piece.module is not None))
    if key not in converted:
        store = tempfile.TemporaryFile(prefix=".tmp-piece-")
        store.write(_convert(piece))
        converted[key] = store
    store = converted[key]
    store.seek(0)
    return store.read()


# Run in a child that imports only numpy, ai-edge-litert and falcon_tf's loaders:
# the file is verified where it will run, and its memory is not added to the
# Keras model's in one process.
_VERIFY = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from ai_edge_litert.interpreter import Interpreter
from falcon_tf.artifacts import contract
kind, path, reference, out = sys.argv[2:6]
data = dict(np.load(reference))
if kind == "causal_lm":  # as falcon_tf.lite runs it: one buffer per cache for every signature
    from falcon_tf.lite.backbone import cpu_compiled_model
    from falcon_tf.lite.causal_lm import SignatureRunners, run_steps_both_ways
    runners = SignatureRunners(compiled=cpu_compiled_model(path, int(sys.argv[6])))
    got = run_steps_both_ways(runners, [int(t) for t in data["sequence"]],
                              int(data["prompt_length"]))
else:
    interpreter = Interpreter(model_path=path, num_threads=int(sys.argv[6]))
    runner = interpreter.get_signature_runner(contract.BACKBONE_SIGNATURE)
    got = runner(token_ids=data["token_ids"], padding_mask=data["padding_mask"])
    got = got[contract.SEQUENCE_OUTPUT]
np.save(out, got)
print(json.dumps({"tensorflow_loaded": "tensorflow" in sys.modules}))
"""


def run_file(kind, path, reference, num_threads=2):
    """Runs the file at `path` on ai-edge-litert's CPU in a child process:
    `kind` "causal_lm" (prefill and decode steps over reference["sequence"],
    on the `CompiledModel` `falcon_tf.lite` uses, the caches in one buffer
    each that every signature reads and updates; `run_steps_both_ways`) or "backbone"
    (serving_default on reference["token_ids"], ["padding_mask"], on the
    interpreter). Returns the output array."""
    import falcon_tf

    root = os.path.dirname(os.path.dirname(os.path.abspath(falcon_tf.__file__)))
    with tempfile.TemporaryDirectory(prefix="falcon-tf-verify-") as tmp:
        np.savez(os.path.join(tmp, "reference.npz"), **reference)
        out = os.path.join(tmp, "out.npy")
        proc = subprocess.run(
            [sys.executable, "-c", _VERIFY, root, kind, path,
             os.path.join(tmp, "reference.npz"), out, str(num_threads)],
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"Running {path} on ai-edge-litert failed:\n"
                               f"{proc.stderr[-3000:]}")
        if json.loads(proc.stdout.strip().splitlines()[-1])["tensorflow_loaded"]:
            raise AssertionError("the verifying process loaded TensorFlow")
        return np.load(out)


# The exporting process beyond the float32 weights: TensorFlow, the Keras
# reference forwards, one piece in conversion and one block's GPTQ Hessians.
# At falcon-rw-1b's shape it was 4.0 GiB (int8 and int4) and 3.7 GiB (fp16)
# on top of 4.9 GiB of weights (benchmarks/export_large.py); 1 GiB is added
# for margin. The estimate then exceeds the measured peak of both processes
# by 0.9 GiB (int4: 11.1 against 10.2), 2.1 GiB (int8: 12.3 against 10.2) and
# 1.7 GiB (fp16: 17.2 against 15.5).
PROCESS_OVERHEAD = 5.0 * 2 ** 30


def memory_bytes(model, variants):
    """About the peak memory of exporting `variants` of `model` this way:
    the exporting process and the verifying child together."""
    params = model.count_params()
    parent = params * 4 + PROCESS_OVERHEAD
    # The verifying child: the file's pages, and the weights XNNPACK packs
    # from them: float32 for fp32 and fp16 (fp16 is dequantized at load), the
    # stored integers for int8 and int4. (The int8 causal LM of falcon-rw-1b's
    # shape ran at 2.9 GiB for a 1.35 GB file.)
    child = max(params * export_tflite._BYTES_PER_WEIGHT[v]
                + params * (4 if v in ("fp32", "fp16") else export_tflite._BYTES_PER_WEIGHT[v])
                for v in variants)
    return int(parent + child)


def check_export_memory(model, name, variants):
    """ValueError, before any work, when this machine has too little memory to
    export `variants` piece by piece (`untrusted.check_memory` is the one for
    building a model)."""
    needed = memory_bytes(model, variants)
    total = export_tflite._total_memory()
    if needed > total:
        raise ValueError(
            f"Exporting {', '.join(variants)} of {name} ({model.count_params():,} parameters) "
            f"piece by piece needs about {needed / 2**30:.1f} GiB of memory (the float32 "
            f"weights once: {model.count_params() * 4 / 2**30:.1f} GiB, one block's "
            f"conversion, and the file run to verify it); this machine has "
            f"{total / 2**30:.1f} GiB. Export on a larger machine.")


def op_versions_of_file(path):
    """`export_tflite.op_versions` of a file, read through a memory map."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return export_tflite.op_versions(data)
