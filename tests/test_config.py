"""config.py: the typed groups hold exactly train.py's flags, each once; a resolved config
round-trips through its flat (saved) form; replace changes one field in its group."""
import dataclasses

import pytest

import flags
from config import GROUP_OF, GROUPS, Config


def test_the_groups_hold_every_flag_once():
    dests = {a.dest for a in flags.build_parser()._actions} - {"help", "config"}
    names = [f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)) == len(GROUP_OF)      # no field in two groups
    assert set(names) == dests


def test_a_resolved_config_round_trips_through_its_flat_form():
    config, _ = flags.parse_config(["--training-type", "dpo", "--beta", "0.5", "--lr", "1e-4"])
    c = flags.resolve(config)
    assert (c.dpo.beta, c.optim.lr, c.run.training_type) == (0.5, 1e-4, "dpo")
    assert Config.from_flat(c.flat()) == c
    # A saved config with a key that is no flag any more (an older version's) still loads.
    assert Config.from_flat({**c.flat(), "retired_flag": 3}) == c
    with pytest.raises(KeyError, match="beta"):
        Config.from_flat({k: v for k, v in c.flat().items() if k != "beta"})


def test_replace_changes_a_field_in_its_group_and_a_config_is_frozen():
    c = flags.resolve(flags.parse_config([])[0])
    d = c.replace(packing=False, lr=0.5)
    assert (d.data.packing, d.optim.lr, c.optim.lr) == (False, 0.5, 2e-5)
    assert d.flat() == {**c.flat(), "packing": False, "lr": 0.5}
    with pytest.raises(AttributeError, match="no config field lrr"):
        c.replace(lrr=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.optim.lr = 1.0
