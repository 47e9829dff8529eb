"""Who may join a standing session, and the stable links of a named one."""

from __future__ import annotations

import pytest

from pairpod.errors import ConfigError
from pairpod.pair.links import audience, named_token
from pairpod.sharing.tokens import Access, parse_join_username


def test_the_people_named_on_the_command_line() -> None:
    people = audience(["Alice", "bob"], ["carol.c"], open=False, name=None)
    assert people.identities == {"github:alice", "github:bob", "gitlab:carol.c"}
    assert people.describe() == "github:alice, github:bob, gitlab:carol.c"
    assert audience([], [], open=True, name=None).describe() == "anyone holding a link (--open)"


@pytest.mark.parametrize(
    ("github", "gitlab", "open_", "name", "message"),
    [
        ([], [], False, None, "nobody may join"),
        (["alice"], [], True, "team", "--name cannot be used with --open"),
        (["-bad-"], [], False, None, "is not a valid github name"),
        (["alice"], [], False, "no spaces", "--name 'no spaces'"),
    ],
)
def test_refusals_say_what_is_wrong(
    github: list[str], gitlab: list[str], open_: bool, name: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        audience(github, gitlab, open=open_, name=name)


def test_a_name_gives_the_same_well_formed_links_and_another_name_others() -> None:
    for access in Access:
        token = named_token("team-1", access)
        assert token == named_token("team-1", access)
        assert parse_join_username(access.prefix + token) == (access, token)
    assert named_token("team-1", Access.READ_ONLY) != named_token("team-1", Access.READ_WRITE)
    assert named_token("team-1", Access.READ_WRITE) != named_token("team-2", Access.READ_WRITE)
