"""On-device causal LM: the host loop over an exported file's prefill_<L> and
decode signatures (falcon_tf.artifacts.contract), with numpy and a TFLite runtime only.
"""

import copy
import os
import threading

import numpy as np

from falcon_tf.artifacts import contract, manifest

from falcon_tf.runtime import generation
from falcon_tf.runtime import samplers as _samplers
from falcon_tf.lite.backbone import (_cpu_interpreter, check_options, cpu_compiled_model,
                                     exported_variant, gpu_compiled_model)
from falcon_tf.text.bpe import from_artifact


class SignatureRunners:
    """prefill_<L>, decode and their windowed forms behind one call.

    On ai-edge-litert's `CompiledModel` (`compiled`, CPU or GPU accelerator),
    the caches live in the runtime's own tensor buffers: one buffer per cache
    tensor, bound as that tensor's input and output of every signature, so a
    step updates it in place (the file's DYNAMIC_UPDATE_SLICE writes the new
    rows only) and no cache ever passes through numpy between steps. On a plain
    `Interpreter` (tflite-runtime, or ai-edge-litert's, as the exporter's
    checks use) the caches are numpy arrays handed in and back at every step.

    `signatures`: the manifest's record of the file's signatures (the
    contract's dicts, `contract.causal_lm_signatures`), from which the
    loader takes every name and shape, once the file is checked to agree
    (`where` names the two in the error). None reads them from the file: the
    exporter's checks of a file no manifest records yet.
    """

    def __init__(self, interpreter=None, compiled=None, signatures=None, where="the file"):
        self._interpreter, self._compiled = interpreter, compiled
        if compiled is not None:
            found = {name: {"inputs": compiled.get_input_tensor_details(name)}
                     for name in compiled.get_signature_list()}
        else:
            self._runners = {name: interpreter.get_signature_runner(name)
                             for name in interpreter.get_signature_list()}
            found = {name: {"inputs": r.get_input_details()}
                     for name, r in self._runners.items()}
        found = {name: {"inputs": {k: {"shape": [int(d) for d in v["shape"]]}
                                   for k, v in entry["inputs"].items()}}
                 for name, entry in found.items()}
        if signatures is not None:
            _check_recorded(signatures, found, where)
        signatures = found if signatures is None else signatures
        self.signatures = signatures
        if contract.DECODE_SIGNATURE not in signatures:
            raise ValueError(f"The file has no `{contract.DECODE_SIGNATURE}` signature; it has "
                             f"{sorted(signatures)}. Is it a causal LM export?")
        self.prefill_lengths = sorted(
            int(name[len(contract.PREFILL_PREFIX):]) for name in signatures
            if name.startswith(contract.PREFILL_PREFIX))
        # decode_<W> signatures, by W: a token below W attends W slots only.
        self.decode_windows = sorted(w for w in map(contract.decode_window, signatures)
                                     if w is not None)
        # windowed_prefill_<L>_<W>: {L: [W, …]}, a chunk ending by W attends W slots only.
        self.prefill_windows = {}
        for length, window in sorted(filter(None, map(contract.windowed_prefill, signatures))):
            self.prefill_windows.setdefault(length, []).append(window)
        decode = signatures[contract.DECODE_SIGNATURE]["inputs"]
        self.cache_names = sorted((n for n in decode if n.startswith(contract.CACHE_K_PREFIX)
                                   or n.startswith(contract.CACHE_V_PREFIX)),
                                  key=lambda n: (int(n.rsplit("_", 1)[1]), n))
        self.cache_shape = tuple(decode[self.cache_names[0]]["shape"])
        # The mask's last axis: the slots a step may attend, whatever the caches' layout.
        self.cache_length = decode[contract.MASK]["shape"][-1]
        self._inputs = {}  # signature -> {tokens, input_pos, mask: TensorBuffer}
        self._logits = {}  # signature -> (TensorBuffer, shape)
        self._caches = None  # cache name -> TensorBuffer, shared by every signature

    def whole_cache(self):
        """The same runners without the windowed signatures: every step on
        prefill_<L> or decode, as LiteRT-LM runs the file (the caches and
        buffers shared)."""
        whole = copy.copy(self)
        whole.decode_windows, whole.prefill_windows = [], {}
        return whole

    def empty_cache(self):
        """The caches, zeroed: numpy arrays (Interpreter), or the runtime's
        buffers (CompiledModel), zeroed once here, not at every step."""
        if self._compiled is None:
            return {n: np.zeros(self.cache_shape, np.float32) for n in self.cache_names}
        if self._caches is None:
            self._caches = {n: self._compiled.create_input_buffer_by_name(
                contract.DECODE_SIGNATURE, n) for n in self.cache_names}
        zeros = np.zeros(self.cache_shape, np.float32)
        for buffer in self._caches.values():
            buffer.write(zeros)
        return self._caches

    def run(self, name, tokens, input_pos, mask, caches):
        """-> (logits (L, vocab), caches): numpy arrays on an Interpreter; on a
        CompiledModel the same buffers, updated in place. The logits are None
        for a prefill, which returns none (files exported before prefill_<L>
        dropped its logits return them; they are not read)."""
        if self._interpreter is None:
            return self._run_compiled(name, tokens, input_pos, mask, caches)
        out = self._runners[name](**{contract.TOKENS: tokens, contract.INPUT_POS: input_pos,
                                     contract.MASK: mask, **caches})
        logits = None if contract.is_prefill(name) else np.asarray(
            out[contract.LOGITS])[0]
        return logits, {n: np.asarray(out[n]) for n in self.cache_names}

    def _run_compiled(self, name, tokens, input_pos, mask, caches):
        prefill = contract.is_prefill(name)
        if name not in self._inputs:
            self._inputs[name] = {n: self._compiled.create_input_buffer_by_name(name, n)
                                  for n in (contract.TOKENS, contract.INPUT_POS, contract.MASK)}
            length = self.signatures[name]["inputs"][contract.TOKENS]["shape"][1]
            outputs = self._compiled.get_output_tensor_details(name)
            if contract.LOGITS in outputs:  # read only after a decode step
                logits = self._compiled.create_output_buffer_by_name(name, contract.LOGITS)
                self._logits[name] = logits, (length, int(np.prod(
                    logits.get_tensor_details()["shape"])) // length)
        inputs = self._inputs[name]
        inputs[contract.TOKENS].write(np.ascontiguousarray(tokens, np.int32))
        inputs[contract.INPUT_POS].write(np.ascontiguousarray(input_pos, np.int32))
        inputs[contract.MASK].write(np.ascontiguousarray(mask, np.float32))
        logits, shape = self._logits.get(name, (None, None))
        outputs = {contract.LOGITS: logits} if logits is not None else {}
        self._compiled.run_by_name(name, {**inputs, **caches}, {**outputs, **caches})
        if prefill:
            return None, caches
        return logits.read(shape[0] * shape[1], np.float32).reshape(shape), caches


def _check_recorded(recorded, found, where):
    """ValueError naming the signature whose inputs differ between the
    manifest's record and the file (a manifest edited or out of step)."""
    names = sorted(recorded) if isinstance(recorded, dict) else recorded
    if names != sorted(found):
        raise ValueError(f"{where}: the manifest records the signatures {names!r}; the file has "
                         f"{sorted(found)}. Export again.")
    for name, entry in recorded.items():
        inputs = entry.get("inputs") if isinstance(entry, dict) else None
        shapes = ({k: v.get("shape") if isinstance(v, dict) else None
                   for k, v in inputs.items()} if isinstance(inputs, dict) else inputs)
        in_file = {k: v["shape"] for k, v in found[name]["inputs"].items()}
        if shapes != in_file:
            raise ValueError(f"{where}: the inputs of signature `{name}` differ between the "
                             f"manifest ({shapes!r}) and the file ({in_file!r}). Export again.")


def _mask(start, length, cache_length):
    """(1, 1, L, C): token q (at slot start + q) attends slots up to its own."""
    allowed = np.arange(cache_length)[None, :] <= (start + np.arange(length))[:, None]
    return np.where(allowed, 0.0, contract.MASK_VALUE).astype(np.float32)[None, None]


def _prefill(runners, tokens, caches):
    """Prefills `tokens` from slot 0, in chunks of the exported lengths that
    fit the cache (a chunk must end at or before cache_length), each on the
    smallest windowed_prefill_<L>_<W> whose window holds the chunk, else on
    prefill_<L>. Returns the caches."""
    start, n = 0, len(tokens)
    while start < n:
        left = n - start
        fitting = [L for L in runners.prefill_lengths if start + L <= runners.cache_length]
        if not fitting:  # too near the cache end for any prefill: decode the rest
            for position in range(start, n):
                _, caches = _decode(runners, tokens[position], position, caches)
            break
        length = next((L for L in fitting if L >= left), fitting[-1])
        chunk = np.zeros((1, length), np.int32)
        real = min(left, length)
        chunk[0, :real] = tokens[start:start + real]
        # Past the prompt the chunk's padding writes slots that decode
        # overwrites before any token attends them.
        pos = (start + np.arange(length)).astype(np.int32)
        window = next((w for w in runners.prefill_windows.get(length, ())
                       if start + length <= w), None)
        name = (contract.prefill_signature(length) if window is None
                else contract.windowed_prefill_signature(length, window))
        _, caches = runners.run(name, chunk, pos, _mask(start, length, runners.cache_length),
                                caches)
        start += real
    return caches


def _decode(runners, token, position, caches):
    """One decode step, on the smallest decode_<W> whose window holds `position`."""
    window = next((w for w in runners.decode_windows if position < w), None)
    name = contract.DECODE_SIGNATURE if window is None else contract.decode_window_signature(
        window)
    logits, caches = runners.run(name, np.array([[token]], np.int32),
                                 np.array([position], np.int32),
                                 _mask(position, 1, runners.cache_length), caches)
    return logits[0], caches


def run_steps_both_ways(runners, sequence, prompt_length):
    """`run_steps` on the windowed signatures the loop takes, then on
    prefill_<L> and decode alone: (2, steps, vocab)."""
    return np.stack([run_steps(r, sequence, prompt_length)
                     for r in (runners, runners.whole_cache())])


def run_steps(runners, sequence, prompt_length):
    """Logits at positions prompt_length - 1 .. len(sequence) - 1 of
    `sequence`, as generation reaches them: a prefill of the first
    `prompt_length - 1` tokens, then one decode step per later token."""
    caches = _prefill(runners, sequence[:prompt_length - 1], runners.empty_cache())
    rows = []
    for position in range(prompt_length - 1, len(sequence)):
        step, caches = _decode(runners, sequence[position], position, caches)
        rows.append(step[None])
    return np.concatenate(rows)


class FalconCausalLM:
    """The exported causal LM on device: `generate` with the contract of
    `falcon_tf.FalconCausalLM.generate`; the loop runs here on the host over
    the file's prefill and decode signatures, one prompt at a time (the file
    has batch 1). Calls are serialized, so one instance is safe to share
    between threads.
    """

    def __init__(self, runners, tokenizer, vocabulary_size, path):
        self._runners = runners
        self._lock = threading.Lock()
        self.tokenizer = tokenizer
        self.vocabulary_size = vocabulary_size
        self.cache_length = runners.cache_length
        self.path = path

    @classmethod
    def from_preset(cls, preset, variant=contract.DEFAULT_VARIANT, accelerator="cpu", num_threads=None,
                    verify_checksums=True):
        """Loads `artifacts/<preset>/tflite/<preset>_causal_lm_<variant>.tflite`
        and the artifact's tokenizer (when `tokenizers` is installed), checked
        against the manifest. `accelerator="gpu"` runs every signature on
        ai-edge-litert's GPU accelerator alone; on the CPU, ai-edge-litert's
        `CompiledModel` keeps the caches in its buffers (tflite-runtime's
        Interpreter, where that is the only runtime, passes them through
        numpy at every step)."""
        check_options(accelerator, num_threads)
        artifact_dir, data, _, path = exported_variant(
            preset, variant, "causal_lm", " of the causal LM", "tflite --task causal_lm",
            verify_checksums)
        recorded = manifest.field(data, "causal_lm.signatures", "object", artifact_dir)
        where = f"{path} and {os.path.join(artifact_dir, manifest.MANIFEST_FILE)}"
        if accelerator == "gpu":
            runners = SignatureRunners(compiled=gpu_compiled_model(path), signatures=recorded,
                                       where=where)
        else:
            compiled = cpu_compiled_model(path, num_threads)
            runners = (SignatureRunners(compiled=compiled, signatures=recorded, where=where)
                       if compiled is not None else
                       SignatureRunners(interpreter=_cpu_interpreter(path, num_threads),
                                        signatures=recorded, where=where))
        try:
            tokenizer = from_artifact(artifact_dir, data, verify_checksums)
        except ImportError:  # no `tokenizers` on this device: token ids only
            tokenizer = None
        return cls(runners, tokenizer, data["config"]["vocabulary_size"], path)

    def logits(self, token_ids):
        """Logits (len, vocabulary) at every position of one sequence of at most
        `cache_length` ids, from an empty cache, one decode step per id (a
        prefill returns no logits): what perplexity is computed from."""
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or not 1 <= len(ids) <= self.cache_length or not np.issubdtype(
                ids.dtype, np.integer):
            raise ValueError(f"`token_ids` must be 1 to {self.cache_length} integer ids (the "
                             f"file's cache length); received shape {ids.shape}.")
        if ids.min() < 0 or ids.max() >= self.vocabulary_size:
            raise ValueError(f"`token_ids` must lie in [0, {self.vocabulary_size}).")
        with self._lock:
            return run_steps(self._runners, ids.astype(np.int32).tolist(), 1)

    def generate(self, inputs, max_length=None, sampler="greedy", stop_token_ids="auto",
                 seed=None, strip_prompt=False, on_token=None):
        """See `falcon_tf.FalconCausalLM.generate`. `on_token(row, token_id)` is
        called as each token comes (streaming). Seeded sampling draws from
        numpy's Generator: repeatable here, not the same draws as TensorFlow's."""
        request = generation.prepare(inputs, self.tokenizer, self.vocabulary_size,
                                     self.cache_length, max_length, sampler, stop_token_ids,
                                     seed)
        rng = np.random.default_rng(request.seed)
        stops = set(request.stop_token_ids)
        tokens = np.zeros((len(request.rows), request.max_length), np.int32)
        ends = np.zeros(len(request.rows), np.int64)
        with self._lock:
            for i, prompt in enumerate(request.rows):
                row = list(prompt)
                if len(row) < request.max_length:
                    # The prompt but its last token fills the caches; decoding
                    # that token gives the first logits.
                    caches = _prefill(self._runners, row[:-1], self._runners.empty_cache())
                    last, caches = _decode(self._runners, row[-1], len(row) - 1, caches)
                    while True:
                        token = int(_samplers.sample_numpy(last[None], request.sampler, rng)[0])
                        row.append(token)
                        if on_token is not None:
                            on_token(i, token)
                        if token in stops or len(row) >= request.max_length:
                            break
                        last, caches = _decode(self._runners, token, len(row) - 1, caches)
                tokens[i, :len(row)], ends[i] = row, len(row)
        return request.format(tokens, ends, strip_prompt)
