"""Train one configuration: python train.py model=roberta-base task=glue/rte method=lora_mini [key=value ...].

Sweeps: python train.py -m method.r=8,16 ... or a named grid: python train.py sweep=lora_mini_grid.
Parameter counts without weights or data: python train.py ... dry_run=true (last line is JSON).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from loralab.config import register_configs
from loralab.run import run

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
