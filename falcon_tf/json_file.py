"""Reading the project's JSON files with errors that name the file."""

import json
import os


def read_json(path, what="file"):
    """The parsed JSON at `path`; FileNotFoundError or ValueError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} missing: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def json_or_none(path):
    """The JSON in `path`, or None if it is missing or not JSON (for sniffing a file's kind)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
