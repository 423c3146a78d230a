"""merge-sweep's search (merge/search.py): CMA-ES and random search over merge settings, replayed from scores.

The searches run here on made-up scores (a function of the point's settings), through the same `search_points`
that merge-sweep runs on evaluations; tests/test_pipeline.py runs one on real merges and evaluations."""

import math

import numpy as np
import pytest

from mnlu_jax.merge.search import CMAES, SEARCHABLE, SearchSection, parse_space
from mnlu_jax.merge.settings import SCHEDULABLE
from mnlu_jax.merge.sweep import PENDING, SweepConfig, fixed_settings, search_points

MERGE = {"base": "B", "models": ["B", "F"], "method": "dare"}


def config(**search) -> SweepConfig:
    space = search.pop("space", {"drop_rate": [0.05, 0.95], "lam": [0.5, 2.0]})
    return SweepConfig(output_dir="runs/search", merge=dict(MERGE), search=SearchSection(space=space, **search))


def bowl(values: dict) -> float:
    """A score with its maximum (0) at drop_rate 0.3, lam 1.4."""
    return -(values["drop_rate"] - 0.3) ** 2 - (values["lam"] - 1.4) ** 2


def test_searchable_settings_are_the_schedulable_ones_and_weights():
    assert set(SEARCHABLE) == {*SCHEDULABLE, "weights"}


def test_cmaes_finds_the_maximum_and_narrows_its_step():
    proposals = search_points(config(budget=96, population=8), lambda p, k: bowl(p.values))
    scores = [bowl(p.values) for p, _ in proposals]
    best = max(proposals, key=lambda pg: bowl(pg[0].values))[0].values
    assert abs(best["drop_rate"] - 0.3) < 0.03 and abs(best["lam"] - 1.4) < 0.05
    # the last generation sits near the maximum, the first ten times further (in score)
    assert np.mean(scores[-8:]) > np.mean(scores[:8]) / 10
    assert [g for _, g in proposals] == [k // 8 for k in range(96)]


def test_cmaes_is_a_function_of_its_seed_and_scores():
    """A rerun replays the search from the scores its points hold, and a larger budget continues the same search
    (its first points are the smaller budget's)."""
    def names(cfg):
        return [p.name for p, _ in search_points(cfg, lambda p, k: bowl(p.values))]

    short, longer = names(config(budget=10, population=4)), names(config(budget=20, population=4))
    assert short == longer[:10] and len(set(longer)) == 20
    assert names(config(budget=10, population=4, seed=1)) != short
    # a point without a score ranks last: the search still goes on
    told = search_points(config(budget=8, population=4), lambda p, k: None if k == 1 else bowl(p.values))
    assert len(told) == 8


def test_cmaes_update_against_the_reference_formulas():
    """One generation's update by hand (Hansen, arXiv:1604.00772, with C = I and p = 0 before it)."""
    space = parse_space(SearchSection(space={"drop_rate": [0.0, 1.0], "lam": [0.0, 1.0]}), 2, "s")
    es = CMAES(space, SearchSection(population=4, sigma=0.1), np.array([0.5, 0.5]))
    points = es.ask()
    scores = [-float(np.sum((x - 0.2) ** 2)) for x in points]
    es.tell(points, scores)
    best = [points[i] for i in np.argsort(scores)[::-1][:2]]
    w = np.array([math.log(2.5) - math.log(1), math.log(2.5) - math.log(2)])
    w /= w.sum()
    mean = w[0] * best[0] + w[1] * best[1]
    np.testing.assert_allclose(es.mean, mean)
    mueff = 1 / np.sum(w ** 2)
    cs = (mueff + 2) / (2 + mueff + 5)
    ps = math.sqrt(cs * (2 - cs) * mueff) * (mean - 0.5) / 0.1
    np.testing.assert_allclose(es.ps, ps)
    chi_n = math.sqrt(2) * (1 - 1 / 8 + 1 / 84)
    damps = 1 + 2 * max(0, math.sqrt((mueff - 1) / 3) - 1) + cs
    assert es.sigma == pytest.approx(0.1 * math.exp(cs / damps * (np.linalg.norm(ps) / chi_n - 1)))
    assert np.allclose(es.cov, es.cov.T) and np.all(np.linalg.eigvalsh(es.cov) > 0)


def test_random_search_draws_each_point_on_its_own_within_the_ranges():
    space = {"drop_rate": [0.1, 0.3], "epsilon": {"range": [0.0, 0.2], "gradient": 3},
             "weights": [[0.5, 1.0], [1.0, 2.0]]}
    cfg = config(method="random", budget=12, space=space, decimals=3)
    a = search_points(cfg, lambda p, k: 0.0)
    b = search_points(cfg, lambda p, k: float(k))  # (random search is not told scores: the same points)
    assert [p.name for p, _ in a] == [p.name for p, _ in b] and len({p.name for p, _ in a}) == 12
    for p, _ in a:
        v = p.values
        assert 0.1 <= v["drop_rate"] <= 0.3 and round(v["drop_rate"], 3) == v["drop_rate"]
        assert len(v["epsilon"]) == 3 and all(0.0 <= e <= 0.2 for e in v["epsilon"])
        assert 0.5 <= v["weights"][0] <= 1.0 and 1.0 <= v["weights"][1] <= 2.0
        # each point is a whole merge config: the gradient over the layers and one weight per model
        assert p.merge.epsilon == v["epsilon"] and p.merge.weights == v["weights"]
        assert p.merge.out.endswith(f"points/{p.name}/merged")
    # the search space's settings are what the points vary, not a fixed setting a rerun must keep
    assert "drop_rate" not in fixed_settings(cfg)["merge"] and fixed_settings(cfg)["merge"]["method"] == "dare"


def test_rounded_values_stay_within_ranges_finer_than_the_rounding():
    cfg = config(budget=16, population=4, sigma=1.0, decimals=2, space={"drop_rate": [0.123456, 0.128]})
    values = [p.values["drop_rate"] for p, _ in search_points(cfg, lambda p, k: -p.values["drop_rate"])]
    assert all(0.123456 <= v <= 0.128 for v in values) and 0.123456 in values


def test_a_search_stops_at_a_generation_with_a_point_not_yet_scored():
    """How --dry-run lists a CMA-ES search: the proposals it can know, up to the first generation with a point
    not scored (the next generation depends on its score)."""
    scored = {p.name for p, _ in search_points(config(budget=6, population=3), lambda p, k: bowl(p.values))}
    listed = search_points(config(budget=12, population=3),
                           lambda p, k: bowl(p.values) if p.name in scored else PENDING)
    assert len(listed) == 9 and {p.name for p, _ in listed[:6]} == scored


def test_cmaes_starts_from_the_given_mean():
    cfg = config(budget=8, population=8, sigma=0.01, start={"drop_rate": 0.2, "lam": 1.0})
    for p, _ in search_points(cfg, lambda p, k: 0.0):
        assert abs(p.values["drop_rate"] - 0.2) < 0.05 and abs(p.values["lam"] - 1.0) < 0.1


@pytest.mark.parametrize("change, message", [
    (dict(grid={"seed": [0, 1]}), r"grid and search: give one"),
    (dict(method="bayes"), r"search\.method: 'bayes': expected one of \['cmaes', 'random'\]"),
    (dict(budget=0), r"search\.budget: expected a number of points >= 1, got 0"),
    (dict(population=1), r"search\.population: expected >= 2"),
    (dict(sigma=0.0), r"search\.sigma: expected a step in \(0, 1\]"),
    (dict(method="random", start={"lam": 1.0}), r"start and population are CMA-ES settings"),
    (dict(space={}), r"search\.space: expected \{SETTING: \[low, high\], \.\.\.\}"),
    (dict(space={"seed": [0, 3]}), r"search\.space\.seed: not a numeric merge setting to search"),
    (dict(space={"density": [0.1, 0.5]}), r"search\.space\.density: not a merge setting to sweep \(the "
                                          r"search\.space takes our names, even over a mergekit config: drop_rate"),
    (dict(space={"lam": [2.0, 1.0]}), r"search\.space\.lam: expected a range \[low, high\] with low < high"),
    (dict(space={"lam": {"range": [0, 1], "steps": 3}}), r"search\.space\.lam: expected \{range: \[low, high\], "
                                                          r"gradient: N\}"),
    (dict(space={"lam": {"range": [0, 1], "gradient": 1}}), r"search\.space\.lam\.gradient: expected a number of "
                                                             r"control points >= 2"),
    (dict(space={"weights": [[0, 1]]}), r"search\.space\.weights: 1 ranges for 2 models; expected one per model"),
    (dict(space={"weights": [0, 1]}), r"search\.space\.weights: expected a range per model"),
    (dict(start={"lam": 3.0}), r"search\.start\.lam: 3\.0 is outside its range \[0\.5, 2\.0\]"),
    (dict(start={"t": 0.5}), r"search\.start: \['t'\] not in space"),
    # a range that reaches a setting the merge refuses is named before anything is merged
    (dict(space={"drop_rate": [0.1, 1.5]}), r"point drop_rate=1\.5: drop_rate 1\.5: expected 0 <= p <= 1"),
])
def test_search_settings_are_checked_naming_the_field(change, message):
    grid = change.pop("grid", {})
    cfg = config(**change)
    cfg.grid = grid
    with pytest.raises(ValueError, match=message):
        search_points(cfg, lambda p, k: 0.0)


def test_a_searchs_table_and_plot(tmp_path):
    """results.md lists the points by first proposal with their generation, the best in bold; with two numeric
    settings the plot has a second panel of where the proposals fell."""
    from mnlu_jax.merge.sweep import _search_record, summarize, write_results

    cfg = config(budget=8, population=4)
    cfg.metric = "MedNLI"
    rows: dict = {}

    def score(p, k):
        rows.setdefault(p.name, {"name": p.name, "values": p.values,
                                 "scores": {"MedNLI": 100 + 100 * bowl(p.values)}})
        return rows[p.name]["scores"]["MedNLI"]

    proposals = search_points(cfg, score)
    results = summarize(list(rows.values()), ["drop_rate", "lam"], ["MedNLI"], "MedNLI", "paper", {},
                        _search_record(cfg, proposals, rows))
    write_results(results, tmp_path)
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0] == "# cmaes search, 8 proposals: MedNLI (paper mode)"
    assert md[2].startswith("| # | generation | drop_rate | lam | MedNLI |")
    table = [line for line in md if line.startswith("| ") and not line.startswith("| #")]
    assert [line.split(" | ")[1].strip("*") for line in table] == ["0"] * 4 + ["1"] * 4
    best = max(rows.values(), key=lambda r: r["scores"]["MedNLI"])
    assert [line for line in table if line.startswith("| **")] == \
        [line for line in table if f"| **{best['values']['lam']}** |" in line]
    assert [p["best_so_far"] for p in results["search"]["proposals"]] == \
        list(np.maximum.accumulate([p["score"] for p in results["search"]["proposals"]]))
    from PIL import Image

    assert Image.open(tmp_path / "sweep.png").size == (1200, 400)  # (two panels)
