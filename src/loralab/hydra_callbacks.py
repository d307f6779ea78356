"""Hydra callbacks, listed under ``hydra.callbacks`` in ``conf/train.yaml``."""

from __future__ import annotations

from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class EmptySweepError(ValueError):
    """A multirun whose sweep expands to no job."""


def check_sweep(config: DictConfig) -> None:
    """Raise :class:`EmptySweepError` when the basic sweeper would launch no job for this multirun config.

    The sweep is expanded as the basic sweeper will (``hydra.sweeper.params``, e.g. from ``sweep=...``, then the
    command-line overrides, the last value of a key winning); the error names each parameter without values and,
    for a config group, its options. Other sweepers (Optuna, Ax, ...) choose their jobs themselves: not checked.
    Needs the running Hydra's config loader (glob sweeps list config group options).
    """
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    loader = GlobalHydra.instance().config_loader()
    overrides = OverridesParser.create(config_loader=loader).parse_overrides([*params, *config.hydra.overrides.task])
    final = {o.get_key_element(): o for o in overrides}  # as BasicSweeper.split_arguments: the last one wins
    empty = [o for o in final.values() if o.is_discrete_sweep() and next(o.sweep_string_iterator(), None) is None]
    if not empty:
        return
    problems = []
    for o in empty:
        options = loader.get_group_options(o.key_or_group) if o.is_choice_sweep() else []
        listed = f" (options of {o.key_or_group}: {', '.join(options)})" if options else ""
        problems.append(o.input_line + listed)
    raise EmptySweepError(
        f"the sweep expands to zero runs, so nothing was launched: no value for {'; '.join(problems)}. Fix the "
        "glob pattern or the range bounds, or drop -m to run one configuration"
    )


class FailOnEmptySweep(Callback):
    """Make a multirun whose sweep expands to zero jobs (``rab=glob(nomatch*)``, ``method.r=range(4,1)``) exit with
    status 1 and the message of :func:`check_sweep`, before the sweeper or any launcher starts; Hydra's basic
    sweeper would launch nothing and exit 0."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Exit via SystemExit: Hydra 1.3 turns a callback's exceptions (``Exception``) into warnings."""
        try:
            check_sweep(config)
        except EmptySweepError as e:
            raise SystemExit(f"Error: {e}") from None
