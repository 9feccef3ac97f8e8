"""Stages every exporter shares (the interface they compose: converters/__init__.py)."""

import datetime
import platform


def input_specs(signature):
    """[tf.TensorSpec] of a contract signature's inputs (`falcon_tf.artifacts.contract`),
    in its order, named as in the contract: every exporter traces with these
    and records the same signature in the manifest, so the two cannot differ."""
    import tensorflow as tf

    return [tf.TensorSpec(spec["shape"], spec["dtype"], name)
            for name, spec in signature["inputs"].items()]


def installed_version(distribution):
    """The installed version of `distribution` (a pip name), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def stamp(*distributions):
    """What every manifest entry records of how it was made: {"created": the
    UTC time, "tool_versions": falcon_tf's, Python's and each named installed
    distribution's version (None when it is not installed)}."""
    from falcon_tf import __version__

    versions = {"falcon_tf": __version__, "python": platform.python_version(),
                **{name: installed_version(name) for name in distributions}}
    return {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tool_versions": versions}
