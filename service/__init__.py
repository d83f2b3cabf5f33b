"""CodeSherpa service: the HTTP surface. It never runs user code itself."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("codesherpa")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
