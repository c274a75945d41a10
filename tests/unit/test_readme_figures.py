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


def test_the_notify_table_shows_misses_as_misses():
    ope = {"ope": {"truth": 2.0, "dr": {"estimate": 2.1}}}
    entry = {"sends_per_user_day": 0.5, "open_rate": 0.3, "active_days_per_user": 9.0, "disable_rate": 0.2,
             "churn_rate": 0.05, "se": {"active_days_per_user": 0.1}, "ope_covered": {"ips": 1, "dr": 0}}
    doc = {"config": {"seeds": [0]}, "seeds": [{"policies": {"model": ope}}], "policies": {"model": entry},
           "targets": {"best_heuristic": "threshold", "model >= best heuristic": False}}
    table = readme_tables.notify(doc)
    assert "| model | 0.500 | 0.300 | 9.00 ± 0.10 | 20.0% | 5.0% | 2.000 / 2.100 | 1/1, 0/1 |" in table
    assert "- model >= best heuristic: MISSED" in table and "- best_heuristic: threshold" in table


def test_the_oracle_table_is_relative_to_the_oracle_threshold():
    entry = lambda v: {"active_days_per_user": v, "se": 0.01, "per_seed": [v]}  # noqa: E731
    doc = {"seeds": [{"tuned": {"oracle threshold": 0.2}}],
           "policies": {"threshold (learned)": entry(11.5), "oracle threshold": entry(12.0), "oracle planner": entry(12.25)}}
    table = readme_tables.notify_oracle(doc)
    assert "| threshold (learned) | 11.500 ± 0.010 | -0.500 | 11.500 | - |" in table
    assert "| oracle threshold | 12.000 ± 0.010 | +0.000 | 12.000 | 0.2 |" in table
    assert "| oracle planner | 12.250 ± 0.010 | +0.250 | 12.250 | - |" in table
