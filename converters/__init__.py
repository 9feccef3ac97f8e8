"""Build-time tools that turn checkpoints into presets and presets into artifacts.

`converters` imports `falcon_tf`; `falcon_tf` never imports `converters`.
"""
