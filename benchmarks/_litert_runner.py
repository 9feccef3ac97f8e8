"""Runs a prefill/decode .tflite of either project (ours or litert-torch's) on
ai-edge-litert's CompiledModel, caches bound in place. numpy and ai-edge-litert
only, so a process measuring resident memory loads nothing else."""

import numpy as np

MASK_VALUE = -30000.0  # the value our masks use for a forbidden slot


def rss_mb():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


class Runner:
    """One file. `spec`: {"prompt": ids (as long as the prefill signature),
    "position": where `decode` runs, "threads": CPU threads}."""

    def __init__(self, path, spec):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.options import CpuOptions, HardwareAccelerator, Options

        self.model = CompiledModel.from_file(path, options=Options(
            HardwareAccelerator.CPU, cpu_options=CpuOptions(
                num_threads=spec["threads"], xnnpack_weight_cache_path=":memory:")))
        self.prompt, self.position = list(spec["prompt"]), spec["position"]
        names = list(self.model.get_signature_list())
        self.whole_prefill = next(n for n in names if n.startswith("prefill"))
        # Ours: the windowed_prefill_<L>_<W> our host loop takes for a chunk at slot 0
        # (the smallest window; each holds L), else prefill_<L>.
        length = int(self.whole_prefill.split("_")[1])
        windowed = [(int(n.split("_")[-1]), n) for n in names
                    if n.startswith(f"windowed_prefill_{length}_")]
        self.prefill_signature = min(windowed)[1] if windowed else self.whole_prefill
        windows = sorted(int(n.split("_")[1]) for n in names
                         if n.startswith("decode_") and n.split("_")[1].isdigit())
        window = next((w for w in windows if self.position < w), None)
        self.window_signature = f"decode_{window}" if window else None
        details = self.model.get_input_tensor_details("decode")
        self.cache_names = [n for n in details if n.startswith("kv_cache_")]
        self.caches = {n: self.model.create_input_buffer_by_name("decode", n)
                       for n in self.cache_names}
        for n, buffer in self.caches.items():
            buffer.write(np.zeros(details[n]["shape"], np.float32))
        self._io = {}

    def _buffers(self, signature):
        if signature not in self._io:
            details = self.model.get_input_tensor_details(signature)
            inputs = {n: self.model.create_input_buffer_by_name(signature, n)
                      for n in details if not n.startswith("kv_cache_")}
            outputs = {n: self.model.create_output_buffer_by_name(signature, n)
                       for n in self.model.get_output_tensor_details(signature)
                       if not n.startswith("kv_cache_")}
            self._io[signature] = details, inputs, outputs
        return self._io[signature]

    def run(self, signature, tokens, start):
        """Tokens at slots start.. ; returns the last row's logits, or None
        (a signature without logits)."""
        details, inputs, outputs = self._buffers(signature)
        length = details["tokens"]["shape"][-1]
        values = {"tokens": np.array(tokens, np.int32).reshape(details["tokens"]["shape"]),
                  "input_pos": (start + np.arange(length)).astype(np.int32).reshape(
                      details["input_pos"]["shape"])}
        if "mask" in details:
            shape = details["mask"]["shape"]
            allowed = np.arange(shape[-1])[None, :] <= (start + np.arange(length))[:, None]
            values["mask"] = np.where(allowed, 0.0, MASK_VALUE).astype(np.float32).reshape(shape)
        for name, buffer in inputs.items():
            buffer.write(values[name])
        self.model.run_by_name(signature, {**inputs, **self.caches},
                               {**outputs, **self.caches})
        if "logits" not in outputs:
            return None
        shape = self.model.get_output_tensor_details(signature)["logits"]["shape"]
        return outputs["logits"].read(int(np.prod(shape)), np.float32).reshape(shape)[0, -1]

    def prefill(self):
        return self.run(self.prefill_signature, self.prompt, 0)

    def decode(self):
        return self.run(self.window_signature or "decode", [self.prompt[0]], self.position)

    def prefill_full(self):
        return self.run(self.whole_prefill, self.prompt, 0)

    def decode_full(self):
        return self.run("decode", [self.prompt[0]], self.position)

    def greedy(self, count):
        """`count` greedy tokens after the prompt: the prompt but its last token
        prefilled, then decode from the last prompt token (a file whose prefill
        returns no logits works the same)."""
        self.run(self.prefill_signature, self.prompt[:-1] + [0], 0)
        token, out, self.first_logits = self.prompt[-1], [], None
        for position in range(len(self.prompt) - 1, len(self.prompt) - 1 + count):
            window = next((int(n.split("_")[1]) for n in sorted(
                self.model.get_signature_list(), key=lambda n: (len(n), n))
                if n.startswith("decode_") and n.split("_")[1].isdigit()
                and position < int(n.split("_")[1])), None)
            logits = self.run(f"decode_{window}" if window else "decode", [token], position)
            if self.first_logits is None:
                self.first_logits = logits
            token = int(np.argmax(logits))
            out.append(token)
        return out
