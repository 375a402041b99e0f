"""A whole ``DPOTrainer`` step through the drop-in equals TRL 1.16's own, for every DPO loss type, an MPO list and
TRL's options, with the fused head and on the full-logits path (ρ = 0; float64; loss and every gradient).

The same tiny model, data and batch go through ``trl.DPOTrainer.compute_loss`` and
``with_logits_sam(trl.DPOTrainer)(..., rho=0).compute_loss``. TRL 1.16 itself fails on ``hinge`` and ``sft``
with ``use_weighting`` (autograd refuses its in-place multiply), so those two have no TRL step to equal:
their WPO values are checked by hand in test_losses_trl and through the fused head in test_fused_trl_losses.
"""

import pytest
import torch
from test_trl_integration import dpo_trainer, models, rel, step

trl = pytest.importorskip("trl")
from logitsam.core.registry_trl import TRL_NAMES  # noqa: E402
from logitsam.integrations.trl import with_logits_sam  # noqa: E402

pytestmark = pytest.mark.slow  # trains or launches processes: `pytest -m 'not slow'` skips it

SMOOTHING = {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.1, "aot_unpaired": 0.1}
CASES = [({"loss_type": [lt], "label_smoothing": SMOOTHING.get(lt, 0.0)}, lt) for lt in TRL_NAMES]
CASES += [
    ({"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]}, "mpo"),
    ({"loss_type": ["sigmoid"], "ld_alpha": 0.3}, "ld_alpha"),
    ({"loss_type": ["aot"], "ld_alpha": 0.3}, "ld_alpha-aot"),
    ({"loss_type": ["sigmoid", "apo_zero"], "use_weighting": True, "loss_weights": [1.0, 0.5]}, "use_weighting"),
    ({"loss_type": ["ipo"], "f_divergence_type": "js_divergence"}, "js"),
    ({"loss_type": ["discopop"], "f_divergence_type": "forward_kl", "discopop_tau": 0.3}, "forward_kl"),
    ({"loss_type": ["sigmoid", "sft"], "ld_alpha": 0.5, "precompute_ref_log_probs": True}, "ld-precomputed"),
]


def close(mine, theirs):
    """TRL's fused head works in float32 whatever the model's dtype, ours in float64 here: measured differences
    are ≤ 1e-6 (losses) and ≤ 4e-5 (gradients, discopop's e^(−ρ) the largest); a wrong reduction, weight or
    option is off by percents."""
    assert abs(mine[0].item() - theirs[0].item()) <= 2e-6 * abs(theirs[0].item())
    assert rel(mine, theirs) <= 1e-4


@pytest.mark.parametrize(("cfg", "case"), CASES, ids=[c[1] for c in CASES])
def test_drop_in_step_equals_trl_for_every_loss_type(cfg, case, tmp_path):
    base, policy = models(torch.float64)
    theirs_tr = dpo_trainer(trl.DPOTrainer, tmp_path / "t", base, policy, beta=0.2, **cfg)
    batch = next(iter(theirs_tr.get_train_dataloader()))
    theirs = step(theirs_tr, batch)
    ours_tr = dpo_trainer(
        with_logits_sam(trl.DPOTrainer), tmp_path / "o", base, policy, sam={"rho": 0.0}, beta=0.2, **cfg
    )
    if cfg.get("precompute_ref_log_probs"):
        batch = next(iter(ours_tr.get_train_dataloader()))  # the same rows, with TRL's precomputed references
        assert "ref_chosen_logps" in batch
    assert abs(theirs[0].item()) > 1e-3  # a non-trivial loss
    close(step(ours_tr, batch), theirs)
    ours_tr.model.zero_grad()
    ours_tr.logitsam_objective.fused = False  # the full-logits path (sharded heads, soft-capped logits)
    close(step(ours_tr, batch), theirs)
