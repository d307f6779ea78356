from __future__ import annotations

import torch
from torch import nn

from loralab.adapters import AdapterLinear, adapter_layers
from loralab.methods.base import register
from loralab.methods.lora.method import Lora
from loralab.methods.rm_lora.config import RmLoraConfig


def orthogonality_penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 10: ``||A A^T - I||_F^2 + ||B^T B - I||_F^2`` for A (r x d_in) and B (d_out x r)."""
    eye = torch.eye(a.shape[0], device=a.device, dtype=a.dtype)
    return (a @ a.T - eye).square().sum() + (b.T @ b - eye).square().sum()


@register("rm_lora", RmLoraConfig)
class RmLora(Lora):
    cfg: RmLoraConfig

    def __init__(self, cfg: RmLoraConfig) -> None:
        super().__init__(cfg)
        r_hat = cfg.r // 2 if cfg.mask_directions is None else cfg.mask_directions
        if cfg.mask and not 1 <= r_hat <= cfg.r:
            raise ValueError(f"rm_lora: mask_directions must be in 1..r={cfg.r}, got {r_hat}")
        if not 0 <= cfg.rank_rtol < 1:
            raise ValueError(f"rm_lora: rank_rtol must be in [0, 1), got {cfg.rank_rtol}")
        self.r_hat = r_hat
        self.generator = torch.Generator().manual_seed(cfg.mask_seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self._frozen: list[tuple[nn.Parameter, torch.Tensor, dict[str, torch.Tensor]]] = []

    def _pairs(self, model: nn.Module) -> list[tuple[str, AdapterLinear]]:
        return list(adapter_layers(model).items())

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        if not self.cfg.regularize:
            return None
        total = sum(orthogonality_penalty(layer.factors["A"], layer.factors["B"]) for _, layer in self._pairs(model))
        return self.cfg.reg_weight * total

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Algorithm 1: keep the gradient of r-hat random directions per adapter; remember the masked entries."""
        if not self.cfg.mask:
            return
        self._frozen = []
        for _, layer in self._pairs(model):
            keep = torch.zeros(self.cfg.r, dtype=torch.bool)
            keep[torch.randperm(self.cfg.r, generator=self.generator)[: self.r_hat]] = True
            keep = keep.to(layer.factors["A"].device)
            for p, masked in ((layer.factors["A"], ~keep[:, None]), (layer.factors["B"], ~keep[None, :])):
                masked = masked.expand_as(p)
                if p.grad is not None:
                    p.grad.masked_fill_(masked, 0.0)
                state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
                moments = {k: v[masked].clone() for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape}
                self._frozen.append((p, masked, {"param": p.detach()[masked].clone(), **moments}))

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Write the masked entries (and their optimizer moments) back: the step did not move them."""
        for p, masked, saved in self._frozen:
            p[masked] = saved["param"]
            state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
            for k, v in saved.items():
                if k != "param":
                    state[k][masked] = v
        self._frozen = []

    @torch.no_grad()
    def final_metrics(self, model: nn.Module) -> dict:
        """Per adapter, on the unscaled ``Delta W = B A``: rank (relative tolerance ``rank_rtol``) and the
        orthogonality loss ``||Delta W Delta W^T - I||_F^2`` (RM-LoRA Table 5)."""
        ranks, losses = {}, {}
        for name, layer in self._pairs(model):
            dw = (layer.factors["B"] @ layer.factors["A"]).float()  # (d_out, d_in): the paper's W_B W_A
            singular = torch.linalg.svdvals(dw)
            ranks[name] = int((singular > self.cfg.rank_rtol * singular.max()).sum()) if singular.max() > 0 else 0
            losses[name] = float((dw @ dw.T - torch.eye(dw.shape[0], device=dw.device)).square().sum())
        n = max(len(ranks), 1)
        return {
            "delta_rank": ranks,
            "delta_orthogonality_loss": losses,
            "mean_delta_rank": sum(ranks.values()) / n,
            "mean_delta_orthogonality_loss": sum(losses.values()) / n,
        }

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
