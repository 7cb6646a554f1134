"""Configuration parsing: several control addresses, in every form the SDK, the CLI and the environment take."""

from __future__ import annotations

import pytest

from vastrpc import ClientConfig, DefinitionError
from vastrpc.config import control_addresses


def test_one_address_a_comma_separated_list_or_a_sequence_give_the_addresses_in_order_once() -> None:
    assert control_addresses("127.0.0.1:50051") == ("127.0.0.1:50051",)
    assert control_addresses(" a:1, b:2 ,,a:1 ") == ("a:1", "b:2")
    assert control_addresses(["b:2", "a:1,c:3"]) == ("b:2", "a:1", "c:3")
    assert control_addresses("[::1]:50051") == ("[::1]:50051",)
    assert control_addresses(None) == control_addresses("") == ()


@pytest.mark.parametrize("bad", ["nowhere", "host:", ":50051", "host:port", "host:70000", "a:1,b"])
def test_a_malformed_address_is_named_with_an_example(bad: str) -> None:
    with pytest.raises(DefinitionError, match="is not host:port of a control service; write e.g. 127.0.0.1:50051"):
        control_addresses(bad)


def test_client_config_takes_several_addresses_from_the_environment_and_checks_them_at_once() -> None:
    config = ClientConfig.from_env({"VASTRPC_CONTROL_ADDRESS": "a:1, b:2", "VASTRPC_HOME": "/tmp/h"})
    assert config.control_addresses == ("a:1", "b:2")
    listed = ClientConfig(control_address=["a:1", "b:2"])
    assert listed.control_address == listed.control_addresses == ("a:1", "b:2")
    assert isinstance(hash(listed), int)  # usable as a key, unlike a config holding a list
    assert ClientConfig().control_addresses == ()
    with pytest.raises(DefinitionError, match="VASTRPC_CONTROL_ADDRESS: 'a' is not host:port"):
        ClientConfig.from_env({"VASTRPC_CONTROL_ADDRESS": "a"})
    with pytest.raises(DefinitionError, match="'x:y' is not host:port"):
        ClientConfig(control_address="x:y")
