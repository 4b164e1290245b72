"""One resolver for every "name or path, plus kwargs" that a recipe gives.

A *spec* names an implementation of a *kind* (policy, engine, reward, ocr_engine, detector, optimizer,
lr_scheduler, ...) in one of three ways::

    "kv_cache"                      a registered name
    "my_package.rewards:Sharpness"  an importable module and attribute
    "path/to/reward.py:sharpness"   a Python file and attribute (relative to the working directory)

Registered names come from the entry points of group ``blip3o_rl.<kind>`` (the project's own are in
its pyproject.toml; an installed plug-in package adds its own the same way), plus `register` at run
time. Every failure is a `ComponentError` naming the kind, the spec and the registered names.

    resolve("optimizer", "adamw")                  # -> torch.optim.AdamW
    build("engine", "kv_cache")                    # -> KVCacheEngine()
    build("reward", "ocr", engine="rapidocr")      # unknown keyword arguments fail before the call

This module imports no other blip3o_rl module: every layer may use it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

GROUP_PREFIX = "blip3o_rl."
SPEC_FORMS = "a registered name, 'package.module:attr' or 'path/to/file.py:attr'"

_registered: dict[str, dict[str, Any]] = {}  # kind -> name -> object or "module:attr", from `register`


class ComponentError(ValueError):
    """A spec that does not resolve, or keyword arguments its target does not take."""


@functools.cache
def _entry_points(kind: str) -> dict[str, str]:
    """``name -> "module:attr"`` of the installed entry points of group ``blip3o_rl.<kind>``."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=GROUP_PREFIX + kind)}


def names(kind: str) -> list[str]:
    """The registered names of ``kind`` (entry points and run-time registrations), sorted."""
    return sorted({*_entry_points(kind), *_registered.get(kind, {})})


def register(kind: str, name: str, target: Any) -> None:
    """Register ``name`` for ``target`` (an object, or a "module:attr" string imported on first use)."""
    current = _registered.get(kind, {}).get(name, _entry_points(kind).get(name))
    if current is not None and current != target:
        raise ComponentError(f"{kind} {name!r} is already registered for {current!r}")
    _registered.setdefault(kind, {})[name] = target


def _unknown(kind: str, spec: Any, why: str = "") -> ComponentError:
    known = ", ".join(names(kind)) or "none (is blip3o-rl installed? names come from its entry points)"
    why = f" ({why})" if why else ""
    return ComponentError(f"unknown {kind} {spec!r}{why}: use {SPEC_FORMS}; registered {kind} names: {known}")


def _load_file(path: Path) -> Any:
    module_name = f"blip3o_rl_user_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    return module


def _import(kind: str, spec: str, target: str) -> Any:
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise _unknown(kind, spec)
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise _unknown(kind, spec, f"file {path} does not exist")
        module = _load_file(path)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise  # the module exists but one of its own imports is missing: say that, unchanged
            raise _unknown(kind, spec, f"no module {module_name!r}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _unknown(kind, spec, f"{module_name} has no attribute {attr!r}") from None
    return obj


def resolve(kind: str, spec: Any) -> Any:
    """The object ``spec`` names (a non-string spec is returned as it is)."""
    if not isinstance(spec, str):
        return spec
    target = _registered.get(kind, {}).get(spec, _entry_points(kind).get(spec, spec))
    return _import(kind, spec, target) if isinstance(target, str) else target


def parameters(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword names ``fn`` accepts; None when it takes ``**kwargs`` (or has no signature)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def check_kwargs(kind: str, spec: Any, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Fail, naming the key, when ``fn`` does not take every keyword in ``kwargs``."""
    accepted = parameters(fn)
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ComponentError(
            f"{kind} {spec!r} takes no argument {unknown[0]!r}"
            + (f" (nor {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; it takes: {', '.join(sorted(accepted)) or 'none'}"
        )


def build(kind: str, spec: Any, /, **kwargs: Any) -> Any:
    """``resolve(kind, spec)(**kwargs)``, with unknown keyword arguments rejected before the call."""
    target = resolve(kind, spec)
    if not callable(target):
        raise ComponentError(f"{kind} {spec!r} resolved to a {type(target).__name__}, which cannot be called")
    check_kwargs(kind, spec, target, kwargs)
    return target(**kwargs)


__all__ = ["ComponentError", "build", "check_kwargs", "names", "parameters", "register", "resolve"]
