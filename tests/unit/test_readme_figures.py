"""README figures come from bench/results/*.json: the marked tables equal what the results render to."""

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "bench" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tables)


def test_every_marked_table_has_its_results_file_and_matches_it():
    readme = (ROOT / "README.md").read_text()
    marked = re.findall(r"<!-- bench:(\w+) -->", readme)
    assert marked, "README.md marks no benchmark table"
    for name in marked:
        assert (ROOT / "bench" / "results" / f"{name}.json").exists(), f"bench/results/{name}.json is missing"
    assert readme_tables.render(readme) == readme, "run: python bench/readme_tables.py"


def test_the_renderer_shows_misses_as_misses():
    doc = {"synthetic": {"recall@12": {"served": 0.3, "popularity": 0.1}, "share_of_oracle@12": {"served": 0.5},
                         "map@12": {"served": 0.2}, "bars": {"served >= 80% of oracle": False}}}
    table = readme_tables.quality(json.loads(json.dumps(doc)))
    assert "| synthetic default (time split) | Recall@12 | 0.3000 | 0.1000 | - |" in table
    assert "served >= 80% of oracle: MISSED" in table
