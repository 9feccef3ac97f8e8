"""Builtin presets: plain data, the same shape as keras-hub's preset tables.

A preset either names where its files live (`kaggle_handle` for keras-hub's
Kaggle presets, `hf_handle` for Hugging Face checkpoints, `embedded_dir` for
a trained preset shipped inside the package under falcon_tf/preset_files/)
or, for the small random preset, the config and the seed its weights are
drawn from.
"""

# Configs of the published checkpoints (their config.json on the Hugging Face Hub).
_RW_1B = dict(vocabulary_size=50304, num_layers=24, num_attention_heads=32, hidden_dim=2048,
              intermediate_dim=8192, layer_norm_epsilon=1e-05)
_7B = dict(vocabulary_size=65024, num_layers=32, num_attention_heads=71, hidden_dim=4544,
           intermediate_dim=18176, layer_norm_epsilon=1e-05, num_kv_heads=1,
           position_embedding="rotary", parallel_attention=True, use_bias=False)
_40B = dict(vocabulary_size=65024, num_layers=60, num_attention_heads=128, hidden_dim=8192,
            intermediate_dim=32768, layer_norm_epsilon=1e-05, num_kv_heads=8,
            position_embedding="rotary", parallel_attention=True,
            separate_mlp_layer_norm=True, use_bias=False)
_180B = dict(_40B, num_layers=80, num_attention_heads=232, hidden_dim=14848,
             intermediate_dim=59392)

BACKBONE_PRESETS = {
    "falcon_refinedweb_1b_en": {
        "metadata": {
            "description": (
                "24-layer Falcon-RW model with 1.3B parameters, trained on 350B "
                "tokens of the RefinedWeb dataset (keras-hub's Kaggle preset of "
                "tiiuae/falcon-rw-1b)."
            ),
            "params": 1_311_625_216,
            "path": "falcon",
            "license": "Apache-2.0",
        },
        # The published config of that checkpoint (its config.json on Kaggle).
        "config": {
            "vocabulary_size": 50304,
            "num_layers": 24,
            "num_attention_heads": 32,
            "hidden_dim": 2048,
            "intermediate_dim": 8192,
            "layer_norm_epsilon": 1e-05,
            "attention_dropout_rate": 0,
            "feedforward_dropout_rate": 0,
        },
        "kaggle_handle": "kaggle://keras/falcon/keras/falcon_refinedweb_1b_en/2",
    },
    "falcon_rw_1b": {
        "metadata": {
            "description": "Falcon-RW-1B: 24 layers, ALiBi, trained on 350B tokens of "
                           "RefinedWeb (tiiuae/falcon-rw-1b).",
            "params": 1_311_625_216,
            "path": "falcon",
            "license": "Apache-2.0",
        },
        "config": {**_RW_1B},
        "hf_handle": "hf://tiiuae/falcon-rw-1b",
    },
    "falcon_7b": {
        "metadata": {
            "description": "Falcon-7B base: 32 layers, rotary, multi-query, parallel "
                           "attention; 1.5T tokens of RefinedWeb and curated corpora "
                           "(tiiuae/falcon-7b).",
            "params": 6_921_720_704,
            "path": "falcon",
            "license": "Apache-2.0",
        },
        "config": {**_7B},
        "hf_handle": "hf://tiiuae/falcon-7b",
    },
    "falcon_7b_instruct": {
        "metadata": {
            "description": "Falcon-7B fine-tuned on chat and instruct data "
                           "(tiiuae/falcon-7b-instruct).",
            "params": 6_921_720_704,
            "path": "falcon",
            "license": "Apache-2.0",
        },
        "config": {**_7B},
        "hf_handle": "hf://tiiuae/falcon-7b-instruct",
    },
    "falcon_40b": {
        "metadata": {
            "description": "Falcon-40B base: 60 layers, rotary, grouped-query (8 kv heads), "
                           "new decoder architecture; 1T tokens (tiiuae/falcon-40b). The "
                           "count is the backbone's; its LM head is untied (+532,676,608).",
            "params": 41_303_293_952,
            "path": "falcon",
            "license": "Apache-2.0",
        },
        "config": {**_40B},
        "hf_handle": "hf://tiiuae/falcon-40b",
    },
    "falcon_40b_instruct": {
        "metadata": {
            "description": "Falcon-40B fine-tuned on chat and instruct data "
                           "(tiiuae/falcon-40b-instruct). LM head untied (+532,676,608).",
            "params": 41_303_293_952,
            "path": "falcon",
            "license": "Apache-2.0",
        },
        "config": {**_40B},
        "hf_handle": "hf://tiiuae/falcon-40b-instruct",
    },
    "falcon_180b": {
        "metadata": {
            "description": "Falcon-180B base: 80 layers, rotary, grouped-query (8 kv heads), "
                           "new decoder architecture; 3.5T tokens (tiiuae/falcon-180B, "
                           "gated: accept its license on the Hub and log in first). LM head "
                           "untied (+965,476,352).",
            "params": 178_557_088_768,
            "path": "falcon",
            "license": "Falcon-180B TII License and Acceptable Use Policy",
        },
        "config": {**_180B},
        "hf_handle": "hf://tiiuae/falcon-180B",
    },
    "falcon_tiny_random": {
        "metadata": {
            "description": (
                "RANDOM WEIGHTS, NOT TRAINED: a 2-layer Falcon-RW whose weights are "
                "drawn from a fixed seed. Ships with the package and needs no "
                "download; for demos, tests and export checks. Its output is "
                "meaningless as language."
            ),
            "params": 165_632,
            "path": "falcon",
            "license": "Apache-2.0",
        },
        "config": {
            "vocabulary_size": 1024,
            "num_layers": 2,
            "num_attention_heads": 4,
            "hidden_dim": 64,
            "intermediate_dim": 256,
            "layer_norm_epsilon": 1e-05,
            "attention_dropout_rate": 0,
            "feedforward_dropout_rate": 0,
        },
        "random_seed": 20240607,
    },
    "falcon_tiny_trained": {
        "metadata": {
            "description": (
                "A 4-layer Falcon-RW trained from scratch on the King James Bible "
                "(public domain) by scripts/train_tiny.py, with its own 2,048-token "
                "byte-level BPE tokenizer. Ships with the package (4 MB), needs no "
                "download, and writes readable KJV-style English. Its held-out "
                "chapters' token ids ship beside it for perplexity."
            ),
            "params": 1_055_488,
            "path": "falcon",
            "license": "Apache-2.0",
        },
        "config": {
            "vocabulary_size": 2048,
            "num_layers": 4,
            "num_attention_heads": 4,
            "hidden_dim": 128,
            "intermediate_dim": 512,
            "layer_norm_epsilon": 1e-05,
            "attention_dropout_rate": 0,
            "feedforward_dropout_rate": 0,
        },
        "embedded_dir": "falcon_tiny_trained",
    },
}
