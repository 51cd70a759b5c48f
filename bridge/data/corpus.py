"""The embedded default corpus: English prose that every Python installation already has.

Documents are generated, never downloaded, from the running interpreter's standard library:

* one document per stdlib module (sorted by file path; tests, demos and site-packages skipped),
  holding its module docstring and, in source order, each class and function signature with its
  docstring;
* one document per topic of the Python language reference that ships with ``pydoc``
  (``pydoc_data/topics.py``), read with ``ast`` so nothing is imported.

That is about 2-3 MB of text. Source files are parsed, not imported, so no module runs. The corpus
is deterministic for a given Python version (another version has a slightly different stdlib).

The train/validation split is fixed per document name (a CRC32 of the name), so a module that
exists in two Python versions lands in the same split in both; about 5% goes to validation.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
import zlib
from typing import Iterator, List, NamedTuple, Tuple

from bridge.data.cache import build_lock, cache_root, write_text_atomically

VALIDATION_PERCENT = 5
"""Share of documents (by name hash) in the validation split."""

# Folders of the stdlib that are tests, demos, GUI tooling or third-party packages.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__",
              "ensurepip", "lib2to3", "pydoc_data", "venv"}


class Document(NamedTuple):
    """One corpus document: a stable name (used for the split) and its text."""

    name: str
    text: str


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def _module_files(root: str) -> List[str]:
    files = []
    for folder, subdirs, names in os.walk(root):
        # Sorting in place fixes os.walk's order, which otherwise follows the file system.
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS and not d.startswith("config-"))
        files.extend(os.path.join(folder, n) for n in sorted(names) if n.endswith(".py"))
    return files


def _definition_docs(body: list, prefix: str) -> Iterator[str]:
    """Signature + docstring of every documented class/function in ``body``, in source order."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield f"def {prefix}{node.name}({ast.unparse(node.args)}):\n{doc}"
        elif isinstance(node, ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc:
                yield f"class {prefix}{node.name}:\n{doc}"
            yield from _definition_docs(node.body, f"{prefix}{node.name}.")


def _module_document(path: str, root: str) -> Document | None:
    rel = os.path.relpath(path, root)
    name = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None  # a few stdlib files are templates or other encodings; they are not prose
    parts = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        parts.append(f"module {name}\n{module_doc}")
    parts.extend(_definition_docs(tree.body, ""))
    if not parts:
        return None
    return Document(name, "\n\n".join(parts))


def _reference_topics(root: str) -> Iterator[Document]:
    """The language reference topics from pydoc_data/topics.py (a dict literal of strings)."""
    path = os.path.join(root, "pydoc_data", "topics.py")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            topics = ast.literal_eval(node.value)
            for key in sorted(topics):
                yield Document(f"reference.{key}", topics[key].strip())


def generate_documents() -> List[Document]:
    """Build the corpus from the running interpreter's standard library (deterministic)."""
    root = _stdlib_dir()
    docs = [d for d in (_module_document(p, root) for p in _module_files(root)) if d is not None]
    docs.extend(_reference_topics(root))
    return docs


def is_validation(name: str) -> bool:
    """Whether the document called ``name`` belongs to the validation split (fixed by name)."""
    return zlib.crc32(name.encode("utf-8")) % 100 < VALIDATION_PERCENT


def split_documents(docs: List[Document]) -> Tuple[List[Document], List[Document]]:
    """``(train, validation)``: the fixed split of the corpus."""
    train = [d for d in docs if not is_validation(d.name)]
    valid = [d for d in docs if is_validation(d.name)]
    return train, valid


def corpus_folder(cache_dir: str | None = None) -> str:
    """Cache folder of this interpreter's corpus (the stdlib differs between Python versions)."""
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    return os.path.join(cache_root(cache_dir), "embedded_corpus", version)


def corpus_jsonl_paths(cache_dir: str | None = None) -> Tuple[str, str]:
    """Paths of ``train.jsonl`` and ``valid.jsonl`` (``{"name", "text"}`` per line), built on first use."""
    folder = corpus_folder(cache_dir)
    paths = (os.path.join(folder, "train.jsonl"), os.path.join(folder, "valid.jsonl"))
    if all(os.path.exists(p) for p in paths):
        return paths
    with build_lock(folder):
        if not all(os.path.exists(p) for p in paths):
            for path, split in zip(paths, split_documents(generate_documents())):
                lines = (json.dumps({"name": d.name, "text": d.text}, ensure_ascii=False) for d in split)
                write_text_atomically(path, "\n".join(lines) + "\n")
    return paths
