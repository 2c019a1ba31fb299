"""Exact rewrites of an exported QDQ ONNX graph so integer engines fuse it.

One job: post-process the graph ``torch.onnx.export`` wrote for
:func:`quantbench.engines.export_qdq.export_qdq_onnx` - Constant/Identity-shared scales become
initializers, duplicate Q/DQ pairs of one tensor are merged, Q/DQ pairs are repeated in front of
Flatten/Reshape/MaxPool, and a strided shortcut's slices are moved in front of a float copy of the
residual add. Every rewrite computes exactly what the graph computed before; why each one is
needed: :mod:`quantbench.engines.export_qdq` and the docstrings below.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import numpy as np

from quantbench.errors import QuantbenchError


def _constants_to_initializers(model: Any) -> None:
    """Constant nodes (our Clip bounds) become named initializers, where engines look for them."""
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = copy.deepcopy(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _identities_to_initializers(model: Any) -> None:
    """The exporter shares equal-valued initializers through Identity nodes; give each its own copy.

    Engines look for constant initializers in front of DequantizeLinear, and so does the reader.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            tensor = copy.deepcopy(inits[node.input[0]])
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            inits[tensor.name] = tensor
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _init_values(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _merge_duplicate_qdq(model: Any, names: dict[str, str]) -> list[list[str]]:
    """Merge Q->DQ pairs that quantize the same tensor with equal parameters; returns the groups."""
    graph = model.graph
    values = _init_values(model)
    users: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for inp in node.input:
            users[inp].append(node)

    def key(q: Any) -> tuple | None:
        if len(q.input) < 3 or q.input[1] not in values or q.input[2] not in values:
            return None
        s, z = values[q.input[1]], values[q.input[2]]
        return (s.tobytes(), s.shape, z.tobytes(), str(z.dtype), tuple((a.name, a.i) for a in q.attribute))

    rename: dict[str, str] = {}
    dropped: set[int] = set()
    merged: list[list[str]] = []
    for tensor, consumers in list(users.items()):
        groups: dict[tuple, list[tuple[Any, Any]]] = defaultdict(list)
        for q in consumers:
            if q.op_type != "QuantizeLinear" or q.input[0] != tensor:
                continue
            q_users = users.get(q.output[0], [])
            if len(q_users) != 1 or q_users[0].op_type != "DequantizeLinear":
                continue
            k = key(q)
            if k is not None:
                groups[k].append((q, q_users[0]))
        for pairs in groups.values():
            if len(pairs) < 2:
                continue
            (_, dq0), rest = pairs[0], pairs[1:]
            for q, dq in rest:
                rename[dq.output[0]] = dq0.output[0]
                dropped.update({id(q), id(dq)})
            merged.append([names.get(q.input[1], q.input[1]) for q, _ in pairs])
    if not rename:
        return merged
    nodes = [n for n in graph.node if id(n) not in dropped]
    for node in nodes:
        for i, inp in enumerate(node.input):
            if inp in rename:
                node.input[i] = rename[inp]
    for out in graph.output:
        if out.name in rename:  # never the case for our graphs (logits are not quantized)
            raise QuantbenchError("QDQ export: internal error, a merged quantizer feeds the graph output")
    del graph.node[:]
    graph.node.extend(
        _topological(nodes, {i.name for i in graph.input} | {t.name for t in graph.initializer})
    )
    used = {i for n in graph.node for i in n.input}
    live = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return merged


_SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")
_COMMUTING_OPS = (*_SHAPE_OPS, "MaxPool")


def _hoist_qdq_over_commuting_ops(model: Any) -> int:
    """``op -> Flatten -> Q -> DQ`` becomes ``op -> Q -> DQ -> Flatten -> Q -> DQ`` (same parameters).

    Exact: per-tensor quantization commutes with reshaping and with max-pooling (Q is
    monotone, so ``max(Q(x)) = Q(max(x))``; padding is -inf), and ``Q(DQ(Q(x))) = Q(x)``. It
    lets engines run the op in front on integers, as they do when a quantizer sits on that
    op's output: global average pooling before the classifier's Flatten, and the ResNet stem
    conv+ReLU before its max-pool (measured on ResNet-18, 224x224, OpenVINO: without it the stem
    conv's output and the max-pool ran in f32, about 10% slower than NNCF's INT8 model; the
    pool then runs on u8 between identical Q/DQ pairs). Returns the count.
    """
    from onnx import helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for inp in node.input:
            users[inp].append(node)
    inserts: list[tuple[Any, list[Any]]] = []
    for node in graph.node:
        if node.op_type not in _COMMUTING_OPS:
            continue
        outs = users.get(node.output[0], [])
        src = producers.get(node.input[0])
        if len(outs) != 1 or outs[0].op_type != "QuantizeLinear" or src is None:
            continue
        if src.op_type in ("DequantizeLinear", *_COMMUTING_OPS) or len(users[node.input[0]]) != 1:
            continue
        q = outs[0]
        if len(q.input) < 3 or any(a.name == "axis" for a in q.attribute):
            continue
        base = node.input[0]
        q_out, dq_out = f"{base}_hoisted_q", f"{base}_hoisted_dq"
        new_q = helper.make_node(
            "QuantizeLinear", [base, q.input[1], q.input[2]], [q_out], name=f"{node.name}_q"
        )
        new_dq = helper.make_node(
            "DequantizeLinear", [q_out, q.input[1], q.input[2]], [dq_out], name=f"{node.name}_dq"
        )
        node.input[0] = dq_out
        inserts.append((node, [new_q, new_dq]))
    if inserts:
        nodes: list[Any] = []
        before = {id(n): extra for n, extra in inserts}
        for node in graph.node:
            nodes.extend(before.get(id(node), []))
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
    return len(inserts)


def _shapes(model: Any) -> dict[str, tuple]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = tuple(d.dim_param or d.dim_value for d in dims)
    return out


def _slice_before_add(model: Any) -> int:
    """``Add -> [Relu] -> {Q, Slice...}`` becomes ``Add -> [Relu] -> Q`` plus a sliced copy of the Add.

    A strided shortcut (ResNet option A) slices the block output, which is also quantized for
    the next convolution. Engines fuse ``DQ, DQ -> Add -> Relu -> Q`` into an integer add only
    when Q is the single consumer, so the slice chain is moved in front of a copy of the Add
    (and Relu): ``slice(relu(a + b)) = relu(slice(a) + slice(b))`` exactly, for inputs of one
    shape. The copy runs in float on the (smaller) sliced tensors. Returns the count.
    """
    from onnx import helper

    graph = model.graph
    users: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for inp in node.input:
            users[inp].append(node)
    producers = {o: n for n in graph.node for o in n.output}
    shapes: dict[str, tuple] | None = None
    plans = []
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        if any(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in add.input):
            continue
        head, relu = add, None
        after = users.get(add.output[0], [])
        if len(after) == 1 and after[0].op_type == "Relu":
            relu = after[0]
            head = relu
        consumers = users.get(head.output[0], [])
        slices = [n for n in consumers if n.op_type == "Slice"]
        if not slices or not any(n.op_type == "QuantizeLinear" for n in consumers):
            continue
        if any(n.op_type not in ("Slice", "QuantizeLinear") for n in consumers):
            continue
        if shapes is None:
            shapes = _shapes(model)
        a, b = (shapes.get(i) for i in add.input)
        if a is None or a != b or not a:
            continue
        plans.append((add, relu, slices))
    if not plans:
        return 0
    new_nodes: dict[int, list[Any]] = defaultdict(list)  # inserted before the first slice
    drop: set[int] = set()
    for k, (add, relu, slices) in enumerate(plans):
        for j, first in enumerate(slices):
            chain = [first]
            while True:
                nxt = users.get(chain[-1].output[0], [])
                if len(nxt) == 1 and nxt[0].op_type == "Slice" and nxt[0].input[0] == chain[-1].output[0]:
                    chain.append(nxt[0])
                else:
                    break
            made: list[Any] = []
            sliced = []
            for side, src in enumerate(add.input):
                x = src
                for m, sl in enumerate(chain):
                    out = f"{sl.output[0]}_pre_add{side}"
                    made.append(
                        helper.make_node(
                            "Slice", [x, *sl.input[1:]], [out], name=f"{sl.name}_pre{side}_{k}_{j}_{m}"
                        )
                    )
                    x = out
                sliced.append(x)
            final = chain[-1].output[0]
            add_out = final if relu is None else f"{final}_pre_relu"
            made.append(helper.make_node("Add", sliced, [add_out], name=f"{add.name}_sliced_{k}_{j}"))
            if relu is not None:
                made.append(helper.make_node("Relu", [add_out], [final], name=f"{relu.name}_sliced_{k}_{j}"))
            new_nodes[id(chain[-1])].extend(made)
            drop.update(id(n) for n in chain)
    nodes: list[Any] = []
    for node in graph.node:
        if id(node) in new_nodes:
            nodes.extend(new_nodes[id(node)])
        if id(node) not in drop:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(plans)


def _topological(nodes: list[Any], available: set[str]) -> list[Any]:
    done = set(available) | {""}
    order: list[Any] = []
    pending = list(nodes)
    while pending:
        rest = []
        for node in pending:
            if all(i in done for i in node.input):
                order.append(node)
                done.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise QuantbenchError("QDQ export: internal error, the graph has a cycle or a missing input")
        pending = rest
    return order
