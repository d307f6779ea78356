"""``hydra/launcher=fused``: a sweep's runs trained as fused groups in one process (:mod:`loralab.fused`).

    python train.py -m hydra/launcher=fused model=tiny-roberta task=glue/rte method=lora_mini \\
        rab=r8_a16_b16,r8_a16_b32 method.targets=D,D+A

Every job is composed and gets its output directory and ``.hydra/`` (config, hydra config, overrides) as with
Hydra's basic launcher. Jobs whose configs differ only in their method node (``rab`` lands there) are trained
together by :func:`loralab.fused.run_fused`, at most ``max_group`` at a time (``null``: all of them; a bound on
memory), and each writes its own ``results.json`` and ``adapter.safetensors``. A job whose directory already holds
its finished result is skipped; a killed group resumes from its checkpoint. A method that cannot be fused fails the
launch before anything is trained.

The launcher trains with loralab itself (it does not call the task function given to ``hydra.main``): it is for
``train.py``. A group's log goes to its first job's directory. Hydra only instantiates launchers from the
``hydra_plugins`` namespace package, hence this module's place (``src/hydra_plugins`` has no ``__init__.py``).
"""

# no ``from __future__ import annotations``: Hydra's plugin scan executes this module before it is in sys.modules,
# and dataclasses cannot resolve string annotations then
import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _save_config,
    configure_log,
    filter_overrides,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """One job of the sweep: its overrides, composed config (with and without ``hydra``) and output directory."""

    index: int
    overrides: list[str]
    config: DictConfig
    task_cfg: DictConfig
    hydra_cfg: DictConfig
    output_dir: Path

    def returned(self, status: JobStatus, value: Any) -> JobReturn:
        ret = JobReturn(
            overrides=self.overrides,
            cfg=self.task_cfg,
            hydra_cfg=self.hydra_cfg,
            working_dir=os.getcwd(),
            task_name=JobRuntime.instance().get("name"),
            status=status,
        )
        ret.return_value = value
        return ret


class FusedLauncher(Launcher):
    """Launches a sweep's jobs as fused groups (see the module docstring)."""

    def __init__(self, max_group: int | None = None) -> None:
        super().__init__()
        self.max_group = max_group
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _compose(self, index: int, overrides: Sequence[str]) -> _Job:
        """The job's config and output directory, as Hydra's ``run_job`` computes them."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = index
            cfg.hydra.job.num = index
        HydraConfig.instance().set_config(cfg)
        output_dir = Path(os.path.abspath(Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)))
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(cfg)
        task_cfg = copy.deepcopy(cfg)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        overrides = OmegaConf.to_container(cfg.hydra.overrides.task)
        return _Job(index, overrides, cfg, task_cfg, copy.deepcopy(HydraConfig.instance().cfg), output_dir)

    def _save_configs(self, job: _Job) -> None:
        if job.config.hydra.output_subdir is not None:
            folder = job.output_dir / str(job.config.hydra.output_subdir)
            _save_config(job.task_cfg, "config.yaml", folder)
            _save_config(job.hydra_cfg, "hydra.yaml", folder)
            _save_config(job.config.hydra.overrides.task, "overrides.yaml", folder)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from loralab.checkpoint import run_id  # imported here: Hydra imports every plugin module at start-up
        from loralab.fused import group_configs
        from loralab.records import finished_result

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        original = HydraConfig.instance().cfg
        try:
            jobs = [self._compose(initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
        finally:
            HydraConfig.instance().cfg = original
        returns: list[JobReturn | None] = [None] * len(jobs)
        pending = []
        for i, job in enumerate(jobs):
            try:
                done = finished_result(job.output_dir, run_id(job.task_cfg))
            except ValueError as e:  # the directory holds another run
                returns[i] = job.returned(JobStatus.FAILED, e)
                continue
            if done is None:
                pending.append(i)
            else:
                log.info("\t#%d : %s: already finished, skipped", job.index, job.output_dir)
                returns[i] = job.returned(JobStatus.COMPLETED, done)
        groups = [
            [pending[g] for g in group] for group in group_configs([jobs[i].task_cfg for i in pending], self.max_group)
        ]
        log.info("Launching %d jobs as %d fused group(s)", len(pending), len(groups))
        for group in groups:
            for i, ret in zip(group, self._run_group([jobs[i] for i in group]), strict=True):
                returns[i] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _run_group(self, jobs: list[_Job]) -> list[JobReturn]:
        """Train one fused group; every job of a group that fails is FAILED with that error."""
        from loralab.fused import run_fused

        for job in jobs:
            log.info("\t#%d : %s", job.index, " ".join(filter_overrides(job.overrides)))
            self._save_configs(job)
        original = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(jobs[0].config)  # ${hydra:...} resolves as in the group's first job
        configure_log(jobs[0].config.hydra.job_logging, jobs[0].config.hydra.verbose)
        callbacks = self.hydra_context.callbacks
        try:
            for job in jobs:
                callbacks.on_job_start(config=job.config, task_function=self.task_function)
            try:
                results = run_fused([j.task_cfg for j in jobs], [j.output_dir for j in jobs])
                returns = [j.returned(JobStatus.COMPLETED, r) for j, r in zip(jobs, results, strict=True)]
            except Exception as e:
                log.exception("fused group failed: %s", [str(j.output_dir) for j in jobs])
                returns = [j.returned(JobStatus.FAILED, e) for j in jobs]
            for job, ret in zip(jobs, returns, strict=True):
                callbacks.on_job_end(config=job.config, job_return=ret)
        finally:
            HydraConfig.instance().cfg = original
        return returns
