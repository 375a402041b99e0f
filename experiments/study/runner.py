"""`python -m experiments.study.command`: run the plan (plan.py) into a directory, resumably.

Layout of ``out``:
- ``shared.json``: the settings and their key, the held-out prompts, the SFT model's samples,
  rewards and win rate against the held-out chosen responses (everything the runs are compared to);
- ``runs/<name>/record.json``: one finished run — its spec, its training log (with the shared step-0
  evaluation), and per held-out prompt its sample, reward, outcome against SFT and against chosen,
  and log π/π_ref of its sample (per-sample KL); Hessian traces where the plan asks. Written last
  and atomically, so a run is either finished or run again;
- ``start/<setup>.json``: the step-0 evaluation shared by every run of one loss setup.
A finished run whose settings key differs from the study's is refused, not mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from importlib import resources
from typing import Any

import torch

from experiments.records import write_json, write_jsonl, write_record
from experiments.runs import Evaluation, train_and_measure
from experiments.study.confirm import confirmation_plan, seed_list
from experiments.study.pairs import load_prompts, make_pairs, split_prompts
from experiments.study.plan import CONFIRM, TUNING_NOTE, StudySettings
from experiments.study.records import read_json, read_record, read_shared, record_path
from experiments.study.setup import RunSpec, StudyArm, _run_config, _start_records, describe
from experiments.study.study_report import write_study_report
from logitsam.config.schema import ModelConfig
from logitsam.core.registry import get_loss, resolve_hparams
from logitsam.data.batching import PreferenceCollator, tokenize_examples
from logitsam.data.examples import load_examples
from logitsam.diagnostics.sharpness import measure_sharpness
from logitsam.errors import UserError
from logitsam.evaluation.generation import DecodeSettings, generate
from logitsam.evaluation.judges import GoldRewardJudge, letters_reward, vader_reward
from logitsam.models import cache_dir, check_device, load_model, load_tokenizer

HELDOUT = "data/heldout_prompts.txt"


def heldout_prompts(n: int) -> list[str]:
    """The first ``n`` packaged held-out review openings (disjoint from the training prompts)."""
    return load_prompts(str(resources.files("experiments.study").joinpath(HELDOUT)))[:n]


def _device(name: str) -> str:
    check_device(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class Study:
    """The shared state of one study directory: model, tokenizer, judge, data and SFT baseline."""

    def __init__(self, out: str, s: StudySettings) -> None:
        self.out, self.s = out, s
        self.device = _device(s.device)
        self.key = s.key()
        self.reward = vader_reward() if s.reward == "vader" else letters_reward
        self.judge = GoldRewardJudge(self.reward)
        mcfg = ModelConfig(name_or_path=s.model, dtype="float32")
        self.tok = load_tokenizer(mcfg)
        self.sft = load_model(mcfg, vocab_size=len(self.tok)).to(self.device)
        self.dec = DecodeSettings(max_new_tokens=s.new_tokens, temperature=1.0)
        prompts = load_prompts()[: s.max_prompts]
        _, demo_eval = split_prompts(prompts, s.n_eval_prompts)
        pairs = make_pairs(
            self.sft,
            self.tok,
            prompts,
            self.reward,
            self.dec,
            model_id=s.model,
            cache=os.path.join(cache_dir(), "demo"),
            reward_name=s.reward,
        )
        held = set(demo_eval)
        self.train_pairs = [p for p in pairs if p["prompt"] not in held]
        self.eval_pairs = [p for p in pairs if p["prompt"] in held]
        extra = [p for p in heldout_prompts(s.extra_prompts) if p not in set(prompts)]
        self.prompts = demo_eval + extra  # win rates and KL on these
        self.chosen = {p["prompt"]: p["chosen"] for p in self.eval_pairs}
        self.data = hashlib.sha256(json.dumps([self.train_pairs, self.eval_pairs]).encode()).hexdigest()[:16]
        self.train_file = os.path.join(out, "data", "train.jsonl")
        self.eval_file = os.path.join(out, "data", "heldout.jsonl")
        self.shared = self._shared()  # refuses other settings or pairs before anything is written
        write_jsonl(self.train_pairs, self.train_file)
        write_jsonl(self.eval_pairs, self.eval_file)

    def _samples(self, model: Any, name: str) -> tuple[list[str], list]:
        # one seed for every model (common random numbers: paired comparisons see the same noise)
        return generate(
            model,
            self.tok,
            self.prompts,
            self.dec,
            batch_size=self.s.gen_batch,
            seed=1234,
            desc=f"{name}: held-out samples",
            return_ids=True,
        )

    def _vs_chosen(self, samples: list[str]) -> list[float]:
        by = dict(zip(self.prompts, samples, strict=True))
        cmp = [p for p in self.prompts if p in self.chosen]
        return self.judge.compare(cmp, [by[p] for p in cmp], [self.chosen[p] for p in cmp])

    def _shared(self) -> dict[str, Any]:
        path = os.path.join(self.out, "shared.json")
        if os.path.exists(path):
            shared = read_shared(self.out)
            if shared.get("key") == self.key and shared.get("prompts") == self.prompts:
                if shared.get("data", self.data) != self.data:
                    raise UserError(
                        f"{path}: the study's preference pairs changed since it started (resampled?); "
                        "use another --out or delete the directory"
                    )
                # groups and confirmation seeds added on a resume are planned from now on (the report counts them)
                st = dict(shared["settings"])
                if "groups" in st:  # absent: every group was planned
                    st["groups"] = list(dict.fromkeys([*st["groups"], *self.s.groups]))
                if CONFIRM in self.s.groups:
                    old = st.get("confirm_seeds", list(StudySettings.confirm_seeds))
                    st["confirm_seeds"] = list(dict.fromkeys([*old, *self.s.confirm_seeds]))
                if st != shared["settings"]:
                    shared["settings"] = st
                    write_json(path, shared)
                return shared
            raise UserError(
                f"{path}: made with other study settings ({shared.get('description', '?')}; key {shared.get('key')}) "
                f"than these ({describe(self.s)}; key {self.key}); use another --out"
            )
        samples, _ = self._samples(self.sft, "SFT")
        shared = {
            "key": self.key,
            "settings": asdict(self.s),
            "description": describe(self.s),
            "tuning": TUNING_NOTE,
            "pairs": {"train": len(self.train_pairs), "heldout": len(self.eval_pairs)},
            "prompts": self.prompts,
            "data": self.data,
            "chosen_prompts": [p for p in self.prompts if p in self.chosen],
            "sft_samples": samples,
            "sft_rewards": self.judge.score(self.prompts, samples),
            "sft_vs_chosen": self._vs_chosen(samples),
        }
        write_json(path, shared)
        return shared

    def _hessian(self, model: Any, spec: RunSpec) -> dict[str, Any]:
        loss = get_loss(spec.loss)
        params = resolve_hparams(loss, {**({"beta": self.s.beta} if "beta" in loss.defaults else {}), **spec.params})
        examples = load_examples([self.eval_file])[: self.s.hessian_pairs]  # the held-out pairs, as trained
        rows = tokenize_examples(self.tok, examples, self.s.max_length, self.s.max_length // 2)[0]
        batch = PreferenceCollator(self.tok.pad_token_id)([{**r, "index": i} for i, r in enumerate(rows)])
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        res = measure_sharpness(model, batch, loss, params, ref_model=self.sft, probes=self.s.hessian_probes, seed=0)
        return {k: v.to_dict() for k, v in res.items()} | {"pairs": len(rows)}

    def run(self, cfg: StudyArm, spec: RunSpec) -> dict[str, Any]:
        """Train, evaluate and record one run (or return its record if it is already finished)."""
        path = record_path(self.out, spec.name)
        if os.path.exists(path):
            rec = read_record(path)
            if rec.get("key") != self.key:
                raise UserError(f"{path}: finished under other study settings; delete it to run it again")
            # the run itself must be the planned one (a changed plan.py would otherwise reuse stale runs)
            if rec.get("spec") != spec.record() or rec.get("config", {}).get("hessian") != cfg.hessian:
                raise UserError(f"{path}: a different run than the plan's {spec.name}; delete it to run it again")
            return rec
        setup = hashlib.sha256(json.dumps([spec.loss, spec.params], sort_keys=True).encode()).hexdigest()[:12]
        start_path = os.path.join(self.out, "start", f"{setup}.json")
        start = None
        if os.path.exists(start_path):
            start = read_json(start_path, ("records",), "this study's step-0 evaluation", "delete it to evaluate again")
        if start is not None and (start.get("key", self.key) != self.key or not start.get("records")):
            raise UserError(f"{start_path}: not this study's step-0 evaluation; delete it to evaluate again")
        rcfg = _run_config(self.s, spec, self.out, self.train_file, self.eval_file, eval_on_start=start is None)
        rec: dict[str, Any] = {
            "key": self.key,
            "spec": spec.record(),
            "config": asdict(cfg),
            "method": cfg.label,
            "device": self.device,
        }

        def extra(model: Any, measured: dict[str, Any]) -> None:
            measured["outcomes_vs_chosen"] = self._vs_chosen(measured["samples"])
            if cfg.hessian:
                measured["hessian"] = self._hessian(model, spec)

        sft = self.shared["sft_samples"]
        ev = Evaluation(self.prompts, self.dec, self.judge, sft, self.sft, self.tok, self.s.gen_batch)
        rec |= train_and_measure(rcfg, ev, spec.name, extra=extra)
        log = rec["log"]
        if start is None:
            write_json(start_path, {"key": self.key, "run": spec.name, "records": _start_records(log)})
        else:
            rec["log"] = [{**r, "shared_from": start["run"]} for r in start["records"]] + log
        return write_record(path, rec)


def _run_all(study: Study, plan: list[tuple[StudyArm, RunSpec]], first: int, total: int) -> dict[str, dict[str, Any]]:
    records = {}
    for i, (cfg, spec) in enumerate(plan, first):
        fresh = not os.path.exists(record_path(study.out, spec.name))
        rec = study.run(cfg, spec)
        records[spec.name] = rec
        if fresh:
            kl = sum(rec["kl_values"]) / max(1, len(rec["kl_values"]))
            wins = [x for x in rec["outcomes_vs_sft"] if x == x]
            print(
                f"[{i}/{total}] {spec.name}: win vs SFT {100 * sum(wins) / max(1, len(wins)):.1f}%, KL {kl:.2f}, "
                f"held-out chosen drift {rec['final_metrics'].get('eval_logps/chosen_drift', float('nan')):+.2f} "
                f"[{rec['seconds']:.0f}s]"
            )
    return records


def run_study(out: str, s: StudySettings, report: bool = True) -> dict[str, dict[str, Any]]:
    """Run every planned run not yet finished in ``out``, then the confirmation of the sweep's ρ on
    fresh seeds; returns the records by run name."""
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    plan = s.plan()
    n_confirm = 2 * len(s.confirm_seeds) if CONFIRM in s.groups else 0
    total = len(plan) + n_confirm
    done = sum(os.path.exists(record_path(out, spec.name)) for _, spec in plan)
    seeds = seed_list(s.confirm_seeds)
    after = f" (+ {n_confirm} confirmation runs on seeds {seeds} after the ρ sweep)" if n_confirm else ""
    print(f"study on {describe(s)}: {len(plan)} runs planned{after}, {done} already finished in {out}")
    study = Study(out, s)
    print(
        f"held-out prompts: {len(study.prompts)} ({len(study.eval_pairs)} with preference pairs); "
        f"device {study.device} [{time.time() - t0:.0f}s]"
    )
    records = _run_all(study, plan, 1, total)
    confirm, why = confirmation_plan(out, s, save=True)
    if why:
        print(f"confirmation on fresh seeds not run: {why}")
    if confirm:
        label = confirm[-1][0].label
        print(f"confirmation: {label} (the sweep's pick, saved in {out}/confirm.json) and dpo on fresh seeds {seeds}")
    records |= _run_all(study, confirm, len(plan) + 1, total)
    print(f"all {len(records)} runs finished [{time.time() - t0:.0f}s]")
    if report:
        print(write_study_report(out))
    return records
