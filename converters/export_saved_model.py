"""Preset -> TF Serving SavedModel, with warmup requests, server config and manifest.

    falcon-tf export --preset falcon_tiny_random --out artifacts --format saved_model

writes

    artifacts/<name>/saved_model/<version>/      saved_model.pb, variables/,
        assets.extra/tf_serving_warmup_requests
    artifacts/<name>/serving/models.config       TF Serving model config
    artifacts/<name>/serving/batching_parameters.txt
    artifacts/<name>/manifest.json               checksums, signatures, parity

Signatures of the backbone (inputs int32 [batch, seq], both dynamic; output
`sequence_output`):
  serving_default   a plain TensorFlow graph: runs on any TF Serving build
  serving_xla       the same forward compiled with XLA (jit_compile=True); TF
                    Serving runs it on CPU only with --xla_cpu_compilation_enabled
and of the causal LM (the LM head is tied to the token embedding), all
dynamic in batch, length and cache size:
  prefill, decode   tokens, input_pos int32 [batch, L] (decode: L = 1; input_pos
                    the cache slot of each token, its position) and the cache
                    kv_cache_k_<i>, kv_cache_v_<i> float32 [batch, kv_heads, cache,
                    head_dim] (head-major: attention reads them without a
                    per-layer transpose) -> logits [batch, L, vocab] and the
                    updated cache.
                    A token attends the slots up to its own.
  generate          token_ids, padding_mask [batch, seq] (right-padded prompts),
                    max_length, top_k, seed (int32 scalars), top_p, temperature
                    (float32 scalars; temperature 0 = greedy), stop_token_ids
                    int32 [n] -> token_ids, padding_mask [batch, max_length]: the
                    whole loop in one request.

A version is written into a hidden temporary sibling (`.tmp-<pid>-…`, not a
number, so TF Serving ignores it) and renamed to its number when complete:
a server polling the base path never sees half a version, and exporting again
adds the next number without touching earlier ones.
"""

import os
import shutil
import tempfile

import numpy as np

from converters.export_tokenizer import export_tokenizer
from converters.stages import input_specs, stamp
from falcon_tf.artifacts import contract, manifest
from falcon_tf.checkpoints.handles import artifact_name
from falcon_tf.progress import progress_bar

SIGNATURES = {contract.BACKBONE_SIGNATURE: False, "serving_xla": True}  # name -> jit_compile
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
WARMUP_SHAPES = ((1, 16), (4, 128))  # (batch, seq) of the recorded warmup requests
BATCHING_PARAMETERS = """\
# TF Serving batching (pass with --enable_batching --batching_parameters_file=...).
# Requests of different lengths are padded to the longest in a batch; padded
# positions carry padding_mask 0, which the model ignores.
max_batch_size { value: 8 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 2 }
pad_variable_length_inputs: true
"""


def _versions(base):
    return sorted(int(d) for d in os.listdir(base) if d.isdigit()) if os.path.isdir(base) else []


def _signature_spec(concrete):
    """A loaded signature's tensors in the contract's form (`contract.tensor_spec`)."""
    def spec(tensor_spec):
        return contract.tensor_spec(tensor_spec.shape.as_list(), tensor_spec.dtype.name)

    _, inputs = concrete.structured_input_signature
    return {"inputs": {k: spec(v) for k, v in sorted(inputs.items())},
            "outputs": {k: spec(v) for k, v in sorted(concrete.structured_outputs.items())}}


def check_batch(vocabulary_size, seed=0):
    """Right padding, left padding, no padding and an all-padding row in one batch."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocabulary_size, size=(4, 12)).astype("int32")
    mask = np.ones((4, 12), "int32")
    mask[0, 9:] = 0
    mask[1, :4] = 0
    mask[3, :] = 0
    return {"token_ids": ids, "padding_mask": mask}


def write_warmup(path, model_name, vocabulary_size):
    """TF Serving warmup: a TFRecord of PredictionLog, one `serving_default`
    request per WARMUP_SHAPES and one greedy `generate` request."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(0)
    requests = []
    for batch, seq in WARMUP_SHAPES:
        ids = rng.integers(0, vocabulary_size, size=(batch, seq)).astype("int32")
        requests.append((contract.BACKBONE_SIGNATURE, {"token_ids": ids,
                                             "padding_mask": np.ones((batch, seq), "int32")}))
    prompt = rng.integers(0, vocabulary_size, size=(1, 4)).astype("int32")
    requests.append(("generate", {
        "token_ids": prompt, "padding_mask": np.ones_like(prompt),
        "max_length": np.int32(8), "top_k": np.int32(0), "top_p": np.float32(1.0),
        "temperature": np.float32(0.0), "seed": np.int32(0),
        "stop_token_ids": np.zeros((0,), np.int32)}))
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def models_config(model_name, base_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = model_name
    entry.base_path = base_path
    entry.model_platform = "tensorflow"
    entry.model_version_policy.latest.num_versions = 1
    return text_format.MessageToString(config)


def causal_lm_functions(backbone):
    """{name: tf.function} for prefill, decode and generate (see the module docstring)."""
    import tensorflow as tf

    from falcon_tf.artifacts import contract
    from falcon_tf.model.attention_bias import causal_cache_mask
    from falcon_tf.model.causal_lm import FalconCausalLM

    lm = FalconCausalLM(backbone)
    config = backbone.falcon_config
    functions = {}
    names = contract.cache_names(config.num_layers)

    def step(tokens, input_pos, *caches):
        mask = causal_cache_mask(input_pos, tf.shape(caches[0])[2])
        caches = [tf.cast(c, backbone.compute_dtype) for c in caches]
        logits, caches = lm.call_with_cache(tokens, input_pos, mask, caches)
        out = {contract.LOGITS: logits}
        out.update({n: tf.cast(c, tf.float32) for n, c in zip(names, caches)})
        return out

    for name, length in ((contract.SERVING_PREFILL_SIGNATURE, None),
                         (contract.DECODE_SIGNATURE, 1)):
        signature = contract.serving_step_signature(length, config.num_layers, config.kv_heads,
                                                    config.head_dim, config.vocabulary_size)
        functions[name] = tf.function(step, input_signature=input_specs(signature))

    def generate(token_ids, padding_mask, max_length, top_k, top_p, temperature, seed,
                 stop_token_ids):
        lengths = tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1)
        prompt = token_ids * tf.cast(padding_mask, tf.int32)
        cache = tf.maximum(max_length, tf.shape(token_ids)[1])
        tokens, ends = lm.generate_graph(prompt, lengths, max_length, top_k, top_p,
                                         temperature, seed,
                                         stop_token_ids, cache)
        mask = tf.range(max_length)[None, :] < ends[:, None]
        return {contract.TOKEN_IDS: tokens[:, :max_length] * tf.cast(mask, tf.int32),
                contract.PADDING_MASK: tf.cast(mask, tf.int32)}

    functions[contract.GENERATE_SIGNATURE] = tf.function(
        generate, input_signature=input_specs(contract.generate_signature()))
    return functions


def serving_module(model):
    """A tf.Module holding the backbone and causal LM signatures and each weight
    once: the TensorFlow variable behind every Keras variable, nothing else.
    (keras.export.ExportArchive tracks the Keras variables and the TensorFlow
    variables its functions capture as two lists, and the checkpoint then
    stores every weight twice.) Returns (module, {signature: concrete function})."""
    import tensorflow as tf

    module = tf.Module()
    functions = {}
    for signature, jit in SIGNATURES.items():
        def forward(token_ids, padding_mask):
            out = model({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
            return {contract.SEQUENCE_OUTPUT: out}

        forward.__name__ = signature
        functions[signature] = tf.function(
            forward, input_signature=input_specs(
                contract.backbone_signature(None, None, model.hidden_dim)),
            jit_compile=jit)
    functions.update(causal_lm_functions(model))
    module.weights = [variable.value for variable in model.variables]
    concrete = {name: fn.get_concrete_function() for name, fn in functions.items()}
    for name, fn in functions.items():
        setattr(module, name, fn)
    return module, concrete


def keras_reference(backbone, new_tokens=8):
    """What the written signatures must reproduce, computed from the Keras model
    before it is written: the backbone's output on `check_batch`, greedy tokens
    of two prompts, and the uncached logits along the second one's continuation.
    Plain data, so the check of the written files needs no Keras model."""
    from falcon_tf.model.causal_lm import FalconCausalLM

    lm = FalconCausalLM(backbone, cache_length=64)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, backbone.vocabulary_size, n).tolist() for n in (5, 9)]
    max_length = 9 + new_tokens
    tokens = lm.generate(prompts, max_length=max_length, stop_token_ids=None)
    sequence = tokens[1]
    full = lm({"token_ids": np.array([sequence], "int32"),
               "padding_mask": np.ones((1, len(sequence)), "int32")}).numpy()[0]
    x = check_batch(backbone.vocabulary_size)
    config = backbone.falcon_config
    return {"x": x, contract.SEQUENCE_OUTPUT: backbone(x).numpy(), "prompts": prompts,
            "max_length": max_length, "tokens": tokens, "logits": full,
            "num_layers": config.num_layers, "kv_heads": config.kv_heads,
            "head_dim": config.head_dim}


def causal_lm_parity(loaded, reference):
    """Greedy tokens of the written `generate` signature against Keras, and the
    largest logit difference of prefill + decode steps against the uncached
    Keras forward (`reference` from keras_reference)."""
    import tensorflow as tf

    from falcon_tf.artifacts import contract

    prompts, max_length = reference["prompts"], reference["max_length"]
    ids = np.zeros((2, 9), "int32")
    mask = np.zeros((2, 9), "int32")
    for i, row in enumerate(prompts):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    out = loaded.signatures["generate"](
        token_ids=tf.constant(ids), padding_mask=tf.constant(mask),
        max_length=tf.constant(max_length), top_k=tf.constant(0), top_p=tf.constant(1.0),
        temperature=tf.constant(0.0), seed=tf.constant(0),
        stop_token_ids=tf.constant([], tf.int32))
    same = out["token_ids"].numpy().tolist() == reference["tokens"]
    # Step logits: prefill the second prompt, decode its greedy continuation.
    sequence, full = reference["tokens"][1], reference["logits"]
    names = contract.cache_names(reference["num_layers"])
    shape = contract.cache_shape(reference["kv_heads"], reference["head_dim"], 32)
    caches = {n: tf.zeros(shape) for n in names}
    n = len(prompts[1])
    step = loaded.signatures["prefill"](tokens=tf.constant([sequence[:n]]),
                                        input_pos=tf.constant([list(range(n))]), **caches)
    worst = float(np.abs(step[contract.LOGITS].numpy()[0] - full[:n]).max())
    for pos in range(n, len(sequence)):
        caches = {k: step[k] for k in names}
        step = loaded.signatures[contract.DECODE_SIGNATURE](
            tokens=tf.constant([[sequence[pos]]]), input_pos=tf.constant([[pos]]), **caches)
        worst = max(worst, float(np.abs(step[contract.LOGITS].numpy()[0, 0] - full[pos]).max()))
    return {"prefill+decode": {"max_abs_diff_vs_keras": worst, "of": "logits"},
            "generate": {"greedy_tokens_equal_keras": same}}


def written_parity(path, reference):
    """(parity, signature specs) of the SavedModel at `path` against
    `reference` (`keras_reference`): the backbone signatures on its batch, and
    `causal_lm_parity`. Needs TensorFlow only."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    x, expected = reference["x"], reference[contract.SEQUENCE_OUTPUT]
    parity, signatures = {}, {}
    for signature in SIGNATURES:
        fn = loaded.signatures[signature]
        got = fn(token_ids=tf.constant(x["token_ids"]),
                 padding_mask=tf.constant(x["padding_mask"]))[contract.SEQUENCE_OUTPUT].numpy()
        parity[signature] = {"max_abs_diff_vs_keras": float(np.abs(got - expected).max()),
                             "finite": bool(np.isfinite(got).all())}
    parity.update(causal_lm_parity(loaded, reference))
    for name in sorted(loaded.signatures.keys()):
        signatures[name] = _signature_spec(loaded.signatures[name])
    return parity, signatures


# Models whose float32 weights reach this size are checked in a child process
# (`verify_written`); smaller ones, where a second copy costs less than a
# TensorFlow process, in this one.
CHILD_CHECK_BYTES = 256 * 2 ** 20

# Run in a child that imports TensorFlow and numpy, not the Keras model.
_VERIFY = """
import json, pickle, sys
sys.path.insert(0, sys.argv[1])
from converters.export_saved_model import written_parity
with open(sys.argv[3], "rb") as f:
    reference = pickle.load(f)
parity, signatures = written_parity(sys.argv[2], reference)
print(json.dumps({"parity": parity, "signatures": signatures,
                  "model_loaded": "falcon_tf.model.backbone" in sys.modules}))
"""


def verify_written(path, reference):
    """`written_parity` of the SavedModel at `path`, computed in a child process.
    Returns (parity, signature specs)."""
    import json
    import pickle
    import subprocess
    import sys

    import falcon_tf

    root = os.path.dirname(os.path.dirname(os.path.abspath(falcon_tf.__file__)))
    with tempfile.TemporaryDirectory(prefix="falcon-tf-verify-") as tmp:
        data = os.path.join(tmp, "reference.pickle")
        with open(data, "wb") as f:
            pickle.dump(reference, f)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run([sys.executable, "-c", _VERIFY, root, path, data],
                              capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"Loading the written SavedModel {path} back failed:\n"
                           f"{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["model_loaded"]:
        raise AssertionError("the verifying process loaded the Keras model")
    return result["parity"], result["signatures"]


def export_saved_model(preset, out_dir="artifacts", name=None, model=None, tokenizer=None):
    """Exports `preset` (anything FalconBackbone.from_preset takes, or `model`),
    and its tokenizer (the preset's, or `tokenizer`) when it has one.

    Returns (version directory, manifest entry of this version).
    """
    import tensorflow as tf

    from falcon_tf import FalconBackbone

    steps = ["load", "trace", "write", "warmup", "verify", "publish"]
    with progress_bar("Exporting SavedModel") as progress:
        progress(0, len(steps))
        model = model if model is not None else FalconBackbone.from_preset(preset)
        model.check_float_weights("export_saved_model")  # refused before anything is written
        config = model.falcon_config
        name = name or artifact_name(preset)
        artifact_dir = os.path.abspath(os.path.join(out_dir, name))
        base = os.path.join(artifact_dir, "saved_model")
        os.makedirs(base, exist_ok=True)
        manifest.remove_stale(base, ".tmp-")  # temporaries of exports killed midway
        progress(1, len(steps))

        module, concrete = serving_module(model)
        reference = keras_reference(model)
        progress(2, len(steps))

        tmp = tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=base)
        try:
            tf.saved_model.save(module, tmp, signatures=concrete)
            del module, concrete
            progress(3, len(steps))
            write_warmup(os.path.join(tmp, WARMUP_FILE), name, config.vocabulary_size)
            progress(4, len(steps))

            # Parity of the written files, loaded back as TF Serving would see
            # them; for a model of some size in a child process, so that its
            # copy of the weights is not added to the Keras model's in this one.
            if model.count_params() * 4 >= CHILD_CHECK_BYTES:
                parity, signatures = verify_written(tmp, reference)
            else:
                parity, signatures = written_parity(tmp, reference)
            progress(5, len(steps))

            # Under the artifact's lock: a concurrent export takes the next number.
            with manifest.locked(artifact_dir):
                version = (_versions(base) or [0])[-1] + 1
                final = os.path.join(base, str(version))
                os.rename(tmp, final)  # the version appears whole, or not at all
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

        serving = os.path.join(artifact_dir, "serving")
        manifest.atomic_write(os.path.join(serving, "models.config"),
                              models_config(name, f"/models/{name}/saved_model"))
        manifest.atomic_write(os.path.join(serving, "batching_parameters.txt"),
                              BATCHING_PARAMETERS)
        entry = {
            "files": manifest.describe_files(artifact_dir, final),
            "signatures": signatures,
            "parity": parity,
            **stamp("tensorflow", "keras"),
        }

        def record(data):
            data["preset"] = name
            data["config"] = config.to_dict()
            data.setdefault("saved_model", {"versions": {}})["versions"][str(version)] = entry
            data["serving"] = manifest.describe_files(artifact_dir, serving)

        manifest.update(artifact_dir, record)
        export_tokenizer(preset, artifact_dir, tokenizer)
        progress(6, len(steps))
    return final, entry
