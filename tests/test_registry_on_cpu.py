"""The one resolver: registered names (entry points), module and file specs, run-time registration,
and one error style (kind, spec and the registered names; unknown keyword arguments by name)."""

from __future__ import annotations

import pytest
import torch

from blip3o_rl import registry
from blip3o_rl.registry import ComponentError

KINDS = ("policy", "engine", "reward", "ocr_engine", "detector", "optimizer", "lr_scheduler", "tiny_renderer",
         "tiny_targets")


def scaled(x: float, *, factor: float = 2.0) -> float:
    return x * factor


def anything(**kwargs):
    return kwargs


@pytest.mark.parametrize("kind", KINDS)
def test_every_registered_name_resolves(kind):
    assert registry.names(kind), f"no entry points for {kind}: is the package installed (pip install -e .)?"
    for name in registry.names(kind):
        assert callable(registry.resolve(kind, name)), (kind, name)


def test_builtin_names():
    assert registry.resolve("optimizer", "adamw") is torch.optim.AdamW
    assert registry.names("policy") == ["blip3o_next", "janus", "tiny"]
    assert {"constant", "cosine", "linear"} <= set(registry.names("lr_scheduler"))
    assert type(registry.build("engine", "kv_cache")).__name__ == "KVCacheEngine"


def test_module_spec_and_build_with_kwargs():
    assert registry.resolve("reward", f"{__name__}:scaled") is scaled
    assert registry.build("reward", f"{__name__}:scaled", x=3.0, factor=3.0) == 9.0
    assert registry.build("optimizer", "torch.optim:SGD", params=[torch.zeros(1, requires_grad=True)], lr=0.1)


def test_file_spec(tmp_path):
    f = tmp_path / "plugin.py"
    f.write_text("class Engine:\n    def __init__(self, size=1):\n        self.size = size\n")
    assert registry.build("engine", f"{f}:Engine", size=4).size == 4
    with pytest.raises(ComponentError, match=r"unknown engine '/no/such\.py:X' \(file /no/such\.py does not exist\)"):
        registry.resolve("engine", "/no/such.py:X")


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ComponentError, match=r"unknown optimizer 'adamx'.*registered optimizer names: adam, adamw, sgd"):
        registry.resolve("optimizer", "adamx")
    with pytest.raises(ComponentError, match=r"unknown reward 'no_such_module:f' \(no module 'no_such_module'\)"):
        registry.resolve("reward", "no_such_module:f")
    with pytest.raises(ComponentError, match=rf"{__name__} has no attribute 'missing'"):
        registry.resolve("reward", f"{__name__}:missing")
    assert isinstance(ComponentError("x"), ValueError)  # callers that catch ValueError keep working


def test_unknown_kwargs_fail_before_the_call_naming_the_key():
    with pytest.raises(ComponentError, match=r"reward '.*:scaled' takes no argument 'facter'; it takes: factor, x"):
        registry.build("reward", f"{__name__}:scaled", x=1.0, facter=3.0)
    with pytest.raises(ComponentError, match="engine 'kv_cache' takes no argument 'block_size'"):
        registry.build("engine", "kv_cache", block_size=16)
    assert registry.build("reward", f"{__name__}:anything", whatever=1) == {"whatever": 1}  # **kwargs: all


def test_run_time_registration():
    registry.register("reward", "test_scaled", scaled)
    registry.register("reward", "test_scaled", scaled)  # the same target again: fine
    registry.register("reward", "test_scaled_lazy", f"{__name__}:scaled")
    assert "test_scaled" in registry.names("reward")
    assert registry.build("reward", "test_scaled_lazy", x=1.0) == 2.0
    with pytest.raises(ComponentError, match="already registered"):
        registry.register("reward", "test_scaled", anything)
    with pytest.raises(ComponentError, match="already registered"):
        registry.register("reward", "ocr", anything)  # an entry point


def test_the_registry_imports_no_other_project_module():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(registry.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.startswith("blip3o_rl")]
