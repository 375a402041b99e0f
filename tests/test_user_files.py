"""The user's own files beside ours: a README.md or notes in train.output_dir, prompt files in an
evaluation's --out. What logitsam wrote is known by the directory's manifest, never by a file's text."""



from logitsam import cli
from logitsam.training import manifest

QUICK = ["--config", "configs/tiny-cpu.yaml", "--train.max_steps=1", "--train.eval_steps=null",
         "--data.eval_fraction=0", "--train.print_logs=false"]  # fmt: skip
OURS = "tags:\n- logitsam"  # the card's metadata


def train(out, *extra):
    return cli.main(["train", *QUICK, f"--train.output_dir={out}", *extra])


def test_a_users_readme_survives_training_and_overwrite(tmp_path):
    """A README.md that mentions logitsam was taken for our old card: replaced at the end of training,
    deleted by overwrite_output_dir."""
    out = tmp_path / "run"
    out.mkdir()
    mine = "# My experiments with logitsam\n\nNotes I keep here.\n"
    (out / "README.md").write_text(mine)
    (out / "notes.txt").write_text("mine too")
    assert train(out) == 0
    assert (out / "README.md").read_text() == mine and OURS in (out / "MODEL_CARD.md").read_text()
    assert train(out, "--train.overwrite_output_dir=true") == 0
    assert (out / "README.md").read_text() == mine and (out / "notes.txt").read_text() == "mine too"
    assert OURS in (out / "MODEL_CARD.md").read_text() and manifest.owns(str(out), "MODEL_CARD.md")


def test_a_latin1_readme_in_a_lora_run_is_left_alone(tmp_path):
    """A README.md that is not UTF-8 crashed the end of a finished run; PEFT's save also rewrites a README.md."""
    out = tmp_path / "run"
    out.mkdir()
    mine = "# Résumé des expériences logitsam\n".encode("latin-1")
    (out / "README.md").write_bytes(mine)
    assert train(out, "--model.lora_r=2") == 0
    assert (out / "README.md").read_bytes() == mine
    assert "| LoRA rank | 2 |" in (out / "MODEL_CARD.md").read_text()


def test_a_lora_runs_readme_is_our_card(tmp_path):
    """PEFT writes its blank card into README.md during the save, and our card then skipped it."""
    out = tmp_path / "run"
    assert train(out, "--model.lora_r=2") == 0
    card = (out / "README.md").read_text()
    assert OURS in card and "| LoRA rank | 2 |" in card and "Model Card for Model ID" not in card
    assert not (out / "MODEL_CARD.md").exists() and "adapter_model.safetensors" in manifest.read(str(out)).files
