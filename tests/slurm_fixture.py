"""A real one-node SLURM for the tests: ``pipelines/slurm/start-local-slurm.sh`` once per session.

The ``slurm_cluster`` fixture starts munged, slurmctld and slurmd on 127.0.0.1
(installing Debian's ``slurm-wlm`` with apt-get when it is missing), sets
``SLURM_CONF`` for the session and stops the daemons at the end, unless they
were running before (or ``WSI_DEEPR_SLURM_KEEP=1``).  It skips, with the
reason, where it cannot run: not root, or no SLURM and no apt-get, or the
installation failed (no network).  A SLURM that is installed but does not
start fails the tests instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "pipelines" / "slurm"


@dataclass(frozen=True)
class LocalSlurm:
    """The running one-node SLURM: its config, state folder and node."""

    conf: Path
    state: Path
    node: str
    cpus: int
    memory_mb: int

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a SLURM command (``squeue``, ``scontrol``...) against this cluster."""
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check,
                              env={**os.environ, "SLURM_CONF": str(self.conf)})

    def jobs(self, name: str | None = None) -> dict[str, str]:
        """``{job id: state}`` of the jobs in the queue (optionally of one job name)."""
        cmd = ["squeue", "--noheader", "--format", "%i|%T"] + (["--name", name] if name else [])
        lines = self.run(*cmd).stdout.split()
        return dict(line.split("|") for line in lines)


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster() -> LocalSlurm:
    """Start (or reuse) the one-node SLURM; skip where it cannot run here."""
    if os.geteuid() != 0:
        pytest.skip("a one-node SLURM needs root (munged, slurmctld, slurmd)")
    installed = shutil.which("slurmctld") is not None
    if not installed and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install slurm-wlm")
    state = Path(os.environ.get("WSI_DEEPR_SLURM_STATE", "/tmp/wsi-deepr-slurm"))
    running = _alive(state / "run" / "slurmctld.pid")
    proc = subprocess.run([str(SCRIPTS / "start-local-slurm.sh"), str(state)], capture_output=True, text=True,
                          timeout=900, check=False)
    if proc.returncode:
        if not installed and shutil.which("slurmctld") is None:
            pytest.skip(f"could not install slurm-wlm with apt-get: {proc.stderr.strip()[-300:]}")
        pytest.fail(f"start-local-slurm.sh failed ({proc.returncode}):\n{proc.stderr}")
    conf = state / "etc" / "slurm.conf"
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    info = subprocess.run(["sinfo", "--noheader", "--Node", "--format", "%c|%m"], capture_output=True, text=True,
                          check=True).stdout.split()[0].split("|")
    try:
        yield LocalSlurm(conf, state, node, int(info[0]), int(info[1]))
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        if not running and os.environ.get("WSI_DEEPR_SLURM_KEEP") != "1":
            subprocess.run([str(SCRIPTS / "stop-local-slurm.sh"), str(state)], capture_output=True, timeout=120,
                           check=False)
