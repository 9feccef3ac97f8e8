"""Text in and out.

  bpe.py                     Falcon's byte-level BPE on `tokenizers`: no TensorFlow,
                             every runtime's tokenizer
  tokenizer.py               `FalconTokenizer`, the Keras layer (keras-hub's API)
  causal_lm_preprocessor.py  `FalconCausalLMPreprocessor`: text -> training and
                             generation inputs
"""
