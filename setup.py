"""setuptools shim: cffi_modules and ext_modules can only be given here, not in pyproject.toml.

engine._native (cffi, native/build.py) holds the C hot path; engine._send
(native/send.c) is the one CPython function that calls it per record without
cffi's per-call cost (see the top of send.c).
"""

from setuptools import Extension, setup

setup(
    cffi_modules=["native/build.py:ffi"],
    ext_modules=[
        Extension(
            "engine._send",
            sources=["native/send.c"],
            include_dirs=["native"],
            extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
)
