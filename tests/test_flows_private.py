"""flows/_private.py, the one module that uses Prefect's, prefect-ray's and Ray's internals:
an upgrade of either package fails here, by name, instead of breaking a stage at run time."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from flows import _private

FLOWS = Path(__file__).resolve().parent.parent / "flows"


def test_installed_prefect_and_prefect_ray_are_the_versions_the_fork_was_written_for():
    installed = _private.installed_versions()
    assert installed["prefect"].startswith(_private.PREFECT + "."), \
        f"flows/_private.py was written for prefect {_private.PREFECT}.x, installed: prefect {installed['prefect']}"
    assert installed["prefect-ray"].startswith(_private.PREFECT_RAY + "."), \
        f"flows/_private.py was written for prefect-ray {_private.PREFECT_RAY}.x, " \
        f"installed: prefect-ray {installed['prefect-ray']}"
    _private.check_versions()  # and the run-time check agrees


@pytest.mark.parametrize("installed", [{"prefect": "3.9.0", "prefect-ray": "0.6.0"},
                                       {"prefect": "3.8.8", "prefect-ray": "0.7.1"}])
def test_another_version_is_refused_with_both_versions_named(installed):
    with pytest.raises(RuntimeError) as error:
        _private.check_versions(installed)
    message = str(error.value)
    assert "prefect 3.8.x and prefect-ray 0.6.x" in message
    assert f"prefect {installed['prefect']}, prefect-ray {installed['prefect-ray']}" in message


def test_runner_refuses_an_unsupported_version(monkeypatch):
    from flows import runner

    monkeypatch.setattr(_private, "installed_versions", lambda: {"prefect": "4.0.0", "prefect-ray": "1.0.0"})
    with pytest.raises(RuntimeError, match="prefect 4.0.0, prefect-ray 1.0.0"):
        runner.ray_runner()


@pytest.mark.parametrize("module, path", _private.PRIVATE_NAMES)
def test_every_private_name_the_module_uses_exists(module, path):
    importlib.import_module(module.split(".")[0])  # the package first, as a stage imports it
    node = importlib.import_module(module)
    for part in path.split("."):
        assert hasattr(node, part), f"{module}.{path} is gone: port flows/_private.py"
        node = getattr(node, part)


def test_the_runner_attributes_and_signatures_the_fork_relies_on():
    from prefect_ray.task_runners import RayTaskRunner

    runner = RayTaskRunner()
    assert runner._started is False  # prefect.task_runners.TaskRunner's flag, checked by submit
    assert list(inspect.signature(_private.RayTaskRunnerWithoutSettings.submit).parameters) == \
        list(inspect.signature(RayTaskRunner.submit).parameters)
    assert list(inspect.signature(RayTaskRunner._run_prefect_task).parameters) == \
        ["upstream_ray_obj_refs", "task", "task_run_id", "context", "parameters", "wait_for", "dependencies"]


def test_context_has_prefects_keys_without_the_settings():
    from uuid import uuid4

    from prefect import task
    from prefect.context import serialize_context

    @task
    def noop():
        return None

    kwargs = {"task": noop, "task_run_id": uuid4(), "task_inputs": {}, "copy_to_child_ctx": True}
    public = serialize_context(asset_ctx_kwargs=kwargs)
    ours = _private.serialize_context_without_settings(kwargs)
    assert set(ours) == set(public), "prefect.context.serialize_context changed: port flows/_private.py"
    assert ours["settings_context"] == {} and public["settings_context"]
    assert {k: v for k, v in ours.items() if k != "settings_context"} == \
        {k: v for k, v in public.items() if k != "settings_context"}


def test_no_other_flows_module_uses_internals():
    pattern = re.compile(r"\b_(started|run_prefect_task|exchange_prefect_for_ray_futures|deployment_id|"
                         r"deployment_parameters|owns_ray)\b|ray\._private|SubprocessASGIServer|PREFECT__")
    offenders = {path.name: match.group(0) for path in FLOWS.glob("*.py") if path.name != "_private.py"
                 for match in [pattern.search(path.read_text())] if match}
    assert offenders == {}
