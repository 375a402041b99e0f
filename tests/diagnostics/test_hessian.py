"""Hutchinson traces against exact Hessian traces on a tiny model in float64."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import FIXTURES, ROOT, TINY_CPU

with warnings.catch_warnings():
    # torch.func.hessian's forward-mode AD imports this torch module on first use, and the module itself
    # scripts its decompositions with the deprecated torch.jit.script (18 DeprecationWarnings from torch's
    # own code). Imported here, once, so only that import is silenced; our code never uses forward AD.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=DeprecationWarning)
    import torch._decomp.decompositions_for_jvp

from logitsam.diagnostics.hessian import _rademacher, hutchinson, logit_hessian_trace, parameter_hessian_trace

D = torch.float64


class Tiny(torch.nn.Module):
    def __init__(self, v=7, d=4):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(v, d).double()
        self.mid = torch.nn.Linear(d, d).double()
        self.head = torch.nn.Linear(d, v, bias=False).double()

    def forward(self, ids):
        return self.head(torch.tanh(self.mid(self.emb(ids))))


IDS = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 6]])  # row 0 chosen, row 1 rejected


def dpo_of_logits(z):
    lp = torch.log_softmax(z[:, :-1], -1).gather(-1, IDS[:, 1:, None]).squeeze(-1)[:, 1:].sum(-1)
    return -F.logsigmoid(0.5 * (lp[0] - lp[1]) + 0.3)


@pytest.mark.slow
def test_parameter_trace_matches_exact():
    model = Tiny()
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def loss_of(vec):
        parts, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            parts[n] = vec[i : i + s.numel()].reshape(s)
            i += s.numel()
        return dpo_of_logits(functional_call(model, parts, (IDS,)))

    exact = torch.autograd.functional.hessian(loss_of, flat).diagonal().sum().item()
    est = parameter_hessian_trace(lambda: dpo_of_logits(model(IDS)), list(model.parameters()), probes=2000)
    assert abs(est.mean - exact) < 4 * est.stderr + 1e-9
    assert est.stderr < 0.2 * abs(exact)


@pytest.mark.slow
def test_logit_trace_matches_exact():
    z = Tiny()(IDS).detach()
    exact = torch.autograd.functional.hessian(lambda x: dpo_of_logits(x.reshape(z.shape)), z.reshape(-1))
    exact = exact.diagonal().sum().item()
    est = logit_hessian_trace(dpo_of_logits, z, probes=2000)
    assert abs(est.mean - exact) < 4 * est.stderr + 1e-9


def test_hutchinson_exact_on_diagonal_and_validates():
    x = torch.randn(5, dtype=D, requires_grad=True)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=D)
    (g,) = torch.autograd.grad((w * x.square()).sum(), x, create_graph=True)
    est = hutchinson([g], [x], probes=3)
    assert est.mean == pytest.approx(30.0) and est.stderr == pytest.approx(0.0)  # Rademacher: exact
    with pytest.raises(ValueError):
        hutchinson([g], [x], probes=0)


def micro_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=24,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg).double()


@pytest.mark.slow
def test_sharpness_on_a_micro_transformer_matches_exact_trace():
    from logitsam.core.registry import get_loss
    from logitsam.diagnostics.sharpness import measure_sharpness, preference_loss_of_logits

    model, ref = micro_llama(), micro_llama()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 7, 8, 0], [1, 2, 9, 9, 2, 6], [1, 2, 9, 5, 5, 0]])
    labels = ids.clone()
    labels[:, :3] = -100
    labels[1, 5] = labels[3, 5] = -100
    batch = {"input_ids": ids, "attention_mask": (labels != -100) | (torch.arange(6) < 3), "labels": labels}
    batch["attention_mask"] = batch["attention_mask"].long()
    spec = get_loss("dpo")
    probes = 64
    res = measure_sharpness(model, batch, spec, {"beta": 0.5, "label_smoothing": 0.0}, ref_model=ref, probes=probes)
    # Exact Hessian of the same loss in the flattened parameters.
    with torch.no_grad():
        from logitsam.core.logprobs import sequence_logps, shift_for_causal_lm, token_logps

        sl = shift_for_causal_lm(labels)
        ref_lp = sequence_logps(token_logps(ref(input_ids=ids, attention_mask=batch["attention_mask"]).logits, sl), sl)[
            0
        ]
    loss_fn = preference_loss_of_logits(batch, spec, {"beta": 0.5, "label_smoothing": 0.0}, ref_lp)
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(vec):
        parts, i = {}, 0
        for n, p in zip(names, params, strict=True):
            parts[n] = vec[i : i + p.numel()].reshape(p.shape)
            i += p.numel()
        return loss_fn(
            functional_call(model, parts, (), {"input_ids": ids, "attention_mask": batch["attention_mask"]}).logits
        )

    h = torch.func.hessian(loss_of)(flat)
    exact = h.diagonal().sum().item()
    # The same Rademacher probes as the estimator: each vᵀHv must be exact, so the mean is too.
    gen = torch.Generator().manual_seed(0)
    quad = []
    for _ in range(probes):
        v = torch.cat([_rademacher(p, gen).reshape(-1) for p in params])
        quad.append((v @ h @ v).item())
    est = res["parameter_hessian"]
    # (1e-6: LlamaRMSNorm computes in float32 even in a float64 model)
    assert est.mean == pytest.approx(sum(quad) / probes, rel=1e-6)
    assert abs(est.mean - exact) < 4 * est.stderr  # and the estimator is unbiased for the trace
    # the logit-Hessian trace is exact: equal to the full Hessian's in the logits of the same model
    with torch.no_grad():
        z = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    brute = torch.autograd.functional.hessian(lambda x: loss_fn(x.reshape(z.shape)), z.reshape(-1))
    assert res["logit_hessian"].mean == pytest.approx(brute.diagonal().sum().item(), rel=1e-9, abs=1e-12)
    assert res["logit_hessian"].stderr == 0.0 and res["logit_hessian"].probes == 0


@pytest.mark.slow
def test_sharpness_cli(tmp_path, cli_env):
    import json
    import subprocess
    import sys

    out = tmp_path / "s.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "logitsam",
            "sharpness",
            "--model",
            "tiny-random",
            "--data",
            str(FIXTURES / "hh.jsonl"),
            "--probes",
            "3",
            "--pairs",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["parameter_hessian"]["probes"] == 3 and res["pairs"] == 2
    assert "trace =" in r.stdout


@pytest.mark.slow
def test_sharpness_on_a_lora_run_directory(tmp_path, cli_env):
    """A LoRA run saves adapters only: `logitsam sharpness` loads them on their base (the built-in tiny model,
    named in the run's config.yaml) and takes the parameter trace over the adapters (a raw traceback before)."""
    import json
    import subprocess
    import sys

    run = tmp_path / "run"
    train_cmd = [sys.executable, "-m", "logitsam", "train", "--config", TINY_CPU,
                 f"--train.output_dir={run}", "--model.lora_r=4", "--train.max_steps=2", "--train.print_logs=false",
                 "--loss.reference=precomputed"]  # fmt: skip
    r = subprocess.run(train_cmd, capture_output=True, text=True, env=cli_env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "adapter_config.json").exists() and not (run / "config.json").exists()
    out = tmp_path / "s.json"
    cmd = [sys.executable, "-m", "logitsam", "sharpness", "--model", str(run), "--data", str(FIXTURES / "hh.jsonl"),
           "--probes", "2", "--pairs", "2", "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["parameter_hessian"]["trace"] == res["parameter_hessian"]["trace"]  # a number, not NaN


def test_probing_until_a_target_standard_error():
    """target_rel_se stops as soon as SE ≤ fraction·|trace| (after min_probes), with probes as the cap."""
    import torch

    from logitsam.diagnostics.hessian import hutchinson

    x = torch.randn(200, dtype=torch.float64, requires_grad=True)
    a = torch.rand(200, dtype=torch.float64) + 0.5  # diagonal Hessian: tr = 2·Σa
    (g,) = torch.autograd.grad((a * x * x).sum(), x, create_graph=True)
    est = hutchinson([g], [x], probes=500, target_rel_se=0.05)
    assert est.probes == 8 and est.stderr < 1e-9 * est.mean  # a diagonal Hessian: every probe gives the exact trace
    assert abs(est.mean - 2 * a.sum().item()) < 1e-9
    (g,) = torch.autograd.grad((x[:-1] * x[1:]).sum() + 0.1 * (x * x).sum(), x, create_graph=True)
    noisy = hutchinson([g], [x], probes=400, target_rel_se=0.05, seed=1)
    assert 8 <= noisy.probes <= 400 and (noisy.stderr <= 0.05 * abs(noisy.mean) or noisy.probes == 400)
    capped = hutchinson([g], [x], probes=10, target_rel_se=1e-6, seed=1)
    assert capped.probes == 10


@pytest.mark.slow  # every registered loss through a float64 brute force: ~10 s each on 2 cores
@pytest.mark.parametrize("scores", [False, True])
def test_exact_logit_trace_matches_brute_force_for_every_loss(scores):
    """tr ∂²L/∂z² in closed form (no probes) equals the full float64 Hessian's trace for every registered
    loss, with unscored positions, a reference and (for losses that read them) data-set scores."""
    from logitsam.core.logprobs import shift_for_causal_lm
    from logitsam.core.registry import LOSSES, resolve_hparams
    from logitsam.diagnostics.hessian import exact_logit_hessian_trace
    from logitsam.diagnostics.sharpness import preference_loss_of_logits, preference_loss_of_token_logps

    gen = torch.Generator().manual_seed(3)
    n, t, v = 6, 5, 7  # 3 pairs
    labels = torch.randint(0, v, (n, t), generator=gen)
    labels[:, :2] = -100  # the prompt
    labels[1, 4] = labels[4, 3:] = -100  # padding: rows of different lengths
    batch = {"labels": labels}
    if scores:
        batch["score_chosen"] = torch.tensor([3.0, 1.0, 2.0], dtype=D)
        batch["score_rejected"] = torch.tensor([1.0, 1.5, 0.0], dtype=D)
    z = 2.0 * torch.randn(n, t, v, generator=gen, dtype=D)
    for name, spec in LOSSES.items():
        ref = -5.0 * torch.rand(n, generator=gen, dtype=D) if spec.needs_reference else None
        params = resolve_hparams(spec, {})
        of_z = preference_loss_of_logits(batch, spec, params, ref)
        brute = torch.autograd.functional.hessian(lambda x: of_z(x.reshape(z.shape)), z.reshape(-1))  # noqa: B023
        exact = exact_logit_hessian_trace(
            preference_loss_of_token_logps(batch, spec, params, ref), z, shift_for_causal_lm(labels)
        )
        assert exact.mean == pytest.approx(brute.diagonal().sum().item(), rel=1e-9, abs=1e-12), name
        assert exact.stderr == 0.0 and exact.probes == 0
