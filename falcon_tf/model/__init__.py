"""The Keras model (TensorFlow backend).

  config.py           `FalconConfig`: the architecture, one frozen validated record
  dtype_policy.py     the `dtype` argument: float policies, Keras's quantized ones per layer
  token_embedding.py  the token embedding and its reverse, the tied LM head
  attention_bias.py   the causal + padding mask, ALiBi or rotary positions
  attention.py        multi-head, multi-query or grouped-query self-attention
  decoder_block.py    the sequential (Falcon-RW) and parallel (7B/40B/180B) blocks
  backbone.py         `FalconBackbone`: the decoder stack, written once, with and without a cache
  causal_lm.py        `FalconCausalLM`: the LM head, generation, keras-hub's training API

Importing this package imports nothing; `config.py` needs no TensorFlow.
"""
