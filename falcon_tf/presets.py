"""Builtin presets: plain data, the same shape as keras-hub's preset tables.

A preset either names where its files live (`kaggle_handle`) or, for the small
random preset that ships inside the package, the config and the seed its
weights are drawn from.
"""

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
}
