"""Strategic-merge patches of a Pod template, the way `kubectl patch --type strategic` applies
them in the common cases: the pure core behind the `kubernetes.podTemplate` overlay.

It does no I/O and knows no Job: executors/manifests.py builds the template, applies the
patches with `strategic_merge` and checks that eventflow's container and labels survived.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventflow.errors import ConfigError

# Lists that Kubernetes' strategic merge merges entry by entry, and the field naming an entry.
_BY_NAME = ("containers", "initContainers", "ephemeralContainers", "volumes", "env")
_MERGE_KEYS = dict.fromkeys((*_BY_NAME, "imagePullSecrets"), "name") | {"volumeMounts": "mountPath"}


def strategic_merge(
    target: Mapping[str, Any], patch: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """`target` overlaid with `patch`, as `kubectl patch --type strategic` does in the
    common cases.

    Maps merge recursively and a null value removes its field; the lists in `_MERGE_KEYS`
    (containers, volumes, env, ...) merge entry by entry, matched by name (volumeMounts by
    mountPath); other lists are replaced. A map (or list entry) holding `$patch: delete` is
    removed, one holding `$patch: replace` replaces its counterpart whole. `where` names the
    patch in error messages. Neither argument is changed.
    """
    directive = _directive(patch, where)
    if directive == "delete":
        raise ConfigError(f"{where}.$patch: delete would remove it all; delete fields inside it")
    return _merge_map({} if directive == "replace" else target, patch, where)


def _merge_map(target: Mapping[str, Any], patch: Mapping[str, Any], where: str) -> dict[str, Any]:
    merged = dict(target)
    for name, value in patch.items():
        path = f"{where}.{name}"
        if name == "$patch":
            continue
        if value is None:
            merged.pop(name, None)
        elif isinstance(value, Mapping):
            directive = _directive(value, path)
            base = merged.pop(name, None)
            if directive != "delete":
                keep = isinstance(base, Mapping) and directive is None
                merged[name] = _merge_map(base if keep else {}, value, path)
        elif isinstance(value, list) and name in _MERGE_KEYS:
            base = merged.get(name)
            merged[name] = _merge_list(
                base if isinstance(base, list) else [], value, _MERGE_KEYS[name], path
            )
        else:
            merged[name] = plain(value)
    return merged


def _merge_list(target: list[Any], patch: list[Any], key: str, where: str) -> list[Any]:
    merged = list(target)
    for index, entry in enumerate(patch):
        path = f"{where}[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get(key), str):
            raise ConfigError(
                f"{path}: entries of this list are merged by {key!r}, so each needs one;"
                f" got {entry!r}"
            )
        directive = _directive(entry, path)
        found = [i for i, old in enumerate(merged) if named(old, entry[key], key)]
        base = merged[found[0]] if found and directive is None else {}
        merged = [old for i, old in enumerate(merged) if i not in found[:1]]
        if directive != "delete":
            merged.insert(found[0] if found else len(merged), _merge_map(base, entry, path))
    return merged


def named(entry: Any, name: str, key: str = "name") -> bool:
    return isinstance(entry, Mapping) and entry.get(key) == name


def _directive(patch: Mapping[str, Any], where: str) -> str | None:
    directive = patch.get("$patch")
    if directive is None or directive in {"delete", "replace"}:
        return directive
    raise ConfigError(
        f"{where}.$patch: {directive!r} is not a directive eventflow knows; write delete or"
        " replace, or leave $patch out to merge"
    )


def plain(value: Any) -> Any:
    """A JSON-ready copy, so a manifest shares no mutable part with the options."""
    if isinstance(value, Mapping):
        return {name: plain(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value
