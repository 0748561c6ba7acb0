"""scripts/run_suite.py, with scripts/train.py replaced by a fake that writes the
result file: finished runs are skipped, the others run in the suite's order, the
suite file is read again before each start, and failures are reported."""

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts import run_suite  # noqa: E402


def suite_line(tmp_path, mappings):
    return (
        f"task=snli profile=smoke mapping={mappings} seed=1 "
        f"runs_dir={tmp_path}/runs results_dir={tmp_path}/results"
    )


def write_suite(path, groups):
    path.write_text(yaml.safe_dump(groups, sort_keys=False))


def mapping_of(overrides):
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("mapping="))


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """Runs the driver's main on a suite file; returns the mappings trained, in
    order. ``on_train(mapping)`` may edit the suite or return False (a failure)."""
    suite = tmp_path / "suite.yaml"
    trained = []

    def run(*args, on_train=lambda mapping: True):
        def fake_train_one(overrides, run_dir, result, threads):
            mapping = mapping_of(overrides)
            trained.append(mapping)
            ok = on_train(mapping) is not False
            if ok:
                result.parent.mkdir(parents=True, exist_ok=True)
                result.write_text("{}")
            return ok

        monkeypatch.setattr(run_suite, "train_one", fake_train_one)
        monkeypatch.setattr(sys, "argv", ["run_suite.py", str(suite), *args])
        run_suite.main()
        return trained

    run.suite, run.trained = suite, trained
    return run


def test_finished_runs_are_skipped_and_the_rest_run_in_order(tmp_path, driver, capsys):
    write_suite(driver.suite, {"a": [suite_line(tmp_path, "softmax,sparsemax,fusedmax")]})
    _, result = run_suite.run_paths(suite_line(tmp_path, "sparsemax").split())
    result.parent.mkdir(parents=True)
    result.write_text("{}")
    assert driver() == ["softmax", "fusedmax"]
    assert "1 runs finished, 2 to run" in capsys.readouterr().out
    assert driver() == ["softmax", "fusedmax"]  # a second driver finds nothing to do


def test_edits_to_the_suite_take_effect_at_the_next_start(tmp_path, driver):
    write_suite(driver.suite, {"a": [suite_line(tmp_path, "softmax,sparsemax")]})

    def edit(mapping):
        if mapping == "softmax":  # while it "runs": put a new group first, drop sparsemax
            write_suite(
                driver.suite,
                {
                    "b": [suite_line(tmp_path, "oscarmax")],
                    "a": [suite_line(tmp_path, "softmax,entmax15")],
                },
            )

    assert driver(on_train=edit) == ["softmax", "oscarmax", "entmax15"]


def test_an_unreadable_edit_keeps_the_last_readable_suite(tmp_path, driver, capsys):
    write_suite(driver.suite, {"a": [suite_line(tmp_path, "softmax,sparsemax")]})

    def break_it(mapping):
        driver.suite.write_text("a: [unclosed\n")

    assert driver(on_train=break_it) == ["softmax", "sparsemax"]
    assert "keeping its last readable version" in capsys.readouterr().out


def test_a_failed_run_is_reported_and_not_retried(tmp_path, driver):
    write_suite(driver.suite, {"a": [suite_line(tmp_path, "softmax,sparsemax")]})
    with pytest.raises(SystemExit, match="1 runs failed"):
        driver(on_train=lambda mapping: mapping != "softmax")
    assert driver.trained == ["softmax", "sparsemax"]  # softmax once only


def test_two_jobs_run_every_run_once(tmp_path, driver):
    write_suite(driver.suite, {"a": [suite_line(tmp_path, "softmax,sparsemax,fusedmax,oscarmax")]})
    trained = driver("--jobs", "2")
    assert sorted(trained) == ["fusedmax", "oscarmax", "softmax", "sparsemax"]


@pytest.mark.parametrize(
    "text, args, match",
    [
        ("[1, 2]", [], "must map group names"),
        ("a: [unclosed\n", [], "suite.yaml"),
        ("a: ['task=snli']\n", ["--only", "zzz"], "--only zzz: not in"),
    ],
)
def test_a_bad_suite_file_stops_the_driver_with_a_clear_error(driver, text, args, match):
    driver.suite.write_text(text)
    with pytest.raises(SystemExit, match=match):
        driver(*args)


def test_a_setting_changed_without_a_run_suffix_is_refused(tmp_path, driver):
    # Both lines would train into one run directory: the second would resume the
    # first's checkpoints, or count as finished once the first is.
    plain = suite_line(tmp_path, "softmax")
    write_suite(driver.suite, {"a": [plain], "b": [plain + " model.snli_attn.dropout=0.3"]})
    with pytest.raises(SystemExit, match=r"share the run directory(.|\n)*run_suffix"):
        driver()
    write_suite(
        driver.suite,
        {"a": [plain], "b": [plain + " model.snli_attn.dropout=0.3 +task.run_suffix=_drop0.3"]},
    )
    assert driver() == ["softmax", "softmax"]


def test_a_run_that_does_not_compose_is_named(tmp_path, driver):
    write_suite(driver.suite, {"a": [suite_line(tmp_path, "softmax,sparsmax")]})
    with pytest.raises(SystemExit, match=r"group a: .*mapping=sparsmax"):
        driver()


@pytest.mark.parametrize("suite", sorted(REPO.glob("results/*/suite.yaml")), ids=str)
def test_the_committed_suites_compose_to_distinct_runs(suite):
    assert run_suite.load_suite(suite)
