"""A small, differentiable executor for TensorFlow Lite graphs, in torch.

It reads a ``.tflite`` flatbuffer (with the ``tflite`` schema package; nothing
is executed from the file but the listed operators) and runs a contiguous slice
of its operators in eager torch, so gradients flow to the input. It exists for
one purpose: BirdNET ships only as TFLite (:mod:`core.models.birdnet`).

Design
------
- Four-dimensional activations are kept in torch's NCHW layout; the graph's
  NHWC semantics are mapped at build time (convolution kernels, padding,
  reduction and concatenation axes, per-channel constants).
- Constant sub-expressions (e.g. ``DEQUANTIZE`` of float16 weights) are folded
  once at build time. Shape arithmetic that only feeds the target shape of a
  ``RESHAPE`` (``SHAPE``/``STRIDED_SLICE``/``PACK``) is dropped: the static
  target shape with a free batch axis is used instead.
- Weights are ``nn.Parameter`` named ``opNNN_<LAYER>`` (frozen by default), and
  every operator's output can be returned by its layer name
  (:meth:`TFLiteGraph.forward` with ``keep``).
- Only the operators listed in :data:`SUPPORTED_OPS` are implemented; anything
  else raises :class:`~core.errors.CheckpointError` at build time. Each is
  tested against the TFLite interpreter (tests/test_birdnet.py).

TFLite semantics followed (TensorFlow Lite schema, ``schema.fbs``): ``SAME``
padding puts the extra row/column after (``pad_before = total // 2``); ``SAME``
average pooling divides by the number of valid (non-padding) cells; fused
activations are applied after the op.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import CheckpointError

__all__ = ["TFLiteFile", "TFLiteGraph", "SUPPORTED_OPS"]

SUPPORTED_OPS = (
    "ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "GREATER", "LESS", "SELECT_V2", "LOGISTIC", "SIN", "RELU",
    "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "PAD", "MEAN", "CONCATENATION",
    "FULLY_CONNECTED", "RESHAPE", "EXPAND_DIMS", "STRIDED_SLICE", "DEQUANTIZE",
)
#: Operators whose outputs are only shape arithmetic; dropped when they feed nothing but RESHAPE targets.
_SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK")

_NP_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64, 6: np.bool_, 9: np.int8, 3: np.uint8}


def _tflite():
    try:
        import tflite  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - installed by requirements.txt
        raise CheckpointError("the 'tflite' package is needed to read TFLite models: pip install -r requirements.txt") from exc
    return tflite


@dataclass
class _Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: int
    data: np.ndarray | None
    signature: tuple[int, ...] = ()


@dataclass
class _Op:
    index: int
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: dict = field(default_factory=dict)


class TFLiteFile:
    """Parsed tensors and operators of one subgraph of a ``.tflite`` file.

    Parameters
    ----------
    path : path
        The flatbuffer file.
    subgraph : int
        Which subgraph (0 for BirdNET's models).

    Raises
    ------
    CheckpointError
        Missing or unreadable file, or not a TFLite flatbuffer.
    """

    def __init__(self, path: str | os.PathLike, subgraph: int = 0) -> None:
        tfl = _tflite()
        self.path = Path(path)
        try:
            buf = self.path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read TFLite model {self.path}: {exc}") from exc
        if len(buf) < 8 or buf[4:8] != b"TFL3":
            raise CheckpointError(f"{self.path.name} is not a TFLite flatbuffer")
        model = tfl.Model.GetRootAsModel(buf, 0)
        sg = model.Subgraphs(subgraph)
        opnames = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
        codes = []
        for i in range(model.OperatorCodesLength()):
            c = model.OperatorCodes(i)
            codes.append(opnames.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), "CUSTOM"))
        self.tensors: list[_Tensor] = []
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            b = model.Buffers(t.Buffer())
            data = None
            if b is not None and b.DataLength() > 0:
                dt = _NP_DTYPES.get(t.Type())
                if dt is None:
                    raise CheckpointError(f"{self.path.name}: tensor {t.Name().decode()} has unsupported type {t.Type()}")
                shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
                data = np.frombuffer(b.DataAsNumpy().tobytes(), dtype=dt).reshape(shape).copy()
            shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            sig = tuple(int(s) for s in t.ShapeSignatureAsNumpy()) if t.ShapeSignatureLength() else shape
            self.tensors.append(_Tensor(i, t.Name().decode(), shape, t.Type(), data, sig))
        self.operators: list[_Op] = []
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            kind = codes[op.OpcodeIndex()]
            ins = [int(op.Inputs(j)) for j in range(op.InputsLength())]
            outs = [int(op.Outputs(j)) for j in range(op.OutputsLength())]
            self.operators.append(_Op(i, kind, ins, outs, _options(tfl, kind, op)))
        self.inputs = [int(sg.Inputs(i)) for i in range(sg.InputsLength())]
        self.outputs = [int(sg.Outputs(i)) for i in range(sg.OutputsLength())]
        self._by_name = {t.name: t.index for t in self.tensors}

    def tensor(self, name: str) -> _Tensor:
        """The tensor called ``name`` (exact TFLite name)."""
        if name not in self._by_name:
            raise CheckpointError(f"{self.path.name} has no tensor named {name!r}")
        return self.tensors[self._by_name[name]]

    def find_tensor(self, pattern: str) -> _Tensor:
        """The one tensor whose name matches the regular expression ``pattern``."""
        hits = [t for t in self.tensors if re.search(pattern, t.name)]
        if len(hits) != 1:
            raise CheckpointError(f"{self.path.name}: {len(hits)} tensors match {pattern!r}, expected 1")
        return hits[0]

    def constant(self, pattern: str) -> np.ndarray:
        """Data of the one constant tensor matching ``pattern``."""
        t = self.find_tensor(pattern)
        if t.data is None:
            raise CheckpointError(f"{self.path.name}: tensor {t.name} is not a constant")
        return t.data

    def producer(self, tensor_index: int) -> int:
        """Index of the operator that writes ``tensor_index``."""
        for op in self.operators:
            if tensor_index in op.outputs:
                return op.index
        raise CheckpointError(f"{self.path.name}: no operator produces tensor {self.tensors[tensor_index].name}")


def _options(tfl, kind: str, op) -> dict:
    bo = op.BuiltinOptions()
    if bo is None:
        return {}

    def read(cls):
        o = cls()
        o.Init(bo.Bytes, bo.Pos)
        return o

    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        o = read(tfl.Conv2DOptions if kind == "CONV_2D" else tfl.DepthwiseConv2DOptions)
        d = dict(padding=o.Padding(), stride=(o.StrideH(), o.StrideW()), dilation=(o.DilationHFactor(), o.DilationWFactor()),
                 act=o.FusedActivationFunction())
        if kind == "DEPTHWISE_CONV_2D":
            d["depth_multiplier"] = o.DepthMultiplier()
        return d
    if kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        o = read(tfl.Pool2DOptions)
        return dict(padding=o.Padding(), stride=(o.StrideH(), o.StrideW()), kernel=(o.FilterHeight(), o.FilterWidth()),
                    act=o.FusedActivationFunction())
    if kind in ("ADD", "SUB", "MUL", "DIV"):
        cls = {"ADD": tfl.AddOptions, "SUB": tfl.SubOptions, "MUL": tfl.MulOptions, "DIV": tfl.DivOptions}[kind]
        return dict(act=read(cls).FusedActivationFunction())
    if kind == "CONCATENATION":
        o = read(tfl.ConcatenationOptions)
        return dict(axis=o.Axis(), act=o.FusedActivationFunction())
    if kind == "FULLY_CONNECTED":
        o = read(tfl.FullyConnectedOptions)
        return dict(act=o.FusedActivationFunction(), keep_num_dims=o.KeepNumDims())
    if kind == "MEAN":
        return dict(keep_dims=read(tfl.ReducerOptions).KeepDims())
    if kind == "STRIDED_SLICE":
        o = read(tfl.StridedSliceOptions)
        return dict(begin_mask=o.BeginMask(), end_mask=o.EndMask(), shrink_axis_mask=o.ShrinkAxisMask(),
                    ellipsis_mask=o.EllipsisMask(), new_axis_mask=o.NewAxisMask())
    return {}


_ACTS = {0: None, 1: F.relu, 3: lambda x: x.clamp(0.0, 6.0), 4: torch.tanh}


def _act(x: torch.Tensor, code: int) -> torch.Tensor:
    if code not in _ACTS:
        raise CheckpointError(f"fused activation {code} is not supported")
    fn = _ACTS[code]
    return x if fn is None else fn(x)


def _same_pad(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TF ``SAME`` padding of one axis: ``(before, after)``, the extra cell after."""
    eff = (k - 1) * d + 1
    out = math.ceil(size / s)
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def _layer_name(name: str) -> str:
    """``model/BLOCK_1-1_BN_1/FusedBatchNormV3;model/...`` -> ``BLOCK_1-1_BN_1``."""
    first = name.split(";")[0]
    parts = first.split("/")
    return parts[1] if len(parts) > 1 and parts[0] in ("model", "BirdNET") else parts[0]


class TFLiteGraph(nn.Module):
    """Operators ``first..last`` of a TFLite subgraph as a differentiable module.

    Parameters
    ----------
    file : TFLiteFile
    inputs : list of str
        Names of the tensors fed to :meth:`forward`, in order (e.g. the
        spectrogram, NCHW if 4-D, with a free batch axis).
    outputs : list of str
        Names of the tensors returned.
    trainable : bool
        Whether the weights require gradients (default frozen: attacks only need
        the input gradient).

    Raises
    ------
    CheckpointError
        An operator outside :data:`SUPPORTED_OPS` is needed, or a dropped shape
        operator feeds anything but a ``RESHAPE`` target.
    """

    def __init__(self, file: TFLiteFile, inputs: list[str], outputs: list[str], *, trainable: bool = False) -> None:
        super().__init__()
        self.file_name = file.path.name
        tensors = file.tensors
        self.input_ids = [file.tensor(n).index for n in inputs]
        self.output_ids = [file.tensor(n).index for n in outputs]
        # Walk back from the outputs to the inputs; keep what is needed.
        needed: set[int] = set()
        stack = list(self.output_ids)
        while stack:
            t = stack.pop()
            if t in needed or t in self.input_ids or tensors[t].data is not None:
                continue
            needed.add(t)
            op = file.operators[file.producer(t)]
            for j, i in enumerate(op.inputs):
                if i < 0:
                    continue
                if op.kind == "RESHAPE" and j == 1:
                    continue
                stack.append(i)
        ops = sorted({file.producer(t) for t in needed})
        self.ops: list[_Op] = [file.operators[i] for i in ops]
        for op in self.ops:
            if op.kind not in SUPPORTED_OPS:
                raise CheckpointError(f"{self.file_name}: operator {op.index} {op.kind} is not supported")
        # Constants: folded ones become buffers; weights of conv/dense become parameters.
        self.params = nn.ParameterDict()
        self._const_key: dict[tuple[int, int], str] = {}
        self._ints: dict[tuple[int, int], np.ndarray] = {}
        self.layer_of: dict[int, str] = {}
        const_vals: dict[int, np.ndarray] = {}
        for op in self.ops:
            ins = [tensors[i] if i >= 0 else None for i in op.inputs]
            if op.kind == "DEQUANTIZE" and ins[0].data is not None:
                const_vals[op.outputs[0]] = ins[0].data.astype(np.float32)
                continue
            layer = f"op{op.index:03d}_{re.sub(r'[^A-Za-z0-9_]', '_', _layer_name(tensors[op.outputs[0]].name))}"
            self.layer_of[op.outputs[0]] = _layer_name(tensors[op.outputs[0]].name)
            for j, t in enumerate(ins):
                if t is None:
                    continue
                data = const_vals.get(t.index, t.data)
                if data is None or (op.kind == "RESHAPE" and j == 1):
                    continue
                if not np.issubdtype(data.dtype, np.floating):
                    self._ints[(op.index, j)] = data
                    continue
                key = f"{layer}_in{j}"
                self._const_key[(op.index, j)] = key
                self.params[key] = nn.Parameter(self._convert_const(op, j, data), requires_grad=trainable)
        self.ops = [op for op in self.ops if op.outputs[0] not in const_vals]
        for op in self.ops:
            if op.kind == "RESHAPE" and any(d < 0 for d in tensors[op.outputs[0]].signature[1:]):
                raise CheckpointError(f"{self.file_name}: RESHAPE {op.index} has a dynamic non-batch target shape")
        self._shapes = {op.outputs[0]: tensors[op.outputs[0]].shape for op in self.ops}
        # After op k runs, the activations no later op reads (and that are no output) are dropped, so a
        # gradient-free pass holds only live tensors (BirdNET at 16 windows: about 1.3 GB -> see bench/vs_birdnetlib.py).
        last: dict[int, int] = {}
        for k, op in enumerate(self.ops):
            for i in op.inputs:
                if i >= 0:
                    last[i] = k
        self._free_after: list[tuple[int, ...]] = [() for _ in self.ops]
        for t, k in last.items():
            if t not in self.output_ids:
                self._free_after[k] += (t,)

    @staticmethod
    def _convert_const(op: _Op, j: int, data: np.ndarray) -> torch.Tensor:
        # A copy, never a view of the file's buffer: TFLite shares constant buffers between operators, and a graph
        # whose weights are trained or loaded in place (a fine-tuned stage) must not change another graph built
        # from the same parsed file (the frozen trunk, BirdNET's own layers in the bird gate).
        x = torch.from_numpy(np.array(data, copy=True))
        if x.dtype in (torch.float16, torch.float64):
            x = x.float()
        if op.kind == "CONV_2D" and j == 1:  # OHWI -> OIHW
            return x.permute(0, 3, 1, 2).contiguous()
        if op.kind == "DEPTHWISE_CONV_2D" and j == 1:  # 1HW(C*m) -> (C*m)1HW
            return x.permute(3, 0, 1, 2).contiguous()
        return x

    # -- execution -------------------------------------------------------------------------------

    def _get(self, env: dict, op: _Op, j: int) -> torch.Tensor:
        key = self._const_key.get((op.index, j))
        if key is not None:
            return self.params[key]
        if (op.index, j) in self._ints:
            return torch.as_tensor(self._ints[(op.index, j)])
        return env[op.inputs[j]]

    def _binary_operand(self, x: torch.Tensor, other_nchw: bool, is_const: bool) -> torch.Tensor:
        """Bring an NHWC-semantics constant into NCHW broadcasting against a 4-D activation."""
        if not other_nchw or not is_const:
            return x
        if x.ndim == 1 and x.numel() > 1:
            return x.view(1, -1, 1, 1)
        if x.ndim == 4:
            return x.permute(0, 3, 1, 2)
        return x

    def forward(self, *inputs: torch.Tensor, keep: tuple[str, ...] = ()) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Run the graph.

        Parameters
        ----------
        *inputs : torch.Tensor
            One per name in ``inputs`` of the constructor; 4-D tensors in NCHW.
        keep : tuple of str
            Layer names (e.g. ``"GLOBAL_AVG_POOL"``) whose outputs to return too.

        Returns
        -------
        outputs : list of torch.Tensor
            The tensors named in ``outputs`` (4-D ones NCHW).
        kept : dict of str -> torch.Tensor
        """
        env: dict[int, torch.Tensor] = {}
        nchw: dict[int, bool] = {}
        for i, x in zip(self.input_ids, inputs):
            env[i] = x
            nchw[i] = x.ndim == 4
        kept: dict[str, torch.Tensor] = {}
        keep_set = set(keep)
        for op, free in zip(self.ops, self._free_after):
            y, is4 = self._run(op, env, nchw)
            o = op.outputs[0]
            env[o] = y
            nchw[o] = is4
            name = self.layer_of.get(o)
            if name in keep_set:
                kept[name] = y
            for t in free:  # kept tensors live on in ``kept``; autograd holds what its backward needs
                env.pop(t, None)
        return [env[i] for i in self.output_ids], kept

    def _run(self, op: _Op, env: dict, nchw: dict) -> tuple[torch.Tensor, bool]:
        k, opt = op.kind, op.options
        get = lambda j: self._get(env, op, j)
        const = lambda j: (op.index, j) in self._const_key or (op.index, j) in self._ints
        four = lambda j: nchw.get(op.inputs[j], False)
        if k in ("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "GREATER", "LESS"):
            a, b = get(0), get(1)
            a4, b4 = four(0), four(1)
            a = self._binary_operand(a, b4, const(0))
            b = self._binary_operand(b, a4, const(1))
            fn = {"ADD": torch.add, "SUB": torch.sub, "MUL": torch.mul, "DIV": torch.div, "MAXIMUM": torch.maximum,
                  "MINIMUM": torch.minimum, "GREATER": torch.gt, "LESS": torch.lt}[k]
            y = fn(a, b)
            return _act(y, opt.get("act", 0)), a4 or b4
        if k == "SELECT_V2":
            c, a, b = get(0), get(1), get(2)
            return torch.where(c, a, b), any(four(j) for j in range(3))
        if k == "LOGISTIC":
            return torch.sigmoid(get(0)), four(0)
        if k == "SIN":
            return torch.sin(get(0)), four(0)
        if k == "RELU":
            return F.relu(get(0)), four(0)
        if k in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x, w = get(0), get(1)
            bias = get(2) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
            kh, kw = w.shape[2], w.shape[3]
            sh, sw = opt["stride"]
            dh, dw = opt["dilation"]
            if opt["padding"] == 0:  # SAME
                ph, pw = _same_pad(x.shape[2], kh, sh, dh), _same_pad(x.shape[3], kw, sw, dw)
                if any(ph + pw):
                    x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
            groups = x.shape[1] if k == "DEPTHWISE_CONV_2D" else 1
            y = F.conv2d(x, w, bias, stride=(sh, sw), dilation=(dh, dw), groups=groups)
            return _act(y, opt["act"]), True
        if k in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            x = get(0)
            kh, kw = opt["kernel"]
            sh, sw = opt["stride"]
            if opt["padding"] == 0:
                ph, pw = _same_pad(x.shape[2], kh, sh), _same_pad(x.shape[3], kw, sw)
            else:
                ph = pw = (0, 0)
            pads = (pw[0], pw[1], ph[0], ph[1])
            if k == "MAX_POOL_2D":
                y = F.max_pool2d(F.pad(x, pads, value=float("-inf")) if any(pads) else x, (kh, kw), (sh, sw))
            else:
                s = F.avg_pool2d(F.pad(x, pads) if any(pads) else x, (kh, kw), (sh, sw), divisor_override=1)
                if any(pads):  # SAME average pooling divides by the valid cells only
                    ones = F.pad(torch.ones_like(x[:1, :1]), pads)
                    y = s / F.avg_pool2d(ones, (kh, kw), (sh, sw), divisor_override=1)
                else:
                    y = s / (kh * kw)
            return _act(y, opt["act"]), True
        if k == "PAD":
            x = get(0)
            p = self._ints[(op.index, 1)].tolist()
            if four(0):  # NHWC paddings -> F.pad order for NCHW: (W, H, C)
                (n0, n1), (h0, h1), (w0, w1), (c0, c1) = p
                if n0 or n1:
                    raise CheckpointError(f"{self.file_name}: PAD on the batch axis is not supported")
                return F.pad(x, (w0, w1, h0, h1, c0, c1)), True
            flat = [v for pair in reversed(p) for v in pair]
            return F.pad(x, flat), False
        if k == "MEAN":
            x = get(0)
            axes = [int(a) for a in np.atleast_1d(self._ints[(op.index, 1)])]
            if four(0):
                m = {0: 0, 1: 2, 2: 3, 3: 1}
                axes = [m[a % 4] for a in axes]
            keepdims = bool(opt.get("keep_dims", False))
            y = x.mean(dim=axes, keepdim=keepdims)
            return y, four(0) and keepdims
        if k == "CONCATENATION":
            xs = [get(j) for j in range(len(op.inputs))]
            axis = opt["axis"]
            is4 = four(0)
            if is4:
                axis = {0: 0, 1: 2, 2: 3, 3: 1}[axis % 4]
            return _act(torch.cat(xs, dim=axis), opt["act"]), is4
        if k == "FULLY_CONNECTED":
            x, w = get(0), get(1)
            bias = get(2) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
            if x.ndim != 2:
                x = x.reshape(-1, w.shape[1])
            return _act(F.linear(x, w, bias), opt["act"]), False
        if k == "RESHAPE":
            x = get(0)
            if four(0):
                x = x.permute(0, 2, 3, 1)
            shape = list(self._shapes[op.outputs[0]])
            y = x.reshape([-1, *shape[1:]]) if shape else x.reshape(())
            if y.ndim == 4:
                return y.permute(0, 3, 1, 2), True
            return y, False
        if k == "EXPAND_DIMS":
            x = get(0)
            if four(0):
                raise CheckpointError(f"{self.file_name}: EXPAND_DIMS of a 4-D tensor is not supported")
            axis = int(np.atleast_1d(self._ints[(op.index, 1)])[0])
            y = x.unsqueeze(axis if axis >= 0 else x.ndim + 1 + axis)
            return (y.permute(0, 3, 1, 2), True) if y.ndim == 4 else (y, False)
        if k == "STRIDED_SLICE":
            x = get(0)
            if four(0):
                raise CheckpointError(f"{self.file_name}: STRIDED_SLICE of a 4-D activation is not supported")
            begin, end, strides = (self._ints[(op.index, j)].tolist() for j in (1, 2, 3))
            if opt["ellipsis_mask"] or opt["new_axis_mask"]:
                raise CheckpointError(f"{self.file_name}: STRIDED_SLICE with ellipsis/new-axis masks is not supported")
            idx = []
            for a, (b_, e_, s_) in enumerate(zip(begin, end, strides)):
                if opt["shrink_axis_mask"] >> a & 1:
                    idx.append(b_)
                    continue
                b_ = None if opt["begin_mask"] >> a & 1 else b_
                e_ = None if opt["end_mask"] >> a & 1 else e_
                idx.append(slice(b_, e_, s_))
            return x[tuple(idx)], False
        raise CheckpointError(f"{self.file_name}: operator {k} is not supported")  # pragma: no cover
