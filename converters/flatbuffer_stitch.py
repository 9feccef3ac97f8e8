"""Separately converted TFLite pieces -> one model file, weights stored once.

A model too large for one conversion is converted piece by piece (the
embedding, each decoder block, the head: `export_tflite_large`), every piece
holding the same signatures. `Stitcher` joins them: for each signature, the
pieces' subgraphs run one after the other, a piece's input wired to the
latest earlier output of the same name (`hidden`, `kv_cache_k_3` …), or, if
none, made an input of the signature. Buffers with equal bytes are stored
once: a weight shared by the signatures, and the tied LM head, which is the
embedding table's bytes again. Equal quantization parameters are written
once in the FlatBuffer too, one table every signature's tensor refers to: a
per-channel weight's scales and zero points are the same in each subgraph
that reads it.

Buffer bytes go to a temporary file as pieces arrive, so only the graph stays
in memory. `write` lays the file out as LiteRT reads large models: the
FlatBuffer (graph only) first, then each buffer's bytes, 64-byte aligned, at
the `offset`/`size` its Buffer entry names (relative to the file's start), so
no FlatBuffer 2 GiB cap applies to the weights.
"""

import hashlib
import os
import shutil
import tempfile

from falcon_tf.artifacts import manifest

ALIGNMENT = 64  # each buffer's bytes start on a multiple (XNNPACK reads aligned weights)


def _align(n):
    return -(-n // ALIGNMENT) * ALIGNMENT


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def read_piece(data):
    """A converted piece (bytes) -> its ModelT; buffers stored past the
    FlatBuffer (offset/size) are read back into `data`."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def _detach(obj):
    """Copies every numpy array reachable from a schema object (a tensor's
    shape, its quantization's scales, an operator's options) into its own
    memory. The unpacked arrays are views of the piece's bytes: one kept in
    the stitched graph would keep the whole piece, weights included, alive."""
    import numpy as np

    for key, value in vars(obj).items():
        if isinstance(value, np.ndarray):
            if value.base is not None:
                setattr(obj, key, value.copy())
        elif isinstance(value, list):
            for item in value:
                if hasattr(item, "__dict__"):
                    _detach(item)
        elif hasattr(value, "__dict__"):
            _detach(value)
    return obj


def _content(obj):
    """A hashable key of a schema object's whole content (arrays by their bytes)."""
    import numpy as np

    items = []
    for key, value in sorted(vars(obj).items()):
        if isinstance(value, np.ndarray):
            value = (value.dtype.str, value.shape, value.tobytes())
        elif isinstance(value, list):
            value = tuple(_content(v) if hasattr(v, "__dict__") else v for v in value)
        elif hasattr(value, "__dict__"):
            value = (type(value).__name__, _content(value))
        items.append((key, value))
    return tuple(items)


def _packed(model):
    """The FlatBuffer of `model` (a ModelT), each distinct QuantizationParameters
    table written once and referred to by every tensor that has it (a
    FlatBuffer may point to one table from many places). At falcon-rw-1b's
    shape the per-channel scales and zero points of the int8 projections,
    repeated in every signature's subgraph, were most of the graph's bytes."""
    import flatbuffers

    cls = _schema().QuantizationParametersT
    original, written = cls.Pack, {}

    def pack(self, builder):
        key = _content(self)
        if key not in written:
            written[key] = original(self, builder)
        return written[key]

    builder = flatbuffers.Builder(1024)
    cls.Pack = pack
    try:
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    finally:
        cls.Pack = original
    return builder.Output()


def _drop_dead_operators(graph):
    """Removes the operators whose outputs neither a later operator nor the
    signature reads: a signature that returns fewer outputs than its pieces
    compute (a prefill without logits drops the last block's
    attention output and MLP). Their tensors stay, unused."""
    live, kept = set(graph.outputs), []
    for op in reversed(graph.operators):
        if any(o in live for o in op.outputs):
            kept.append(op)
            live.update(i for i in op.inputs if i >= 0)
    graph.operators = kept[::-1]


def _remap_blockwise(tensor, mapping, schema):
    """Blockwise quantization names its scale (and zero point) tensors by index."""
    quantization = tensor.quantization
    if quantization is None or quantization.detailsType != \
            schema.QuantizationDetails.BlockwiseQuantization:
        return
    details = quantization.details
    details.scales = mapping[details.scales]
    if details.zeroPoints >= 0 and details.zeroPoints in mapping:
        details.zeroPoints = mapping[details.zeroPoints]


class Stitcher:
    """Accumulates pieces (`add`) into one model (`write`).

    `folder`: where the buffers' temporary file lives (the output's folder,
    so the final write is a copy on the same disk).
    """

    def __init__(self, folder):
        schema = _schema()
        self._schema = schema
        # Unnamed: gone with the process, however it ends.
        self._blob = tempfile.TemporaryFile(prefix=".tmp-buffers-", dir=folder)
        self._blob_size = 0
        self._buffers = [None]  # buffer 0: the empty sentinel every model has
        self._by_digest = {}
        self._opcodes, self._opcode_index = [], {}
        self._graphs = {}  # signature -> SubGraphT
        self._wires = {}  # signature -> {name: tensor index}
        self._inputs = {}  # signature -> {name: tensor index}

    def close(self):
        self._blob.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def data_bytes(self):
        """Bytes of buffer data stored so far (shared buffers once)."""
        return self._blob_size

    def _buffer(self, buffer):
        data = None if buffer is None else buffer.data
        if data is None or len(data) == 0:
            return 0
        view = memoryview(data).cast("B")
        digest = hashlib.sha1(view).digest() + len(view).to_bytes(8, "little")
        if digest not in self._by_digest:
            start = _align(self._blob_size)
            self._blob.seek(start)
            self._blob.write(view)
            self._blob_size = start + len(view)
            self._buffers.append((start, len(view)))
            self._by_digest[digest] = len(self._buffers) - 1
        return self._by_digest[digest]

    def _opcode(self, code):
        key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
        if key not in self._opcode_index:
            self._opcode_index[key] = len(self._opcodes)
            self._opcodes.append(_detach(code))
        return self._opcode_index[key]

    def add(self, data):
        """Appends a converted piece (bytes of a .tflite) to every signature it holds."""
        model = read_piece(data)
        if len(model.subgraphs) != len(model.signatureDefs or []):
            raise ValueError(f"A piece must hold one subgraph per signature; this one has "
                             f"{len(model.subgraphs)} subgraphs and "
                             f"{len(model.signatureDefs or [])} signatures.")
        opcodes = [self._opcode(code) for code in model.operatorCodes]
        buffers = {}

        def buffer(index):
            if index not in buffers:
                buffers[index] = self._buffer(model.buffers[index])
            return buffers[index]

        for signature in model.signatureDefs:
            name = signature.signatureKey.decode()
            piece = model.subgraphs[signature.subgraphIndex]
            graph = self._graphs.setdefault(name, self._schema.SubGraphT())
            if graph.tensors is None:
                graph.tensors, graph.operators, graph.name = [], [], name
            wires = self._wires.setdefault(name, {})
            inputs = self._inputs.setdefault(name, {})
            mapping, wired = {}, set()
            for port in signature.inputs:
                wire = port.name.decode()
                if wire in wires:
                    mapping[port.tensorIndex] = wires[wire]
                    wired.add(port.tensorIndex)
                else:
                    mapping[port.tensorIndex] = wires[wire] = inputs[wire] = len(graph.tensors)
                    tensor = piece.tensors[port.tensorIndex]
                    tensor.buffer = buffer(tensor.buffer)
                    graph.tensors.append(_detach(tensor))
            for index, tensor in enumerate(piece.tensors):
                if index in mapping:
                    continue
                mapping[index] = len(graph.tensors)
                tensor.buffer = buffer(tensor.buffer)
                graph.tensors.append(_detach(tensor))
            for index in mapping:
                if index not in wired:
                    _remap_blockwise(graph.tensors[mapping[index]], mapping, self._schema)
            for op in piece.operators:
                op.opcodeIndex = opcodes[op.opcodeIndex]
                op.inputs = [mapping[i] if i >= 0 else i for i in op.inputs]
                op.outputs = [mapping[i] for i in op.outputs]
                if op.intermediates is not None:
                    op.intermediates = [mapping[i] for i in op.intermediates]
                graph.operators.append(_detach(op))
            for port in signature.outputs:
                wires[port.name.decode()] = mapping[port.tensorIndex]
        for index, buf in enumerate(model.buffers):  # piece buffers are in the temp file now
            buf.data = None

    def model(self, inputs, outputs):
        """The stitched ModelT. `inputs` and `outputs`: {signature: [names]}, in
        the order the signature lists them; each input must be one the pieces
        left unwired, and each output a wire some piece produced."""
        schema = self._schema
        if sorted(inputs) != sorted(self._graphs) or sorted(outputs) != sorted(self._graphs):
            raise ValueError(f"Signatures {sorted(inputs)} / {sorted(outputs)} do not match the "
                             f"pieces' {sorted(self._graphs)}.")
        definitions = []
        for index, name in enumerate(inputs):
            graph, wires, unwired = self._graphs[name], self._wires[name], self._inputs[name]
            if sorted(unwired) != sorted(inputs[name]):
                raise ValueError(f"Signature {name}: the pieces take {sorted(unwired)} from "
                                 f"outside, not {sorted(inputs[name])}.")
            missing = [n for n in outputs[name] if n not in wires]
            if missing:
                raise ValueError(f"Signature {name}: no piece produces {missing}.")
            graph.inputs = [unwired[n] for n in inputs[name]]
            graph.outputs = [wires[n] for n in outputs[name]]
            _drop_dead_operators(graph)
            definition = schema.SignatureDefT()
            definition.signatureKey, definition.subgraphIndex = name, index
            definition.inputs, definition.outputs = [], []
            for names, ports, table in ((inputs[name], definition.inputs, unwired),
                                        (outputs[name], definition.outputs, wires)):
                for n in names:
                    port = schema.TensorMapT()
                    port.name, port.tensorIndex = n, table[n]
                    ports.append(port)
            definitions.append(definition)
        model = schema.ModelT()
        model.version, model.description = 3, "falcon-tf, stitched from converted pieces"
        model.operatorCodes = self._opcodes
        model.subgraphs = [self._graphs[n] for n in inputs]
        model.signatureDefs = definitions
        model.buffers = [schema.BufferT() for _ in self._buffers]
        return model

    def write(self, path, inputs, outputs):
        """Writes the stitched model to `path` atomically (a temporary sibling,
        then a rename): the FlatBuffer, then the buffers' bytes at their
        offsets. Returns the file's size in bytes."""
        model = self.model(inputs, outputs)
        located = [(i, loc) for i, loc in enumerate(self._buffers) if loc is not None]
        # offset/size are 8-byte fields, present when non-zero: the FlatBuffer
        # has one size whatever their values, so pack once with placeholders to
        # learn where the data starts, then again with the real offsets.
        for i, (start, size) in located:
            model.buffers[i].offset, model.buffers[i].size = 1, 1
        head = len(_packed(model))
        base = _align(head)
        for i, (start, size) in located:
            model.buffers[i].offset, model.buffers[i].size = base + start, size
        flat = _packed(model)
        if len(flat) != head:
            raise AssertionError("the FlatBuffer changed size between the two packings")
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(flat)
                out.write(b"\0" * (base - len(flat)))
                self._blob.flush()
                self._blob.seek(0)
                shutil.copyfileobj(self._blob, out, 16 << 20)
                out.write(b"\0" * (_align(self._blob_size) - self._blob_size))
            manifest.publishable(tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return os.path.getsize(path)


def write_stored_once(data, path):
    """Writes the .tflite `data` to `path` (atomically) as `Stitcher` lays a
    file out, buffers of equal bytes stored once: the int8 files' embedding
    lookup rows and LM head weight are the same bytes, which ai-edge-quantizer
    writes twice. Returns the file's size in bytes."""
    # The signatures' port names, read in place (`Stitcher.add` unpacks the file).
    model = _schema().Model.GetRootAsModel(data, 0)
    inputs, outputs = {}, {}
    for s in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(s)
        name = signature.SignatureKey().decode()
        inputs[name] = [signature.Inputs(i).Name().decode()
                        for i in range(signature.InputsLength())]
        outputs[name] = [signature.Outputs(i).Name().decode()
                         for i in range(signature.OutputsLength())]
    with Stitcher(os.path.dirname(os.path.abspath(path))) as stitcher:
        stitcher.add(data)
        return stitcher.write(path, inputs, outputs)
