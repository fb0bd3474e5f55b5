"""Two processes on 127.0.0.1 (2 CPU devices each, gloo collectives) train like one process
with 4 devices, and their checkpoint resumes in a single process."""

import socket
import subprocess
import sys

import numpy as np

from test_trainer import ROOT, corpus_flags
from train.logging import read_metrics
from conftest import simulated_devices_env

MESH = ["--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, flags, devices, *dist):
    env = simulated_devices_env(devices)
    cmd = [sys.executable, "-m", "experiments.pretrain_lm", f"--workdir={workdir}", *flags, *dist]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(*procs):
    """Wait for all, bounded; kill whatever is left; return their outputs."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def losses(workdir, split="train"):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == split}


def test_two_processes_match_one_and_their_checkpoint_resumes(tmp_path):
    flags = corpus_flags(tmp_path) + MESH + ["--config.train.schedule=constant",
                                             "--config.train.warmup_steps=0",
                                             "--config.train.eval_every=4"]
    # One process, 4 devices, 8 steps (this also trains and caches the tokenizer).
    finish(launch(tmp_path / "one", flags + ["--config.train.steps=8"], 4))
    want = losses(tmp_path / "one")

    # Two processes of 2 devices each, 4 steps, a checkpoint at the end.
    port = free_port()
    procs = [launch(tmp_path / "two", flags + ["--config.train.steps=4"], 2,
                    f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}") for i in range(2)]
    out0, _ = finish(*procs)
    assert "4 cpu devices in 2 process(es)" in out0
    assert "--- sample ---" in out0          # parameters gathered across processes
    got = losses(tmp_path / "two")
    assert sorted(got) == [1, 2, 3, 4]       # logged once, by process 0
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [want[s] for s in range(1, 5)],
                               rtol=1e-4)
    np.testing.assert_allclose(losses(tmp_path / "two", "val")[0],
                               losses(tmp_path / "one", "val")[0], rtol=1e-4)
    assert (tmp_path / "two" / "checkpoints" / "4").is_dir()

    # The same command in one process with 4 devices resumes from it and continues.
    out = finish(launch(tmp_path / "two", flags + ["--config.train.steps=8"], 4))[0]
    assert "resumed from" in out
    got = losses(tmp_path / "two")
    np.testing.assert_allclose([got[s] for s in range(1, 9)], [want[s] for s in range(1, 9)],
                               rtol=1e-4)
