"""Exported causal LM -> a LiteRT-LM bundle (`.litertlm`), checked on LiteRT-LM's Engine.

    falcon-tf export --preset falcon_tiny_random --format litertlm --variants fp32
    (or: export_litertlm("artifacts/falcon_tiny_random", variant="fp32"))

writes `artifacts/<name>/litertlm/<name>_<variant>.litertlm` with
`litert-lm-builder`, from files the TFLite causal-LM export wrote and the
manifest lists (each checked against its sha256 first):

    TFLiteModel       tflite/<name>_causal_lm_<variant>.tflite, model_type
                      prefill_decode (its prefill_<L> and decode signatures)
    HF_Tokenizer_Zlib tokenizer/tokenizer.json
    LlmMetadataProto  start token, stop tokens, max_num_tokens (at most the
                      KV cache length), top-p sampling with k = 1 (greedy;
                      the Engine's CPU sampler has no other type), a generic
                      model type, no prompt template (Falcon base models have
                      none), no thinking, no function calling

Then it loads the bundle with `litert-lm-api`'s Engine on the CPU backend, in
a child process (the runtime logs natively to stderr, and a refusal is only
described there), generates a few greedy tokens from a prompt and compares the
text with `falcon_tf.lite.FalconCausalLM` on the same .tflite file. The bundle
and what that check found go into the manifest under
`causal_lm.litertlm.<variant>`.

What the Engine feeds the graph (LiteRT-LM 0.18): it finds signatures by name
(`prefill*`, `decode`) and inputs by name (`tokens`, `input_pos`, `mask`,
`kv_cache_k_<i>`/`kv_cache_v_<i>`, output `logits`), prepends the start token,
keeps the prompt's last token for the first decode step, fills masked entries
of a float32 mask with -0.7 * FLT_MAX, and pads a prefill chunk's unused rows
with token 0 at position 0 (`input_pos` is zeroed, then the real positions are
written). A graph must therefore ignore the padded rows' positions; see
`runtime_check` for what is measured.
"""

import io
import json
import os
import subprocess
import sys
import tempfile

from converters.stages import installed_version, stamp
from falcon_tf.artifacts import contract, manifest

LITERTLM_DIR = "litertlm"
CHECK_PROMPT = "the cat sat on the mat"
CHECK_NEW_TOKENS = 12
CHECK_TIMEOUT_S = 300

# The child that runs the bundle on LiteRT-LM's Engine: argv = bundle, prompt,
# new tokens, cache dir. Prints one JSON line.
_ENGINE_CHILD = """
import json, sys
import litert_lm
path, prompt, new_tokens, cache_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
engine = litert_lm.Engine(path, backend=litert_lm.Backend.CPU(), cache_dir=cache_dir)
# No sampler_config: the session samples as the bundle's LlmMetadata says (greedy).
session = engine.create_session(apply_prompt_template=False, max_output_tokens=new_tokens)
session.run_prefill([prompt])
responses = session.run_decode()
print(json.dumps({"text": responses.texts[0], "start_token_id": engine.bos_token_id,
                  "stop_token_ids": engine.eos_token_ids,
                  "prompt_ids": engine.tokenize(prompt)}))
"""


def llm_metadata(start_token_id, stop_token_ids, max_tokens):
    """The bundle's LlmMetadata proto."""
    from litert_lm_builder.runtime.proto import llm_metadata_pb2, sampler_params_pb2

    meta = llm_metadata_pb2.LlmMetadata()
    meta.start_token.token_ids.ids.append(int(start_token_id))
    for stop in stop_token_ids:
        meta.stop_tokens.add().token_ids.ids.append(int(stop))
    meta.max_num_tokens = int(max_tokens)
    meta.llm_model_type.generic_model.SetInParent()
    # Greedy as top-p sampling restricted to the top k = 1 token: the CPU
    # backend of LiteRT-LM 0.18 answers the GREEDY and TOP_K types with
    # "UNIMPLEMENTED: Sampler type: 3 (1) not implemented yet".
    meta.sampler_params.type = sampler_params_pb2.SamplerParameters.TOP_P
    meta.sampler_params.k = 1
    meta.sampler_params.p = 1.0
    meta.sampler_params.temperature = 1.0
    meta.supports_thinking = False
    meta.supports_function_calling = False
    return meta


def read_bundle(path):
    """What a .litertlm holds, read back with litert-lm-builder's own reader:
    {"version", "system_metadata": {key: value}, "sections": [{"data_type",
    "model_type", "bytes"}], "llm_metadata": LlmMetadata proto or None}."""
    from litert_lm_builder import litertlm_header_schema_py_generated as schema
    from litert_lm_builder import litertlm_peek
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    header = io.StringIO()
    metadata = litertlm_peek.read_litertlm_header(path, header)
    names = {v: k for k, v in vars(schema.AnySectionDataType).items() if not k.startswith("_")}
    system = metadata.SystemMetadata()
    out = {"version": header.getvalue().split(":", 1)[1].strip(),
           "system_metadata": {}, "sections": [], "llm_metadata": None}
    for i in range(system.EntriesLength() if system else 0):
        entry = litertlm_peek.kvp_to_dict(system.Entries(i))
        out["system_metadata"][entry["key"]] = entry["value"]
    sections = metadata.SectionMetadata()
    with open(path, "rb") as f:
        for i in range(sections.ObjectsLength() if sections else 0):
            obj = sections.Objects(i)
            begin, end = obj.BeginOffset(), obj.EndOffset()
            out["sections"].append({"data_type": names.get(obj.DataType(), obj.DataType()),
                                    "model_type": litertlm_peek.get_model_type(obj),
                                    "bytes": end - begin})
            if obj.DataType() == schema.AnySectionDataType.LlmMetadataProto:
                f.seek(begin)
                proto = llm_metadata_pb2.LlmMetadata()
                proto.ParseFromString(f.read(end - begin))
                out["llm_metadata"] = proto
    return out


def _build(path, tflite_path, tokenizer_path, meta, system_metadata):
    """Writes the bundle through a temporary sibling and a rename: a reader sees
    the old bundle or the new one, whole. (The builder seeks while writing, so
    it writes a file, not bytes in memory.)"""
    from litert_lm_builder import litertlm_builder as lb

    builder = lb.LitertLmFileBuilder()
    for key, value in system_metadata.items():
        builder.add_system_metadata(lb.Metadata(key=key, value=value, dtype=lb.DType.STRING))
    builder.add_tflite_model(tflite_path, lb.TfLiteModelType.PREFILL_DECODE)
    builder.add_hf_tokenizer(tokenizer_path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".litertlm", dir=folder)
    os.close(fd)
    try:
        with open(tmp + ".pb", "wb") as f:
            f.write(meta.SerializeToString())
        builder.add_llm_metadata(tmp + ".pb")
        with open(tmp, "wb") as f:
            builder.build(f, validate_metadata=True)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + ".pb"):
            if os.path.exists(leftover):
                os.remove(leftover)


def _last_error(stderr):
    """The runtime's own error lines (absl E-lines, LiteRT ERROR lines), or the
    tail of stderr when it printed none."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E0000") or "ERROR" in ln
              or "Error" in ln.split(":", 1)[0]]
    return "\n".join((errors or lines)[-6:])


def runtime_check(bundle_path, artifact_dir, variant, prompt=CHECK_PROMPT,
                  new_tokens=CHECK_NEW_TOKENS):
    """Runs the bundle on LiteRT-LM's Engine (CPU backend, greedy) and the same
    prompt on `falcon_tf.lite.FalconCausalLM` over the variant's .tflite file;
    returns what was found. The Engine returns text, not ids: the texts are
    compared, and our ids are recorded beside them."""
    from falcon_tf.lite import FalconCausalLM

    api = installed_version("litert-lm-api")
    result = {"runtime": f"litert-lm-api {api}", "backend": "cpu",
              "prompt": prompt, "max_new_tokens": new_tokens, "sampler": "greedy"}
    if api is None:
        return {**result, "ran": False, "error": "litert-lm-api is not installed "
                "(pip install litert-lm-api)."}
    with tempfile.TemporaryDirectory() as cache_dir:  # the Engine's XNNPack weight cache
        proc = subprocess.run([sys.executable, "-c", _ENGINE_CHILD, bundle_path, prompt,
                               str(new_tokens), cache_dir],
                              capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {**result, "ran": False, "returncode": proc.returncode,
                "error": _last_error(proc.stderr)}
    engine = json.loads(proc.stdout.strip().splitlines()[-1])
    lite = FalconCausalLM.from_preset(artifact_dir, variant=variant)
    prompt_ids = [lite.tokenizer.start_token_id] + [int(t) for t in lite.tokenizer.tokenize(
        prompt)]
    ours = lite.generate([prompt_ids], max_length=len(prompt_ids) + new_tokens)[0][
        len(prompt_ids):]  # stops at the tokenizer's end token, as the Engine does
    stops = {lite.tokenizer.start_token_id, lite.tokenizer.end_token_id}
    ours_text = lite.tokenizer.detokenize([t for t in ours if t not in stops])
    return {**result, "ran": True, "engine_text": engine["text"],
            "engine_start_token_id": engine["start_token_id"],
            "engine_stop_token_ids": engine["stop_token_ids"],
            "engine_prompt_ids_equal": engine["prompt_ids"] == prompt_ids[1:],
            "falcon_tf_lite_ids": ours, "falcon_tf_lite_text": ours_text,
            "text_equal_falcon_tf_lite": engine["text"] == ours_text}


def export_litertlm(artifact_dir, variant=contract.DEFAULT_VARIANT, max_tokens=None, check=True):
    """Bundles the causal LM `variant` exported in `artifact_dir` (by
    `export_tflite_causal_lm`) with its tokenizer and LLM metadata as a
    .litertlm, runs the runtime check (unless `check=False`), and records both
    in the manifest. `max_tokens` (prompt and generated tokens together)
    defaults to the KV cache length and may not exceed it. Returns the
    manifest entry."""
    artifact_dir = os.path.abspath(os.fspath(artifact_dir))
    data = manifest.read(artifact_dir)
    path_manifest = os.path.join(artifact_dir, manifest.MANIFEST_FILE)
    section = data.get("causal_lm")
    if not section:
        raise ValueError(f"{path_manifest} has no `causal_lm` section: export the causal LM "
                         f"first (falcon-tf export --format tflite --task causal_lm).")
    variants = section.get("variants") or {}
    if variant not in variants:
        raise ValueError(f"`variant` {variant!r} of the causal LM is not exported in "
                         f"{artifact_dir}; available: {sorted(variants)}.")
    tokenizer = data.get("tokenizer") or {}
    if contract.TOKENIZER_FILE not in (tokenizer.get("files") or {}):
        raise FileNotFoundError(f"{path_manifest} lists no {contract.TOKENIZER_FILE}: a "
                                f"LiteRT-LM bundle needs the tokenizer. Export from a preset "
                                f"that has tokenizer files, or pass `tokenizer=`.")
    if section.get("start_token_id") is None or not section.get("stop_token_ids"):
        raise ValueError(f"{path_manifest}: `causal_lm.start_token_id` and "
                         f"`causal_lm.stop_token_ids` must be set for a LiteRT-LM bundle.")
    cache_length = section["cache_len"]
    if max_tokens is None:
        max_tokens = cache_length
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not (
            1 <= max_tokens <= cache_length):
        raise ValueError(f"`max_tokens` must be an integer in [1, {cache_length}] (the KV cache "
                         f"length of the export); received {max_tokens!r}.")
    entry = variants[variant]
    manifest.verify(artifact_dir, {entry["file"]: entry,
                                   contract.TOKENIZER_FILE:
                                       tokenizer["files"][contract.TOKENIZER_FILE]})

    from falcon_tf import __version__

    name = data.get("preset") or os.path.basename(artifact_dir)
    relative = os.path.join(LITERTLM_DIR, f"{name}_{variant}.litertlm")
    path = os.path.join(artifact_dir, relative)
    meta = llm_metadata(section["start_token_id"], section["stop_token_ids"], max_tokens)
    _build(path, os.path.join(artifact_dir, entry["file"]),
           os.path.join(artifact_dir, contract.TOKENIZER_FILE), meta,
           {"model": name, "variant": variant, "exporter": f"falcon_tf {__version__}"})
    record = {
        "file": relative,
        "bytes": os.path.getsize(path),
        "sha256": manifest.sha256(path),
        "from": {entry["file"]: entry["sha256"],
                 contract.TOKENIZER_FILE: tokenizer["files"][contract.TOKENIZER_FILE]["sha256"]},
        "llm_metadata": {"start_token_id": section["start_token_id"],
                         "stop_token_ids": list(section["stop_token_ids"]),
                         "max_num_tokens": max_tokens, "sampler": "top_p with k=1 (greedy)"},
        "runtime_check": (runtime_check(path, artifact_dir, variant) if check else None),
        **stamp("litert-lm-builder", "litert-lm-api"),
    }

    def edit(current):
        current.setdefault("causal_lm", {}).setdefault("litertlm", {})[variant] = record

    manifest.update(artifact_dir, edit)
    return record
