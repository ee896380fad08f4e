"""binder/: the course on a JupyterHub or Binder (docs/hub.md), tested as far as this machine allows.

There is no conda, no Docker daemon and no route to download.pytorch.org here, so repo2docker itself never
runs. What is tested: binder/environment.yml names the same runtime dependencies as pyproject.toml; its
packages resolve with pip in a fresh venv (this machine's torch, the CPU index line dropped); binder/postBuild
runs in a copy of the repository, in a fresh venv that sees the test venv's packages through a .pth file
(nothing there is installed, upgraded or removed: postBuild installs medssl with --no-deps, and the test checks
the test venv is untouched); the kernel `medssl` it writes starts and imports the medssl postBuild installed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
BINDER = REPO / "binder"
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
#: conda-forge names that differ from the PyPI name of the same project
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}
#: in binder/environment.yml but not a medssl dependency: the interpreter, pip, and the hub's git-pull links
HUB_ONLY = {"python", "pip", "nbgitpuller"}
#: these depend on torch: from conda-forge they would pull conda-forge's pytorch next to pip's CPU wheel
TORCH_STACK = {"torch", "torchvision", "timm", "segmentation-models-pytorch", "lightly", "pytorch-lightning"}
SHARED_SITE = Path(sysconfig.get_path("purelib"))  # the venv running the tests (~/.cache/medssl/venv in CI)


def _environment() -> tuple[list[str], list[str]]:
    """(conda dependencies, pip lines) of binder/environment.yml."""
    env = yaml.safe_load((BINDER / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pips) == 1 and all(isinstance(x, str) for x in pips[0]), \
        "binder/environment.yml: expected one `pip:` list of strings in dependencies"
    return conda, pips[0]


def _conda_to_pip(dep: str) -> str:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*((?:>=|==|<=|=)\s*[0-9][0-9.*]*)?", dep.strip())
    assert m, f"binder/environment.yml: {dep!r}: expected NAME or NAME>=VERSION"
    name, spec = CONDA_TO_PYPI.get(m.group(1), m.group(1)), (m.group(2) or "").replace(" ", "")
    if spec.startswith("=") and not spec.startswith("=="):
        spec = "==" + spec[1:] + ("" if "*" in spec else ".*")  # conda's python=3.11 means 3.11.*
    return name + spec


def _binder_requirements() -> dict[str, str]:
    """Every package binder/environment.yml installs, as {canonical name: pip requirement}."""
    conda, pip_lines = _environment()
    reqs = [_conda_to_pip(d) for d in conda]
    reqs += [line.split("#")[0].strip() for line in pip_lines if not line.startswith("-")]
    return {canonicalize_name(Requirement(r).name): r for r in reqs}


def _runtime_dependencies() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}


def test_binder_environment_names_the_runtime_dependencies_of_pyproject():
    binder = set(_binder_requirements()) - HUB_ONLY
    runtime = _runtime_dependencies()
    assert not runtime - binder, f"binder/environment.yml lacks pyproject.toml's dependencies {sorted(runtime - binder)}"
    assert not binder - runtime, f"binder/environment.yml has {sorted(binder - runtime)}, not in pyproject.toml's dependencies"


def test_binder_environment_takes_torch_from_pip_as_cpu_wheels_and_has_no_local_install():
    conda, pip_lines = _environment()
    assert CPU_INDEX in pip_lines, f"binder/environment.yml: the pip section needs `{CPU_INDEX}` (CPU torch wheels)"
    in_conda = {canonicalize_name(Requirement(_conda_to_pip(d)).name) for d in conda} & TORCH_STACK
    assert not in_conda, f"binder/environment.yml: {sorted(in_conda)} must come from pip, next to the CPU torch wheel"
    # repo2docker's is_local_pip_requirement: a path, "-e .", "-r"/"-c" make it install after copying the repository
    local = [line for line in pip_lines if re.match(r"(-e|--editable|-r|-c|--requirement|--constraint)\b|[./]|file:",
                                                    line.strip())]
    assert not local, f"binder/environment.yml: local pip requirements {local}; binder/postBuild installs medssl"
    assert os.access(BINDER / "postBuild", os.X_OK), "binder/postBuild must be executable"
    assert (BINDER / "postBuild").read_text().splitlines()[:1] == ["#!/bin/bash"]


def _fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def test_binder_environment_resolves_with_pip_in_a_fresh_venv(tmp_path):
    """pip resolves every package of binder/environment.yml together, conda's section included (the same names
    on PyPI), into an empty venv. The CPU index line is dropped: download.pytorch.org cannot be reached from here,
    so torch and torchvision resolve to this machine's builds on local disk (CUDA ones) - the CPU wheels
    themselves are not resolved here."""
    reqs = _binder_requirements()
    for name in ("python", "pip"):
        reqs.pop(name)
    (tmp_path / "requirements.txt").write_text("\n".join(reqs.values()) + "\n")
    python = _fresh_venv(tmp_path / "venv")
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet",
                           "--report", str(report), "-r", str(tmp_path / "requirements.txt")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"pip could not resolve binder/environment.yml:\n{proc.stdout[-3000:]}{proc.stderr[-6000:]}"
    resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    for name, req in reqs.items():
        assert name in resolved, f"{req} is not in pip's resolution"
        assert Requirement(req).specifier.contains(resolved[name], prereleases=True), f"{req} resolved to {resolved[name]}"
    import torch
    assert resolved["torch"] == torch.__version__.split("+")[0]  # this machine's torch


# ---- postBuild and the kernel ---------------------------------------------------------------------------------


def _copy_repository(dest: Path) -> Path:
    """The files a clone would hold (tracked, and untracked ones git does not ignore), as repo2docker copies them."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _shared_state() -> dict[str, int]:
    """The test venv's site-packages, top level: names and modification times (medssl's own entries by name only:
    another `make venv` may re-link the editable install at any time; one that reinstalls packages while this
    file runs shows up as a change here, named)."""
    return {p.name: (0 if "medssl" in p.name else p.stat().st_mtime_ns) for p in SHARED_SITE.iterdir()}


def _hub_env(tmp_path: Path, venv: Path) -> dict[str, str]:
    """A hub user's environment: the environment's bin first on PATH, its own HOME, no cache or jupyter overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEDSSL_", "JUPYTER_", "PYTEST_", "VIRTUAL_ENV", "XDG_")) and k != "PYTHONPATH"}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), PATH=f"{venv / 'bin'}:{env['PATH']}", JUPYTER_DATA_DIR=str(home / "jupyter-data"),
               MEDSSL_ALLOW_CUDA_TORCH="1")  # this machine's torch is a CUDA build
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """binder/postBuild run once, as repo2docker would: in a copy of the repository, with the environment
    (a fresh venv that sees the test venv's packages) first on PATH."""
    tmp = tmp_path_factory.mktemp("binder")
    repo = _copy_repository(tmp / "repo")
    venv = tmp / "env"
    python = _fresh_venv(venv)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # a plain path line: the test venv's own .pth files (its editable medssl finder) are not processed
    (site / "shared-test-venv.pth").write_text(f"{SHARED_SITE}\n")
    env = _hub_env(tmp, venv)
    before = _shared_state()
    proc = subprocess.run([str(repo / "binder" / "postBuild")], cwd=repo, env=env, capture_output=True, text=True)
    yield {"repo": repo, "venv": venv, "site": site, "env": env, "proc": proc, "before": before, "tmp": tmp}


def _succeeded(built) -> None:
    proc = built["proc"]
    assert proc.returncode == 0, f"binder/postBuild failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def test_postbuild_installs_medssl_without_touching_the_shared_packages(built):
    _succeeded(built)
    proc = built["proc"]
    assert "its dependencies are all in the environment" in proc.stdout
    installed = list(built["site"].glob("medssl-*.dist-info"))
    assert len(installed) == 1, f"expected medssl installed into the fresh environment, found {installed}"
    direct = json.loads((installed[0] / "direct_url.json").read_text())
    assert direct["url"] == built["repo"].as_uri() and not direct.get("dir_info", {}).get("editable")
    assert (built["site"] / "medssl_utils" / "__init__.py").is_file()
    leftovers = [d for d in ("build", "medssl.egg-info") if (built["repo"] / d).exists()]
    assert not leftovers, f"postBuild left the wheel build's {leftovers} beside the notebooks"
    # nothing else was installed into the environment (--no-deps), nothing changed in the test venv
    others = {p.name for p in built["site"].iterdir()} - {"shared-test-venv.pth", "medssl_utils", installed[0].name,
                                                         "__pycache__"}
    assert not others, f"postBuild installed more than medssl: {sorted(others)}"
    after = _shared_state()
    changed = sorted(name for name, mtime in built["before"].items() if after.get(name) != mtime)
    assert not changed, f"postBuild removed or modified {changed} in the test venv's site-packages ({SHARED_SITE})"
    pip_lines = [l for l in (BINDER / "postBuild").read_text().splitlines() if re.match(r"\s*python -m pip install", l)]
    assert pip_lines and all("--no-deps" in l for l in pip_lines), f"postBuild's pip installs need --no-deps: {pip_lines}"


def test_postbuild_writes_the_medssl_kernelspec_into_the_environment(built):
    _succeeded(built)
    spec = json.loads((built["venv"] / "share" / "jupyter" / "kernels" / "medssl" / "kernel.json").read_text())
    assert spec["display_name"] == "Python (medssl)"
    assert Path(spec["argv"][0]) == built["venv"] / "bin" / "python"
    assert not (Path(built["env"]["JUPYTER_DATA_DIR"]) / "kernels").exists()  # not into the (hidden on a hub) home


def test_postbuild_pregenerates_the_phantoms_of_00_explore_data(built):
    """Every phantom among 00_explore_data's defaults (read here with papermill) is in the cache of the hub user's
    HOME, where the kernel looks by default."""
    _succeeded(built)
    import papermill as pm
    from medssl_utils.data.phantoms import PHANTOMS
    from medssl_utils.data.specs import parse_spec

    params = pm.inspect_notebook(str(REPO / "notebooks" / "00_explore_data.ipynb"))
    defaults = [ast.literal_eval(params["dataset"]["default"]), *ast.literal_eval(params["gallery"]["default"])]
    wanted = {s for s in defaults if s.startswith("phantom:")}
    assert wanted, "00_explore_data's defaults name no phantom"
    cache = Path(built["env"]["HOME"]) / ".cache" / "medssl"
    line = next((l for l in built["proc"].stdout.splitlines() if " generated into " in l), "")
    assert f" generated into {cache} in " in line, f"no pre-generation line in postBuild's output:\n{built['proc'].stdout[-3000:]}"
    assert set(line.split(": ", 1)[1].split(" generated into ")[0].split(", ")) == wanted
    for text in wanted:
        spec = parse_spec(text)
        cases = spec.values["cases"] or PHANTOMS[spec.target].default_cases
        found = list((cache / "phantoms").glob(f"{spec.target}-n{cases}-s{spec.values['seed']}-*/.medssl-phantom.json"))
        assert len(found) == 1, f"{text}: expected one generated phantom in {cache / 'phantoms'}, found {found}"


def test_the_medssl_kernel_starts_and_imports_the_installed_medssl(built):
    """The kernel a student picks ("Python (medssl)") starts from its kernelspec, in the notebooks folder, and imports
    the medssl postBuild installed from the copied repository, finding the phantom postBuild generated."""
    _succeeded(built)
    ksm = KernelSpecManager(kernel_dirs=[str(built["venv"] / "share" / "jupyter" / "kernels")])
    km = KernelManager(kernel_name="medssl", kernel_spec_manager=ksm)
    cache = Path(built["env"]["HOME"]) / ".cache" / "medssl"
    marker = next((cache / "phantoms").glob("cardiac-n32-*/.medssl-phantom.json"))
    mtime = marker.stat().st_mtime_ns
    km.start_kernel(env=built["env"], cwd=str(built["repo"] / "notebooks"))
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        out = []
        code = ("import json, sys, importlib.metadata as md, medssl_utils\n"
                "from medssl_utils.cache import cache_root\n"
                "from medssl_utils.data.readers.phantom import ensure_phantom\n"
                "root, fmt = ensure_phantom('cardiac', cases=32)\n"
                "print(json.dumps({'file': medssl_utils.__file__, 'version': medssl_utils.__version__,\n"
                "  'python': sys.executable, 'url': json.loads(md.distribution('medssl').read_text('direct_url.json'))['url'],\n"
                "  'cache': str(cache_root()), 'phantom': str(root), 'format': fmt}))\n")
        reply = kc.execute_interactive(code, timeout=120, output_hook=lambda m: out.append(m))
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    errors = [m["content"] for m in out if m["msg_type"] == "error"]
    assert reply["content"]["status"] == "ok", f"the medssl kernel failed: {errors}"
    text = "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
    got = json.loads(text.strip().splitlines()[-1])
    assert Path(got["file"]) == built["site"] / "medssl_utils" / "__init__.py"  # not the test venv's editable one
    assert got["url"] == built["repo"].as_uri() and got["python"] == str(built["venv"] / "bin" / "python")
    assert got["cache"] == str(cache) and got["format"] == "acdc"
    assert Path(got["phantom"]).is_relative_to(cache / "phantoms") and marker.stat().st_mtime_ns == mtime  # reused


def test_postbuild_refuses_a_cuda_torch(tmp_path):
    """Without MEDSSL_ALLOW_CUDA_TORCH=1 a CUDA torch stops the build with one line, before anything is installed."""
    import torch
    if not torch.version.cuda:
        pytest.skip(f"this machine's torch {torch.__version__} is a CPU build: no CUDA torch to refuse")
    venv = tmp_path / "env"
    python = _fresh_venv(venv)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "shared-test-venv.pth").write_text(f"{SHARED_SITE}\n")
    env = _hub_env(tmp_path, venv)
    del env["MEDSSL_ALLOW_CUDA_TORCH"]
    proc = subprocess.run([str(BINDER / "postBuild")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"binder/postBuild: torch {torch.__version__} is a CUDA ")
    assert "MEDSSL_ALLOW_CUDA_TORCH=1" in proc.stderr
    assert not list(Path(site).glob("medssl*")) and not (venv / "share" / "jupyter").exists()
