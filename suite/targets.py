"""``_target_`` entries: checked against the constructor's signature without importing the
package (the file is parsed with ``ast``, so a typo answers in well under a second), and built
by importing them once the config is known to be good."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from suite.errors import ConfigError

INJECTED = {"output_dir", "seed"}  # arguments run.py passes to job functions itself
FIRST_PARTY = ("core", "modules", "datamodules", "callbacks", "experiments", "suite")


@dataclass
class Param:
    name: str
    annotation: str | None
    required: bool


def _find_def(target: str, key: str) -> tuple[list[Param], bool] | None:
    """(params, accepts **kwargs) of a class's __init__ or a function, from its source; None when
    the source cannot tell (e.g. an inherited __init__)."""
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ConfigError(f"{key}._target_: {target!r} is not a dotted path like modules.diffusion.Diffusion")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ConfigError(f"{key}._target_: module {module_name!r} not found (from {target!r})")
    with open(spec.origin) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == attr:
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            return _params(init, skip_first=True) if init else _inherited_init(tree, node, key)
        if isinstance(node, ast.FunctionDef) and node.name == attr:
            return _params(node, skip_first=False)
    names = [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
    raise ConfigError(f"{key}._target_: {module_name} defines no {attr!r}; it defines {', '.join(names)}")


def _inherited_init(tree: ast.Module, cls: ast.ClassDef, key: str) -> tuple[list[Param], bool] | None:
    """The __init__ a class without one inherits from its first base, when that base is imported by
    name from one of the suite's own packages (``from modules.spatial_base import SpatialPredictor``;
    third-party bases are not looked up: that would import them)."""
    if not cls.bases or not isinstance(cls.bases[0], ast.Name):
        return None
    base = cls.bases[0].id
    for node in tree.body:
        if (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FIRST_PARTY
                and any(a.name == base and a.asname is None for a in node.names)):
            try:
                return _find_def(f"{node.module}.{base}", key)
            except ConfigError:
                return None
    return None


def target_params(target: str, key: str) -> list[str]:
    """Argument names of a ``_target_`` (empty when its source cannot tell)."""
    found = _find_def(target, key)
    return [p.name for p in found[0]] if found else []


def _params(fn: ast.FunctionDef, skip_first: bool) -> tuple[list[Param], bool]:
    args = fn.args.posonlyargs + fn.args.args
    if skip_first:
        args = args[1:]
    n_required = len(args) - len(fn.args.defaults)
    params = [Param(a.arg, ast.unparse(a.annotation) if a.annotation else None, i < n_required)
              for i, a in enumerate(args)]
    for a, default in zip(fn.args.kwonlyargs, fn.args.kw_defaults):
        params.append(Param(a.arg, ast.unparse(a.annotation) if a.annotation else None, default is None))
    return params, fn.args.kwarg is not None


def _accepts(annotation: str, value: Any) -> bool:
    """Does ``value`` (from YAML / the command line) fit a simple annotation? Unknown ones pass."""
    ann = annotation.replace(" ", "").replace("typing.", "")
    if isinstance(value, str) and value.startswith("${"):
        return True
    if ann.startswith("Optional[") and ann.endswith("]"):
        return value is None or _accepts(ann[9:-1], value)
    if len(_split_union(ann)) > 1:
        return any(_accepts(part, value) for part in _split_union(ann))
    base = ann.split("[", 1)[0]
    if base == "None":
        return value is None
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if base in ("list", "List", "tuple", "Tuple", "Sequence"):
        return isinstance(value, (ListConfig, list, tuple))
    if base in ("dict", "Dict", "Mapping"):
        return isinstance(value, (DictConfig, dict))
    return True


def _split_union(ann: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in ann:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def check_target(node: DictConfig, key: str, injected: set[str] = frozenset(), nested: bool = False) -> None:
    """Validate one ``_target_`` node: unknown arguments, missing required ones, simple types; then
    each argument that is itself a ``_target_`` node (a network given to a module,
    modules/nets/build.py), whose required arguments the parent may supply (``nested``)."""
    target = node.get("_target_")
    if not isinstance(target, str):
        raise ConfigError(f"{key}._target_: missing; expected a dotted path to a class or function")
    found = _find_def(target, key)
    if found is None:
        return
    params, var_kwargs = found
    by_name = {p.name: p for p in params}
    given = {k for k in node.keys() if k != "_target_"}
    unknown = sorted(given - set(by_name))
    if unknown and not var_kwargs:
        from modules.renamed import renamed_message

        moved = renamed_message(target, f"{key}.{unknown[0]}", unknown[0])
        if moved:
            raise ConfigError(moved)
        close = difflib_hint(unknown[0], list(by_name))
        raise ConfigError(f"{key}.{unknown[0]}: {target} has no argument {unknown[0]!r}{close}; "
                          f"valid arguments: {', '.join(by_name)}")
    missing = [p.name for p in params if p.required and p.name not in given and p.name not in injected]
    if missing and not nested:
        raise ConfigError(f"{key}.{missing[0]}: missing required argument of {target}")
    for name in sorted(given & set(by_name)):
        p = by_name[name]
        raw = node._get_node(name)
        value = raw if isinstance(raw, (DictConfig, ListConfig)) else raw._value()
        if p.annotation and not _accepts(p.annotation, value):
            raise ConfigError(f"{key}.{name}: expected {p.annotation}, got {type(value).__name__} {value!r} "
                              f"(argument of {target})")
    for name in sorted(given):
        child = node._get_node(name)
        if isinstance(child, DictConfig) and "_target_" in child:
            check_target(child, f"{key}.{name}", nested=True)


def difflib_hint(word: str, options: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_all(cfg: DictConfig) -> None:
    """Check every ``_target_`` of a composed config."""
    for section in ("module", "data"):
        if cfg[section] is not None:
            check_target(cfg[section], section)
    if cfg.job is not None:
        check_target(cfg.job, "job", injected=INJECTED)
    for name, node in cfg.callbacks.items():
        if node is not None:
            check_target(node, f"callbacks.{name}")
    if cfg.claims is not None:
        module_name, sep, fn = cfg.claims.partition(":")
        if not sep or _find_def(f"{module_name}.{fn}", "claims") is None:
            raise ConfigError(f"claims: {cfg.claims!r} must name a function as module:function")


def locate_claims(spec: str) -> Any:
    module_name, _, fn = spec.partition(":")
    return getattr(importlib.import_module(module_name), fn)


def locate(target: str) -> Any:
    module_name, _, attr = target.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def instantiate(node: DictConfig, **extra: Any) -> Any:
    """Build ``_target_(**args, **extra)``; nested containers become plain lists and dicts."""
    args = OmegaConf.to_container(node, resolve=True)
    target = args.pop("_target_")
    return locate(target)(**args, **extra)
