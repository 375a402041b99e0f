"""TRL 1.16's own DPO loss on given per-token log-probs, and ours on the same numbers (test helper).

TRL 1.16 has no free ``dpo_loss`` function: the loss types, their reductions, ``ld_alpha``'s masks,
``f_divergence_type`` and WPO's weights live inside ``DPOTrainer._compute_loss``. ``trl_loss`` runs that very
method with a stand-in trainer and stand-in models that return the given per-token log-probs (and
log Σ_v p(v)² for WPO), so the comparison is with TRL's code, not a transcription of it.
"""

from __future__ import annotations

import types
from collections import defaultdict

import torch

from logitsam.core.combined import combine_losses
from logitsam.core.extras import shared_labels
from logitsam.core.logprobs import IGNORE_INDEX, sequence_logps, shift_for_causal_lm
from logitsam.core.objective import pair_logps
from logitsam.core.registry_trl import TRL_NAMES


def random_batch(b=5, t=14, seed=0, dtype=torch.float64):
    """(policy (S, T−1) with grad, reference (S, T−1), log Σp² (S, T−1), completion_mask (S, T)), S = 2B.

    Each sequence: a prompt of 2–4 tokens, a response of 1–(T−5) tokens, then padding; chosen and rejected
    lengths differ, so LD-DPO's shared part is a proper prefix of the longer response.
    """
    g = torch.Generator().manual_seed(seed)
    s = 2 * b
    mask = torch.zeros(s, t, dtype=torch.long)
    for i in range(s):
        p = int(torch.randint(2, 5, (1,), generator=g))
        n = int(torch.randint(1, t - p, (1,), generator=g))
        mask[i, p : p + n] = 1
    shift = mask[:, 1:].bool()
    lp = (-3.0 * torch.rand(s, t - 1, generator=g, dtype=dtype)).masked_fill(~shift, 0.0)
    ref = (lp + 0.4 * torch.randn(s, t - 1, generator=g, dtype=dtype)).clamp(max=0).masked_fill(~shift, 0.0)
    lsq = (-2.0 * torch.rand(s, t - 1, generator=g, dtype=dtype)).masked_fill(~shift, 0.0)
    return lp.requires_grad_(), ref, lsq, mask


class _Model(torch.nn.Module):
    is_gradient_checkpointing = False

    def __init__(self, lp, lsq):
        super().__init__()
        self.lp, self.lsq = lp, lsq

    def forward(self, **kw):
        z = torch.zeros(self.lp.shape)
        return types.SimpleNamespace(
            log_probs=self.lp, log_sum_sq_probs=self.lsq, entropy=z, mean_logits=z, is_top1=z.bool(), aux_loss=None
        )


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    gather = gather_for_metrics


def trl_loss(lp, ref, lsq, mask, *, loss_type, loss_weights=None, beta=0.1, label_smoothing=0.0,
             f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, ld_alpha=None, use_weighting=False,
             discopop_tau=0.05):  # fmt: skip
    """TRL 1.16 ``DPOTrainer._compute_loss`` on these per-token log-probs (scalar, with graph to ``lp``)."""
    from trl import DPOTrainer

    types_ = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    fake = types.SimpleNamespace(
        model=_Model(lp, lsq), ref_model=_Model(ref, lsq), accelerator=_Accelerator(), aux_loss_enabled=False,
        precompute_ref_logps=False, beta=beta, loss_types=types_, loss_weights=loss_weights or [1.0] * len(types_),
        ld_alpha=ld_alpha, f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
        label_smoothing=label_smoothing, use_weighting=use_weighting, _metrics={"train": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
        args=types.SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
    )  # fmt: skip
    inputs = {"input_ids": torch.ones_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask}
    return DPOTrainer._compute_loss(fake, fake.model, inputs, False)


def our_params(loss_type, *, beta=0.1, label_smoothing=0.0, f_divergence_type="reverse_kl",
               f_alpha_divergence_coef=0.5, ld_alpha=None, use_weighting=False, discopop_tau=0.05):  # fmt: skip
    """Our registered name and hyperparameters for one TRL loss type under these TRL options."""
    from logitsam.core.registry import get_loss

    name = TRL_NAMES[loss_type]
    given = {"beta": beta, "label_smoothing": label_smoothing, "f_divergence": f_divergence_type,
             "f_alpha": f_alpha_divergence_coef, "ld_alpha": 1.0 if ld_alpha is None else ld_alpha,
             "use_weighting": use_weighting, "discopop_tau": discopop_tau}  # fmt: skip
    if name == "dpo":
        given["label_smoothing"] = 0.0  # TRL's sigmoid has no label smoothing (that is 'robust')
    return name, {k: v for k, v in given.items() if k in get_loss(name).defaults}


def our_loss(lp, ref, lsq, mask, *, loss_type, loss_weights=None, **options):
    """Our loss on the same numbers: sums, lengths, shared-prefix sums and WPO log-weights from our helpers."""
    types_ = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = loss_weights or [1.0] * len(types_)
    terms = []
    for lt, w in zip(types_, weights, strict=True):
        name, params = our_params(lt, **options)
        terms.append((name, w, params))
    spec = combine_losses(terms)
    labels = shift_for_causal_lm(torch.where(mask.bool(), 1, IGNORE_INDEX))
    pad = lambda x: torch.nn.functional.pad(x, (0, 1))  # noqa: E731 — (S, T−1) -> (S, T), as the shifted labels
    sums, lengths = sequence_logps(pad(lp), labels)
    shared = shared_labels(labels)
    extra = {
        "shared": sequence_logps(pad(lp), shared)[0],
        "ref_shared": sequence_logps(pad(ref), shared)[0],
        "wpo": sequence_logps(pad(lp.detach() - lsq), labels)[0] / lengths,
    }
    inp = pair_logps(sums, lengths, sequence_logps(pad(ref), labels)[0], (None, None), extra)
    return spec.fn(inp).losses.mean()
