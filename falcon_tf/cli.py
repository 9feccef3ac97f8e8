"""The `falcon-tf` command: thin wrappers over importable functions."""

import argparse
import os
import sys
import time

DEFAULT_PRESET = "falcon_tiny_random"


def demo(preset=DEFAULT_PRESET, out_dir="artifacts", batch=1, seq=128, runs=20):
    """Builds a preset, writes it to `out_dir/<preset>/keras_preset`, reloads it,
    exports it for TF Serving and every TFLite variant and loads those back.
    Returns the lines to print: Keras (XLA-vs-eager and reload parity, XLA
    latency), SavedModel parity, and a TFLite table (size, parity, whether the
    GPU accelerator runs the whole graph, CPU latency)."""
    import numpy as np

    from falcon_tf import FalconBackbone
    from falcon_tf.preset_io import artifact_name

    model = FalconBackbone.from_preset(preset)
    name = artifact_name(preset)
    preset_dir = os.path.join(out_dir, name, "keras_preset")
    model.save_to_preset(preset_dir)
    reloaded = FalconBackbone.from_preset(preset_dir)

    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, model.vocabulary_size, (batch, seq)).astype("int32"),
         "padding_mask": np.ones((batch, seq), "int32")}
    eager = model(x).numpy()
    xla = model.compiled_call(x).numpy()  # compiles once
    reload_diff = np.abs(reloaded.compiled_call(x).numpy() - xla).max()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.compiled_call(x).numpy()
        times.append(time.perf_counter() - start)
    keras_line = (f"{name}: XLA vs eager max|diff| {np.abs(xla - eager).max():.2e}, "
                  f"reloaded from {preset_dir} max|diff| {reload_diff:.2e}, "
                  f"XLA forward {np.median(times) * 1e3:.2f} ms "
                  f"(median of {runs}, batch {batch} x seq {seq})")

    # The TF Serving export, loaded back through the server loader.
    from converters.export_saved_model import export_saved_model
    from falcon_tf.serving import FalconBackbone as ServingBackbone

    version_dir, _ = export_saved_model(name, out_dir, name=name, model=model)
    diffs = []
    for signature in ("serving_default", "serving_xla"):
        served = ServingBackbone.from_preset(os.path.join(out_dir, name), signature=signature)
        diffs.append(f"{signature} max|diff| {np.abs(served(x) - eager).max():.2e}")
    serving_line = f"{name}: SavedModel {version_dir} vs Keras: {', '.join(diffs)}"

    # Every TFLite variant, checked on LiteRT's CPU and GPU accelerators.
    from converters.export_tflite import export_tflite
    from falcon_tf.lite import FalconBackbone as LiteBackbone

    entries = export_tflite(name, out_dir, name=name, model=model, batch=batch, seq=seq)
    latencies = {}
    for variant in entries:
        lite = LiteBackbone.from_preset(os.path.join(out_dir, name), variant=variant,
                                        num_threads=2)
        lite(x)
        runs_ms = []
        for _ in range(runs):
            start = time.perf_counter()
            lite(x)
            runs_ms.append((time.perf_counter() - start) * 1e3)
        latencies[variant] = float(np.median(runs_ms))
    lines = [keras_line, serving_line,
             f"{name}: TFLite (batch {batch} x seq {seq}; CPU ms = XNNPACK, 2 threads, "
             f"median of {runs}; cosine vs Keras)", tflite_table(entries, latencies)]
    return "\n".join(lines + causal_lm_demo(preset, out_dir, name, model))


def causal_lm_demo(preset, out_dir, name, backbone, new_tokens=32):
    """Exports the causal LM for TFLite (the SavedModel already holds it) and
    generates greedily from one prompt on every runtime. Returns the lines."""
    from converters.export_tflite_causal_lm import export_tflite_causal_lm
    from falcon_tf import FalconCausalLM
    from falcon_tf.lite import FalconCausalLM as LiteLM
    from falcon_tf.serving import FalconCausalLM as ServingLM

    import numpy as np

    from falcon_tf import FalconTokenizer

    try:
        tokenizer = FalconTokenizer.from_preset(preset)
    except FileNotFoundError:
        tokenizer = None
    lm = FalconCausalLM(backbone, tokenizer=tokenizer, cache_length=128)
    artifact = os.path.join(out_dir, name)
    entries = export_tflite_causal_lm(preset, out_dir, name, model=lm.backbone,
                                      variants=("fp32", "fp16", "int8"), cache_length=128,
                                      tokenizer=lm.tokenizer)
    prompt = lm.tokenizer.start_token_id if lm.tokenizer else 1
    rows = [[prompt] + list(range(2, 14))]  # 13 prompt tokens
    max_length = len(rows[0]) + new_tokens
    runtimes = {"keras XLA": lm,
                "saved_model": ServingLM.from_preset(artifact, cache_length=128)}
    runtimes.update({f"tflite {v}": LiteLM.from_preset(artifact, variant=v, num_threads=2)
                     for v in entries})
    expected = lm.generate(rows, max_length=max_length, stop_token_ids=None)
    lines = [f"{name}: causal LM, greedy, {len(rows[0])} prompt tokens + {new_tokens} new "
             f"(tokens/s = new tokens / median of 5 generate calls, CPU)",
             f"{'runtime':12s} {'same tokens as keras':>20s} {'tokens/s':>9s} {'GPU whole':>9s}"]
    for label, runtime in runtimes.items():
        got = runtime.generate(rows, max_length=max_length, stop_token_ids=None)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            runtime.generate(rows, max_length=max_length, stop_token_ids=None)
            times.append(time.perf_counter() - start)
        variant = label.split()[1] if label.startswith("tflite") else None
        gpu = {True: "yes", False: "no", None: "n/a"}[
            entries[variant].get("gpu_fully_accelerated")] if variant else ""
        lines.append(f"{label:12s} {'yes' if got == expected else 'NO':>20s} "
                     f"{new_tokens / np.median(times):9.1f} {gpu:>9s}")
    return lines


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


def generate(preset, prompt, runtime="keras", max_length=64, sampler="greedy", seed=None,
             variant="fp32", accelerator="cpu", out=None):
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


def list_presets():
    from falcon_tf.presets import BACKBONE_PRESETS

    lines = []
    for name, entry in BACKBONE_PRESETS.items():
        meta = entry["metadata"]
        source = entry.get("kaggle_handle") or entry.get("hf_handle") \
            or "builtin (random weights, no download)"
        lines.append(f"{name}  {meta['params']:,} params  {source}\n    {meta['description']}")
    return "\n".join(lines)


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="falcon-tf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_default_variants = "fp32,fp16,int8,int4"
    p = sub.add_parser("demo", help="build a preset, run it with XLA, export it for TF Serving "
                                    "and TFLite, generate on every runtime, print parity and "
                                    "speed")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"builtin name, kaggle:// handle or local directory "
                        f"(default {DEFAULT_PRESET}, embedded, random weights)")
    p.add_argument("--out", default="artifacts", help="where the preset is written")
    p.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    sub.add_parser("presets", help="list builtin presets")
    p = sub.add_parser("export", help="export a preset for a runtime")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help="builtin name, kaggle:// or hf:// handle, or local directory")
    p.add_argument("--out", default="artifacts", help="artifacts root (default artifacts/)")
    p.add_argument("--name", default=None, help="artifact name (default: the preset's)")
    p.add_argument("--format", choices=["saved_model", "tflite", "litertlm"],
                   default="saved_model",
                   help="litertlm: bundle an exported causal LM (tflite --task causal_lm) "
                        "with its tokenizer for LiteRT-LM")
    p.add_argument("--variants", default=p_default_variants,
                   help="tflite: comma-separated subset of fp32,fp16,int8,int4")
    p.add_argument("--batch", type=int, default=1, help="tflite: exported batch size")
    p.add_argument("--seq", type=int, default=128, help="tflite: exported sequence length")
    p.add_argument("--task", choices=["backbone", "causal_lm"], default="backbone",
                   help="tflite: the backbone (serving_default) or the causal LM "
                        "(prefill_<L> and decode signatures); a SavedModel holds both")
    p.add_argument("--cache-length", type=int, default=256,
                   help="tflite causal_lm: KV cache capacity (default 256)")
    p.add_argument("--prefill-lengths", default="8,32",
                   help="tflite causal_lm: comma-separated prefill lengths (default 8,32)")
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
    p.add_argument("--variant", default="fp32", help="tflite: which exported variant")
    p.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu", help="tflite")
    p = sub.add_parser("convert", help="convert a Hugging Face Falcon checkpoint to a preset")
    p.add_argument("source", help="hf://org/name[@revision] or a local checkpoint directory")
    p.add_argument("output", help="preset directory to write")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            if args.seq <= 0:
                parser.error("--seq must be a positive integer")
            print(demo(args.preset, args.out, seq=args.seq))
        elif args.command == "export" and args.format == "tflite":
            variants = [v.strip() for v in args.variants.split(",") if v.strip()]
            if args.task == "causal_lm":
                from converters.export_tflite_causal_lm import export_tflite_causal_lm

                try:
                    lengths = [int(n) for n in args.prefill_lengths.split(",") if n.strip()]
                except ValueError:
                    parser.error("--prefill-lengths must be comma-separated integers")
                entries = export_tflite_causal_lm(
                    args.preset, args.out, args.name, variants=variants,
                    cache_length=args.cache_length, prefill_lengths=lengths)
            else:
                from converters.export_tflite import export_tflite

                entries = export_tflite(args.preset, args.out, args.name, variants=variants,
                                        batch=args.batch, seq=args.seq)
            print(tflite_table(entries))
        elif args.command == "export" and args.format == "litertlm":
            from converters.export_litertlm import export_litertlm
            from falcon_tf.preset_io import artifact_name

            artifact = os.path.join(args.out, args.name or artifact_name(args.preset))
            if not os.path.isdir(artifact):
                artifact = args.preset  # an artifact directory given directly
            variants = [v.strip() for v in args.variants.split(",") if v.strip()]
            for variant in variants if args.variants != p_default_variants else ["fp32"]:
                entry = export_litertlm(artifact, variant=variant)
                check = entry.get("runtime_check") or {}
                print(f"wrote {os.path.join(artifact, entry['file'])} ({entry['bytes']:,} bytes; "
                      f"LiteRT-LM Engine on CPU: "
                      f"{'ran' if check.get('ran') else 'failed: ' + str(check.get('error'))}"
                      f"{', same text as falcon_tf.lite' if check.get('text_equal_falcon_tf_lite') else ''})")
        elif args.command == "generate":
            if args.max_length < 2:
                parser.error("--max-length must be at least 2")
            generate(args.preset, args.prompt, args.runtime, args.max_length, args.sampler,
                     args.seed, args.variant, args.accelerator)
        elif args.command == "export":
            from converters.export_saved_model import export_saved_model

            final, entry = export_saved_model(args.preset, args.out, args.name)
            parity = ", ".join(
                f"{k} max|diff| {v['max_abs_diff_vs_keras']:.2e}" if "max_abs_diff_vs_keras" in v
                else f"{k} greedy tokens {'equal' if v['greedy_tokens_equal_keras'] else 'DIFFER'}"
                for k, v in entry["parity"].items())
            print(f"wrote {final} ({parity})")
        elif args.command == "convert":
            from converters.convert_hf import convert_checkpoint

            print(f"wrote {convert_checkpoint(args.source, args.output)}")
        else:
            print(list_presets())
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"falcon-tf: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
