"""The paper's toy setting (§3.1–3.2, Figure 1a–b): softmax regression on one fixed feature.

z = W φ, φ ∈ R^d, V classes, f = −log p_y. Phase 1 ("SFT"): label ``sft_class`` with a positive
learning rate. Phase 2: label ``neg_class`` with a *negative* learning rate (the y− objective of
DPO in the theory's convention), run from the same start by GD and by SAM on W with ρ > 0 and
ρ < 0. Per step we record probabilities, the residual g = p − y and its modal coefficients
e_k = v_kᵀ g in the eigenbasis of H_z = diag(p) − p pᵀ (Corollary 3.4), eigenvalues descending.
Everything runs in float64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

D = torch.float64


@dataclass
class ToyConfig:
    """Settings of the toy run (defaults reproduce the paper's qualitative setting)."""

    dim: int = 1000
    classes: int = 3
    sft_class: int = 0
    neg_class: int = 1
    sft_steps: int = 10
    sft_lr: float = 0.3
    neg_lr: float = -0.1
    neg_steps: int = 30
    rho: float = 1.0  # |ρ| of the two SAM runs: sam_pos uses +rho, sam_neg −rho
    init_scale: float = 0.01
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def softmax_grad(w: Tensor, phi: Tensor, label: int) -> tuple[Tensor, Tensor, Tensor]:
    """(p (V,), g = p − e_label (V,), ∇_W f = g φᵀ (V, d)) for f = −log softmax(Wφ)_label."""
    p = torch.softmax(w @ phi, dim=0)
    g = p.clone()
    g[label] -= 1.0
    return p, g, torch.outer(g, phi)


def logit_hessian(p: Tensor) -> Tensor:
    """H_z = diag(p) − p pᵀ of softmax cross-entropy, (V, V)."""
    return torch.diag(p) - torch.outer(p, p)


def sam_step(w: Tensor, phi: Tensor, label: int, lr: float, rho: float) -> Tensor:
    """One SAM step on W: W − η ∇f(W + ρ∇f/‖∇f‖) (ρ = 0 is GD; zero gradient: no perturbation)."""
    _, _, grad = softmax_grad(w, phi, label)
    norm = grad.norm()
    if rho != 0.0 and norm > 0:
        _, _, grad = softmax_grad(w + rho * grad / norm, phi, label)
    return w - lr * grad


def modal_coefficients(p: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """(λ_k, e_k = v_kᵀ g) for the V−1 non-zero eigenpairs of H_z, λ descending.

    Eigenvector signs are fixed so that each v_k has a non-negative component sum of |v|-weighted
    entries on the largest-magnitude coordinate, which keeps e_k continuous along a trajectory.
    """
    lam, vec = torch.linalg.eigh(logit_hessian(p))
    order = torch.argsort(lam, descending=True)[: p.numel() - 1]
    lam, vec = lam[order], vec[:, order]
    pivot = vec.abs().argmax(0)
    vec = vec * torch.sign(vec[pivot, torch.arange(vec.shape[1])])
    return lam, vec.T @ g


@dataclass
class Trajectory:
    """Per step of phase 2 (step 0 = the SFT end point): probabilities, residuals, modes."""

    probs: list[list[float]] = field(default_factory=list)
    residuals: list[list[float]] = field(default_factory=list)
    modes: list[list[float]] = field(default_factory=list)
    eigenvalues: list[list[float]] = field(default_factory=list)

    def record(self, w: Tensor, phi: Tensor, label: int) -> None:
        p, g, _ = softmax_grad(w, phi, label)
        lam, e = modal_coefficients(p, g)
        self.probs.append(p.tolist())
        self.residuals.append(g.tolist())
        self.modes.append(e.tolist())
        self.eigenvalues.append(lam.tolist())


def initial_state(cfg: ToyConfig) -> tuple[Tensor, Tensor]:
    """(W after the SFT phase (V, d), φ (d,)) from the seed; ‖φ‖² ≈ 1."""
    gen = torch.Generator().manual_seed(cfg.seed)
    phi = torch.randn(cfg.dim, generator=gen, dtype=D) / cfg.dim**0.5
    w = cfg.init_scale * torch.randn(cfg.classes, cfg.dim, generator=gen, dtype=D)
    for _ in range(cfg.sft_steps):
        w = sam_step(w, phi, cfg.sft_class, cfg.sft_lr, 0.0)
    return w, phi


RUNS = {"gd": 0.0, "sam_pos": 1.0, "sam_neg": -1.0}  # sign of ρ per run


def simulate(cfg: ToyConfig) -> dict[str, Trajectory]:
    """Phase 2 from the same SFT start for each run in :data:`RUNS`."""
    w0, phi = initial_state(cfg)
    out: dict[str, Trajectory] = {}
    for name, sign in RUNS.items():
        w, traj = w0.clone(), Trajectory()
        traj.record(w, phi, cfg.neg_class)
        for _ in range(cfg.neg_steps):
            w = sam_step(w, phi, cfg.neg_class, cfg.neg_lr, sign * cfg.rho)
            traj.record(w, phi, cfg.neg_class)
        out[name] = traj
    return out


def plot(trajs: dict[str, Trajectory], cfg: ToyConfig, path: str) -> None:
    """Figure 1(a–b) analogue: modal coefficients and class probabilities per step, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"gd": "-", "sam_pos": "--", "sam_neg": ":"}
    labels = {"gd": "GD", "sam_pos": "SAM ρ>0", "sam_neg": "SAM ρ<0"}
    for name, traj in trajs.items():
        modes = torch.tensor(traj.modes)
        probs = torch.tensor(traj.probs)
        for k in range(modes.shape[1]):
            axes[0].plot(modes[:, k], styles[name], color=f"C{k}", label=f"{labels[name]} e{k + 1}")
        for c in range(probs.shape[1]):
            axes[1].plot(probs[:, c], styles[name], color=f"C{c}", label=f"{labels[name]} p{c}")
    axes[0].set(title="(a) modal coefficients of g = p − y", xlabel="step (negative lr)")
    axes[1].set(title="(b) class probabilities", xlabel="step (negative lr)")
    for ax in axes:
        ax.legend(fontsize=6, ncol=3)
    fig.suptitle(f"toy: d={cfg.dim}, V={cfg.classes}, η={cfg.neg_lr}, |ρ|={cfg.rho}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
