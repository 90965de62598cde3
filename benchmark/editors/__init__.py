"""Editors under test: the Editor ABC, its lazy registry, built-ins and adapters.

``get_editor("identity")``, ``get_editor("dir:outputs/")``, ``get_editor("my_pkg:MyEditor")``;
see ``base`` for the contract and ``registry`` for how names are found. Importing this package
imports no backend.
"""
from .base import FAILURE_REASONS, PROTOCOL_KEYS, EditFailure, Editor, check_output
from .registry import ENTRY_POINT_GROUP, UnknownEditorError, get_editor, list_editors

__all__ = ["Editor", "EditFailure", "PROTOCOL_KEYS", "FAILURE_REASONS", "check_output", "get_editor",
           "list_editors", "UnknownEditorError", "ENTRY_POINT_GROUP"]
