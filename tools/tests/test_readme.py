"""README.md's parameter table is the one generated from the parameter declarations."""

from cse_pose_dev import readme_params
from cse_pose_ros.params import PARAMS, ParamSpec, markdown_table


def test_readme_parameter_table_matches_declarations():
    table = readme_params.readme_table(readme_params.README.read_text())
    assert table is not None, "README.md lacks the parameter table markers"
    assert table == markdown_table(), (
        "README.md's parameter table is out of date: run "
        "`.venv/bin/python -m cse_pose_dev.readme_params --write`"
    )


def test_a_new_parameter_changes_the_table():
    extra = ParamSpec("new_knob", 1.0, "Something undocumented.", 0.0, 2.0)
    assert markdown_table((*PARAMS, extra)) != markdown_table()
    assert "`new_knob`" in markdown_table((*PARAMS, extra))
