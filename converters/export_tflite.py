"""Preset -> TFLite (LiteRT) FlatBuffers, one per variant, with the manifest.

    falcon-tf export --preset falcon_tiny_random --format tflite --variants fp32,int8

writes `artifacts/<name>/tflite/<name>_<variant>.tflite` and records each file's
size, sha256, signature and parity against Keras in `artifacts/<name>/manifest.json`.

The graph is traced at fixed shapes (batch and sequence length are export
options) and its variables become constants in the file (see `converter`). One
signature, `serving_default`, with inputs `token_ids` and `padding_mask`
(int32 [batch, seq]) and output `sequence_output` (float32 [batch, seq, hidden]).

Variants (ai-edge-quantizer on the float file; RECIPES holds the rules):
  fp32  float32 weights; runs whole on the GPU accelerator and on tflite-runtime 2.14
  fp16  float16 projection weights, dequantized at load, embedding float32;
        GPU whole, tflite-runtime 2.14
  int8  int8 projection weights, one scale per output channel, rounded with
        GPTQ (converters/gptq.py), dequantized at load (float compute); int8
        embedding rows, one scale per row
        (`embedding_rows_int8`); tflite-runtime 2.14; CPU only (the GPU
        accelerator fails on both)
  int4  int4 MLP weights in blocks of 32 (int8 activations at run time), the
        attention projections and embedding as in int8 (GPTQ-rounded too); ai-edge-litert only
        (tflite-runtime 2.14 computes wrong numbers), CPU only (the GPU
        accelerator aborts on blockwise int4)

A model whose float32 file would exceed the 2 GiB FlatBuffer cap (about 510 M
parameters and up) has no float file to quantize: its int8 comes from the
TFLite converter's own dynamic-range quantization (`convert_int8_large`), and
fp16 and int4 are refused by name.
"""

import contextlib
import io
import os
import tempfile

import numpy as np

from converters.stages import input_specs, stamp
from falcon_tf.artifacts import contract, manifest
from falcon_tf.checkpoints.handles import artifact_name
from falcon_tf.progress import progress_bar

VARIANTS = contract.VARIANTS
FLATBUFFER_LIMIT = 2 ** 31  # a FlatBuffer file is capped at 2 GiB
_BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1, "int4": 0.5}


@contextlib.contextmanager
def converter(model, batch=1, seq=128, int8_embedding=False):
    """A TFLiteConverter over the forward at fixed shapes (set options, convert inside).

    The forward goes through a temporary SavedModel that tracks the model's
    variables and this one function, nothing else: the converter then freezes
    every variable into a constant. Tracked together with the Keras model it
    keeps them as resource variables (VAR_HANDLE: a file of a few KB that
    returns NaN); freezing the graph in memory first instead fails for large
    models (a 1.3 B-parameter one was killed at 24 GB).

    `int8_embedding=True` stores the embedding table as int8 with one scale
    per row (see `embedding_rows_int8`) and looks rows up before scaling them.
    """
    import tensorflow as tf

    if not (isinstance(batch, int) and batch > 0 and isinstance(seq, int) and seq > 0):
        raise ValueError(f"`batch` and `seq` must be positive integers; received {batch}, {seq}.")
    spec = input_specs(contract.backbone_signature(batch, seq, model.hidden_dim))
    module = tf.Module()
    lookup = int8_embedding_lookup(model, module) if int8_embedding else None

    @tf.function(input_signature=spec)
    def serving_default(token_ids, padding_mask):
        return {contract.SEQUENCE_OUTPUT: model.forward(token_ids, padding_mask, embed=lookup)}

    functions = {contract.BACKBONE_SIGNATURE: serving_default}
    with signatures_converter(model, functions, module) as conv:
        yield conv


# The largest buffer the target GPU creates (ai-edge-litert's GPU accelerator
# holds each weight in one buffer, in float16; Mesa's lavapipe caps it at
# 128 * 2**20), or None: the float causal-LM files then keep the vocabulary
# table whole. Cut at 128 MiB, falcon-rw-1b's fp16 causal LM (prefill_8 and
# decode) runs whole on lavapipe's GPU accelerator with the CPU's greedy
# tokens (benchmarks/gpu_large.py). None by default because the cut costs
# the CPU path: XNNPACK's verifying process peaked at 15.8 GiB against 8.4
# GiB for the whole table.
GPU_BUFFER_BYTES = None


def table_blocks(model):
    """Into how many column blocks the tied vocabulary table is cut so that each
    fits one GPU buffer of GPU_BUFFER_BYTES in float16 (1: whole). At 128 MiB,
    falcon-rw-1b's 50,304 x 2,048 table (206 MB in float16) takes 2
    (benchmarks/gpu_table_split.py)."""
    if GPU_BUFFER_BYTES is None:
        return 1
    vocabulary, hidden = (int(d) for d in model.token_embedding.embeddings.shape)
    return min(hidden, max(1, -(-vocabulary * hidden * 2 // GPU_BUFFER_BYTES)))


def split_table(model, module, blocks):
    """The tied table cut along the hidden axis into `blocks` column blocks,
    whose variables `module` keeps -> (lookup, project). `lookup`: token_ids
    (b, s) -> (b, s, hidden), every block's rows GATHERed and CONCATENATEd;
    `project`: hidden (..., hidden) -> logits (..., vocabulary) float32, the sum
    of each block's FULLY_CONNECTED over its slice of the hidden state. The same
    numbers as the whole table, each weight buffer a `blocks`-th of its size;
    the hidden axis is cut rather than the vocabulary so that the lookup needs
    no index arithmetic."""
    import tensorflow as tf

    from falcon_tf._keras import keras

    table = model.token_embedding.embeddings.numpy()
    cuts = np.linspace(0, table.shape[1], blocks + 1).astype(int)
    bounds = list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))
    module.table_blocks = [tf.Variable(table[:, a:b], trainable=False,
                                       name=f"token_embedding_block_{i}")
                           for i, (a, b) in enumerate(bounds)]

    def lookup(token_ids):
        batch, seq = token_ids.shape
        flat = tf.reshape(token_ids, (-1,))
        x = tf.concat([tf.gather(block, flat) for block in module.table_blocks], axis=-1)
        return tf.cast(tf.reshape(x, (batch, seq, table.shape[1])), model.compute_dtype)

    def project(x):
        ops = keras.ops
        parts = [ops.matmul(x[..., a:b], ops.transpose(ops.cast(block, x.dtype)))
                 for (a, b), block in zip(bounds, module.table_blocks)]
        return ops.cast(sum(parts[1:], parts[0]), "float32")

    return lookup, project


def int8_embedding_lookup(model, module):
    """The embedding lookup with the table stored as int8 rows
    (`embedding_rows_int8`), whose variables `module` keeps: token_ids
    (b, s) -> (b, s, hidden). GATHER int8 rows, CAST, and MUL by each row's
    GATHERed scale."""
    import tensorflow as tf

    rows, scales = embedding_rows_int8(model.token_embedding.embeddings.numpy())
    module.embedding = [tf.Variable(rows, trainable=False, name="token_embedding_int8"),
                        tf.Variable(scales, trainable=False, name="token_embedding_scale")]

    def lookup(token_ids):
        batch, seq = token_ids.shape
        flat = tf.reshape(token_ids, (-1,))
        table, scale = module.embedding
        x = tf.cast(tf.gather(table, flat), tf.float32) * tf.gather(scale, flat)
        return tf.cast(tf.reshape(x, (batch, seq, model.hidden_dim)), model.compute_dtype)

    return lookup


@contextlib.contextmanager
def signatures_converter(model, functions, module=None):
    """A TFLiteConverter over `functions` ({signature name: tf.function with an
    input_signature}), with `model`'s variables frozen into constants.

    They go through a temporary SavedModel that tracks the variables' values
    and these functions, nothing else (see `converter` for why).
    """
    import tensorflow as tf

    with saved_signatures(model, functions, module) as saved:
        yield tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(functions))


@contextlib.contextmanager
def saved_signatures(model, functions, module=None):
    """The path of a temporary SavedModel holding `model`'s variables and
    `functions` as its signatures, removed on leaving (`signatures_converter`
    converts it)."""
    import tensorflow as tf

    module = module or tf.Module()
    module.weights = [variable.value for variable in model.variables]
    module.functions = dict(functions)
    # Named after this process: one killed midway leaves a folder holding the
    # weights, removed by the next conversion.
    prefix = "falcon-tf-tflite-"
    manifest.remove_stale(tempfile.gettempdir(), prefix)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as tmp:
        tf.saved_model.save(module, tmp, signatures={
            name: fn.get_concrete_function() for name, fn in functions.items()})
        yield tmp


def embedding_rows_int8(table):
    """A float table -> (int8 table, float32 scale per row) with table ~= int8 * scale.

    Symmetric, one scale per row: rows (tokens) differ in norm by an order of
    magnitude in trained models, and one scale for the whole table cost a
    trained-like model most of its accuracy (cosine 0.985 against 0.9998).
    """
    table = np.asarray(table, np.float32)
    scales = np.abs(table).max(axis=1, keepdims=True) / 127.0
    scales[scales == 0] = 1.0  # an all-zero row stays zero
    return np.round(table / scales).astype(np.int8), scales.astype(np.float32)


def convert_fp32(model, batch=1, seq=128, int8_embedding=False):
    """A FalconBackbone -> bytes of a float32 .tflite with its weights embedded."""
    with converter(model, batch, seq, int8_embedding) as conv:
        return conv.convert()


def _weight_rule(regex, bits, granularity="CHANNELWISE", integer_compute=True):
    """An ai-edge-quantizer rule for the FULLY_CONNECTED weights whose names match `regex`."""
    return {"regex": regex, "operation": "FULLY_CONNECTED",
            "algorithm_key": "min_max_uniform_quantize",
            "op_config": {"weight_tensor_config": {"num_bits": bits, "symmetric": True,
                                                   "granularity": granularity, "dtype": "INT"},
                          "compute_precision": "INTEGER" if integer_compute else "FLOAT",
                          "explicit_dequantize": not integer_compute}}


# ai-edge-quantizer rules per variant; the later of two matching rules wins.
# Only the decoder's projections: the attention-bias matmul (a 0/1 triangle of
# seq x seq) stays float32. The embedding table is not an FC weight: int8 and
# int4 store it as int8 rows (`embedding_rows_int8`), fp16 keeps it float32
# because the GPU accelerator rejects a GATHER from a float16 table.
RECIPES = {
    # float16 weights, dequantized to float32 at load
    "fp16": [{"regex": ".*transformer_layer_.*", "operation": "FULLY_CONNECTED",
              "algorithm_key": "float_casting",
              "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                            "compute_precision": "FLOAT", "explicit_dequantize": True}}],
    # int8 weights, one scale per output channel, DEQUANTIZEd at load: float
    # compute. Dynamic int8 (activations quantized per row at run time) is
    # what the GPU accelerator runs, but tflite-runtime 2.14 computes wrong
    # numbers with its per-channel weights; the GPU accelerator fails on this
    # DEQUANTIZE into FULLY_CONNECTED ("Shape mismatch") instead.
    "int8": [_weight_rule(".*transformer_layer_.*", 8, integer_compute=False)],
    # int4 weights in blocks of 32 for the MLP (dynamic: int8 activations at
    # run time); the attention projections, whose errors the softmax
    # amplifies, keep the int8 variant's scheme.
    "int4": [_weight_rule(".*transformer_layer_.*", 8, integer_compute=False),
             _weight_rule(".*transformer_layer_.*dense_(h_to_4h|4h_to_h).*", 4, "BLOCKWISE_32")],
}


# The causal LM's files (converters/export_tflite_causal_lm.py): its int8 and
# int4 compute with integers. Every FULLY_CONNECTED with a constant weight (the
# projections and the tied LM head, whose weight is the embedding table, one
# scale per row) takes int8 weights, one scale per output channel, straight
# in; XNNPACK quantizes the float activations per row at run time and runs
# its integer kernels, so a token reads a quarter of the float32 bytes. int4
# stores the MLP weights in blocks of 32 on the same kernels. Neither runs on
# tflite-runtime 2.14 (it computes wrong numbers with such weights, see
# `oldest_runtime`).
CAUSAL_LM_RECIPES = {
    "fp16": RECIPES["fp16"],
    "int8": [_weight_rule(".*", 8)],
    "int4": [_weight_rule(".*", 8),
             _weight_rule(".*transformer_layer_.*dense_(h_to_4h|4h_to_h).*", 4, "BLOCKWISE_32")],
}

# Which projections the causal LM's int4 file stores as int4 in blocks of 32
# (`int4_projections=`): "mlp" (CAUSAL_LM_RECIPES: the attention projections
# keep int8, whose errors the softmax amplifies), or "all" (the query/key/value
# and attention output kernels too: at falcon-rw-1b's shape 176 MB fewer
# weight bytes, a file under 0.85 GB; see the README for what it costs).
INT4_PROJECTIONS = ("mlp", "all")


def causal_lm_recipes(int4_projections="mlp"):
    """The causal LM's ai-edge-quantizer rules per variant for `int4_projections`."""
    if int4_projections not in INT4_PROJECTIONS:
        raise ValueError(f"`int4_projections` must be one of {', '.join(INT4_PROJECTIONS)}; "
                         f"received {int4_projections!r}.")
    if int4_projections == "mlp":
        return CAUSAL_LM_RECIPES
    every = ".*transformer_layer_.*(query_key_value|output_dense|dense_h_to_4h|dense_4h_to_h).*"
    return {**CAUSAL_LM_RECIPES,
            "int4": [_weight_rule(".*", 8), _weight_rule(every, 4, "BLOCKWISE_32")]}

ROUNDINGS = ("gptq", "nearest")


def convert(model, variant, batch=1, seq=128, rounding="gptq", calibration=None,
            float_models=None):
    """A FalconBackbone -> bytes of one variant's .tflite.

    The int8 and int4 variants' projection weights are rounded onto
    ai-edge-quantizer's grid first: `rounding="gptq"` compensates each weight's
    rounding error in the weights of the same output channel not yet rounded,
    as the layer's inputs on `calibration` (int token ids, shape (rows,
    tokens); None: 8 x 128 ids drawn uniformly from the vocabulary with a
    fixed seed, `gptq.default_calibration`) show (see converters/gptq.py);
    `rounding="nearest"` leaves each weight to ai-edge-quantizer's round to
    nearest. Real text in `calibration` suits a trained model better than
    random ids. `float_models`: a dict that keeps the float32 files converted
    here for the next call (one conversion per graph, whatever the variants).
    """
    contract.check_variant(variant)
    if rounding not in ROUNDINGS:
        raise ValueError(f"`rounding` must be one of {', '.join(ROUNDINGS)}; "
                         f"received {rounding!r}.")
    if not float_file_fits(model.count_params()):
        if variant != "int8":
            raise ValueError(_needs_float_file(variant, model.count_params()))
        return convert_int8_large(model, batch, seq)
    int8_embedding = variant in ("int8", "int4")
    float_models = {} if float_models is None else float_models
    if int8_embedding not in float_models:
        float_models[int8_embedding] = convert_fp32(model, batch, seq, int8_embedding)
    if rounding == "nearest" or variant not in ("int8", "int4"):
        return quantize(float_models[int8_embedding], variant)
    from converters import gptq

    if calibration is None:
        calibration = gptq.default_calibration(model.vocabulary_size)
    kernels = gptq.rounded_kernels(model, RECIPES[variant], calibration)
    return quantize(with_kernels(float_models[int8_embedding], kernels,
                                 lambda: convert_fp32(model, batch, seq, int8_embedding)),
                    variant)


def with_kernels(float_model, kernels, reconvert):
    """Bytes of `float_model` (a float32 .tflite) with Dense kernels replaced:
    `kernels` is {Dense layer: new kernel}. Each kernel's buffer is found by
    its current value's bytes, as stored or transposed (FULLY_CONNECTED keeps
    a kernel's transpose), and overwritten: no second conversion. Where some
    kernel is not stored as exactly one buffer of its own (the converter
    folded it into a constant), `reconvert()` runs with the kernels assigned
    to the layers instead."""
    from tensorflow.lite.tools import flatbuffer_utils

    from converters import gptq

    if not kernels:
        return float_model
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(float_model))
    where = {}
    for i, buffer in enumerate(model.buffers):
        if buffer.data is not None and len(buffer.data):
            where.setdefault(bytes(buffer.data), []).append(i)
    writes = []
    for layer, value in kernels.items():
        own = np.asarray(layer.kernel.numpy(), np.float32)
        found = [(i, False) for i in where.get(own.tobytes(), [])] + \
            [(i, True) for i in where.get(np.ascontiguousarray(own.T).tobytes(), [])]
        if len(found) != 1:
            with gptq.assigned(kernels):
                return reconvert()
        i, transposed = found[0]
        value = np.asarray(value, np.float32)
        writes.append((i, np.ascontiguousarray(value.T if transposed else value)))
    for i, value in writes:
        model.buffers[i].data = np.frombuffer(value.tobytes(), np.uint8)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def float_file_fits(parameter_count):
    """Whether a float32 file of the model stays under the FlatBuffer cap. fp16,
    int4 and the int8 scheme above quantize that file, so they need it."""
    return parameter_count * 4 < FLATBUFFER_LIMIT * 0.95


def _needs_float_file(variant, parameter_count):
    return (f"`{variant}` is made by quantizing a float32 .tflite, and this model's "
            f"{parameter_count:,} parameters make that file exceed the 2 GiB FlatBuffer cap; "
            f"only `int8` has a route for a model this large (the converter's own int8).")


def convert_int8_large(model, batch=1, seq=128):
    """int8 for a model whose float32 file would exceed the FlatBuffer cap.

    The TFLite converter quantizes while it converts (dynamic range: int8
    weights with one scale per output channel, the embedding table included;
    int8 activations at run time), so no float32 file is ever made. Cosine on
    trained-like weights: 0.993 against the 0.999 of the scheme above; per-channel
    FULLY_CONNECTED is version 12, which tflite-runtime 2.14 cannot run.
    """
    import tensorflow as tf

    with converter(model, batch, seq) as conv:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        return conv.convert()


def quantize(float_model, variant, recipes=None):
    """Bytes of a float32 .tflite -> bytes of `variant` (`recipes`, RECIPES by
    default; ai-edge-quantizer)."""
    if variant == "fp32":
        return float_model
    from ai_edge_quantizer import quantizer

    recipes = RECIPES if recipes is None else recipes
    # It prints a size report and progress bars.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            _vectorized_array_compare():
        result = quantizer.Quantizer(float_model, recipes[variant]).quantize()
    return bytes(result.quantized_model)


def _equal_arrays(a, b):
    """ai-edge-quantizer's `_compare_array_or_none`, with numpy's comparison."""
    if a is None or b is None:
        return a is None and b is None
    return a is b or np.array_equal(a, b)


@contextlib.contextmanager
def _vectorized_array_compare():
    """Inside, ai-edge-quantizer compares the quantized data of a buffer that
    several signatures share with numpy, not by memoryview equality, which
    unpacks float16 elements one at a time in Python: a block of
    falcon-rw-1b's shape with six signatures took 32 s to cast to float16
    instead of 0.5 s. The same answers (equal values, shapes and None)."""
    from ai_edge_quantizer import qtyping

    own = getattr(qtyping, "_compare_array_or_none", None)
    if own is None:  # a version without it: nothing to speed up
        yield
        return
    qtyping._compare_array_or_none = _equal_arrays
    try:
        yield
    finally:
        qtyping._compare_array_or_none = own


# Highest op versions verified to run on tflite-runtime 2.14, the last
# tflite-runtime release (tests/test_tflite.py and tests/test_causal_lm_export.py
# run every file that claims it there). CONCATENATION, DYNAMIC_UPDATE_SLICE,
# LESS, MAXIMUM and MINIMUM: the causal LM's cache update.
TFLITE_RUNTIME_2_14 = {
    "ADD": 1, "BATCH_MATMUL": 1, "CAST": 3, "CONCATENATION": 1, "DEQUANTIZE": 3,
    "DYNAMIC_UPDATE_SLICE": 1, "EQUAL": 1, "FULLY_CONNECTED": 9, "GATHER": 2, "GELU": 1,
    "LESS": 1, "MAXIMUM": 1, "MEAN": 1, "MINIMUM": 1, "MUL": 1, "NEG": 1, "RESHAPE": 1,
    "RSQRT": 1, "SOFTMAX": 1, "SQUARED_DIFFERENCE": 1, "STRIDED_SLICE": 1, "SUB": 1, "SUM": 1,
    "TRANSPOSE": 1,
}


def op_versions(data):
    """{builtin op name: highest version} used by a .tflite file; "tensor_types":
    the element types of its tensors; "per_channel_hybrid": whether an op takes
    float activations with per-channel int8 weights (no DEQUANTIZE between)."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(data, 0)
    ops, codes = {}, []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        codes.append(names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
        ops[codes[-1]] = max(ops.get(codes[-1], 0), code.Version())
    types, hybrid = set(), False
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        types.update(type_names[graph.Tensors(t).Type()] for t in range(graph.TensorsLength()))
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            if codes[op.OpcodeIndex()] == "DEQUANTIZE":
                continue
            inputs = [graph.Tensors(i) for i in op.InputsAsNumpy() if i >= 0] \
                if op.InputsLength() else []
            has_float = any(t.Type() == schema.TensorType.FLOAT32 for t in inputs)
            hybrid |= has_float and any(
                t.Type() == schema.TensorType.INT8 and t.Quantization() is not None
                and t.Quantization().ScaleLength() > 1 for t in inputs)
    return {"ops": dict(sorted(ops.items())), "tensor_types": sorted(types),
            "per_channel_hybrid": hybrid}


def oldest_runtime(versions):
    """The oldest runtime known to run a file with these op versions and tensor types.

    Op versions alone are not enough: tflite-runtime 2.14 loads blockwise INT4
    weights, and per-channel int8 weights fed to FULLY_CONNECTED with float
    activations (ai-edge-quantizer's dynamic int8, still version 5), and
    computes wrong numbers with both.
    """
    ops_known = all(TFLITE_RUNTIME_2_14.get(op, 0) >= version
                    for op, version in versions["ops"].items())
    if ops_known and "INT4" not in versions["tensor_types"] \
            and not versions.get("per_channel_hybrid"):
        return "tflite-runtime 2.14"
    from importlib.metadata import version

    return f"ai-edge-litert {version('ai-edge-litert')}"


# Converting holds several copies of the float32 weights: the int8 export of a
# model of falcon-rw-1b's shape (5.2 GB in float32) peaked at 4.71 times that
# (23.0 GiB resident) on this project's 24 GB machines.
CONVERSION_MEMORY_PER_FP32_BYTE = 4.75


def _total_memory():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def variants_that_fit(parameter_count, variants=VARIANTS):
    """The variants that can be made under the FlatBuffer cap: their weights fit,
    and so does the float32 file they are quantized from (except int8, which
    has a route without it: `convert_int8_large`)."""
    def fits(v):
        own = parameter_count * _BYTES_PER_WEIGHT[v] < FLATBUFFER_LIMIT * 0.95
        return own and (v == "int8" or float_file_fits(parameter_count))

    return [v for v in variants if fits(v)]


def parity(data, model, batch, seq, seed=0):
    """Max abs difference and cosine of the file's output against Keras, on the
    CPU interpreter, over a batch with left padding."""
    from ai_edge_litert.interpreter import Interpreter

    x, expected = parity_reference(model, batch, seq, seed)
    got = Interpreter(model_content=data).get_signature_runner(contract.BACKBONE_SIGNATURE)(
        **x)[contract.SEQUENCE_OUTPUT]
    return output_parity(got, x, expected)


def parity_reference(model, batch, seq, seed=0):
    """(inputs with left padding, the Keras output on them) for `parity`."""
    rng = np.random.default_rng(seed)
    x = {"token_ids": rng.integers(0, model.vocabulary_size, (batch, seq)).astype("int32"),
         "padding_mask": np.ones((batch, seq), "int32")}
    x["padding_mask"][:, : seq // 4] = 0
    return x, model(x).numpy()


def output_parity(got, x, expected):
    """Max abs difference and cosine of `got` against `expected` on the real tokens of `x`."""
    real = x["padding_mask"].astype(bool)
    a, b = got[real].ravel(), expected[real].ravel()
    return {"max_abs_diff_vs_keras": float(np.abs(a - b).max()),
            "cosine_vs_keras": float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))}


_GPU_PROBE = """
import os, sys
os.makedirs(os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/runtime-%d" % os.getuid()),
            exist_ok=True)
from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator
try:
    model = CompiledModel.from_file(sys.argv[1], hardware_accel=HardwareAccelerator.GPU)
except RuntimeError:
    sys.exit(3)
sys.exit(0 if model.is_fully_accelerated() else 3)
"""


def gpu_fully_accelerated(path):
    """Does ai-edge-litert's GPU accelerator alone compile every op of `path`?

    Checked in a child process that imports only ai-edge-litert: TensorFlow and
    the GPU accelerator in one process crash on this machine, and the
    accelerator aborts the process on some graphs (blockwise int4). None where
    no GPU accelerator can start (no Vulkan driver).
    """
    import subprocess
    import sys

    try:
        proc = subprocess.run([sys.executable, "-c", _GPU_PROBE, path], capture_output=True,
                              text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None
    if "Selected adapter" not in proc.stderr and "GpuEnvironment" not in proc.stderr:
        return None  # no GPU environment came up at all
    return proc.returncode == 0


def model_to_export(preset, model, name, variants, exporter):
    """-> (model, name, large): the float FalconBackbone `exporter` writes
    (`model`, or the preset's), its artifact name, and whether it takes the
    piece-by-piece route (export_tflite_large). Refused here, before anything
    is written: a Keras-quantized model; on that route an export this machine
    has too little memory for; on the whole route a variant past the
    FlatBuffer cap."""
    from falcon_tf import FalconBackbone

    from converters import export_tflite_large

    model = model if model is not None else FalconBackbone.from_preset(preset)
    model.check_float_weights(exporter)
    name = name or artifact_name(preset)
    large = export_tflite_large.takes_large_route(model.count_params())
    if large:  # piece by piece, any size: refused only for memory
        export_tflite_large.check_export_memory(model, name, variants)
        return model, name, large
    too_big = [v for v in variants if v not in variants_that_fit(model.count_params(), [v])]
    if too_big:
        raise ValueError(
            f"{', '.join(too_big)} of {name} ({model.count_params():,} parameters) cannot be "
            f"made under the 2 GiB FlatBuffer cap (the variant, or the float32 file it is "
            f"quantized from, would exceed it); variants that fit: "
            f"{', '.join(variants_that_fit(model.count_params())) or 'none'}.")
    return model, name, large


def export_tflite(preset, out_dir="artifacts", name=None, model=None, variants=VARIANTS,
                  batch=1, seq=128, rounding="gptq", calibration=None):
    """Exports each variant to `out_dir/<name>/tflite/<name>_<variant>.tflite`.

    `rounding` and `calibration`: how the int8 and int4 variants round their
    projection weights (see `convert`).

    Refuses, before any work, a variant whose weights exceed the 2 GiB
    FlatBuffer cap (naming the variants that fit) and a model this machine has
    too little memory to convert. Returns {variant: manifest entry}.
    """
    from converters import export_tflite_large

    contract.check_variants(variants)
    model, name, large = model_to_export(preset, model, name, variants, "export_tflite")
    needed = model.count_params() * 4 * CONVERSION_MEMORY_PER_FP32_BYTE
    gptq_needed = 0
    if rounding == "gptq" and {"int8", "int4"} & set(variants) and float_file_fits(
            model.count_params()):
        from converters import gptq

        gptq_needed = gptq.memory_bytes(model)
    if needed + gptq_needed > _total_memory() and not large:
        hint = (f" (GPTQ rounding: {gptq_needed / 2**30:.0f} GiB of it; rounding='nearest' "
                f"leaves it out)" if gptq_needed >= 2**30 else "")
        raise ValueError(
            f"Converting {name} ({model.count_params():,} parameters) needs about "
            f"{(needed + gptq_needed) / 2**30:.0f} GiB of memory{hint}; this machine has "
            f"{_total_memory() / 2**30:.0f} GiB. Export on a larger machine.")
    artifact_dir = os.path.abspath(os.path.join(out_dir, name))
    folder = os.path.join(artifact_dir, "tflite")
    os.makedirs(folder, exist_ok=True)
    entries, float_models, converted = {}, {}, {}
    # Every file is written to a staged sibling and published with the manifest
    # at the end: an export that fails or is killed leaves the previous files
    # and manifest as they were.
    with manifest.Staging(artifact_dir) as staging:
        with progress_bar(f"Exporting TFLite {name}", unit="variant") as progress:
            for done, variant in enumerate(variants):
                final = os.path.join(folder, f"{name}_{variant}.tflite")
                path = staging.path(final)
                if large:
                    pieces = export_tflite_large.backbone_pieces(model, batch, seq,
                                                                 variant in ("int8", "int4"))
                    export_tflite_large.write_pieces(*pieces, variant, path, rounding,
                                                     calibration, model,
                                                     f"{variant}: converting pieces",
                                                     converted=converted)
                    del pieces
                    x, expected = parity_reference(model, batch, seq)
                    result = output_parity(export_tflite_large.run_file("backbone", path, x), x,
                                           expected)
                    versions = export_tflite_large.op_versions_of_file(path)
                else:
                    data = convert(model, variant, batch, seq, rounding, calibration,
                                   float_models)
                    manifest.atomic_write(path, data)
                    versions = op_versions(data)
                    result = parity(data, model, batch, seq)
                entries[variant] = {
                    "file": os.path.relpath(final, artifact_dir),
                    "bytes": os.path.getsize(path),
                    "route": "pieces" if large else "whole",
                    "sha256": manifest.sha256(path),
                    "weight_bytes_fp32": model.count_params() * 4,
                    "signature": {contract.BACKBONE_SIGNATURE: contract.backbone_signature(
                        batch, seq, model.hidden_dim)},
                    "parity": result,
                    "op_versions": versions,
                    "oldest_runtime": oldest_runtime(versions),
                    **stamp("tensorflow"),
                    "gpu_fully_accelerated": gpu_fully_accelerated(path),
                }
                progress(done + 1, len(variants))

        def record(data):
            data["preset"] = name
            data["config"] = model.falcon_config.to_dict()
            data.setdefault("tflite", {"variants": {}})["variants"].update(entries)

        staging.commit(record)
    return entries
