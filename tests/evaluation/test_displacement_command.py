"""`logitsam displacement`: Δ± on a run's trained pairs, control drift and KL, CHES — against independent
computations on a tiny run (issue 30, item 7)."""

import json
import math

import pytest
import torch

from conftest import FIXTURES, TINY_CPU
from logitsam import cli
from logitsam.config import ModelConfig
from logitsam.data.batching import PreferenceCollator, tokenize_examples
from logitsam.data.examples import load_examples
from logitsam.diagnostics.ches import ches_scores
from logitsam.evaluation.displacement import reading, spearman, trained_model_of
from logitsam.models import load_model, load_tokenizer, tiny_model

FIXTURE = str(FIXTURES / "explicit.jsonl")


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (0, 1.5, 1.5, 3) and (0, 2, 1, 3): cov 4.5, variances 4.5 and 5 → 4.5 / √22.5
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman([1, 2], [1, 2])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_ches_matches_hidden_states_summed_by_hand():
    tok = load_tokenizer(ModelConfig(name_or_path="tiny-random"))
    model = tiny_model(len(tok)).double()
    rows = [
        {"prompt_ids": [5, 6, 7], "chosen_ids": [10, 11, 12], "rejected_ids": [10, 40, 12, 13]},
        {"prompt_ids": [8, 9], "chosen_ids": [20, 21], "rejected_ids": [22]},
    ]
    got = ches_scores(model, rows, tok.pad_token_id, batch_pairs=1)
    for i, r in enumerate(rows):
        sums = []
        for resp in (r["chosen_ids"], r["rejected_ids"]):
            ids = torch.tensor([r["prompt_ids"] + resp])
            with torch.no_grad():
                h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double()
            # the positions that predict the response tokens: the last prompt token .. the second-to-last token
            sums.append((h[len(r["prompt_ids"]) - 1 : ids.shape[1] - 1].sum(0), len(resp)))
        (c, nc), (rj, nr) = sums
        assert got["ches"][i] == pytest.approx(float(c @ rj - c @ c), rel=1e-9)
        assert got["ches_normalized"][i] == pytest.approx(float((c / nc) @ (rj / nr) - (c / nc) @ (c / nc)), rel=1e-9)


@pytest.mark.slow
def test_displacement_command_on_a_tiny_run(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--config", TINY_CPU, f"--train.output_dir={run}", "--train.max_steps=3",
            "--train.save_steps=3", "--train.eval_steps=3"]  # fmt: skip
    assert cli.main(argv) == 0
    assert trained_model_of(str(run)) == str(run)
    out = tmp_path / "d.json"
    capsys.readouterr()
    assert cli.main(["displacement", str(run), "--pairs", "4", "--controls", "2", "--top", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "chosen Δ+" in text and "control text drift" in text and "pairs most likely to displace" in text
    res = json.loads(out.read_text())
    # independently: the first 4 trained pairs (eval_fraction 0.25 held out with data.seed), summed log-probs
    from logitsam.core.scoring import model_sequence_logps
    from logitsam.training.run import split_eval

    tok = load_tokenizer(ModelConfig(name_or_path="tiny-random"))
    train, _ = split_eval(load_examples([FIXTURE]), [], 0.25, 0)
    rows = tokenize_examples(tok, train[:8], 128, 96)[0][:4]
    batch = PreferenceCollator(tok.pad_token_id)([{**r, "index": i} for i, r in enumerate(rows)])
    start = load_model(ModelConfig(name_or_path="tiny-random"), vocab_size=len(tok))
    trained = load_model(ModelConfig(name_or_path=str(run)), vocab_size=len(tok))
    with torch.no_grad():
        a = model_sequence_logps(start, batch["input_ids"], batch["attention_mask"], batch["labels"]).double()
        b = model_sequence_logps(trained, batch["input_ids"], batch["attention_mask"], batch["labels"]).double()
    d = (b - a).tolist()
    assert res["pairs"] == 4
    assert res["dplus"]["mean"] == pytest.approx(sum(d[:4]) / 4, abs=1e-4)
    assert res["dminus"]["mean"] == pytest.approx(sum(d[4:]) / 4, abs=1e-4)
    assert res["share_chosen_fell"] == sum(x < 0 for x in d[:4]) / 4
    # regions add up to the whole (float32 model: token sums in another order)
    assert sum(v["mean"] for v in res["dplus_regions"].values()) == pytest.approx(res["dplus"]["mean"], abs=1e-4)
    assert res["kl_forward"] == pytest.approx(-res["control_drift"]["mean"]) and math.isfinite(res["kl_reverse"])
    assert len(res["most_likely_to_displace"]) == 3
    ches = res["ches"]["ches"]
    assert [r["pair"] for r in res["most_likely_to_displace"]] == sorted(range(4), key=lambda i: -ches[i])[:3]
    # before training: the CHES screen alone, from --data and --model
    assert cli.main(["displacement", "--data", FIXTURE, "--model", "tiny-random", "--pairs", "4", "--top", "2"]) == 0
    assert "(none: CHES screen only)" in capsys.readouterr().out


def test_displacement_command_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["displacement", str(tmp_path)]) == 2
    assert "not a run directory (no config.yaml in it)" in capsys.readouterr().err
    assert cli.main(["displacement", "--pairs", "0", str(tmp_path)]) == 2
    assert "--pairs" in capsys.readouterr().err


def _ci(mean, half):
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": 48}


@pytest.mark.parametrize(
    ("dplus", "drift", "says"),
    [
        (
            _ci(-24.9, 4.5),
            _ci(-37.8, 7.5),
            ["displacement: the chosen", "fell less than control text (Δ+ − control drift +12.90)"],
        ),
        (
            _ci(-40.0, 2.0),
            _ci(-10.0, 2.0),
            ["displacement: the chosen", "fell more than control text", "beyond the drift"],
        ),
        (_ci(-20.0, 3.0), _ci(-21.0, 3.0), ["displacement: the chosen", "about as much as control text"]),
        (_ci(+5.0, 2.0), _ci(-20.0, 2.0), ["no displacement: the chosen response rose"]),
        (_ci(-1.0, 2.0), _ci(-20.0, 2.0), ["no displacement shown"]),
    ],
)
def test_the_report_reads_displacement_from_the_intervals(dplus, drift, says):
    """The printed reading follows the numbers: the chosen falling less than control text is displacement in
    the absolute sense with drift in it, not 'displacement beyond drift' (a fixed legend said both)."""
    text = " ".join(reading({"dplus": dplus, "control_drift": drift}))
    for part in says:
        assert part in text, text
    assert len([s for s in ("less than", "more than", "about as much") if s in text]) <= 1
