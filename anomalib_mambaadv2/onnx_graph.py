# SPDX-License-Identifier: Apache-2.0
"""Optimisation of the exported ONNX graph: the exporter's passes without its one slow rewrite rule.

``torch.onnx.export(..., dynamo=True)`` optimises the graph by default (``optimize=True``): constant folding and
onnxscript's pattern rewrite rules, each tried at every node. On MambaADv2's raw graph (about 12 500 nodes at 256 px,
most of them shape arithmetic around the scans) one rule, ``slice_split_rule``, walks the graph at every Slice node
and took most of the export time (about 100 of 150 s here) while rewriting nothing. MambaADv2 therefore exports with
``optimize=False`` and runs the same passes here without that rule (the same ONNX Runtime and OpenVINO outputs, bit
for bit, and the same speed; ``tests/test_onnx_graph.py``); ``optimize=True`` passed to ``to_onnx`` still gets the
exporter's own.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# onnxscript's default rewrite rules (the exporter's ``optimize=True``) without ``slice_split_rule``, whose matcher
# walks the graph at every Slice node: on MambaADv2's graph it took most of the optimisation time and changed nothing.
_RULES = (
    "no_op_cast_rule", "no_op_expand_rule", "no_op_transpose_rule", "add_0_rule", "sub_0_rule", "mul_by_1_rule",
    "div_by_1_rule", "dropout_inference_rule", "dropout_zero_rule", "cast_cast_rule", "flatten_to_reshape_rule",
    "reshape_reshape_rule", "squeeze_reshape_1d_rule", "transpose_transpose_rule", "unsqueeze_unsqueeze_rule",
    "one_reshape_matmul_reshape_rule", "two_reshapes_matmul_reshape_rule", "cast_constant_of_shape_rule",
    "cast_constant_of_shape_without_value_rule", "collapse_slice_rule", "collapse_slice2_rule",
    "materialize_reshape_shape_rule", "min_min_rule", "max_max_rule", "min_max_rule", "max_min_rule",
    "successive_clip_relu_rule", "successive_clip_rule", "successive_relu_clip_rule", "successive_relu_rule",
    "no_op_dynamic_scatter_nd_rule", "no_op_static_scatter_nd_rule", "fuse_pad_into_conv_rule",
    "fuse_batchnorm_into_conv_rule", "fuse_batchnorm_into_conv_transpose_rule", "fuse_batchnorm_into_gemm_rule",
    "remove_optional_bias_from_conv_rule", "remove_optional_bias_from_conv_transpose_rule",
    "remove_optional_bias_from_gemm_rule",
)  # fmt: skip


def optimize_graph(path: Path | str, iterations: int = 2) -> None:
    """Optimise the ONNX file at ``path`` in place, keeping its layout (external ``<name>.data`` or not).

    The steps of onnxscript's ``optimize_ir``: inline functions; ``iterations`` rounds of constant folding, the
    rewrite rules of ``_RULES`` and dead-node removal; then constants lifted to initialisers, duplicate initialisers
    merged, common subexpressions eliminated. The result is written next to the original first and then moved over
    it, so a failure leaves the exported file as it was.
    """
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript import optimizer
    from onnxscript.rewriter import RewritePass
    from onnxscript.rewriter.rules import common as rules

    path = Path(path)
    model = ir.load(str(path))
    common.InlinePass()(model)
    rewrite = RewritePass([getattr(rules, name) for name in _RULES])
    for _ in range(iterations):
        optimizer.fold_constants_ir(model)
        rewrite(model)
        common.RemoveUnusedNodesPass()(model)
    ir.passes.Sequential(
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
    )(model)
    data = path.with_name(path.name + ".data")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        new = Path(tmp) / path.name
        if data.exists():
            ir.save(model, str(new), external_data=data.name)
        else:
            ir.save(model, str(new))
        del model  # the original external data may be memory-mapped: release it before replacing the file
        if data.exists():
            os.replace(new.with_name(data.name), data)
        os.replace(new, path)
