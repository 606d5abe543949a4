from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qsgt_plugin.common.memory import keep_freed_memory

# CI sets QSGT_REQUIRE_DATA: there a missing dataset fails the run instead of skipping the
# tests that read it.
DATA_FILES = ("MNIST/raw/t10k-images-idx3-ubyte", "cifar-10-batches-py/test_batch")


# Under pytest-xdist (`-n 2`), each worker computes on one thread, as do the processes it
# starts: two workers of one thread each keep the 2 cores busy where one process of two
# threads waits on Python, imports, exports and subprocesses.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# As the `qsgt` command does: the shipped runs' evaluations (tests/test_results.py) reuse freed
# memory instead of page-faulting every batch afresh (qsgt_plugin/common/memory.py).
keep_freed_memory()

ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (README's test command) every ``xdist_group`` test must carry
    its group, so that one worker trains a module's shared runs once. pytest 9.2 with
    pytest-xdist 3.8 drops the group silently (pytest-dev/pytest-xdist#1386): the tests still
    pass, each worker trains the session fixtures again, and CI takes minutes longer. Such
    tests fail at setup instead, before they train anything."""
    if getattr(config.option, "loadgroup", False):
        config.stash[_UNGROUPED] = {
            i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
        }


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid in item.config.stash.get(_UNGROUPED, set()):
        pytest.fail(
            "--dist loadgroup did not group this xdist_group test: this pytest and pytest-xdist "
            "do not work together (pytest-xdist#1386). Install the test extra, which pins a "
            "pytest that does.",
            pytrace=False,
        )


_UNGROUPED = pytest.StashKey[set]()
# Tools' own folders: what the suite may create in the working tree.
_TOOL_DIRS = {".git", ".venv", ".ci-venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
_TOOL_DIRS |= {".hypothesis"}


def working_tree() -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime)}`` of every file of the checkout but tools' caches."""
    files = {}
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _TOOL_DIRS and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder) / name
            stat = path.stat()
            files[str(path.relative_to(ROOT))] = (stat.st_size, stat.st_mtime_ns)
    return files


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_TREE] = working_tree()
    _require_data()
    _require_extras()


# The cross-checks against these are importorskip'ped for a plain install; CI installs the
# test extra and sets QSGT_REQUIRE_EXTRAS, so a broken extra fails the run instead of
# skipping them silently.
EXTRAS = ("onnx", "onnxruntime", "onnxoptimizer", "quantus", "statsmodels")


def _require_extras() -> None:
    if not os.environ.get("QSGT_REQUIRE_EXTRAS"):
        return
    import importlib

    missing = []
    for name in EXTRAS:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an extra that is there but broken counts as missing
            missing.append(f"{name} ({type(exc).__name__})")
    if missing:
        raise pytest.UsageError(
            f"QSGT_REQUIRE_EXTRAS is set but {', '.join(missing)} cannot be imported: the "
            "cross-checks against them would be skipped. Install the test extra."
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A suite that leaves the working tree changed fails: runs go to temporary folders."""
    before = session.config.stash.get(_TREE, None)
    if before is None:
        return
    after = working_tree()
    changed = sorted(p for p in after.keys() | before.keys() if after.get(p) != before.get(p))
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if changed[10:] else "")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"the tests changed the working tree: {shown}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_TREE = pytest.StashKey[dict]()


def _require_data() -> None:
    if not os.environ.get("QSGT_REQUIRE_DATA"):
        return
    root = os.environ.get("QSGT_DATA")
    missing = [f for f in DATA_FILES if not root or not (Path(root) / f).is_file()]
    if missing:
        raise pytest.UsageError(
            f"QSGT_REQUIRE_DATA is set but QSGT_DATA ({root!r}) lacks {', '.join(missing)}: "
            "the real-data tests would be skipped. Point QSGT_DATA at the datasets."
        )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def install_plugins(monkeypatch):
    """``install(*plugins)``: the installed plugins plus these become the process's registry for
    one test (through a PluginManager and the hooks, as installed plugins would); the registry
    before the test is back when it ends."""
    from qsgt_plugin import plugins

    def install(*extra: object):
        pm = plugins.make_plugin_manager()
        for plugin in extra:
            pm.register(plugin)
        registry = plugins.Registry(pm)
        monkeypatch.setattr(plugins, "_registry", registry)
        return registry

    return install


@pytest.fixture
def synthetic_dataset(install_plugins):
    """The registry with the tests' dataset plugin (``synthetic``) added."""
    import synthetic_data

    install_plugins(synthetic_data)
    return synthetic_data.GRATINGS
