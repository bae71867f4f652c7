#!/usr/bin/env bash
# Fallback for machines where the full mmcv build (.ci/build_mmcv.sh, ~120 C++ files) is too slow:
# mmcv 2.1.0's Python package plus a compiled `mmcv._ext` holding only the ops that mmdet's
# Mask R-CNN / Cascade Mask R-CNN use on CPU (nms, roi_align; 5 C++ files compiled from mmcv's own
# sources, ~3 CPU-minutes). Every other op raises NotImplementedError when called.
# Usage: .ci/build_mmcv_minimal.sh PYTHON   (PYTHON: an interpreter whose environment has torch)
# Prints a directory to put on PYTHONPATH (mmcv itself must then NOT be pip-installed in that env).
# Cached by torch version; never builds twice.
set -euo pipefail
PY=${1:?python interpreter}
TORCH=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
OUT=${AIQVIT_WHEEL_CACHE:-$HOME/.cache/aiqvit/wheels}/torch-$TORCH/mmcv-2.1.0-minimal
if [ -f "$OUT/mmcv/_ext.py" ] && ls "$OUT"/mmcv/_ext_mini*.so >/dev/null 2>&1; then echo "$OUT"; exit 0; fi
"$PY" -m pip install -q "setuptools>=77,<82" wheel ninja >&2
mkdir -p "$(dirname "$OUT")"
SRC=$(mktemp -d)
# pip prepares the sdist's metadata while downloading: without --no-build-isolation it does so
# with the newest setuptools, whose missing pkg_resources breaks mmcv's setup.py
"$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: mmcv==2.1.0 -d "$SRC" >&2
tar -xzf "$SRC"/mmcv-2.1.0.tar.gz -C "$SRC"
TMP=$(mktemp -d "$(dirname "$OUT")/.mmcv-minimal.XXXXXX")
cp -r "$SRC/mmcv-2.1.0/mmcv" "$TMP/"
C="$TMP/mmcv/ops/csrc"
# the cpu/ sources share file names with the dispatchers: copy them under other names (ninja needs distinct objects)
cp "$C/pytorch/cpu/nms.cpp" "$C/pytorch/cpu/nms_cpu_impl.cpp"
cp "$C/pytorch/cpu/roi_align.cpp" "$C/pytorch/cpu/roi_align_cpu_impl.cpp"
cat > "$TMP/pybind_mini.cpp" <<'CPP'
#include <torch/extension.h>
#include "pytorch_cpp_helper.hpp"
Tensor nms(Tensor boxes, Tensor scores, float iou_threshold, int offset);
void roi_align_forward(Tensor input, Tensor rois, Tensor output, Tensor argmax_y, Tensor argmax_x,
                       int aligned_height, int aligned_width, float spatial_scale, int sampling_ratio,
                       int pool_mode, bool aligned);
void roi_align_backward(Tensor grad_output, Tensor rois, Tensor argmax_y, Tensor argmax_x, Tensor grad_input,
                        int aligned_height, int aligned_width, float spatial_scale, int sampling_ratio,
                        int pool_mode, bool aligned);
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("nms", &nms, "nms", py::arg("boxes"), py::arg("scores"), py::arg("iou_threshold"), py::arg("offset"));
  m.def("roi_align_forward", &roi_align_forward, "roi_align forward", py::arg("input"), py::arg("rois"),
        py::arg("output"), py::arg("argmax_y"), py::arg("argmax_x"), py::arg("aligned_height"),
        py::arg("aligned_width"), py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("pool_mode"),
        py::arg("aligned"));
  m.def("roi_align_backward", &roi_align_backward, "roi_align backward", py::arg("grad_output"), py::arg("rois"),
        py::arg("argmax_y"), py::arg("argmax_x"), py::arg("grad_input"), py::arg("aligned_height"),
        py::arg("aligned_width"), py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("pool_mode"),
        py::arg("aligned"));
}
CPP
mkdir -p "$TMP/build"
MAX_JOBS=${MAX_JOBS:-2} "$PY" - "$TMP" >&2 <<'PYEOF'
import glob, shutil, sys
from torch.utils.cpp_extension import load
root = sys.argv[1]
c = f"{root}/mmcv/ops/csrc"
mod = load(name="_ext_mini", sources=[f"{root}/pybind_mini.cpp", f"{c}/pytorch/nms.cpp", f"{c}/pytorch/cpu/nms_cpu_impl.cpp",
                                      f"{c}/pytorch/roi_align.cpp", f"{c}/pytorch/cpu/roi_align_cpu_impl.cpp"],
           extra_include_paths=[f"{c}/common"], extra_cflags=["-O2"], build_directory=f"{root}/build")
shutil.copy(mod.__file__, f"{root}/mmcv/")
PYEOF
cat > "$TMP/mmcv/_ext.py" <<'PYEXT'
# Minimal mmcv._ext: nms and roi_align compiled from mmcv 2.1.0's sources; every other op raises.
from mmcv._ext_mini import nms, roi_align_backward, roi_align_forward  # noqa: F401


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def _missing(*args, **kwargs):
        raise NotImplementedError(f"mmcv op {name} is not in the minimal build (.ci/build_mmcv_minimal.sh)")
    return _missing
PYEXT
rm -rf "$TMP/build" "$TMP/pybind_mini.cpp"
mv "$TMP" "$OUT"
echo "$OUT"
