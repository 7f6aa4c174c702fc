"""Where a process learns how to join a run (flags, environment, auto-detection) and the config hash."""

from __future__ import annotations

import pytest

from syncas_jax.common.errors import InputError
from syncas_jax.train.config import config_from_dict
from syncas_jax.train.distributed import ProcessGroup, config_digest, parse_address, process_group
from tests.train.cases import TINY


def test_flags_win_over_the_environment_and_one_process_needs_no_coordinator():
    environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert process_group(environ=environ) == ProcessGroup("10.0.0.1:1234", 4, 3)
    assert process_group(None, 8, 5, environ=environ) == ProcessGroup("10.0.0.1:1234", 8, 5)
    assert process_group(environ=environ).joins
    assert not process_group("h:1", 1, 0, environ={}).joins  # one process: nothing to join
    assert not process_group(environ={}).joins and process_group(auto_detect=True, environ={}).joins
    assert parse_address("[::1]:99") == ("::1", 99)


@pytest.mark.parametrize(
    ("values", "environ", "message"),
    [
        ({"coordinator": "h:1"}, {}, "--coordinator needs --num-processes (or JAX_NUM_PROCESSES) and --process-id"),
        ({}, {"JAX_PROCESS_ID": "1"}, "--process-id needs --coordinator (or JAX_COORDINATOR_ADDRESS) and"),
        ({}, {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES: must be an integer, got 'two'"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, {}, "--process-id must lie in [0, 2), got 2"),
        ({"coordinator": "h:1", "num_processes": 0, "process_id": 0}, {}, "--num-processes must be at least 1"),
        ({"coordinator": "h", "num_processes": 2, "process_id": 0}, {}, "h: coordinator address must be HOST:PORT"),
        ({"coordinator": "h:70000", "num_processes": 2, "process_id": 0}, {}, "must be HOST:PORT"),
    ],
)
def test_incomplete_or_bad_descriptions_are_clear_errors(values, environ, message):
    with pytest.raises(InputError) as error:
        process_group(**values, environ=environ)
    assert message in str(error.value)


def test_partial_description_is_left_to_auto_detection():
    group = process_group("h:1", auto_detect=True, environ={})
    assert group.joins and not group.explicit


def test_config_digest_changes_with_the_config_and_the_resume_flag():
    config, _ = config_from_dict(TINY)
    other, _ = config_from_dict({**TINY, "num_epochs": 3})
    assert (config_digest(config, False) == config_digest(config_from_dict(TINY)[0], False)).all()
    assert config_digest(config, False).shape == (8,)
    assert (config_digest(config, False) != config_digest(other, False)).any()
    assert (config_digest(config, False) != config_digest(config, True)).any()
