"""The rules file's YAML read into PyYAML's node tree, within bounds: `parse_document` composes the one
document without recursion, stops at a nesting or an expansion by aliases past MAX_DEPTH and
MAX_ALIAS_NODES, and turns every YAML error into a located `RulesError`.
"""

from __future__ import annotations

import yaml

from addon.rules.schema import At, RulesError

_FAST_LOADER = getattr(yaml, "CSafeLoader", None)  # libyaml, when PyYAML was built with it

MAX_DEPTH = 64  # collections inside collections; a rules file needs about 6
MAX_ALIAS_NODES = 100_000  # values that aliases (*name) may add to the document, all aliases together


class _Limit(Exception):
    """The document passes one of the bounds above, at `mark`."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem)
        self.problem, self.mark = problem, mark


def _compose(text: str) -> yaml.Node | None:
    """The document's node tree, built here from the parser's events without recursion, so that no
    nesting can overflow a stack (PyYAML's own composer recurses once per level, in C with libyaml:
    50,000 levels crashed the process). It stops at the first collection past MAX_DEPTH and the first
    alias past MAX_ALIAS_NODES, before the parser has read much further (libyaml's scanner slows down
    with the square of the nesting). libyaml's parser when there is one (faster on a large file); on
    any error the pure-Python one runs again so that messages keep their wording.
    """
    if _FAST_LOADER is not None:
        try:
            return _compose_events(_FAST_LOADER(text))
        except yaml.YAMLError:
            pass
    return _compose_events(yaml.SafeLoader(text))


class _Open:
    """A collection being composed: its node, how many values it holds (counting what aliases
    in it expand to), its anchor, and a mapping's key waiting for its value."""

    __slots__ = ("node", "size", "anchor", "key")

    def __init__(self, node: yaml.CollectionNode, anchor: str | None) -> None:
        self.node, self.size, self.anchor, self.key = node, 1, anchor, None


def _compose_events(loader) -> yaml.Node | None:
    """The nodes of the one document in the stream; they carry start marks only (the schema reports
    those, and an end mark per node costs memory)."""
    try:
        loader.get_event()  # stream start
        if loader.check_event(yaml.StreamEndEvent):
            return None
        document = loader.get_event()
        anchors: dict[str, tuple[yaml.Node, int]] = {}
        open_: list[_Open] = []
        root: list[yaml.Node] = []
        via_aliases = 0

        def attach(node: yaml.Node, size: int) -> None:
            if not open_:
                root.append(node)
                return
            parent = open_[-1]
            parent.size += size
            if isinstance(parent.node, yaml.SequenceNode):
                parent.node.value.append(node)
            elif parent.key is None:
                parent.key = node
            else:
                parent.node.value.append((parent.key, node))
                parent.key = None

        while True:
            event = loader.get_event()
            if isinstance(event, yaml.DocumentEndEvent):
                break
            if isinstance(event, yaml.CollectionEndEvent):
                done = open_.pop()
                if done.anchor is not None:
                    anchors[done.anchor] = (done.node, done.size)
                attach(done.node, done.size)
            elif isinstance(event, yaml.AliasEvent):
                if any(o.anchor == event.anchor for o in open_):
                    raise _Limit(f"the alias *{event.anchor} is inside the value it names", event.start_mark)
                if event.anchor not in anchors:
                    raise yaml.composer.ComposerError(
                        None, None, f"found undefined alias {event.anchor!r}", event.start_mark
                    )
                node, size = anchors[event.anchor]
                via_aliases += size
                if via_aliases > MAX_ALIAS_NODES:
                    raise _Limit(
                        f"with the alias *{event.anchor}, aliases add more than {MAX_ALIAS_NODES:,} values to the "
                        "document (each alias counts every value in what it names): write the values out, or use "
                        "fewer aliases",
                        event.start_mark,
                    )
                attach(node, size)
            elif isinstance(event, yaml.ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                node = yaml.ScalarNode(tag, event.value, event.start_mark, None, style=event.style)
                if event.anchor is not None:
                    anchors[event.anchor] = (node, 1)
                attach(node, 1)
            else:  # a sequence or a mapping starts
                if len(open_) >= MAX_DEPTH:
                    raise _Limit(
                        f"collections are nested more than {MAX_DEPTH} deep here (a rules file needs about 6)",
                        event.start_mark,
                    )
                kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(kind, None, event.implicit)
                open_.append(_Open(kind(tag, [], event.start_mark, None, flow_style=event.flow_style), event.anchor))
        if not loader.check_event(yaml.StreamEndEvent):
            raise yaml.composer.ComposerError(
                "expected a single document in the stream", document.start_mark,
                "but found another document", loader.get_event().start_mark,
            )  # fmt: skip
        return root[0] if root else None
    finally:
        loader.dispose()


def parse_document(text: str, file: str) -> At:
    """Parse YAML text into a located root node.

    Raises:
        RulesError: the text is not valid YAML, or nests or expands past the bounds above.
    """
    try:
        node = _compose(text)
    except _Limit as e:
        raise RulesError(file, e.mark.line + 1, e.mark.column + 1, e.problem) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = e.problem or e.context or "cannot be parsed"
        raise RulesError(file, line, col, f"invalid YAML: {problem}") from e
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        before = text[: e.position]
        line, col = before.count("\n") + 1, e.position - (before.rfind("\n") + 1) + 1
        raise RulesError(file, line, col, f"invalid YAML: character {e.character:#06x} is not allowed") from e
    except yaml.YAMLError as e:
        raise RulesError(file, 1, 1, "invalid YAML: " + " ".join(str(e).split())) from e
    return At(file, node)
