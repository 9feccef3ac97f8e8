"""Build-time tools that turn checkpoints into presets and presets into artifacts,
and the `falcon-tf` command over them and the runtimes (`cli.py`, `demo.py`).

`converters` imports `falcon_tf`; `falcon_tf` never imports `converters`.

What an exporter provides (`export_saved_model`, `export_tflite`,
`export_tflite_causal_lm`; `export_litertlm` packs an existing export):

    export_<format>(preset, out_dir="artifacts", name=None, model=None, **options)
        -> what it added to artifacts/<name>/manifest.json

and the stages it composes, each written once:
  1. the model: `preset`'s float FalconBackbone, or `model`; a Keras-quantized
     one is refused (`FalconBackbone.check_float_weights`; the TFLite
     exporters also take their route and memory refusal from
     `export_tflite.model_to_export`), all before anything is written;
  2. trace: functions at the contract's signatures (`stages.input_specs` of
     `falcon_tf.artifacts.contract`'s), the same dicts the manifest records;
  3. write: every file into `manifest.Staging` (hidden siblings), published
     with the manifest edit under the artifact's lock (a SavedModel: its new
     version directory renamed in whole, as TF Serving expects), so a killed
     export leaves nothing visible;
  4. verify: the written files run in the runtime that serves them, against
     the Keras model (parity in the entry);
  5. record: sizes and sha256s (`manifest.describe_files`), `stages.stamp`
     (time and tool versions), and the tokenizer (`export_tokenizer`).
A new format is one module that does these, plus its loader beside
`falcon_tf.serving` and `falcon_tf.lite`.
"""
