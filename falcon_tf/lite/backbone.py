"""On-device loader of an exported FalconBackbone .tflite.

Runs on ai-edge-litert when installed, else tflite-runtime, else TensorFlow's
tf.lite; imports only numpy and that runtime.
"""

import os
import threading

import numpy as np

from falcon_tf.runtime import inputs as _inputs
from falcon_tf.artifacts import contract, manifest
from falcon_tf.checkpoints import handles

ACCELERATORS = ("cpu", "gpu")
XNNPACK_IN_MEMORY_CACHE = ":memory:"  # the XNNPACK delegate's path for a weight cache in memory


def _cpu_interpreter(path, num_threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            try:
                import tensorflow as tf
            except ImportError:
                raise ImportError("falcon_tf.lite needs a TFLite runtime: pip install "
                                  "ai-edge-litert (or tflite-runtime).") from None
            Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path, num_threads=num_threads)


class _CpuRunner:
    def __init__(self, path, num_threads):
        self._runner = _cpu_interpreter(path, num_threads).get_signature_runner(
            contract.BACKBONE_SIGNATURE)

    def __call__(self, ids, mask):
        return self._runner(token_ids=ids, padding_mask=mask)[contract.SEQUENCE_OUTPUT]


def check_options(accelerator, num_threads):
    """ValueError naming `accelerator` or `num_threads` when either is invalid."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"`accelerator` must be one of {ACCELERATORS}; "
                         f"received {accelerator!r}.")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"`num_threads` must be None or a positive integer; "
                         f"received {num_threads!r}.")


def gpu_compiled_model(path):
    """`path` compiled for ai-edge-litert's GPU accelerator alone; ValueError if
    any op would need the CPU."""
    try:
        from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator
    except ImportError:
        raise ValueError("`accelerator='gpu'` needs ai-edge-litert (pip install "
                         "ai-edge-litert).") from None
    os.makedirs(os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}"),
                exist_ok=True)
    try:
        model = CompiledModel.from_file(path, hardware_accel=HardwareAccelerator.GPU)
    except RuntimeError as err:
        raise ValueError(f"{path} cannot run wholly on the GPU accelerator: "
                         f"{str(err).strip().splitlines()[-1]}") from None
    if not model.is_fully_accelerated():
        raise ValueError(f"{path} does not run wholly on the GPU accelerator.")
    return model


def cpu_compiled_model(path, num_threads=None):
    """`path` compiled by ai-edge-litert for the CPU (XNNPACK), `num_threads`
    threads (None: the runtime's choice); None where ai-edge-litert has no
    `CompiledModel` (tflite-runtime only)."""
    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.options import CpuOptions, HardwareAccelerator, Options
    except ImportError:
        return None
    # XNNPACK's in-memory weight cache packs each weight once for every
    # signature (without it each signature packs its own copy: the int8 causal
    # LM held 138 MB instead of 97 at the benchmark shape).
    options = Options(HardwareAccelerator.CPU, cpu_options=CpuOptions(
        num_threads=num_threads or 0, xnnpack_weight_cache_path=XNNPACK_IN_MEMORY_CACHE))
    return CompiledModel.from_file(path, options=options)


def exported_variant(preset, variant, section, what, export_hint, verify_checksums=True):
    """-> (artifact dir, manifest, the variant's entry under data[section]["variants"],
    its file's path), the file checked against the manifest unless told not to."""
    artifact_dir = handles.resolve_artifact_dir(preset, export_hint)
    data = manifest.read(artifact_dir)
    variants = (data.get(section) or {}).get("variants") or {}
    if variant not in variants:
        raise ValueError(f"`variant` {variant!r}{what} is not exported in {artifact_dir}; "
                         f"available: {sorted(variants)}.")
    entry = variants[variant]
    file = manifest.field(data, f"{section}.variants.{variant}.file", "string", artifact_dir)
    manifest.field(data, "config.vocabulary_size", "positive integer", artifact_dir)
    if verify_checksums:
        manifest.verify(artifact_dir, {file: entry})
    return artifact_dir, data, entry, manifest.path_inside(
        artifact_dir, file, os.path.join(artifact_dir, manifest.MANIFEST_FILE))


class _GpuRunner:
    """ai-edge-litert's CompiledModel on the GPU accelerator alone: every op must run there."""

    def __init__(self, path):
        self._model = gpu_compiled_model(path)
        signature = contract.BACKBONE_SIGNATURE
        self._inputs = {name: self._model.create_input_buffer_by_name(signature, name)
                        for name in ("token_ids", "padding_mask")}
        self._output = self._model.create_output_buffer_by_name(contract.BACKBONE_SIGNATURE,
                                                                contract.SEQUENCE_OUTPUT)

    def __call__(self, ids, mask):
        self._inputs["token_ids"].write(ids)
        self._inputs["padding_mask"].write(mask)
        self._model.run_by_name(contract.BACKBONE_SIGNATURE, self._inputs,
                                {contract.SEQUENCE_OUTPUT: self._output})
        return self._output


class FalconBackbone:
    """An exported .tflite backbone, called like the Keras model; returns numpy.

    Inputs may be shorter than the exported sequence length (they are padded
    with masked positions) and have fewer rows than the exported batch.
    Calls are serialized, so one instance is safe to share between threads.
    """

    def __init__(self, runner, batch, seq, vocabulary_size, hidden_dim, path):
        self._runner = runner
        self._lock = threading.Lock()
        self.batch, self.seq = batch, seq
        self.vocabulary_size, self.hidden_dim = vocabulary_size, hidden_dim
        self.path = path

    @classmethod
    def from_preset(cls, preset, variant=contract.DEFAULT_VARIANT, accelerator="cpu",
                    num_threads=None, verify_checksums=True):
        """Loads `artifacts/<preset>/tflite/<preset>_<variant>.tflite`.

        `accelerator="gpu"` compiles the whole graph for ai-edge-litert's GPU
        accelerator (no CPU fallback); `num_threads` sets the CPU interpreter's.
        """
        check_options(accelerator, num_threads)
        where, data, entry, path = exported_variant(preset, variant, "tflite", "",
                                                    "tflite", verify_checksums)
        shape = manifest.field(
            data, f"tflite.variants.{variant}.signature.serving_default.inputs.token_ids.shape",
            "shape", where)
        if len(shape) != 2:
            raise ValueError(f"{os.path.join(where, manifest.MANIFEST_FILE)}: the token_ids "
                             f"shape of `{variant}` must be [batch, seq]; found {shape}.")
        batch, seq = shape
        hidden = manifest.field(data, "config.hidden_dim", "positive integer", where)
        runner = _GpuRunner(path) if accelerator == "gpu" else _CpuRunner(path, num_threads)
        return cls(runner, batch, seq, data["config"]["vocabulary_size"], hidden, path)

    def __call__(self, inputs):
        ids, mask = _inputs.validate(inputs, self.vocabulary_size, max_length=self.seq)
        rows, length = ids.shape
        if rows > self.batch:
            raise ValueError(f"`token_ids` has {rows} rows; this export takes at most "
                             f"{self.batch}.")
        padded_ids = np.zeros((self.batch, self.seq), np.int32)
        padded_mask = np.zeros((self.batch, self.seq), np.int32)
        padded_ids[:rows, :length], padded_mask[:rows, :length] = ids, mask
        with self._lock:
            out = self._runner(padded_ids, padded_mask)
            if not isinstance(out, np.ndarray):  # a GPU tensor buffer
                out = out.read(self.batch * self.seq * self.hidden_dim, np.float32)
            out = np.array(out).reshape(self.batch, self.seq, self.hidden_dim)
        return out[:rows, :length]
