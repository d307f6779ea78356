from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.base import MethodConfig


@dataclass
class SoraConfig(MethodConfig):
    """SoRA (Ding et al., 2023): a gated LoRA ``h = W x + (alpha / r) B (g * (A x))`` whose gate ``g`` (size r per
    module) is made sparse by a proximal step after each optimizer step:
    ``g <- sign(g) * max(|g| - threshold, 0)`` (soft threshold; entries within it of zero become exactly zero).

    As the reference code (TsinghuaC3I/SoRA): A Kaiming-uniform, B zero, g standard normal, and two sparsity terms
    with separate coefficients (``run_glue.py``'s ``SparseArguments``):
    - ``sparse_lambda`` (``--sparse_lambda``, "loss penalty term for gate param"; its scripts: 10): ``trainer.py``
      adds ``sparse_lambda * sum|g| / p_total`` to the loss, ``p_total`` the number of gate entries of the model.
    - ``xi`` (``--sparse_lambda_2``, "clipping scale for gate param"; its scripts: 3e-4): the proximal threshold.
      ``multiply_lr=true`` (default): the threshold is ``xi * lr``, lr the learning rate of the step just taken
      (``sparse_optimizer_multiply_lr.py``, "p.data[p.data > self.sparse_lambda * group["lr"]] -= ..."; the
      proximal-gradient step, whose threshold scales with the step size). ``multiply_lr=false``: the threshold is
      ``xi`` itself (``sparse_optimizer.py``, the optimizer ``run_glue.py`` imports). With ``xi`` >= the Adam step
      (about lr) a zeroed gate can never come back, so RM-LoRA's lambdas (5e-3 at lr 1e-3) prune every gate within
      a few hundred steps under ``multiply_lr=false``.
    RM-LoRA's SoRA "lambda" (Table 4, per task; Tables 2-3 print it as "lambda_2 = 5e-4", the "pre-set threshold
    lambda" of its text) is the reference's ``sparse_lambda_2``, i.e. ``xi`` here.

    Differences from the reference: one AdamW for all parameters (the reference gives the gates their own, with
    weight decay 0 and the same learning rate and schedule: equal unless ``trainer.weight_decay`` > 0).

    After training the run records, for the best epoch's gates (the output adapters): each adapter's non-zero
    gates (its effective rank), the fraction of zero gates, and ``inference_params``: the pruned model's size (the
    kept A rows and B columns, the gate folded into B, plus the trained head), RM-LoRA's "# I - Params".
    """

    name: str = "sora"
    targets: str = "D+A"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    xi: float = 3.0e-4
    multiply_lr: bool = True
    sparse_lambda: float = 10.0
