"""Checkpoints by format, and the handles that name them.

  handles.py              a preset argument -> `Checkpoint` (builtin, kaggle://, hf://,
                          directory); an artifact name -> its exported directory
  keras_hub.py            keras-hub's preset format: config.json, model.weights.h5, writing
  keras_hub_quantized.py  presets of a model quantized with Keras
  huggingface.py          Hugging Face Falcon checkpoints: config, streaming weights
  loading.py              `FalconBackbone.from_preset` / `save_to_preset` over all of them
  presets.py              the builtin presets: plain data, keras-hub's table shape

Each weight map derives from `FalconConfig.variable_specs`; nothing here
imports the model's classes (the loader is handed the class to build).
"""
