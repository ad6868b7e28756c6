"""The course kit checks itself (issue 22): the package gets full marks on all four assignments,
the untouched starters get zero, and every planted mistake loses points in the test named for it."""
from __future__ import annotations

from pathlib import Path

import pytest

from course import adapters
from course.grade import grade, main, total

MISTAKES = Path(__file__).resolve().parents[1] / "course" / "mistakes"
# planted mistake -> the tests that must catch it (INSTRUCTORS.md lists the same)
CAUGHT_BY = {
    "a1_rule2_off_by_one": {"attention_mask_matches_on_random_layouts"},
    "a1_floor_not_round": {"block_size_matches_the_release", "block_size_on_tiny_grids"},
    "a1_truncate_keeps_last": {"truncate_context_keeps_the_first_slots"},
    "a1_rows_and_columns_swapped": {"place_blocks_draws_the_rectangles"},
    "a2_smooth_l1_without_layer_norm": {"smooth_l1_distance_normalises_the_target"},
    "a2_one_mean_over_all_target_tokens": {"jepa_loss_averages_each_block_then_the_blocks", "jepa_loss_edge_cases",
                                           "a_step_with_your_pieces_matches_and_trains_only_proj_proj_tgt_z"},
    "a2_coin_inverted": {"jepa_coin_skips_with_probability_lambda"},
    "a2_z_left_frozen": {"stage1_trains_exactly_proj_proj_tgt_and_z",
                         "a_step_with_your_pieces_matches_and_trains_only_proj_proj_tgt_z"},
    "a3_temperature_not_learned": {"the_temperature_is_learned"},
    "a3_tokens_before_the_image": {"task_tokens_sit_right_after_the_image"},
    "a3_queries_not_in_the_keys": {"resampler_matches_with_shared_and_per_sample_queries"},
    "a3_info_nce_unnormalised": {"info_nce_matches"},
}


@pytest.mark.parametrize("assignment", adapters.ASSIGNMENTS)
def test_the_package_gets_full_marks(assignment):
    results = grade(assignment, use_solution=True)
    failed = {r.name: r.message for r in results if r.earned < r.points}
    assert not failed, f"{assignment}: the package itself fails {failed}"


@pytest.mark.parametrize("assignment", adapters.ASSIGNMENTS)
def test_the_untouched_starter_gets_zero_and_says_not_implemented(assignment):
    results = grade(assignment)
    assert total(results) == 0
    assert all(r.message.startswith("not implemented") or "TODO" in r.message or "no " in r.message
               for r in results), [r.message for r in results]


def test_every_coding_assignment_has_at_least_three_planted_mistakes():
    for prefix in ("a1", "a2", "a3"):
        assert len([m for m in CAUGHT_BY if m.startswith(prefix)]) >= 3
    assert {p.stem for p in MISTAKES.glob("a*.py")} == set(CAUGHT_BY)


@pytest.mark.parametrize("mistake", sorted(CAUGHT_BY))
def test_a_planted_mistake_loses_points_where_expected(mistake, tmp_path):
    results = grade(mistake[:2].upper(), impl=MISTAKES / f"{mistake}.py", pictures=tmp_path)
    failed = {r.name for r in results if r.earned < r.points}
    assert failed == CAUGHT_BY[mistake], f"{mistake}: failed {sorted(failed)}, expected {sorted(CAUGHT_BY[mistake])}"


def test_a_failed_mask_test_saves_expected_and_yours_side_by_side(tmp_path):
    grade("A1", impl=MISTAKES / "a1_rule2_off_by_one.py", pictures=tmp_path)
    assert list((tmp_path / "A1").glob("attention-*.png"))


def test_the_cli_prints_a_table_and_grades_a_folder_of_submissions(tmp_path, capsys):
    assert main(["A3", "--impl", str(MISTAKES / "a3_temperature_not_learned.py")]) == 0
    out = capsys.readouterr().out
    assert "the_temperature_is_learned" in out and "13/14" in out
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    (tmp_path / "subs" / "ada" / "a3_visper.py").write_text((MISTAKES / "a3_tokens_before_the_image.py").read_text())
    (tmp_path / "subs" / "bob").mkdir()
    assert main(["A3", "--submissions", str(tmp_path / "subs"), "--csv", str(tmp_path / "s.csv")]) == 0
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[0].startswith("student,assignment,total,possible,") and len(rows) == 3
    assert rows[1].startswith("ada,A3,12,14,") and rows[2].startswith("bob,A3,0,14,")


def test_every_handout_has_its_sections_and_the_course_readme_links_it():
    course = MISTAKES.parent
    readme = (course / "README.md").read_text()
    for folder in adapters.FOLDERS.values():
        text = (course / folder / "handout.md").read_text()
        assert f"({folder}/handout.md)" in readme, f"course/README.md does not link {folder}/handout.md"
        for section in ("**Goal.**", "**Expected time:**", "## Background", "## How it is graded", "$$"):
            assert section in text, f"{folder}/handout.md lacks {section}"
    for link in __import__("re").findall(r"\]\(([^)#]+)\)", readme):
        assert (course / link).exists(), f"course/README.md links a missing file {link}"


def test_a4_refuses_a_quick_size_study_as_study_json_holds_it(tmp_path):
    import dataclasses
    import json
    from types import SimpleNamespace

    from course.a4_experiment import checks
    from minijarvis.toyworld import study as S
    real = json.loads((Path(__file__).resolve().parents[1] / "docs" / "study.json").read_text())
    real["settings"]["size"] = json.loads(json.dumps(dataclasses.asdict(S.QUICK)))  # tuples come back as lists
    (tmp_path / "study.json").write_text(json.dumps(real))
    with pytest.raises(AssertionError, match="--quick size"):
        checks.study_is_a_real_size_with_two_seeds_and_probes(SimpleNamespace(study=tmp_path / "study.json"), None)
