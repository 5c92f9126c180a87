"""Two processes on JAX's distributed runtime (CPU devices, gloo collectives) train exactly as
one process does, share one ledger, and resume together after one of them is killed."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
ROOT = WORKER.parent.parent


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(process_id, num_processes, port, workdir, out, **extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(ROOT),
             DPJAX_NUM_PROCESSES=str(num_processes), DPJAX_PROCESS_ID=str(process_id),
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}")
  command = [sys.executable, str(WORKER), f"--workdir={workdir}",
             f"--out={out}"] + [f"--{k}={v}" for k, v in extra.items()]
  return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _run_pair(workdir, tmp, tag, **extra):
  port = _free_port()
  procs = [_start(i, 2, port, workdir, tmp / f"{tag}{i}.json", **extra) for i in range(2)]
  return procs


def _finish(procs, timeout=240):
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]


def _read(path):
  return json.loads(pathlib.Path(path).read_text())


def _assert_same_params(a, b):
  for x, y in zip(a["params"], b["params"]):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The one-process run, in this process (no jax.distributed)."""
  sys.path.insert(0, str(WORKER.parent))
  try:
    import multihost_worker  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return json.loads(json.dumps(multihost_worker.run(str(tmp_path_factory.mktemp("one") / "w"))))


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
  """Two processes train; process 1 is SIGKILLed after step 3 (the checkpoint holds step 2),
  process 0 is stopped as a scheduler would, and both are restarted on the same workdir."""
  tmp = tmp_path_factory.mktemp("two_processes")
  workdir = tmp / "work"
  start = time.perf_counter()
  procs = _run_pair(workdir, tmp, "killed", kill_at_step=3)
  procs[1].wait(timeout=240)
  killed_code = procs[1].returncode
  procs[0].kill()
  procs[0].communicate(timeout=60)
  interrupted = time.perf_counter()
  _finish(_run_pair(workdir, tmp, "resumed"))
  end = time.perf_counter()
  print(f"two processes: {interrupted - start:.1f} s to the kill, {end - interrupted:.1f} s "
        "for the resumed run")
  return {"killed_code": killed_code, "workdir": workdir,
          "results": [_read(tmp / f"resumed{i}.json") for i in range(2)]}


def test_two_processes_equal_one_process(reference, killed_and_resumed):
  for result in killed_and_resumed["results"]:
    assert result["process_count"] == 2 and result["devices"] == 2
    _assert_same_params(result, reference)  # noise added once, each process its own share
    assert result["epsilon"] == pytest.approx(reference["epsilon"], rel=1e-12)
  workdir = killed_and_resumed["workdir"]
  assert not list((workdir / "private").glob("*.tmp*"))  # one writer: process 0


def test_killing_one_process_and_restarting_both_resumes_with_the_ledger(reference,
                                                                        killed_and_resumed):
  assert killed_and_resumed["killed_code"] == -9
  for result in killed_and_resumed["results"]:
    assert result["ledger_steps"] == reference["ledger_steps"] == 6  # 2 restored + 4 run
  logged = [json.loads(line)["step"] for line in
            (killed_and_resumed["workdir"] / "progress.jsonl").read_text().splitlines()]
  assert 2 in logged and logged[-4:] == [3, 4, 5, 6]  # one log, by process 0, across the kill


def test_initialize_distributed_reads_the_environment(monkeypatch):
  from dpjax import parallel
  for name in ("DPJAX_NUM_PROCESSES", "DPJAX_PROCESS_ID", "SLURM_NTASKS", "SLURM_JOB_ID"):
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize_distributed() is False  # one process: nothing to join
  monkeypatch.setenv("DPJAX_NUM_PROCESSES", "2")
  with pytest.raises(ValueError, match="DPJAX_PROCESS_ID"):
    parallel.initialize_distributed()


def test_shard_batch_needs_the_global_size_with_several_processes(monkeypatch):
  import jax
  from dpjax import parallel
  mesh = parallel.data_mesh(jax.local_devices()[:1])
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match="global_batch_size"):
    parallel.shard_batch({"x": np.zeros((4, 2))}, np.ones(4, bool), mesh)


def test_processes_that_restored_different_checkpoints_stop(monkeypatch):
  """Without a filesystem shared by the hosts, process 1 finds no checkpoint (step -1) while
  process 0 resumes at step 2: training on would mix two runs and two ledgers."""
  from jax.experimental import multihost_utils
  from dpjax import engine
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: np.asarray([[2], [-1]]))
  with pytest.raises(ValueError, match="shared by every host"):
    engine._check_same_checkpoint(None)  # pylint: disable=protected-access
  monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.asarray([[-1], [-1]]))
  engine._check_same_checkpoint(None)  # pylint: disable=protected-access
