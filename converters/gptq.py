"""Error-compensating rounding of projection weights (GPTQ-style) for the int8/int4 files.

Round-to-nearest treats every weight alone: each one lands on the closest
point of its grid and the errors of a row add up in the layer's output. What
the model cares about is the output `x @ W` on the inputs the layer sees, not
the weights. GPTQ (Frantar et al., 2022) rounds one input dimension (a row of
a Keras kernel) at a time and, after each, nudges the rows not yet rounded so
that they cancel, as well as the inputs' correlations allow, what this
rounding did to the output. The correlations come from calibration inputs X
of the layer: H = XᵀX is the Hessian of the output's squared error. With the
inverse of H written as Uᵀ U (U upper triangular, a Cholesky factor), the
error of row i, divided by U[i, i], times U[i, j] is what row j > i must
absorb; a row's update never touches rows already rounded, so the whole
pass is one sweep over the input dimension (done in batches of rows, the
update of the later rows deferred to the end of each batch). Input
dimensions are taken in order of decreasing H[i, i] (the largest
activations first), so the small channels compensate the large ones.

The grid is fixed before rounding, the same one ai-edge-quantizer computes
from the float weights: int8, one scale per output channel, max|w| / 127
(range -127..127); int4, one scale per block of 32 input dimensions of an
output channel, max|w| / 7 rounded to bfloat16's 8 significant bits (range
-7..7 here: -8 would raise the block's max|w| and change its scale). The
element holding a channel's (block's) max|w| keeps its ±127 (±7), so when
ai-edge-quantizer re-derives the scales from the rounded float weights it
finds the same grid, and its own rounding of them is exact: the file holds
exactly these weights.

The embedding table is a lookup, not a matmul over inputs: it keeps plain
rounding (`export_tflite.embedding_rows_int8`).

Cost: H is fan_in x fan_in per projection (accumulated in float64, factored
in float32) and the sweep is about fan_in² x fan_out multiply-adds. For a model of falcon-rw-1b's shape (hidden
2048, MLP 8192, 24 layers) that is a 512 MB H for the MLP's down projection
and about 3.5e12 multiply-adds in all: minutes on a few cores, beside the
memory of the conversion itself (see `export_tflite.CONVERSION_MEMORY_PER_FP32_BYTE`);
`rounded_weights` holds every H and the projections' float32 weights
twice more while the file is converted (`memory_bytes`): for such a model,
pass `rounding="nearest"` unless the machine has room.
"""

import contextlib
import re

import numpy as np

DEFAULT_CALIBRATION_SHAPE = (8, 128)  # rows x tokens of random ids
DEFAULT_CALIBRATION_SEED = 1234  # not 0..7: the parity checks and tests draw their inputs with those
DAMPING = 0.01  # of H's mean diagonal, added to the diagonal
_SWEEP_BATCH = 128


def default_calibration(vocabulary_size, shape=DEFAULT_CALIBRATION_SHAPE,
                        seed=DEFAULT_CALIBRATION_SEED):
    """Token ids drawn uniformly from the vocabulary with a fixed seed (int32 `shape`)."""
    return np.random.default_rng(seed).integers(0, vocabulary_size, shape).astype("int32")


def weight_scheme(recipe, path):
    """(bits, block size or None) that `recipe` (ai-edge-quantizer rules, the
    later match winning) gives the FULLY_CONNECTED weight of the Keras Dense
    layer at `path`; None if no rule matches it."""
    scheme = None
    for rule in recipe:
        if rule["operation"] != "FULLY_CONNECTED" or not re.fullmatch(rule["regex"], path):
            continue
        config = rule["op_config"]["weight_tensor_config"]
        if config.get("dtype") != "INT":
            return None
        granularity = config.get("granularity", "CHANNELWISE")
        if granularity == "CHANNELWISE":
            scheme = (config["num_bits"], None)
        elif granularity.startswith("BLOCKWISE_"):
            scheme = (config["num_bits"], int(granularity.split("_")[1]))
        else:
            raise ValueError(f"No GPTQ grid for granularity {granularity!r} ({path}).")
    return scheme


def grid(weights, bits, block_size=None):
    """(scale per weight, largest level, mask of the weights that pin the scale)
    for `weights` (out, in) on ai-edge-quantizer's symmetric grid (see the module
    docstring): one scale per row, or per block of `block_size` columns."""
    out_dim, in_dim = weights.shape
    levels = 2 ** (bits - 1) - 1  # 127 or 7: symmetric, narrow
    if block_size is None:
        groups = np.abs(weights)[:, None, :]  # (out, 1, in)
    else:
        if in_dim % block_size:
            raise ValueError(f"Input dimension {in_dim} is not a multiple of the block "
                             f"size {block_size}.")
        groups = np.abs(weights).reshape(out_dim, in_dim // block_size, block_size)
    bound = np.maximum(groups.max(axis=-1), np.float32(1e-9))  # as ai-edge-quantizer
    scale = (bound / np.float32(levels)).astype(np.float32)
    if block_size is not None:  # blockwise scales are stored with bfloat16's precision
        import ml_dtypes

        scale = scale.astype(ml_dtypes.bfloat16).astype(np.float32)
    pins = np.zeros(groups.shape, bool)
    np.put_along_axis(pins, groups.argmax(axis=-1)[..., None], True, axis=-1)
    width = in_dim if block_size is None else block_size
    scale = np.repeat(scale, width, axis=1)
    return scale, levels, pins.reshape(out_dim, in_dim)


def inverse_cholesky_upper(reversed_h):
    """U, upper triangular, with H⁻¹ = Uᵀ U, without forming H⁻¹, from
    `reversed_h` = J H J (J the reversal permutation; C-ordered, float32 or
    float64, overwritten), in its float type.

    With J H J = L Lᵀ (lower L), H⁻¹ = (J L⁻ᵀ J)(J L⁻¹ J), a lower factor
    times its transpose, so U = J L⁻¹ J: one Cholesky and one triangular
    inverse (about n³ / 1.5 operations against the 2.3 n³ of inverting H and
    factoring the inverse, which dominated rounding an 8192-wide projection).
    LAPACK's blocked routines: at 8192 the Cholesky takes 1.3 s in float32
    here, against 5.9 s through numpy. Both work in place on the transpose of
    `reversed_h`, which is J H J in the Fortran order they take: no n x n
    array besides it and the result.
    """
    from scipy.linalg import lapack

    potrf, trtri = ((lapack.spotrf, lapack.strtri) if reversed_h.dtype == np.float32
                    else (lapack.dpotrf, lapack.dtrtri))
    lower, info = potrf(reversed_h.T, lower=1, clean=1, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky factorization failed (info {info})")
    inverse, info = trtri(lower, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"triangular inverse failed (info {info})")
    return np.ascontiguousarray(inverse[::-1, ::-1])


def _reversed_hessian(hessian, damping, dtype):
    """(J H J as `dtype`, C-ordered, and the order), where H is `hessian`
    with its dead inputs' diagonal set to 1, `damping` x its mean diagonal
    added, and its rows and columns in `order`, that of decreasing diagonal.
    `hessian` is left as it is; two `dtype` copies of it exist at most."""
    hessian = np.asarray(hessian)
    diagonal = np.diag(hessian).astype(np.float64)
    diagonal[diagonal == 0] = 1.0  # inputs that were always zero: their weights do not matter
    diagonal += damping * np.mean(diagonal)
    order = np.argsort(-diagonal, kind="stable")
    backwards = order[::-1]
    h = hessian.astype(dtype)
    h = h[backwards]
    h = h[:, backwards]
    h[np.diag_indices_from(h)] = diagonal[backwards]
    return h, order


def gptq_round(kernel, hessian, bits, block_size=None, damping=DAMPING):
    """A Keras kernel (in, out) -> the same kernel rounded onto its fixed grid
    (float32 values level x scale), compensating each input dimension's error
    in the later ones through `hessian` (in x in, the sum of xᵀx over the
    calibration inputs x of the layer).

    The factorization and the sweep run in float32 (as GPTQ's own
    implementation does; the damping keeps H well conditioned), in float64
    when float32's Cholesky fails. Besides `hessian`, its copy in the
    sweep's float type and the factor U are alive (for an 8192-wide
    projection: 512 MB of float64 H, 256 MB each in float32)."""
    kernel = np.asarray(kernel, np.float32)
    scale, levels, pins = grid(kernel.T, bits, block_size)  # (out, in)
    for dtype in (np.float32, np.float64):
        h, order = _reversed_hessian(hessian, damping, dtype)
        try:
            u = inverse_cholesky_upper(h)
            break
        except np.linalg.LinAlgError:
            if dtype == np.float64:
                raise
        finally:
            del h
    # Row i of each array below is input dimension order[i] (kernel layout,
    # (in, out)): the sweep walks contiguous rows.
    w = kernel[order].astype(dtype)
    scale, pins = np.ascontiguousarray(scale.T[order]), np.ascontiguousarray(pins.T[order])
    scale = scale.astype(dtype)
    pinned = np.sign(w) * levels  # a group's max|w| keeps the extreme level
    levels_out = np.empty_like(w)
    n = w.shape[0]
    for start in range(0, n, _SWEEP_BATCH):
        end = min(start + _SWEEP_BATCH, n)
        block = w[start:end]  # a view: updates land in w
        errors = np.empty((end - start, w.shape[1]), dtype)
        for i in range(start, end):
            r = i - start
            q = np.clip(np.round(block[r] / scale[i]), -levels, levels)
            q = np.where(pins[i], pinned[i], q)
            levels_out[i] = q
            error = (block[r] - q * scale[i]) / u[i, i]
            block[r + 1:] -= np.outer(u[i, i + 1:end], error)
            errors[r] = error
        w[end:] -= u[start:end, end:].T @ errors
    rounded = np.empty_like(levels_out)
    rounded[order] = levels_out
    full_scale = np.empty_like(scale)
    full_scale[order] = scale
    return rounded.astype(np.float32) * full_scale.astype(np.float32)


def layer_hessians(model, token_ids, layers):
    """{layer: sum over calibration tokens of xᵀx} for each Keras Dense layer in
    `layers`, x being that layer's input when `model` (a FalconBackbone) runs on
    `token_ids` (int [rows, tokens], no padding)."""
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 2 or not np.issubdtype(token_ids.dtype, np.integer):
        raise ValueError(f"`calibration` must be integer token ids of shape (rows, tokens); "
                         f"received {token_ids.dtype} {token_ids.shape}.")
    if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= model.vocabulary_size):
        raise ValueError(f"`calibration` ids must lie in [0, {model.vocabulary_size}).")
    with recording(layers) as hessians:
        for row in token_ids:  # one row at a time keeps activations small
            model({"token_ids": row[None].astype("int32"),
                   "padding_mask": np.ones((1, row.size), "int32")}, training=False)
    return hessians


@contextlib.contextmanager
def recording(layers):
    """Inside, each Keras Dense layer in `layers` adds xᵀx of its inputs x to
    the yielded {layer: H} whenever it is called."""
    hessians = {layer: 0.0 for layer in layers}

    def recorder(layer, call):
        def record(inputs, *args, **kwargs):
            # One call's xᵀx in float32 (a few hundred tokens), summed in float64
            # in place: no new fan_in² array per call.
            x = np.asarray(inputs, np.float32).reshape(-1, inputs.shape[-1])
            product = x.T @ x
            if isinstance(hessians[layer], np.ndarray):
                hessians[layer] += product
            else:
                hessians[layer] = product.astype(np.float64)
            return call(inputs, *args, **kwargs)
        return record

    own = {layer: vars(layer).get("call") for layer in layers}  # a call set on the instance
    for layer in layers:
        object.__setattr__(layer, "call", recorder(layer, layer.call))
    try:
        yield hessians
    finally:
        for layer, call in own.items():
            if call is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", call)


def quantized_layers(layer, recipe):
    """{Dense layer under `layer`: its (bits, block size)} for every kernel
    `recipe` quantizes to integers."""
    import keras

    schemes = {}
    for sub in layer._flatten_layers():
        if isinstance(sub, keras.layers.Dense):
            scheme = weight_scheme(recipe, sub.kernel.path)
            if scheme is not None:
                schemes[sub] = scheme
    return schemes


def rounded_kernels(model, recipe, calibration):
    """{Dense layer: its kernel GPTQ-rounded} for every Dense layer whose kernel
    `recipe` quantizes to integers, calibrated on `calibration` token ids."""
    schemes = quantized_layers(model, recipe)
    hessians = layer_hessians(model, calibration, list(schemes))
    return {layer: gptq_round(layer.kernel.numpy(), hessians[layer], *scheme)
            for layer, scheme in schemes.items()}


def memory_bytes(model):
    """About the memory `rounded_weights` holds beyond the model: every
    projection's H (float64, all collected in one pass) and two float32 copies
    of the projections (rounded, and the originals to restore). A model of
    falcon-rw-1b's shape: 15 GB of H and 10 GB of copies."""
    import keras

    total = 0
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Dense):
            fan_in, fan_out = layer.kernel.shape
            total += fan_in * fan_in * 8 + 2 * fan_in * fan_out * 4
    return total


@contextlib.contextmanager
def rounded_weights(model, recipe, calibration):
    """Inside, `model`'s projection kernels hold their GPTQ-rounded values
    (`rounded_kernels`); the float values come back on leaving."""
    with assigned(rounded_kernels(model, recipe, calibration)) as kernels:
        yield kernels


@contextlib.contextmanager
def assigned(kernels):
    """Inside, each Dense layer in `kernels` ({layer: kernel}) holds that
    kernel; its own comes back on leaving."""
    originals = {layer: layer.kernel.numpy() for layer in kernels}
    try:
        for layer, value in kernels.items():
            layer.kernel.assign(value)
        yield kernels
    finally:
        for layer, value in originals.items():
            layer.kernel.assign(value)
