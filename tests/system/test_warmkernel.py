"""Warm kernels: notebooks run in kernels forked from a zygote that imported the libraries once."""

from __future__ import annotations

import os
import signal
import sys
import time

import nbformat
import papermill as pm
import pytest
from jupyter_client.manager import AsyncKernelManager, KernelManager

from medssl_utils.warmkernel import WarmKernelError, WarmKernels

LIGHT = ("numpy", "IPython", "ipykernel.kernelapp", "ipykernel.ipkernel")


@pytest.fixture(scope="module")
def zygote():
    with WarmKernels(preload=LIGHT) as wk:
        yield wk


def _manager(wk, base=AsyncKernelManager):
    class Warm(base):
        def format_kernel_cmd(self, extra_arguments=None):
            return wk.kernel_cmd(self.connection_file)

    return Warm


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_notebook_runs_in_a_forked_kernel_with_its_own_env_and_cwd(zygote, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSSL_WARM_TEST", "seen")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    src = _notebook(tmp_path / "nb.ipynb",
                    "import os, sys; print('numpy' in sys.modules, os.getppid(), os.environ.get('MEDSSL_WARM_TEST'), "
                    "os.getcwd())")
    run_dir = tmp_path / "here"
    run_dir.mkdir()
    out = pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                              kernel_manager_class=_manager(zygote), cwd=str(run_dir))
    text = out.cells[0].outputs[0]["text"].split()
    assert text == ["True", str(zygote.proc.pid), "seen", str(run_dir)]  # preloaded, forked, env and cwd passed


def test_each_kernel_starts_clean(zygote, tmp_path):
    """A run's state never reaches the next run: each kernel is a fresh fork of the zygote."""
    src = _notebook(tmp_path / "nb.ipynb", "print(globals().get('leftover')); leftover = 1; import os; print(os.getpid())")
    pids = []
    for i in range(2):
        out = pm.execute_notebook(str(src), str(tmp_path / f"o{i}.ipynb"), kernel_name="python3", progress_bar=False,
                                  kernel_manager_class=_manager(zygote))
        first, pid = out.cells[0].outputs[0]["text"].split()
        assert first == "None"
        pids.append(pid)
    assert pids[0] != pids[1]


def test_interrupt_and_kill_reach_the_forked_kernel(zygote):
    km = _manager(zygote, KernelManager)(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        kc.execute("import os; print(os.getpid())")
        child = None
        deadline = time.time() + 30
        while child is None and time.time() < deadline:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "stream":
                child = int(msg["content"]["text"].strip())
        msg_id = kc.execute("import time; time.sleep(60)")
        time.sleep(1.0)
        t0 = time.time()
        km.interrupt_kernel()  # SIGINT to the launcher, forwarded to the kernel
        reply = kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.time() - t0 < 10
        os.kill(km.provisioner.pid, signal.SIGKILL)  # the launcher dies: the zygote kills its kernel
        deadline = time.time() + 10
        while time.time() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        kc.stop_channels()
        km.cleanup_resources()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped) is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_preload_that_starts_a_thread_is_refused(tmp_path, monkeypatch):
    (tmp_path / "threaded_mod.py").write_text("import threading, time\n"
                                              "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with pytest.raises(WarmKernelError, match="threads running"):
        WarmKernels(preload=("threaded_mod",)).start()


def test_a_preload_that_initialised_cuda_is_refused(tmp_path, monkeypatch):
    """A zygote with CUDA initialised would give every forked kernel the runner's GPUs, whatever the
    kernel's CUDA_VISIBLE_DEVICES (--gpus) says; without a GPU here, the preload pretends it did."""
    (tmp_path / "cuda_mod.py").write_text("import torch\ntorch.cuda.is_initialized = lambda: True\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with pytest.raises(WarmKernelError, match="initialised CUDA"):
        WarmKernels(preload=("torch", "cuda_mod")).start()


def test_a_forked_kernel_sees_the_gpus_its_launcher_was_given(zygote, tmp_path, monkeypatch):
    """The runner's CUDA_VISIBLE_DEVICES (the zygote's) is replaced by the one the kernel was given."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    src = _notebook(tmp_path / "nb.ipynb", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))")
    out = pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                              kernel_manager_class=_manager(zygote), cwd=str(tmp_path))
    assert out.cells[0].outputs[0]["text"].strip() == "3"


def test_stopping_the_zygote_refuses_new_kernels():
    wk = WarmKernels(preload=("numpy",)).start()
    pid = wk.proc.pid
    wk.stop()
    assert not _alive(pid)
    with pytest.raises(WarmKernelError, match="not running"):
        wk.kernel_cmd("/tmp/x.json")


def test_launcher_without_zygote_fails_with_one_line(tmp_path):
    import subprocess

    out = subprocess.run([sys.executable, "-m", "medssl_utils.warmkernel", "launch", str(tmp_path / "none.sock"),
                          "--", "-f", "x.json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "cannot reach the zygote" in out.stderr


def test_a_study_in_warm_kernels_gives_the_results_of_cold_ones(tmp_path):
    """The real fine-tuning notebook at toy size: warm (forked) and cold kernels, identical results."""
    import json

    import yaml

    from medssl_utils import study as st

    doc = {"name": "warm", "results_dir": "results", "defaults": {
        "encoder": "test_resnet", "image_size": 32, "decoder_channels": [16, 8, 8, 8, 8], "device": "cpu",
        "probe_slices": 8, "probe_val_slices": 8, "probe_steps": 10},
        "finetune": {"dataset": "phantom:cardiac?cases=4", "labelled_slices": [6], "seeds": [0],
                     "params": {"max_steps": 4, "eval_every": 2, "batch_size": 4, "lr": 1e-3},
                     "strategies": {"random": "random"}}}
    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump(doc))
    results = {}
    for warm in (True, False):
        out = tmp_path / ("warm" if warm else "cold")
        summary = st.run_study(path, results_dir=out, progress=False, warm_kernels=warm)
        assert summary.exit_code == 0, str(summary)
        assert summary.kernels.startswith("on (zygote started") if warm else summary.kernels == "off"
        results[warm] = json.loads((out / "finetune/random/n6/seed0/result.json").read_text())
    assert results[True]["test"] == results[False]["test"]
    assert results[True]["val_final_dice"] == results[False]["val_final_dice"]
