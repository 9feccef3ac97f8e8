"""Forward latency: falcon_tf vs keras-hub's FalconBackbone vs transformers' FalconModel.

All three run the same config with the same weights (checked: outputs are
compared before timing). Timings are interleaved round by round so a slow
patch of the machine hits every contender alike; each figure is the median of
`--runs` timed calls after warm-up.

    python benchmarks/forward.py            # the benchmark shape (_bench.SHAPE)
    python benchmarks/forward.py --runs 30 --layers 2   # anything else

Needs the `test` extra: `pip install -e ".[test]"` (keras-hub, torch CPU, transformers).
"""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from _bench import benchmark_backbone, interleaved_medians, timing_args  # noqa: E402


def forward_flops(cfg, batch, seq):
    """Multiply-adds x 2 of one forward: projections, MLP and the attention products."""
    h, i, layers = cfg["hidden_dim"], cfg["intermediate_dim"], cfg["num_layers"]
    per_token = 2 * (h * 3 * h + h * h + 2 * h * i) + 2 * 2 * seq * h
    return batch * seq * layers * per_token


def to_transformers(ours, cfg):
    """Builds transformers' FalconModel (Falcon-RW layout) holding our weights."""
    import torch
    import transformers

    h, n = cfg["hidden_dim"], cfg["num_attention_heads"]
    hf_config = transformers.FalconConfig(
        vocab_size=cfg["vocabulary_size"], hidden_size=h, num_hidden_layers=cfg["num_layers"],
        num_attention_heads=n, ffn_hidden_size=cfg["intermediate_dim"], alibi=True,
        multi_query=False, new_decoder_architecture=False, parallel_attn=False, bias=True,
        layer_norm_epsilon=1e-5, hidden_dropout=0.0, attention_dropout=0.0)
    model = transformers.FalconModel(hf_config).eval()

    def t(array):
        return torch.from_numpy(np.ascontiguousarray(array))

    state = {"word_embeddings.weight": t(ours.token_embedding.embeddings.numpy()),
             "ln_f.weight": t(ours.final_layernorm.gamma.numpy()),
             "ln_f.bias": t(ours.final_layernorm.beta.numpy())}
    for idx, block in enumerate(ours.transformer_layers):
        p = f"h.{idx}."
        qkv = block.attention.query_key_value
        # Ours: columns (3, heads, head_dim). Falcon-RW's fused rows: (heads, 3, head_dim).
        kernel = qkv.kernel.numpy().reshape(h, 3, n, h // n).transpose(0, 2, 1, 3).reshape(h, 3 * h)
        bias = qkv.bias.numpy().reshape(3, n, h // n).transpose(1, 0, 2).reshape(-1)
        state.update({
            p + "self_attention.query_key_value.weight": t(kernel.T),
            p + "self_attention.query_key_value.bias": t(bias),
            p + "self_attention.dense.weight": t(block.attention.output_dense.kernel.numpy().T),
            p + "self_attention.dense.bias": t(block.attention.output_dense.bias.numpy()),
            p + "input_layernorm.weight": t(block.input_layernorm.gamma.numpy()),
            p + "input_layernorm.bias": t(block.input_layernorm.beta.numpy()),
            p + "post_attention_layernorm.weight": t(block.post_attention_layernorm.gamma.numpy()),
            p + "post_attention_layernorm.bias": t(block.post_attention_layernorm.beta.numpy()),
            p + "mlp.dense_h_to_4h.weight": t(block.dense_h_to_4h.kernel.numpy().T),
            p + "mlp.dense_h_to_4h.bias": t(block.dense_h_to_4h.bias.numpy()),
            p + "mlp.dense_4h_to_h.weight": t(block.dense_4h_to_h.kernel.numpy().T),
            p + "mlp.dense_4h_to_h.bias": t(block.dense_4h_to_h.bias.numpy()),
        })
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"transformers FalconModel: missing {missing}, unexpected {unexpected}")
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--no-torch", action="store_true", help="skip transformers")
    args = timing_args(parser)

    import tensorflow as tf
    import keras_hub


    cfg = dict(vocabulary_size=args.vocab, num_layers=args.layers,
               num_attention_heads=args.heads, hidden_dim=args.hidden,
               intermediate_dim=args.intermediate)
    ours, x = benchmark_backbone(cfg, args.batch, args.seq)
    ids = x["token_ids"]
    # keras-hub gets the same weights through a preset written by us.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ours.save_to_preset(tmp)
        theirs = keras_hub.models.FalconBackbone.from_preset(tmp)

    x = {name: tf.constant(value) for name, value in x.items()}

    def graph(model):
        return tf.function(lambda inputs: model(inputs, training=False))

    def xla(model):
        return tf.function(lambda inputs: model(inputs, training=False), jit_compile=True)

    contenders = {
        "falcon_tf eager": lambda: ours(x, training=False).numpy(),
        "falcon_tf tf.function": (lambda f: lambda: f(x).numpy())(graph(ours)),
        "falcon_tf XLA": lambda: ours.compiled_call(x).numpy(),
        "keras-hub eager": lambda: theirs(x, training=False).numpy(),
        "keras-hub tf.function": (lambda f: lambda: f(x).numpy())(graph(theirs)),
        "keras-hub XLA": (lambda f: lambda: f(x).numpy())(xla(theirs)),
    }
    reference = contenders["keras-hub XLA"]()
    parity = {"keras-hub": np.abs(contenders["falcon_tf XLA"]() - reference).max()}
    if not args.no_torch:
        import torch

        hf = to_transformers(ours, cfg)
        ids_t, mask_t = torch.from_numpy(ids.astype("int64")), torch.ones(ids.shape, dtype=torch.long)

        def run_hf():
            with torch.inference_mode():
                return hf(input_ids=ids_t, attention_mask=mask_t).last_hidden_state.numpy()

        contenders["transformers FalconModel (torch CPU)"] = run_hf
        parity["transformers"] = np.abs(run_hf() - reference).max()

    a = tf.random.normal((2048, 2048))
    matmul = tf.function(lambda m: tf.matmul(m, m))
    contenders["2048^3 float32 matmul (tf)"] = lambda: matmul(a).numpy()

    med = interleaved_medians(contenders, args.runs, args.warmup)

    matmul_gflops = 2 * 2048 ** 3 / med.pop("2048^3 float32 matmul (tf)") / 1e6
    flops = forward_flops(cfg, args.batch, args.seq)
    ours_xla = med["falcon_tf XLA"]
    kh_best_name = min((n for n in med if n.startswith("keras-hub")), key=med.get)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"tensorflow {tf.__version__}, keras-hub {keras_hub.__version__}")
    print(f"shape: batch {args.batch}, seq {args.seq}, {args.layers} layers, hidden "
          f"{args.hidden}, {args.heads} heads, intermediate {args.intermediate}, vocab "
          f"{args.vocab}, float32; median of {args.runs} after {args.warmup} warm-up")
    print("parity (max |diff| vs keras-hub XLA): " +
          ", ".join(f"{k} {v:.2e}" for k, v in parity.items()))
    print(f"{'contender':40s} {'median ms':>10s} {'falcon_tf XLA / this':>22s}")
    for name, ms in med.items():
        print(f"{name:40s} {ms:10.2f} {ours_xla / ms:22.3f}")
    print(f"falcon_tf XLA / fastest keras-hub ({kh_best_name}): {ours_xla / med[kh_best_name]:.3f}")
    if "transformers FalconModel (torch CPU)" in med:
        print(f"falcon_tf XLA / transformers: "
              f"{ours_xla / med['transformers FalconModel (torch CPU)']:.3f}")
    achieved = flops / ours_xla / 1e6
    print(f"falcon_tf XLA: {flops / 1e9:.2f} GFLOP per forward, {achieved:.1f} GFLOP/s = "
          f"{achieved / matmul_gflops:.2f} of the 2048^3 matmul's {matmul_gflops:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
