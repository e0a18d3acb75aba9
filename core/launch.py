"""Grids of runs on a cluster: compare.py's and reproduce.py's cells as jobs of **submitit** (SLURM, or its local
executor, the same code path without a cluster).

    python compare.py --attacks BadNets LC --defenses REFINE NC --launcher slurm --slurm-partition gpu \\
        --slurm-gpus 1 --slurm-time 600

The cells go out in ordered waves: the reference models an attack needs (Benign before LC), then every attack,
then every defense of each attack model that finished; the jobs of a wave run in parallel and the next wave is
submitted when the wave is done. A cell is the same job as on this machine (``run_attack``/``run_defense`` of its
configuration), so a finished run is reused and an interrupted one resumes: a job that SLURM preempts or that
reaches its time limit is requeued by submitit (:class:`GridCell` is checkpointable) and goes on from its last
saved epoch. ``--slurm-gpus N`` > 1 runs each cell on N GPUs of a node as N tasks, each a rank of
core.distributed (submitit exports the torch.distributed environment). ``--launcher local`` (the default) runs
the cells one after another in this process, as before.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from .checks import choice, integer, text
from .errors import UserError
from .settings import Setting, check_value

LAUNCHERS = ("local", "submitit-local", "slurm")

LAUNCH = {
    "launcher": Setting("local", "where the grid's cells run: local (one after another in this process), "
                                 "submitit-local (submitit's jobs on this machine, in parallel) or slurm (submitit's "
                                 "SLURM jobs)", choice(LAUNCHERS), "run"),
    "slurm_partition": Setting(None, "SLURM partition of the cells' jobs", text(optional=True), "run"),
    "slurm_gpus": Setting(1, "GPUs per cell (more than 1: the cell trains on them as torch.distributed ranks)",
                          integer(0), "run"),
    "slurm_cpus": Setting(8, "CPU cores per GPU (per task)", integer(1), "run"),
    "slurm_time": Setting(24 * 60, "time limit of a cell's job in minutes (a job that reaches it is requeued and "
                                   "resumes)", integer(1), "run"),
    "slurm_mem_gb": Setting(64, "memory per cell's job in GB", integer(1), "run"),
    "slurm_extra": Setting(None, "more sbatch options, KEY=VALUE separated by commas (e.g. account=lab,qos=high)",
                           text(optional=True), "run"),
    "submitit_folder": Setting("results/submitit/%j", "where submitit keeps each job's pickles and logs",
                               text(), "run"),
}


def _extra_options(text_value: str | None) -> dict:
    options = {}
    for item in filter(None, (text_value or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-extra takes KEY=VALUE items separated by commas, got {item!r}")
        options[key.strip()] = value.strip()
    return options


def make_executor(opts: argparse.Namespace):
    """The submitit executor that ``opts`` ask for (None for the local launcher)."""
    values = {key: check_value(key, setting, getattr(opts, key, None) if getattr(opts, key, None) is not None
                               else setting.default) for key, setting in LAUNCH.items()}
    launcher = values["launcher"]
    if launcher == "local":
        return None
    try:
        import submitit  # noqa: PLC0415 - needed only for a grid on submitit
    except ImportError:
        raise UserError("--launcher needs submitit: pip install submitit (requirements.txt lists it)") from None
    get = values.get
    # the jobs unpickle core's classes: they must import this checkout from wherever they start (sbatch and the
    # local executor pass the environment on)
    root = str(Path(__file__).resolve().parent.parent)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, paths)])
    if launcher == "slurm" and shutil.which("srun") is None:
        raise UserError("--launcher slurm: no SLURM here (srun is not on the PATH); run the command on the cluster's "
                        "login node, or use --launcher submitit-local to run the jobs on this machine")
    executor = submitit.AutoExecutor(folder=get("submitit_folder"), cluster="local" if launcher != "slurm" else "slurm")
    gpus = get("slurm_gpus")
    params = {"timeout_min": get("slurm_time"), "name": "refine-grid"}
    if launcher == "slurm":
        params.update(gpus_per_node=gpus, tasks_per_node=max(gpus, 1), cpus_per_task=get("slurm_cpus"),
                      mem_gb=get("slurm_mem_gb"), nodes=1)
        if get("slurm_partition"):
            params["slurm_partition"] = get("slurm_partition")
        extra = _extra_options(get("slurm_extra"))
        if extra:
            params["slurm_additional_parameters"] = extra
    executor.update_parameters(**params)
    return executor


class GridCell:
    """One cell of a grid as a submitit job: ``GridCell()("attack" | "defense", config)`` runs that job and returns
    its run folder. Checkpointable: a job that is preempted or times out is resubmitted with the same arguments
    and resumes from its run folder's saved state."""

    def __call__(self, kind: str, config: dict) -> str:
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # several GPUs: one torch.distributed rank per task
            import submitit  # noqa: PLC0415
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if kind == "attack":
            from .run_attack import run_attack  # noqa: PLC0415
            return str(run_attack(config))
        from .run_defense import run_defense  # noqa: PLC0415
        return str(run_defense(config))

    def checkpoint(self, *args, **kwargs):
        import submitit  # noqa: PLC0415
        return submitit.helpers.DelayedSubmission(GridCell(), *args, **kwargs)


def run_wave(executor, cells: list[tuple[str, str, dict]], log=print) -> dict:
    """Submits ``cells`` - (label, kind, config) - as one batch of jobs, waits for all of them and returns
    ``{label: run folder (Path) or the one-line reason the job failed (str)}``."""
    with executor.batch():
        jobs = [(label, executor.submit(GridCell(), kind, config)) for label, kind, config in cells]
    for label, job in jobs:
        log(f"    submitted {label}: job {job.job_id}")
    done = {}
    for label, job in jobs:
        try:
            done[label] = Path(job.result())
        except Exception as exc:  # noqa: BLE001 - a failed job is one cell, reported; the grid goes on
            lines = [line for line in str(exc).splitlines() if line.strip()]
            errors = [line for line in lines if "UserError" in line or line.startswith("error")]
            done[label] = (errors or lines or [type(exc).__name__])[-1].strip()[:300]
            log(f"    {label}: job {job.job_id} failed: {done[label]} (log: {job.paths.stderr})")
    return done
