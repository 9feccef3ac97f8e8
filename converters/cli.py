"""The `falcon-tf` command: thin wrappers over importable functions.

It sits above both packages (it runs the exporters as well as the runtimes),
so it lives here: `falcon_tf` never imports `converters`.
"""

import argparse
import gc
import logging
import os
import sys
import tempfile

from falcon_tf.artifacts import contract

DEFAULT_PRESET = "falcon_tiny_trained"
# Commands (and runtimes) that run TensorFlow.
_TENSORFLOW_COMMANDS = ("demo", "export", "convert", "eval")  # eval compares with Keras
DEFAULT_VARIANTS = ",".join(contract.VARIANTS)  # --variants when not given


class _DropRecords(logging.Filter):
    """Drops log records from one module whose message starts with a prefix."""

    def __init__(self, module, prefix):
        super().__init__()
        self.module, self.prefix = module, prefix

    def filter(self, record):
        return not (record.module == self.module and str(record.msg).startswith(self.prefix))


def quiet_third_party_logs():
    """Keeps other libraries' routine notices out of the command's output,
    at their source: TensorFlow's C++ log level and Python logger, and
    ai-edge-quantizer's warning that a weight buffer shared by several
    signatures is quantized once per tensor (it logs to the root logger)."""
    # 3: TensorFlow's C++ logs only fatal errors. What it logs at ERROR here
    # is notices (the CUDA probe on a machine without a GPU, oneDNN kernel
    # fallbacks); an error that matters reaches Python as an exception.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    root = logging.getLogger()
    if not any(isinstance(f, _DropRecords) for f in root.filters):
        root.addFilter(_DropRecords("quantize_tensor", "Quantized data for tensor"))


class _stderr_captured:
    """Sends file descriptor 2 to a temporary file for a block; what was written
    there is shown if the block raises."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, kind, value, traceback):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        if kind is not None:
            self._file.seek(0)
            sys.stderr.write(self._file.read().decode("utf-8", "replace"))
        self._file.close()


def load_tensorflow():
    """Imports TensorFlow and probes its devices with stderr captured: the
    notices its libraries print while loading (oneDNN, CUDA probes) are absl
    logs written before absl is initialised, which no log level reaches."""
    if "tensorflow" in sys.modules:
        return
    with _stderr_captured():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")


def _one_op_tflite():
    """A .tflite FlatBuffer holding one float ADD (built with LiteRT's schema)."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    code.version = 1
    tensors = []
    for name in (b"a", b"b", b"sum"):
        tensor = schema.TensorT()
        tensor.shape, tensor.type, tensor.buffer, tensor.name = (
            np.array([1], np.int32), schema.TensorType.FLOAT32, 0, name)
        tensors.append(tensor)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.array([0, 1], np.int32), np.array([2], np.int32)
    op.builtinOptionsType = schema.BuiltinOptions.AddOptions
    op.builtinOptions = schema.AddOptionsT()
    graph = schema.SubGraphT()
    graph.tensors, graph.operators = tensors, [op]
    graph.inputs, graph.outputs = np.array([0, 1], np.int32), np.array([2], np.int32)
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers = [schema.BufferT()]
    builder = flatbuffers.Builder(512)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def load_litert():
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
    once per process, at the first interpreter, from a logger no setting
    reaches: that first interpreter is made here, on a one-op model, with
    stderr captured."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        model = _one_op_tflite()
    except ImportError:  # no LiteRT here: nothing of it will print either
        return
    with _stderr_captured():
        Interpreter(model_content=model, num_threads=1).allocate_tensors()


def generate(preset, prompt, runtime="keras", max_length=64, sampler="greedy", seed=None,
             variant=contract.DEFAULT_VARIANT, accelerator="cpu", out=None):
    """Generates from `prompt` with the chosen runtime, writing text to `out`
    (stdout by default) as it comes. Returns the whole text."""
    out = out or sys.stdout
    if runtime == "keras":
        from falcon_tf import FalconCausalLM

        lm = FalconCausalLM.from_preset(preset, cache_length=max(max_length, 2))
    elif runtime == "saved_model":
        from falcon_tf.serving import FalconCausalLM

        lm = FalconCausalLM.from_preset(preset, cache_length=max(max_length, 2))
    elif runtime == "tflite":
        from falcon_tf.lite import FalconCausalLM

        lm = FalconCausalLM.from_preset(preset, variant=variant, accelerator=accelerator)
    else:
        raise ValueError(f"`runtime` must be keras, saved_model or tflite; received {runtime!r}.")
    if lm.tokenizer is None:
        raise ValueError(f"{preset} has no tokenizer files; `falcon-tf generate` needs text.")
    tokenizer = lm.tokenizer
    special = {tokenizer.start_token_id, tokenizer.end_token_id}
    out.write(prompt)
    out.flush()
    if runtime == "saved_model":  # one request: the whole loop runs in the graph
        text = lm.generate(prompt, max_length=max_length, sampler=sampler, seed=seed,
                           strip_prompt=True)
        out.write(text + "\n")
        return prompt + text
    pieces, shown = [], ""

    def show(token):
        nonlocal shown
        if token in special:
            return
        pieces.append(token)
        text = tokenizer.detokenize(pieces)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.write(text[len(shown):])
            out.flush()
            shown = text

    if runtime == "keras":
        for step in lm.stream(prompt, max_length=max_length, sampler=sampler, seed=seed):
            show(int(step[0]))
    else:
        lm.generate(prompt, max_length=max_length, sampler=sampler, seed=seed,
                    on_token=lambda row, token: show(token))
    text = tokenizer.detokenize(pieces)
    out.write(text[len(shown):] + "\n")  # what waited for bytes that never came
    return prompt + text


def evaluate(preset, runtime="keras", variant=contract.DEFAULT_VARIANT, ids=None, window=128,
             prompts=10):
    """`falcon-tf eval`: one runtime's perplexity on held-out ids against Keras's,
    and its greedy continuations of held-out prompts. Returns the line to print."""
    import numpy as np

    from falcon_tf.runtime import evaluation
    from falcon_tf.checkpoints.handles import artifact_name

    token_ids = None
    if ids is not None:
        if not os.path.isfile(ids):
            raise FileNotFoundError(f"--ids file not found: {ids}")
        token_ids = np.load(ids)
    r = evaluation.evaluate(preset, runtime, variant, token_ids, window, prompts)
    label = f"{artifact_name(preset)} {runtime}" + (f" {variant}" if runtime == "tflite" else "")
    line = (f"{label}: perplexity {r['perplexity']:.4f} on {r['tokens']:,} held-out tokens "
            f"(window {r['window']}); Keras {r['keras_perplexity']:.4f} "
            f"(Δ {r['delta'] * 100:+.3f}%)")
    if "greedy_identical" in r:
        line += (f"; greedy continuations of {r['prompts']} held-out prompts identical to "
                 f"Keras: {round(r['greedy_identical'] * r['prompts'])}/{r['prompts']}")
    return line


def list_presets():
    from falcon_tf.checkpoints.presets import BACKBONE_PRESETS

    lines = []
    for name, entry in BACKBONE_PRESETS.items():
        meta = entry["metadata"]
        source = entry.get("kaggle_handle") or entry.get("hf_handle") or (
            "embedded (trained weights, no download)" if "embedded_dir" in entry
            else "builtin (random weights, no download)")
        lines.append(f"{name}  {meta['params']:,} params  {source}\n    {meta['description']}")
    return "\n".join(lines)


def tflite_table(entries, latencies=None):
    """The TFLite variants as a table: size, parity, GPU, and CPU latency if given."""
    lines = [f"{'variant':8s} {'bytes':>12s} {'max|diff|':>10s} {'cosine':>10s} "
             f"{'GPU whole':>9s}" + (f" {'CPU ms':>8s}" if latencies else "") + "  file"]
    for variant, entry in entries.items():
        p, gpu = entry["parity"], entry.get("gpu_fully_accelerated")
        gpu = {True: "yes", False: "no", None: "n/a"}[gpu]
        latency = f" {latencies[variant]:8.2f}" if latencies else ""
        lines.append(f"{variant:8s} {entry['bytes']:12,d} {p['max_abs_diff_vs_keras']:10.2e} "
                     f"{p['cosine_vs_keras']:10.6f} {gpu:>9s}{latency}  {entry['file']}")
    return "\n".join(lines)


def _export_saved_model(args, parser):
    from converters.export_saved_model import export_saved_model

    final, entry = export_saved_model(args.preset, args.out, args.name)
    parity = ", ".join(
        f"{k} max|diff| {v['max_abs_diff_vs_keras']:.2e}" if "max_abs_diff_vs_keras" in v
        else f"{k} greedy tokens {'equal' if v['greedy_tokens_equal_keras'] else 'DIFFER'}"
        for k, v in entry["parity"].items())
    print(f"wrote {final} ({parity})")


def _variants(args):
    return [v.strip() for v in args.variants.split(",") if v.strip()]


def _export_tflite(args, parser):
    variants = _variants(args)
    if args.task == "causal_lm":
        from converters.export_tflite_causal_lm import export_tflite_causal_lm

        try:
            lengths = [int(n) for n in args.prefill_lengths.split(",") if n.strip()]
        except ValueError:
            parser.error("--prefill-lengths must be comma-separated integers")
        entries = export_tflite_causal_lm(
            args.preset, args.out, args.name, variants=variants,
            cache_length=args.cache_length, prefill_lengths=lengths,
            int4_projections=args.int4_projections or "mlp")
    else:
        if args.int4_projections:
            parser.error("--int4-projections applies to --task causal_lm")
        from converters.export_tflite import export_tflite

        entries = export_tflite(args.preset, args.out, args.name, variants=variants,
                                batch=args.batch, seq=args.seq)
    print(tflite_table(entries))


def _export_litertlm(args, parser):
    from converters.export_litertlm import export_litertlm
    from falcon_tf.checkpoints.handles import artifact_name

    artifact = os.path.join(args.out, args.name or artifact_name(args.preset))
    if not os.path.isdir(artifact):
        artifact = args.preset  # an artifact directory given directly
    for variant in _variants(args) if args.variants != DEFAULT_VARIANTS else ["fp32"]:
        entry = export_litertlm(artifact, variant=variant)
        check = entry.get("runtime_check") or {}
        print(f"wrote {os.path.join(artifact, entry['file'])} ({entry['bytes']:,} bytes; "
              f"LiteRT-LM Engine on CPU: "
              f"{'ran' if check.get('ran') else 'failed: ' + str(check.get('error'))}"
              f"{', same text as falcon_tf.lite' if check.get('text_equal_falcon_tf_lite') else ''})")


# `falcon-tf export --format F`: F's command. A new format is its exporter
# module (see converters/__init__.py), its loader, and one entry here.
EXPORT_FORMATS = {"saved_model": _export_saved_model, "tflite": _export_tflite,
                  "litertlm": _export_litertlm}


def main(argv=None):
    quiet_third_party_logs()
    parser = argparse.ArgumentParser(prog="falcon-tf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="build a preset, run it with XLA, export it for TF Serving "
                                    "and TFLite, generate on every runtime, print parity and "
                                    "speed")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"builtin name, kaggle:// handle or local directory "
                        f"(default {DEFAULT_PRESET}, embedded, trained weights)")
    p.add_argument("--out", default="artifacts", help="where the preset is written")
    p.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    sub.add_parser("presets", help="list builtin presets")
    p = sub.add_parser("export", help="export a preset for a runtime")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help="builtin name, kaggle:// or hf:// handle, or local directory")
    p.add_argument("--out", default="artifacts", help="artifacts root (default artifacts/)")
    p.add_argument("--name", default=None, help="artifact name (default: the preset's)")
    p.add_argument("--format", choices=list(EXPORT_FORMATS),
                   default="saved_model",
                   help="litertlm: bundle an exported causal LM (tflite --task causal_lm) "
                        "with its tokenizer for LiteRT-LM")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="tflite: comma-separated subset of fp32,fp16,int8,int4")
    p.add_argument("--batch", type=int, default=1, help="tflite: exported batch size")
    p.add_argument("--seq", type=int, default=128, help="tflite: exported sequence length")
    p.add_argument("--task", choices=["backbone", "causal_lm"], default="backbone",
                   help="tflite: the backbone (serving_default) or the causal LM "
                        "(prefill_<L> and decode signatures); a SavedModel holds both")
    p.add_argument("--cache-length", type=int, default=contract.DEVICE_CACHE_LENGTH,
                   help=f"tflite causal_lm: KV cache capacity "
                        f"(default {contract.DEVICE_CACHE_LENGTH})")
    p.add_argument("--prefill-lengths", default="8,32",
                   help="tflite causal_lm: comma-separated prefill lengths (default 8,32)")
    p.add_argument("--int4-projections", choices=["mlp", "all"], default=None,
                   help="tflite causal_lm: the projections int4 stores as int4 (default mlp: "
                        "attention keeps int8; all: a smaller file, see the README)")
    p = sub.add_parser("generate", help="generate text, streaming tokens as they come")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help="keras: any preset or handle; saved_model and tflite: an artifact "
                        "directory or an exported preset name")
    p.add_argument("--runtime", choices=["keras", "saved_model", "tflite"], default="keras")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-length", type=int, default=64,
                   help="total tokens, prompt included (default 64)")
    p.add_argument("--sampler", choices=["greedy", "top_k", "top_p", "temperature"],
                   default="greedy")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--variant", default=contract.DEFAULT_VARIANT,
                   help="tflite: which exported variant")
    p.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu", help="tflite")
    p = sub.add_parser("eval", help="perplexity on held-out token ids and greedy "
                                    "continuations, one runtime against Keras")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help="keras: any preset or handle; saved_model and tflite: an artifact "
                        "directory or an exported preset name")
    p.add_argument("--runtime", choices=["keras", "saved_model", "tflite"], default="keras")
    p.add_argument("--variant", default=contract.DEFAULT_VARIANT,
                   help="tflite: which exported causal LM variant")
    p.add_argument("--ids", default=None,
                   help="a .npy file of 1-D token ids (default: the preset's held-out ids)")
    p.add_argument("--window", type=int, default=128,
                   help="tokens scored together from an empty cache (default 128)")
    p.add_argument("--prompts", type=int, default=10,
                   help="held-out prompts whose greedy continuations are compared (default 10)")
    p = sub.add_parser("convert", help="convert a Hugging Face Falcon checkpoint to a preset")
    p.add_argument("source", help="hf://org/name[@revision] or a local checkpoint directory")
    p.add_argument("output", help="preset directory to write")
    args = parser.parse_args(argv)
    if args.command in _TENSORFLOW_COMMANDS or (args.command == "generate"
                                                and args.runtime != "tflite"):
        load_tensorflow()
    if args.command != "presets":
        load_litert()
    try:
        if args.command == "demo":
            if args.seq <= 0:
                parser.error("--seq must be a positive integer")
            # LiteRT's runtime logs each environment and accelerator it makes and
            # destroys (INFO lines on stderr; ai-edge-litert 2.3 has no setting
            # for them): the demo runs with stderr captured, shown if it fails.
            from converters.demo import demo

            with _stderr_captured():
                text = demo(args.preset, args.out, seq=args.seq)
                gc.collect()
            print(text)
        elif args.command == "generate":
            if args.max_length < 2:
                parser.error("--max-length must be at least 2")
            generate(args.preset, args.prompt, args.runtime, args.max_length, args.sampler,
                     args.seed, args.variant, args.accelerator)
        elif args.command == "export":
            EXPORT_FORMATS[args.format](args, parser)
        elif args.command == "eval":
            print(evaluate(args.preset, args.runtime, args.variant, args.ids, args.window,
                           args.prompts))
        elif args.command == "convert":
            from converters.convert_hf import convert_checkpoint

            print(f"wrote {convert_checkpoint(args.source, args.output)}")
        else:
            print(list_presets())
    except (ValueError, OSError, ImportError) as err:
        # OSError: a path that cannot be read or written (missing, not a
        # directory, no permission, disk full); its message names the path.
        print(f"falcon-tf: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
