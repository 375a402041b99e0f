"""config.yaml's weighted loss (loss.name: weighted, loss.terms): TRL's loss_type list with loss_weights (MPO)."""

import pytest

from logitsam.config.schema import from_dict
from logitsam.errors import ConfigError
from logitsam.training.run import loss_setup

MPO = [{"name": "dpo", "weight": 0.8}, {"name": "bco_pair", "weight": 0.2}, {"name": "sft", "weight": 1.0}]


def cfg(**loss):
    return from_dict({"loss": {"name": "weighted", **loss}})


def test_a_weighted_list_is_one_loss_with_shared_options():
    spec, params = loss_setup(cfg(beta=0.3, params={"ld_alpha": 0.5}, terms=MPO))
    assert (spec.name, params, spec.batch_coupled, spec.needs_reference) == (
        "0.8*dpo+0.2*bco_pair+1*sft",
        {},
        True,
        True,
    )
    got = [(s.name, w, p.get("beta"), p.get("ld_alpha")) for s, w, p in spec.parts]
    assert got == [("dpo", 0.8, 0.3, 0.5), ("bco_pair", 0.2, 0.3, 0.5), ("sft", 1.0, None, None)]
    terms = [{"name": "dpo", "params": {"beta": 0.2}}, {"name": "sft", "weight": 2}]  # a term's own value wins
    spec, _ = loss_setup(cfg(beta=0.3, terms=terms))
    assert [(w, p.get("beta")) for _, w, p in spec.parts] == [(1.0, 0.2), (2.0, None)]


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        ({"terms": [{"name": "dpo", "wieght": 1.0}]}, r"loss.terms\[0\]: a term is"),
        ({"terms": [{"name": "dp0"}]}, r"loss.terms\[0\].name: unknown loss"),
        ({"terms": [{"name": "dpo", "weight": -1.0}]}, "weight"),
        ({"terms": [{"name": "dpo", "params": {"ld_alpha": 2.0}}]}, "ld_alpha"),
        ({"params": {"gamma": 1.0}, "terms": MPO}, "no term has gamma"),
        ({"terms": []}, "non-empty loss.terms"),
    ],
)
def test_mistakes_name_the_key(loss, message):
    with pytest.raises(ConfigError, match=message):
        loss_setup(cfg(**loss))


def test_terms_without_name_weighted_are_refused():
    with pytest.raises(ConfigError, match=r"loss\.name: weighted"):
        loss_setup(from_dict({"loss": {"name": "dpo", "terms": MPO}}))
