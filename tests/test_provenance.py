"""Result provenance: version, commit and source hash."""
from lowspace import provenance as prov


def test_provenance_names_version_commit_and_source(monkeypatch):
    record = prov.provenance()
    assert record["lowspace"] != "0+unknown" and len(record["source"]) == 16
    monkeypatch.setenv("LOWSPACE_COMMIT", "abc123")
    prov.git_commit.cache_clear()
    try:
        assert prov.provenance()["commit"] == "abc123"
    finally:
        prov.git_commit.cache_clear()


def test_package_hash_changes_with_a_source_file(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(prov, "PACKAGE", tmp_path)
    prov.package_hash.cache_clear()
    first = prov.package_hash()
    (tmp_path / "a.py").write_text("x = 2\n")
    prov.package_hash.cache_clear()
    try:
        assert prov.package_hash() != first
    finally:
        prov.package_hash.cache_clear()


def test_an_uninstalled_source_tree_reports_its_pyprojects_version():
    import tomllib
    from pathlib import Path

    import lowspace
    declared = tomllib.loads((Path(lowspace.__file__).parent.parent / "pyproject.toml").read_text())
    assert lowspace._source_version() == declared["project"]["version"]
