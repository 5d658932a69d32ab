"""The benchmark scripts here run as programs (see the Makefile), not as tests: `load_test.py` matches
pytest's default ``*_test.py`` pattern, so it is kept out of collection explicitly."""

collect_ignore = ["load_test.py"]
