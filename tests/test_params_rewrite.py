"""`dvc exp run -S` writes its values into params.yaml (DVC rewrites the file with ruamel): the file is kept in the
block style that rewrite preserves, so an override changes only the lines it sets, and no comment is lost."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from dvc.utils.hydra import apply_overrides

REPO = Path(__file__).resolve().parents[1]


def comments(text: str) -> list[str]:
    return re.findall(r"#.*", text)


@pytest.mark.parametrize(("override", "changed"), [
    ("scale.max_epochs=2", ["  max_epochs: 2 "]),
    ("scale.max_images_per_class=20", ["  max_images_per_class: 20 "]),
    ("studies.lin2024.repeats=1", ["    repeats: 1 "]),
    ("studies.lin2024.grid.learning_rates=[0.005]", ["      - 0.005"]),
    ("studies.kumar2022.defaults.augmentation_views=null", ["      augmentation_views:"]),
])
def test_an_override_changes_only_the_lines_it_sets(tmp_path, override, changed):
    original = (REPO / "params.yaml").read_text()
    copy = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", copy)
    apply_overrides(copy, [override])  # what `dvc exp run -S` does to the workspace's params.yaml
    before, after = original.splitlines(), copy.read_text().splitlines()
    added = [line for line in after if line not in before]
    assert len(added) == len(changed) and all(a.startswith(c) for a, c in zip(added, changed, strict=True)), added
    removed = [line for line in before if line not in after]
    assert len(after) - len(added) == len(before) - len(removed)  # nothing else moved in or out
    assert comments(copy.read_text()) == comments(original)


def test_params_yaml_has_no_flow_mapping_and_no_comment_after_a_list():
    """DVC's rewrite reflows flow mappings and drops a comment (or blank line) that follows a block list."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    for number, line in enumerate(lines, 1):
        value = line.split("#", 1)[0]
        assert not re.search(r":\s*\{.+\}", value) and not re.search(r":\s*\[.+\]", value), f"line {number}: {line}"
        follows_list = number > 1 and lines[number - 2].lstrip().startswith("- ")
        assert not (follows_list and (line.lstrip().startswith("#") or not line.strip())), f"line {number}: {line}"
