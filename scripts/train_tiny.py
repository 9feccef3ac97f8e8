"""Trains the embedded `falcon_tiny_trained` preset from scratch.

    apt-get install bible-kjv        # the King James Bible (public domain), Debian's package
    python scripts/train_tiny.py     # writes falcon_tf/preset_files/falcon_tiny_trained/

The text is the King James Version as Debian's `bible` program prints it:
1,189 chapters, each one document (its verses joined by spaces, headings and
verse numbers dropped). Every 25th chapter is held out. A byte-level BPE
tokenizer (Falcon's conventions: GPT-2's byte-level pre-tokenizer,
`<|endoftext|>` as start, end and stop token) is trained with Hugging Face
`tokenizers` on the training chapters only. The model is a Falcon-RW
(ALiBi, biases, keras-hub's architecture) trained with Keras `fit`, XLA
compiled, AdamW with warmup and cosine decay, fixed seeds.

It writes the preset in keras-hub's layout (config.json, metadata.json,
model.weights.h5) plus tokenizer/tokenizer.json, the held-out split's token
ids and a calibration sample of training ids (for GPTQ rounding at export);
metadata.json records the corpus, the training run and the held-out
perplexity it measured.
"""

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "falcon_tf", "preset_files", "falcon_tiny_trained")
END_TOKEN = "<|endoftext|>"
HELDOUT_EVERY = 25  # every 25th chapter (indices 12, 37, 62, ...) is held out
CONFIG = dict(vocabulary_size=2048, num_layers=4, num_attention_heads=4, hidden_dim=128,
              intermediate_dim=512, layer_norm_epsilon=1e-05, attention_dropout_rate=0,
              feedforward_dropout_rate=0)


def read_chapters(bible="bible"):
    """The KJV as a list of (heading, text) chapters, from Debian's `bible`."""
    try:
        out = subprocess.run([bible, "-l100000", "gen1:1-rev22:21"], capture_output=True,
                             text=True, check=True).stdout
    except FileNotFoundError:
        raise SystemExit("`bible` not found: install Debian's bible-kjv package "
                         "(apt-get install bible-kjv).") from None
    chapters, heading, verses = [], None, []
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):  # "Genesis 1", "Song of Solomon 2"
            if heading is not None:
                chapters.append((heading, " ".join(verses)))
            heading, verses = line.strip(), []
        else:  # "  12 And God said ..."
            number, text = line.strip().split(" ", 1)
            if not number.isdigit():
                raise SystemExit(f"Unexpected line from `bible`: {line!r}")
            verses.append(text.strip())
    chapters.append((heading, " ".join(verses)))
    if len(chapters) != 1189:
        raise SystemExit(f"Expected the 1,189 chapters of the KJV; `bible` gave {len(chapters)}.")
    return chapters


def train_tokenizer(texts, vocabulary_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocabulary_size, special_tokens=[END_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def stream(tokenizer, texts):
    """[<|endoftext|>] + ids of each text, concatenated."""
    end = tokenizer.token_to_id(END_TOKEN)
    ids = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids += [end] + encoding.ids
    return np.array(ids, np.int32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="batches per epoch (default: the whole training text); for a "
                             "quick look at speed")
    args = parser.parse_args(argv)

    from falcon_tf._keras import keras
    from falcon_tf import FalconBackbone, FalconCausalLM, FalconTokenizer
    from falcon_tf.runtime import evaluation
    from falcon_tf.checkpoints import keras_hub

    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    chapters = read_chapters()
    heldout = [c for i, c in enumerate(chapters) if i % HELDOUT_EVERY == HELDOUT_EVERY // 2]
    training = [c for i, c in enumerate(chapters) if i % HELDOUT_EVERY != HELDOUT_EVERY // 2]
    hf_tokenizer = train_tokenizer([t for _, t in training], CONFIG["vocabulary_size"])
    tokenizer = FalconTokenizer(_tokenizer=hf_tokenizer)
    train_ids = stream(hf_tokenizer, [t for _, t in training])
    heldout_ids = stream(hf_tokenizer, [t for _, t in heldout])
    print(f"{len(training)} training chapters ({len(train_ids):,} tokens), {len(heldout)} "
          f"held out ({len(heldout_ids):,} tokens); tokenizer {time.perf_counter() - start:.1f} s")

    rows = (len(train_ids) - 1) // args.seq
    rows -= rows % args.batch  # whole batches only
    if args.max_steps:
        rows = min(rows, args.max_steps * args.batch)
    x = train_ids[:rows * args.seq].reshape(rows, args.seq)
    y = train_ids[1:rows * args.seq + 1].reshape(rows, args.seq)
    inputs = {"token_ids": x, "padding_mask": np.ones_like(x)}
    total_steps = rows // args.batch * args.epochs
    backbone = FalconBackbone(**CONFIG)
    lm = FalconCausalLM(backbone, tokenizer=tokenizer, cache_length=args.seq, compile=False)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total_steps - total_steps // 20, warmup_target=args.learning_rate,
        warmup_steps=total_steps // 20, alpha=0.02)
    lm.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01, global_clipnorm=1.0),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               weighted_metrics=None, jit_compile=True)  # the loss alone, as trained
    train_start = time.perf_counter()
    epochs = args.epochs
    history = lm.fit(inputs, y, batch_size=args.batch, epochs=epochs, shuffle=True, verbose=2)
    train_seconds = time.perf_counter() - train_start

    result = evaluation.perplexity(evaluation.keras_scorer(lm), heldout_ids,
                                   window=evaluation.DEFAULT_WINDOW)
    print(f"held-out perplexity {result['perplexity']:.3f} over {result['tokens']:,} tokens "
          f"(window {result['window']}); training {train_seconds:.0f} s")

    calibration = train_ids[:8 * args.seq].reshape(8, args.seq)  # Genesis 1-3 and on
    sample_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)), ".train_tiny_files")
    os.makedirs(sample_dir, exist_ok=True)
    files = {}
    for name, array in ((evaluation.HELDOUT_FILE, heldout_ids.astype(np.uint16)),
                        (evaluation.CALIBRATION_FILE, calibration.astype(np.uint16))):
        np.save(os.path.join(sample_dir, name), array)
        files[name] = os.path.join(sample_dir, name)
    files["tokenizer/tokenizer.json"] = tokenizer.save_assets(sample_dir)
    metadata = {
        "corpus": {
            "text": "The King James Version of the Bible (public domain), as printed by "
                    "Debian's bible-kjv package",
            "chapters": len(chapters), "training_chapters": len(training),
            "heldout_chapters": [h for h, _ in heldout],
            "training_tokens": int(len(train_ids)), "heldout_tokens": int(len(heldout_ids)),
        },
        "training": {
            "script": "scripts/train_tiny.py", "seed": args.seed, "epochs": epochs,
            "steps": int(total_steps), "batch": args.batch, "sequence_length": args.seq,
            "peak_learning_rate": args.learning_rate,
            "final_loss": float(history.history["loss"][-1]),
            "seconds": round(train_seconds, 1),
        },
        "heldout_perplexity": {k: result[k] for k in ("perplexity", "tokens", "window")},
    }
    weights = ((n, v.numpy()) for n, v in keras_hub.named_variables(backbone).items())
    keras_hub.write_preset(args.out, backbone.get_config(), backbone.falcon_config, weights,
                           extra_files=files, metadata=metadata)
    for name in os.listdir(sample_dir):
        os.remove(os.path.join(sample_dir, name))
    os.rmdir(sample_dir)
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
