"""Built-in zero-shot prompt templates and loaders for class names / templates.

Templates use CLIP_benchmark's `{c}` placeholder ("a photo of a {c}."). A template
spec is either a built-in set name (see `BUILTIN_TEMPLATES`), a `.txt` file (one
template per line, as CLIP_benchmark's `zeroshot_classification_templates.txt`),
or a `.json` file holding a list of templates or a dict {classname: [prompts]}
(class-specific prompts such as CuPL).
"""
from __future__ import annotations

import json
import os
import unicodedata
from typing import Dict, List, Union

from align.errors import DataError
from align.text import WHY, lone_surrogate, split_lines

Templates = Union[List[str], Dict[str, List[str]]]

# OpenAI's 80 ImageNet prompt templates (same list and order as CLIP_benchmark's "imagenet1k").
OPENAI_IMAGENET = [
    "a bad photo of a {c}.", "a photo of many {c}.", "a sculpture of a {c}.",
    "a photo of the hard to see {c}.", "a low resolution photo of the {c}.", "a rendering of a {c}.",
    "graffiti of a {c}.", "a bad photo of the {c}.", "a cropped photo of the {c}.",
    "a tattoo of a {c}.", "the embroidered {c}.", "a photo of a hard to see {c}.",
    "a bright photo of a {c}.", "a photo of a clean {c}.", "a photo of a dirty {c}.",
    "a dark photo of the {c}.", "a drawing of a {c}.", "a photo of my {c}.",
    "the plastic {c}.", "a photo of the cool {c}.", "a close-up photo of a {c}.",
    "a black and white photo of the {c}.", "a painting of the {c}.", "a painting of a {c}.",
    "a pixelated photo of the {c}.", "a sculpture of the {c}.", "a bright photo of the {c}.",
    "a cropped photo of a {c}.", "a plastic {c}.", "a photo of the dirty {c}.",
    "a jpeg corrupted photo of a {c}.", "a blurry photo of the {c}.", "a photo of the {c}.",
    "a good photo of the {c}.", "a rendering of the {c}.", "a {c} in a video game.",
    "a photo of one {c}.", "a doodle of a {c}.", "a close-up photo of the {c}.",
    "a photo of a {c}.", "the origami {c}.", "the {c} in a video game.",
    "a sketch of a {c}.", "a doodle of the {c}.", "a origami {c}.",
    "a low resolution photo of a {c}.", "the toy {c}.", "a rendition of the {c}.",
    "a photo of the clean {c}.", "a photo of a large {c}.", "a rendition of a {c}.",
    "a photo of a nice {c}.", "a photo of a weird {c}.", "a blurry photo of a {c}.",
    "a cartoon {c}.", "art of a {c}.", "a sketch of the {c}.",
    "a embroidered {c}.", "a pixelated photo of a {c}.", "itap of the {c}.",
    "a jpeg corrupted photo of the {c}.", "a good photo of a {c}.", "a plushie {c}.",
    "a photo of the nice {c}.", "a photo of the small {c}.", "a photo of the weird {c}.",
    "the cartoon {c}.", "art of the {c}.", "a drawing of the {c}.",
    "a photo of the large {c}.", "a black and white photo of a {c}.", "the plushie {c}.",
    "a dark photo of a {c}.", "itap of a {c}.", "graffiti of the {c}.",
    "a toy {c}.", "itap of my {c}.", "a photo of a cool {c}.",
    "a photo of a small {c}.", "a tattoo of the {c}.",
]

BUILTIN_TEMPLATES: Dict[str, List[str]] = {
    "openai_imagenet": OPENAI_IMAGENET,
    # the 7-template subset OpenAI selected for its ImageNet prompt ensemble
    "openai_imagenet_7": ["itap of a {c}.", "a bad photo of the {c}.", "a origami {c}.",
                          "a photo of the large {c}.", "a {c} in a video game.", "art of the {c}.",
                          "a photo of the small {c}."],
    "photo": ["a photo of a {c}."],
    "audio": ["the sound of {c}.", "a recording of {c}.", "this is the sound of {c}.",
              "a sound of a {c}.", "an audio clip of {c}.", "{c} can be heard."],
    # LAION-CLAP's zero-shot prompt
    "clap": ["This is a sound of {c}."],
}


def _read_lines(path: str, what: str) -> List[str]:
    try:
        # utf-8-sig: a file saved by Notepad or Excel starts with a byte-order mark, which utf-8 keeps in line 1
        with open(path, "r", encoding="utf-8-sig", newline="") as f:   # a line ends at \n, \r\n or \r only
            lines = [line.strip() for line in split_lines(f.read())]
    except OSError as e:
        raise DataError(f"{what} file {path!r} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError:     # a PNG or a model given as the file: one line, not the codec's traceback
        raise DataError(f"{what} file {path!r} is not UTF-8 text (one entry per line)") from None
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{what} file {path!r} is empty")
    return lines


def _read_json(path: str, what: str):
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            return json.load(f)
    except OSError as e:
        raise DataError(f"{what} file {path!r} cannot be read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} file {path!r} is not valid JSON: {e}") from None


def load_classnames(path: str) -> List[str]:
    """Class names from a `.txt` (one per line, blank lines dropped) or a `.json` list."""
    if path.endswith(".json"):
        names = _read_json(path, "classnames")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"classnames file {path!r} must hold a non-empty JSON list of strings")
        for i, n in enumerate(names):
            _refuse_surrogate(n, f"classnames file {path!r}: class name {i}")
        return names
    return _read_lines(path, "classnames")


def _refuse_surrogate(text: str, where: str) -> None:
    """DataError "WHERE: lone surrogate at position N" (a JSON "\\ud800" escape): no tokenizer reads the prompt."""
    bad = lone_surrogate(text)
    if bad:
        raise DataError(f"{where}: {bad} ({WHY})")


def check_templates(templates: Templates, where: str) -> Templates:
    """Validate a template list (each has `{c}`) or a class-specific prompt dict; returns it."""
    if isinstance(templates, dict):
        for c, prompts in templates.items():
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise DataError(f"{where}: prompts for class {c!r} must be a non-empty list of strings")
            for j, p in enumerate(prompts):
                _refuse_surrogate(p, f"{where}: prompt {j} of class {c!r}")
        return templates
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise DataError(f"{where}: templates must be a non-empty list of strings")
    for j, t in enumerate(templates):
        _refuse_surrogate(t, f"{where}: template {j}")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise DataError(f"{where}: template {bad[0]!r} has no '{{c}}' placeholder for the class name")
    for t in templates:                 # other braces fail str.format later, when the prompts are built
        try:
            t.format(c="x")
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            raise DataError(f"{where}: template {t!r} holds a brace other than the '{{c}}' placeholder "
                            f"({type(e).__name__}: {e}); write a literal brace as '{{{{' or '}}}}'") from None
    return templates


def check_classnames(names: List[str], where: str) -> List[str]:
    """The class names, or DataError naming the first one listed twice: zero-shot scores both on the same
    prompts, so the second is never the top class and its items always count as wrong. Two Unicode forms of
    one name (NFC 'café' and NFD, as macOS writes folder names) count as one: the tokenizers read them alike."""
    seen: Dict[str, int] = {}
    for i, n in enumerate(names):
        _refuse_surrogate(n, f"{where}: class name {i}")
        key = unicodedata.normalize("NFC", n)
        if key in seen:
            forms = "" if n == names[seen[key]] else f" (as {names[seen[key]]!r} and {n!r}, two Unicode forms)"
            raise DataError(f"{where}: class name {n!r} is listed twice{forms} (classes {seen[key]} and {i}); "
                            f"zero-shot cannot tell them apart: give each class its own name")
        seen[key] = i
    return names


def get_templates(spec: Union[str, Templates]) -> Templates:
    """Resolve a template spec: built-in name, .txt/.json path, or an already-built list/dict."""
    if not isinstance(spec, str):
        return check_templates(spec, "templates")
    if spec in BUILTIN_TEMPLATES:
        return list(BUILTIN_TEMPLATES[spec])
    if os.path.isfile(spec):
        data = _read_json(spec, "templates") if spec.endswith(".json") else _read_lines(spec, "templates")
        return check_templates(data, f"templates file {spec!r}")
    raise DataError(f"templates {spec!r} is neither a built-in set ({', '.join(sorted(BUILTIN_TEMPLATES))}) "
                    f"nor an existing file")


def prompts_for(classname: str, templates: Templates) -> List[str]:
    """The prompts of one class: templates filled with the name, or the class's own list (dict templates)."""
    if isinstance(templates, dict):
        if classname not in templates:
            raise DataError(f"class-specific templates have no prompts for class {classname!r}")
        return list(templates[classname])
    return [t.format(c=classname) for t in templates]
