"""A single-node SLURM cluster (munged, slurmctld, slurmd) for tests and local trials.

Everything the cluster needs (configuration, munge key and socket, spool, state, logs,
pid list, simulated GPU device files) lives in one directory that `start_cluster`
creates. `SlurmCluster.stop` ends only the processes this module started.

Run `python tests/support/slurm.py` to start a cluster by hand; it prints the
`export SLURM_CONF=...` line for other shells and stops the cluster on Ctrl-C.

Clients find the cluster through SLURM_CONF alone, like on a site whose slurm.conf is not
at the default path (/etc/slurm/slurm.conf, which does not exist here). Inside jobs, the
slurm-jobstep executor removes SLURM_CONF before its `srun`; the workflow itself restores it
(radpath.slurm.keep_slurm_conf), so the tests need no wrapper around the SLURM clients.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / ".ci" / "install_slurm.sh"
CLIENT_COMMANDS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel", "sacct")
REQUIRED_COMMANDS = ("munged", "slurmctld", "slurmd", *CLIENT_COMMANDS)
PARTITION = "debug"
CLUSTER_NAME = "radpath"
MAX_MEMORY_MB = 20000
# Job states after which a job no longer holds processes on the node.
ACTIVE_JOB_STATES = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED"


class SlurmUnavailableError(RuntimeError):
    """SLURM is not installed and cannot be installed here."""


class SlurmStartError(RuntimeError):
    """The daemons were started but the cluster did not become usable."""


@dataclass(frozen=True)
class NodeSpec:
    """What slurm.conf declares about the only node."""

    name: str
    cpus: int
    real_memory_mb: int
    gpus: int


@dataclass
class SlurmCluster:
    """A running cluster; `env` is what SLURM clients (and snakemake) need."""

    root: Path
    node: NodeSpec
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf_path(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def partition(self) -> str:
        return PARTITION

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf_path)}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster and capture its output."""
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, encoding="utf-8", check=check, timeout=60
        )

    def log_tails(self, n_lines: int = 30) -> str:
        """The last lines of every daemon log, for error messages."""
        return "\n".join(
            f"--- {path.name} ---\n{tail(path, n_lines)}"
            for path in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        """Cancel this cluster's jobs, then end the daemons this module started."""
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            cancel_all_jobs(self)
        for name in reversed(list(self.processes)):
            terminate(self.processes[name])
        self.processes.clear()


def tail(path: Path, n_lines: int) -> str:
    """Last `n_lines` lines of a text file ('' when it does not exist)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n_lines:])


def missing_commands() -> list[str]:
    """SLURM/munge programs that are not on PATH."""
    return [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]


def install_slurm(script: Path = INSTALL_SCRIPT) -> None:
    """Install SLURM and munge with `script` unless they are already on PATH."""
    if not missing_commands():
        return
    if os.geteuid() != 0:
        raise SlurmUnavailableError(f"SLURM is not installed and installing needs root: {missing_commands()}")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailableError("SLURM is not installed and there is no apt-get to install it")
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, encoding="utf-8", timeout=1200)
    if result.returncode != 0 or missing_commands():
        raise SlurmUnavailableError(
            f"{script} failed (exit {result.returncode}, missing {missing_commands()}): "
            f"{(result.stdout + result.stderr)[-2000:]}"
        )


def total_memory_mb() -> int:
    """Physical memory of this machine in MB, from /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmStartError("MemTotal missing from /proc/meminfo")


def detect_node(gpus: int = 2) -> NodeSpec:
    """Describe this machine; memory stays below what slurmd measures (else it drains)."""
    memory_mb = min(MAX_MEMORY_MB, int(total_memory_mb() * 0.8))
    return NodeSpec(socket.gethostname().split(".")[0], os.cpu_count() or 1, memory_mb, gpus)


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gpu_files(root: Path, count: int) -> list[Path]:
    """Paths of the plain files that stand in for GPU device files."""
    return [root / "gpus" / f"gpu{index}" for index in range(count)]


def make_gpu_stand_in(path: Path) -> None:
    """A character device like /dev/null, so slurmd accepts it as a GPU and sets
    CUDA_VISIBLE_DEVICES; a plain file where mknod is not allowed (GPUs are then
    still counted and allocated, only not bound to a device)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        path.touch()


def render_gres_conf(files: list[Path]) -> str:
    return "".join(f"Name=gpu File={path}\n" for path in files)


def render_slurm_conf(root: Path, node: NodeSpec, slurmctld_port: int, slurmd_port: int) -> str:
    """slurm.conf for one node without cgroups, systemd or accounting database."""
    gres = f" Gres=gpu:{node.gpus}" if node.gpus else ""
    return f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={node.name}(127.0.0.1)
SlurmctldPort={slurmctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
PlugStackConfig={root}/plugstack.conf
MailProg=/bin/true
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# Keep finished jobs in slurmctld for a day so `squeue --states=all` (the executor
# plugin's status command here, there is no slurmdbd) still reports them.
MinJobAge=86400
ReturnToService=2
# Seconds between SIGTERM and SIGKILL when a job is cancelled.
KillWait=5
NodeName={node.name} NodeAddr=127.0.0.1 CPUs={node.cpus} RealMemory={node.real_memory_mb}{gres} State=UNKNOWN
PartitionName={PARTITION} Nodes={node.name} Default=YES MaxTime=INFINITE State=UP
"""


def prepare_directory(root: Path, node: NodeSpec) -> None:
    """Write configuration, munge key and GPU stand-ins into `root`."""
    # munged refuses a socket directory that others cannot traverse.
    root.chmod(0o755)
    for sub in ("munge", "spool", "state", "log", "run", "gpus"):
        (root / sub).mkdir(mode=0o755)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    files = gpu_files(root, node.gpus)
    for path in files:
        make_gpu_stand_in(path)
    (root / "plugstack.conf").touch()
    (root / "gres.conf").write_text(render_gres_conf(files), encoding="utf-8")
    (root / "slurm.conf").write_text(
        render_slurm_conf(root, node, slurmctld_port=free_port(), slurmd_port=free_port()),
        encoding="utf-8",
    )


def launch(cluster: SlurmCluster, name: str, command: list[str]) -> None:
    """Start one daemon in the foreground of its own session and record its pid."""
    with open(cluster.log_dir / f"{name}.out.log", "ab") as log:
        process = subprocess.Popen(
            command, env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    cluster.processes[name] = process
    with open(cluster.root / "pids.tsv", "a", encoding="utf-8") as pids:
        pids.write(f"{name}\t{process.pid}\n")


def wait_until(cluster: SlurmCluster, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
    """Poll `ready` until true; raise with the daemon logs on timeout or a dead daemon."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        dead = [name for name, proc in cluster.processes.items() if proc.poll() is not None]
        if dead or time.monotonic() > deadline:
            reason = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout_s:.0f} s"
            raise SlurmStartError(f"SLURM {what} not ready ({reason}):\n{cluster.log_tails()}")
        time.sleep(0.2)


def slurmctld_responds(cluster: SlurmCluster) -> bool:
    result = cluster.run("scontrol", "ping", check=False)
    return result.returncode == 0 and "UP" in result.stdout


def node_state(cluster: SlurmCluster) -> str:
    """State of the node as sinfo prints it ('idle', 'down*', ...; '' when unknown)."""
    result = cluster.run("sinfo", "--noheader", "--Node", "--format=%T", check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def start_cluster(parent: Path | None = None, gpus: int = 2, timeout_s: float = 60) -> SlurmCluster:
    """Install if needed, start munged, slurmctld and slurmd, and wait for an idle node."""
    install_slurm()
    root = Path(tempfile.mkdtemp(prefix="radpath-slurm-", dir=parent))
    cluster = SlurmCluster(root=root, node=detect_node(gpus))
    prepare_directory(root, cluster.node)
    conf = str(cluster.conf_path)
    munge_dir = root / "munge"
    try:
        launch(cluster, "munged", [
            "munged", "--foreground", f"--key-file={munge_dir / 'munge.key'}",
            f"--socket={munge_dir / 'munge.socket'}", f"--pid-file={munge_dir / 'munged.pid'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        ])
        wait_until(cluster, "munged", (munge_dir / "munge.socket").exists, timeout_s)
        launch(cluster, "slurmctld", ["slurmctld", "-D", "-f", conf])
        wait_until(cluster, "slurmctld", lambda: slurmctld_responds(cluster), timeout_s)
        launch(cluster, "slurmd", ["slurmd", "-D", "-f", conf, "-N", cluster.node.name])
        wait_until(cluster, "node", lambda: node_state(cluster) == "idle", timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def cancel_all_jobs(cluster: SlurmCluster, timeout_s: float = 60) -> None:
    """Cancel every unfinished job and wait until none holds processes any more."""
    def active_jobs() -> list[str]:
        result = cluster.run(
            "squeue", "--noheader", "--format=%i", f"--states={ACTIVE_JOB_STATES}", check=False
        )
        return result.stdout.split()

    jobs = active_jobs()
    if jobs:
        cluster.run("scancel", "--full", *jobs, check=False)
    deadline = time.monotonic() + timeout_s
    while active_jobs() and time.monotonic() < deadline:
        time.sleep(0.5)


def terminate(process: subprocess.Popen, timeout_s: float = 15) -> None:
    """SIGTERM one child process, SIGKILL it if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    started = time.monotonic()
    cluster = start_cluster()
    print(f"SLURM is up in {time.monotonic() - started:.1f} s; in another shell run:")
    print(f"  export SLURM_CONF={cluster.conf_path}")
    print("Ctrl-C (or SIGTERM) stops it.", flush=True)
    # Background jobs of a non-interactive shell ignore SIGINT; handle both explicitly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_interrupt)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
