from __future__ import annotations

import torch
from torch import nn

from loralab.adapters import AdapterLinear, Factor, adapter_layers
from loralab.methods.adalora.config import AdaLoraConfig
from loralab.methods.base import Method, register
from loralab.methods.pruned import inference_params


@register("adalora", AdaLoraConfig)
class AdaLora(Method):
    cfg: AdaLoraConfig

    def __init__(self, cfg: AdaLoraConfig) -> None:
        super().__init__(cfg)
        if not 1 <= cfg.target_r <= cfg.init_r:
            raise ValueError(f"adalora: need 1 <= target_r <= init_r, got target_r={cfg.target_r} init_r={cfg.init_r}")
        self.total_steps = 0
        self.ema: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # parameter name -> (I_bar, U_bar)
        self.final_mask: dict[str, torch.Tensor] | None = None
        self.budget_log: list[tuple[int, int, int]] = []  # (step, budget, active triplets) after each masking
        self.totals: tuple[int, int] | None = None  # (start, end) budget; None: init_r * K -> target_r * K
        self.best_ranks: dict[str, int] | None = None  # active ranks of the best epoch's (the output) adapters

    @property
    def scaling(self) -> float:
        return self.cfg.alpha / self.cfg.init_r

    def factors(self, module_name: str, in_features: int, out_features: int) -> list[Factor]:
        r = self.cfg.init_r
        return [
            Factor("Q", "matrix", in_features, r, init="normal:0.02"),
            Factor("E", "diag", r, r, init="zeros"),  # lambda
            Factor("P", "matrix", r, out_features, init="normal:0.02"),
        ]

    def layers(self, model: nn.Module) -> dict[str, AdapterLinear]:
        return adapter_layers(model)

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        """Each training phase is a fresh AdaLoRA run: new importance EMAs, schedule and final mask."""
        self.total_steps, self.ema, self.final_mask = total_steps, {}, None
        if total_steps - self.cfg.t_final <= self.cfg.t_init:
            raise ValueError(
                f"adalora: the schedule needs t_init < T - t_final, got t_init={self.cfg.t_init}, "
                f"t_final={self.cfg.t_final}, T={total_steps} optimizer steps; lower method.t_init/method.t_final"
            )

    # --- the budget ------------------------------------------------------------------------------------------
    def budget(self, step: int, modules: int) -> int:
        """Eq. 12: the total number of triplets kept after ``step``."""
        b0, bt = self.totals or (self.cfg.init_r * modules, self.cfg.target_r * modules)
        ti, tf, total = self.cfg.t_init, self.cfg.t_final, self.total_steps
        if step < ti:
            return b0
        if step >= total - tf:
            return bt
        return int(bt + (b0 - bt) * (1 - (step - ti) / (total - ti - tf)) ** 3)

    # --- hooks -----------------------------------------------------------------------------------------------
    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        """The orthogonal regulariser: the code's mean of plain norms, or eq. 7's sum of squares (``orth_squared``)."""
        if self.cfg.orth_weight == 0:
            return None
        norms = []
        for layer in self.layers(model).values():
            p, q = layer.factors["P"], layer.factors["Q"]
            eye = torch.eye(p.shape[1], device=p.device, dtype=p.dtype)
            norms += [torch.linalg.matrix_norm(gram - eye) for gram in (p.T @ p, q @ q.T)]  # Frobenius
        if not norms:
            return None
        total = torch.stack(norms)
        return self.cfg.orth_weight * (total.square().sum() if self.cfg.orth_squared else total.mean())

    @torch.no_grad()
    def update_importance(self, model: nn.Module) -> None:
        """Eq. 8-9: the sensitivity and uncertainty EMAs from the current (post-step) weights and gradients."""
        b1, b2 = self.cfg.beta1, self.cfg.beta2
        for name, layer in self.layers(model).items():
            for f in ("P", "E", "Q"):
                p = layer.factors[f]
                if p.grad is None:
                    continue
                sensitivity = (p * p.grad).abs()
                key = f"{name}.{f}"
                i_bar, u_bar = self.ema.get(key, (torch.zeros_like(p), torch.zeros_like(p)))
                i_bar = b1 * i_bar + (1 - b1) * sensitivity
                u_bar = b2 * u_bar + (1 - b2) * (sensitivity - i_bar).abs()
                self.ema[key] = (i_bar, u_bar)

    def triplet_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Eq. 10 per module: s(lambda_i) + mean_j s(P_ji) + mean_j s(Q_ij)."""
        scores = {}
        for name in self.layers(model):
            s = {f: torch.mul(*self.ema[f"{name}.{f}"]) for f in ("P", "E", "Q") if f"{name}.{f}" in self.ema}
            if len(s) == 3:
                scores[name] = s["E"] + s["P"].mean(dim=0) + s["Q"].mean(dim=1)
        return scores

    @torch.no_grad()
    def mask_to_budget(self, model: nn.Module, step: int) -> dict[str, torch.Tensor]:
        """Zero every lambda outside the global top-b(step) triplet scores; logs and returns the kept masks."""
        scores, budget = self.triplet_scores(model), self.budget(step, len(self.layers(model)))
        if not scores:
            return {}
        flat = torch.cat(list(scores.values()))
        threshold = torch.topk(flat, min(budget, flat.numel())).values[-1] if budget > 0 else float("inf")
        keep = {n: s >= threshold for n, s in scores.items()}
        self._apply(model, keep)
        self.budget_log.append((step, budget, int(sum(int(k.sum()) for k in keep.values()))))
        return keep

    def _apply(self, model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        layers = self.layers(model)
        for n, k in keep.items():
            layers[n].factors["E"].masked_fill_(~k, 0.0)

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """The reference's ``update_and_mask``: importance EMAs (not in the final phase), then the budget's mask."""
        cfg = self.cfg
        final = step >= self.total_steps - cfg.t_final
        if not final:
            self.update_importance(model)
        if step < cfg.t_init:
            return
        if not final:
            if (step - cfg.t_init) % cfg.delta_t == 0:
                self.mask_to_budget(model, step)
        elif self.final_mask is None:
            self.final_mask = self.mask_to_budget(model, step)
        elif cfg.final_remask:
            self._apply(model, self.final_mask)

    @torch.no_grad()
    def active_ranks(self, model: nn.Module) -> dict[str, int]:
        """Per adapter: the triplets whose lambda is non-zero."""
        return {n: int((layer.factors["E"] != 0).sum()) for n, layer in self.layers(model).items()}

    def on_best_epoch(self, model: nn.Module) -> None:
        self.best_ranks = self.active_ranks(model)

    def final_metrics(self, model: nn.Module) -> dict:
        final = self.active_ranks(model)
        ranks = self.best_ranks if self.best_ranks is not None else final
        return {
            "rank": ranks,
            "mean_rank": sum(ranks.values()) / max(len(ranks), 1),
            "ranks_of": "best_epoch" if self.best_ranks is not None else "end_of_training",
            "mean_final_rank": sum(final.values()) / max(len(final), 1),
            "inference_params": inference_params(model, ranks),
            "budget_log": self.budget_log,
        }

    def state_dict(self) -> dict:
        return {"ema": self.ema, "final_mask": self.final_mask, "budget_log": self.budget_log,
                "best_ranks": self.best_ranks}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.final_mask, self.budget_log = state["ema"], state["final_mask"], state["budget_log"]
        self.best_ranks = state["best_ranks"]
