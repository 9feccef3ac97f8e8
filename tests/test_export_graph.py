"""The forward traces at fixed shapes into ops the LiteRT GPU delegate accepts.

The delegate rejects int32 CUMSUM, GATHER with 2-D indices (keras-hub's Falcon
has both) and tensors of more than 4 dimensions; these tests read the traced
TensorFlow graph for them.
"""

import numpy as np
import pytest
import tensorflow as tf

from conftest import FAMILY, padded_batch, randomize
from falcon_tf import FalconBackbone


def traced_graph(model, batch, seq):
    spec = tf.TensorSpec((batch, seq), tf.int32)
    fn = tf.function(lambda ids, mask: model({"token_ids": ids, "padding_mask": mask},
                                             training=False))
    return fn.get_concrete_function(spec, spec)


def all_ops(graph):
    ops = list(graph.get_operations())
    for function in getattr(graph, "_functions", {}).values():
        ops.extend(all_ops(function.graph))
    return ops



@pytest.mark.parametrize("variant", sorted(FAMILY))
@pytest.mark.parametrize("batch, seq", [(1, 1), (2, 16)])
def test_fixed_shape_graph_has_no_ops_the_gpu_delegate_rejects(batch, seq, variant):
    model = FalconBackbone.from_preset("falcon_tiny_random", **FAMILY[variant])
    concrete = traced_graph(model, batch, seq)
    ops = all_ops(concrete.graph)
    types = {op.type for op in ops}
    assert "Cumsum" not in types
    gathers = [op for op in ops if op.type in ("GatherV2", "ResourceGather", "GatherNd")]
    assert gathers, "the embedding lookup should be a gather"
    for op in gathers:
        assert op.type != "GatherNd"
        assert op.inputs[1].shape.rank == 1, f"{op.name} gathers with {op.inputs[1].shape} indices"
    # The GPU delegate takes tensors of at most 4 dimensions.
    for op in ops:
        for tensor in list(op.inputs) + list(op.outputs):
            rank = tensor.shape.rank
            assert rank is None or rank <= 4, f"{op.name} ({op.type}) has a {rank}-D tensor"
    # No Python branches on values: every output shape is fixed.
    assert concrete.structured_outputs.shape == (batch, seq, 64)
    x = padded_batch(1024, seq=seq)
    x = {k: v[:batch] for k, v in x.items()}
    np.testing.assert_allclose(concrete(tf.constant(x["token_ids"]),
                                        tf.constant(x["padding_mask"])).numpy(),
                               model(x).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(FAMILY))
def test_family_xla_matches_eager(variant):
    model = randomize(FalconBackbone.from_preset("falcon_tiny_random", load_weights=False,
                                                 **FAMILY[variant]), scale=0.1)
    x = padded_batch(1024, seq=12)
    np.testing.assert_allclose(model.compiled_call(x).numpy(), model(x).numpy(), rtol=0,
                               atol=1e-5)
