"""core/redact.py: what a visitor may read of an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.redact import scrub


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        ("No such file: /home/alice/.cache/glassbox/model.safetensors", "No such file: …/model.safetensors"),
        (
            "configured local folder '/srv/models/tiny' (GLASSBOX_MODEL)",
            "configured local folder '…/tiny' (GLASSBOX_MODEL)",
        ),
        ("see C:\\Users\\bob\\x.json now", "see …/x.json now"),
        ("~/models/x/y.gguf", "…/y.gguf"),
        (
            "https://huggingface.co/HuggingFaceTB/SmolLM2 answered 404",
            "https://huggingface.co/HuggingFaceTB/SmolLM2 answered 404",
        ),
        ("a/b ratio 3/4, owner/name ids and 2,048 tokens", "a/b ratio 3/4, owner/name ids and 2,048 tokens"),
    ],
)
def test_paths_are_cut_to_their_last_part_and_the_rest_is_kept(said, shown):
    assert scrub(said) == shown


def test_the_servers_home_folder_and_user_name_are_hidden():
    home = Path.home()
    text = scrub(f"cannot write {home}/glassbox.db")
    assert str(home) not in text and text == "cannot write …/glassbox.db"
