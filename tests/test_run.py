"""`zmq-mq run`: finding the Actors of a script or module."""

from __future__ import annotations

import textwrap

import pytest

from zmq_mq.actors import Actor
from zmq_mq.actors.runner import LoadError, load_actors

from conftest import run_cli

SCRIPT = textwrap.dedent(
    """
    from zmq_mq.actors import Actor
    one = Actor(name="one")
    two = Actor(name="two")
    alias = one
    both = [one, two]
    not_an_actor = 42

    if __name__ == "__main__":
        raise SystemExit("must not run on import")
    """
)


def _script(tmp_path, name: str, text: str = SCRIPT):
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return path


def test_every_module_level_actor_is_found_once(tmp_path):
    actors = load_actors(str(_script(tmp_path, "run_all_actors")))
    assert [a.name for a in actors] == ["one", "two"]
    assert all(isinstance(a, Actor) for a in actors)


def test_an_attribute_names_one_actor_or_a_list(tmp_path):
    path = _script(tmp_path, "run_attr_actors")
    assert [a.name for a in load_actors(f"{path}:two")] == ["two"]
    assert [a.name for a in load_actors(f"{path}:both")] == ["one", "two"]
    with pytest.raises(LoadError, match="not an Actor"):
        load_actors(f"{path}:not_an_actor")
    with pytest.raises(LoadError, match="no attribute"):
        load_actors(f"{path}:missing")


def test_a_module_on_the_path_is_imported_by_name(tmp_path, monkeypatch):
    _script(tmp_path, "run_by_module_name")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [a.name for a in load_actors("run_by_module_name:one")] == ["one"]


def test_a_module_without_actors_is_refused(tmp_path):
    with pytest.raises(LoadError, match="no Actor"):
        load_actors(str(_script(tmp_path, "run_no_actors", "x = 1\n")))


def test_the_command_says_what_is_wrong_with_its_target(tmp_path):
    missing = run_cli("run", str(tmp_path / "nope.py"), timeout=60)
    assert missing.returncode == 2 and b"no such file" in missing.stderr
    broken = run_cli("run", str(_script(tmp_path, "run_broken", "raise ValueError('boom')\n")), timeout=60)
    assert broken.returncode == 2 and b"boom" in broken.stderr
