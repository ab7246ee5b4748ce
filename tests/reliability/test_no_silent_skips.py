"""A test that needs ../shared skips in a user's clone, but fails in CI (`CI` set), naming the missing file."""

import pytest
from shared_files import require_shared


def test_missing_shared_data_skips_for_users_and_fails_in_ci(tmp_path, monkeypatch):
    missing = tmp_path / "glue"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"the GLUE TSVs is not present: {missing}"):
        require_shared(missing, "the GLUE TSVs")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"the GLUE TSVs is not present: {missing} \\(CI is set"):
        require_shared(missing, "the GLUE TSVs")
    assert require_shared(tmp_path, "a folder that exists") == tmp_path
