"""Reading the YAML files users write (recipes, sweep spaces, benchmark suites): a syntax error is one line with
its line and column, and a key written twice in one mapping is refused (PyYAML keeps the last one silently, so a
recipe with two `lr:` lines trained with whichever came second).

    read_yaml(path)   -> the file's data; ConfigError "PATH: not valid YAML at line L, column C: PROBLEM"
    yaml_problem(e)   -> a yaml.YAMLError as "line L, column C: PROBLEM (CONTEXT at line L, column C)"

Anchors and aliases are read, but not a "billion laughs": aliases that expand to more than MAX_VALUES values are
refused (PyYAML shares the aliased lists, and the first repr, deepcopy or JSON dump of them filled the memory), and
so is nesting deeper than the parser's recursion allows (a RecursionError traceback before).
"""
import yaml

from align.errors import ConfigError


MAX_VALUES = 1_000_000     # values of a file, each alias counted as the values it stands for


def _children(node) -> list:
    """A node's child nodes: a sequence's items, a mapping's keys and values."""
    if not isinstance(node.value, list):
        return []
    return [c for item in node.value for c in (item if isinstance(item, tuple) else (item,))]


def _expanded_size(root) -> int:
    """How many nodes `root` stands for when every alias is written out (a shared node counts at each use), capped
    at MAX_VALUES + 1. Post-order, iteratively (the nesting depth is the file's): a node's size is summed when all
    its children's are known, whichever path reached a shared child first."""
    sizes: dict = {}                               # id -> size; None while the node's children are being sized
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            # None: a node still open on the path, i.e. a recursive alias back to an ancestor: counted once there
            sizes[id(node)] = min(1 + sum(sizes[id(c)] or 0 for c in _children(node)), MAX_VALUES + 1)
        elif id(node) not in sizes:
            sizes[id(node)] = None
            stack.append((node, True))
            stack += [(c, False) for c in _children(node) if id(c) not in sizes]
    return sizes[id(root)]


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping, and aliases that expand past MAX_VALUES."""

    def construct_document(self, node):
        if _expanded_size(node) > MAX_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases expand to more than {MAX_VALUES} values (a \"billion laughs\"); write "
                            "the values out", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is written twice (lines {seen[key] + 1} and "
                                f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def yaml_problem(e: "yaml.YAMLError") -> str:
    """PyYAML's error as one line with where it is: "line L, column C: PROBLEM" (its str() spreads over lines)."""
    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"
    mark, context_mark = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    if context and context_mark is not None:
        context += f" at {at(context_mark)}"
    return (f"{at(mark)}: " if mark is not None else "") + problem + (f" ({context})" if context else "")


def read_yaml(path: str):
    """A YAML file's data; ConfigError (one line naming the file) for a syntax error, a repeated key, a file that
    cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML at {yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply to read") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
