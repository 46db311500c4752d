"""Reading the YAML files users write (recipes, sweep spaces, benchmark suites): a syntax error is one line with
its line and column, and a key written twice in one mapping is refused (PyYAML keeps the last one silently, so a
recipe with two `lr:` lines trained with whichever came second).

    read_yaml(path)   -> the file's data; ConfigError "PATH: not valid YAML at line L, column C: PROBLEM"
    yaml_problem(e)   -> a yaml.YAMLError as "line L, column C: PROBLEM (CONTEXT at line L, column C)"
"""
import yaml

from align.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping."""

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
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
