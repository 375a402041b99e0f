"""The life of one run directory, from claim to release, as one object.

    with RunLifecycle(cfg) as run:         # claim: lock train.output_dir, refuse to mix with a previous run,
        run.resume                         #        and find the checkpoint to resume from
        run.check_resume(resolved, ...)    # check: settings, parameters and data of the resume point
        run.begin(resolved, fingerprints)  # begin writing: clear an overwritten run, trim metrics,
        trainer.train(...)                 #        write config.yaml and the data fingerprint
        run.save(trainer, resolved, ...)   # save: weights, model card, the final marker (last)
                                           # release: the lock, on errors too

Nothing in the directory changes before ``begin``: a start that fails while checking (bad data, bad
model, a resume point that does not match) leaves whatever was there whole. Only the main process
writes; other ranks of a distributed run go through the same calls, which do nothing for them.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from typing import Any

from logitsam.config.schema import Config
from logitsam.training import manifest
from logitsam.training.checkpoints import checkpoint_step, logged_at_step, resolve_resume, trim_metrics
from logitsam.training.commit import share_as_umask
from logitsam.training.modelcard import portable_adapter_config, saving, write_model_card
from logitsam.training.resume import (
    DATA_FINGERPRINT,
    check_resume_data,
    check_resume_parameters,
    check_resume_settings,
    save_data_fingerprint,
)
from logitsam.training.rundir import claim, clear_previous_run, is_main_process
from logitsam.training.runstate import FINAL_FILES, final_problem, record_final, start_run

log = logging.getLogger(__name__)
SAVED = (".safetensors", ".bin")  # sharded weights too: what a final save writes with a restrictive mode


class RunLifecycle:
    """Owns ``cfg.train.output_dir`` for one run (see the module docstring); a context manager."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.out = cfg.train.output_dir
        self.resume: str | None = None
        self._stack = ExitStack()

    def __enter__(self) -> RunLifecycle:
        t = self.cfg.train
        resuming = t.resume_from_checkpoint not in (None, False)
        with ExitStack() as stack:
            stack.enter_context(claim(self.out, resuming=resuming, overwrite=t.overwrite_output_dir))
            self.resume = resolve_resume(self.out, t.resume_from_checkpoint, allow_incomplete=t.resume_allow_incomplete)
            self._stack = stack.pop_all()  # held until __exit__; released here if resolving failed
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def check_resume(self, resolved: Config, fingerprints: dict[str, str], done_at: int) -> dict[str, Any] | None:
        """Check that the resume point belongs to this run (settings, parameters, data). Returns the result
        of a run that already finished at ``done_at`` steps (touching nothing), else None."""
        if not self.resume:
            return None
        check_resume_settings(resolved, self.resume)
        check_resume_parameters(resolved, self.resume)
        check_resume_data(resolved, fingerprints, self.resume)
        return self._finished(done_at)

    def _finished(self, steps: int) -> dict[str, Any] | None:
        """Finished: the checkpoint is at the last step *and* the run state records the final save at that
        step, its files intact; otherwise the resume trains no step and makes the final save (runstate.py)."""
        assert self.resume is not None
        done = checkpoint_step(self.resume)
        if done is None or done < steps:
            return None
        problem = final_problem(self.out, done, model=self.cfg.train.save_model)
        name = os.path.basename(self.resume)
        if problem is not None:
            log.warning("%s: %s is at the last step (%d), but the run did not finish: %s; making its final save now "
                        "(no step is trained)", self.out, name, done, problem)  # fmt: skip
            return None
        log.warning(
            "%s: the run already finished (%s is at step %d of %d); nothing to do — to train longer, raise "
            "train.max_steps or train.num_train_epochs with train.resume_allow_changes=true",
            self.out, name, done, steps,
        )  # fmt: skip
        return {"metrics": {"already_finished": True, "global_step": done, "max_steps": steps}}

    def begin(self, resolved: Config, fingerprints: dict[str, str]) -> None:
        """Everything is checked: the directory starts changing (an overwritten run removed, metrics
        trimmed to the resumed step, config.yaml and the data fingerprint written)."""
        if not is_main_process():
            return
        clear_previous_run(self.out)  # overwrite_output_dir: only now, with everything checked
        manifest.record(self.out, files=["config.yaml", DATA_FINGERPRINT])
        step = checkpoint_step(self.resume) if self.resume else None
        if step is not None:  # the interrupted run logged steps the resumed one logs again
            trim_metrics(self.out, step, logged_at_step(self.resume))
        start_run(self.out, resolved, step)  # writes config.yaml; the old final save stops counting
        save_data_fingerprint(self.out, fingerprints)

    def save_model(self, trainer: Any) -> None:
        """The trained weights (or adapters) and tokenizer, if ``train.save_model``; on every rank (a sharded
        model gathers its weights collectively)."""
        if not self.cfg.train.save_model:
            return
        with saving(trainer.model, self.out):  # what the save writes is recorded as ours; a user's README.md stays
            trainer.save_model(self.out)
        if is_main_process():
            names = [n for n in os.listdir(self.out) if n in FINAL_FILES or n.endswith(SAVED)]
            share_as_umask([os.path.join(self.out, n) for n in names])

    def finish(self, resolved: Config, metrics: dict[str, Any], step: int, kind: str) -> None:
        """The model card, then the final marker: written last, it is what makes the run finished."""
        if not is_main_process():
            return
        save = self.cfg.train.save_model
        if save:
            portable_adapter_config(self.out, resolved)
            write_model_card(resolved, {**metrics, "global_step": step}, kind=kind)
        record_final(self.out, step, model=save, card=save)
