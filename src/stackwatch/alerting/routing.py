"""The routing tree: which routes (and so receivers and grouping options) an alert belongs to.

Matched depth first as in Alertmanager: a node that matches hands the alert to its first
matching child; ``continue: true`` on a child lets the search go on to its siblings; a node
whose children all miss keeps the alert itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stackwatch.alerting.config import RouteConfig
from stackwatch.alerting.matchers import matches_all

__all__ = ["Route", "build_routes"]


@dataclass
class Route:
    config: RouteConfig
    key: str  # Alertmanager's route key: {}/{matchers}/... of the path from the root
    id: str  # the same, with the child index where matchers repeat (stable across reloads)
    children: list[Route] = field(default_factory=list)

    def match(self, labels: Mapping[str, str]) -> list[Route]:
        if not matches_all(self.config.matchers, labels):
            return []
        out: list[Route] = []
        for child in self.children:
            found = child.match(labels)
            out.extend(found)
            if found and not child.config.continue_:
                break
        return out or [self]

    def group_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        if self.config.group_by_all:
            return dict(labels)
        return {name: labels[name] for name in self.config.group_by if labels.get(name, "") != ""}

    def group_key(self, group_labels: Mapping[str, str]) -> str:
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(group_labels.items()))
        return f"{self.key}:{{{inner}}}"

    def walk(self) -> list[Route]:
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


def build_routes(config: RouteConfig, parent: Route | None = None, index: int = 0) -> Route:
    if parent is None:
        key, rid = "{}", "{}"
    else:
        matchers = "{" + ",".join(str(m) for m in config.matchers) + "}"
        key = f"{parent.key}/{matchers}"
        rid = f"{parent.id}/{matchers}/{index}"
    node = Route(config, key, rid)
    node.children = [build_routes(child, node, i) for i, child in enumerate(config.routes)]
    return node
