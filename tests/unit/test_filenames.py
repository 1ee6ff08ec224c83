from __future__ import annotations

import pytest

from imagemesh.filenames import MAX_LENGTH, numbered, sanitize, with_content_type


@pytest.mark.parametrize("raw, safe", [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\win.ini", "win.ini"),
    ("dir/sub/name.png", "name.png"),
    ("..", "output"),
    ("", "output"),
    ("a\x00b\x1fc.png", "a_b_c.png"),
    ("what?<>|.png", "what____.png"),
    (" .hidden", "hidden"),
])
def test_sanitize_keeps_one_safe_component(raw, safe):
    assert sanitize(raw) == safe


def test_sanitize_bounds_length_and_keeps_extension():
    name = sanitize("x" * 500 + ".png")
    assert len(name) == MAX_LENGTH and name.endswith(".png")


def test_extension_follows_content_type():
    assert with_content_type("fox", "image/png") == "fox.png"
    assert with_content_type("fox.png", "image/jpeg") == "fox.jpg"
    assert with_content_type("fox.jpeg", "image/jpeg") == "fox.jpeg"
    assert with_content_type("fox.webp", "image/webp") == "fox.webp"


def test_several_outputs_are_numbered():
    assert numbered("boat.jpg", 0, 1) == "boat.jpg"
    assert [numbered("boat.jpg", i, 3) for i in range(3)] == ["boat_1.jpg", "boat_2.jpg", "boat_3.jpg"]
