"""setuptools shim: cffi_modules can only be given here, not in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["native/build.py:ffi"])
