"""YAML read safely: PyYAML's safe loader with limits on nesting, alias expansion, duplicate keys and integers.

A config is a few hundred bytes of YAML. This loader refuses documents built to exhaust the parser or
the memory ("billion laughs" aliases, deep nesting, a 5,000-digit integer) and duplicate mapping keys,
which plain YAML silently resolves to the last value. Its errors are yaml.YAMLError with a line
(YamlLimitError); vae_kl.spec.config turns them into one-line ConfigErrors.
"""

from typing import Any

import yaml

from vae_kl.process.exits import quote

MAX_YAML_BYTES = 1024 * 1024  # A config is a few hundred bytes; refuse before reading anything huge.
MAX_YAML_NODES = 10000  # Values after alias expansion: stops "billion laughs" documents.
MAX_YAML_DEPTH = 50  # Nesting; deeper documents would exhaust the parser's recursion.


class YamlLimitError(yaml.YAMLError):
    """A document the bounded loader refuses (too big, too deep, a duplicate key); it has a line."""

    def __init__(self, problem, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader with limits on nesting, on alias expansion and on duplicate mapping keys."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlLimitError(f"values nest more than {MAX_YAML_DEPTH} levels deep",
                                     self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())  # Before construction, which would expand the aliases.
        return node

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:
                continue  # Unhashable: the parent class reports it.
            if earlier is not key_node:
                raise YamlLimitError(f"duplicate key {quote(key)} (first given at line {earlier.start_mark.line + 1})",
                                     key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python refuses to convert integers of more than 4,300 digits.
            raise YamlLimitError("an integer with too many digits", node.start_mark)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _expanded_size(node, sizes, open_nodes):
    """How many values the node becomes once its aliases are expanded; raises past MAX_YAML_NODES."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise YamlLimitError("an alias refers to a value that contains it", node.start_mark)
    open_nodes.add(id(node))
    size = 1
    if isinstance(node.value, list):
        for item in node.value:
            for child in (item if isinstance(item, tuple) else (item,)):
                size += _expanded_size(child, sizes, open_nodes)
    open_nodes.discard(id(node))
    if size > MAX_YAML_NODES:
        raise YamlLimitError(f"aliases expand to more than {MAX_YAML_NODES} values", node.start_mark)
    sizes[id(node)] = size
    return size


def load_yaml_text(text: str) -> Any:
    """Parse YAML text with the bounded safe loader (raises yaml.YAMLError, YamlLimitError included)."""
    return yaml.load(text, Loader=_BoundedLoader)
