"""Helpers shared by the tests (plain functions and classes; the fixtures stay in the
conftest files): ``postgres`` (throwaway databases), ``coordinator`` (migrations, tokens,
an in-process API), ``data`` (where the image data lives, and skip-or-fail when absent),
``store`` (rows for the trial-store suites), ``waiting`` (bounded polls), ``archs``
(one-layer search spaces and architectures), ``worker`` (a worker daemon in a thread),
``model_files`` (exported model files rewritten).
"""
