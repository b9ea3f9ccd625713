"""setuptools shim: cffi_modules and ext_modules can only be given here, not in pyproject.toml.

engine._native (cffi, native/build.py) holds the C hot path; engine._send
(native/send.c) is the one CPython function that calls it per record without
cffi's per-call cost (see the top of send.c); engine._records (native/records.c)
makes a poll's Record objects in one call (see the top of records.c).
"""

from setuptools import Extension, setup

FLAGS = ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    cffi_modules=["native/build.py:ffi"],
    ext_modules=[
        Extension(name, sources=[source], include_dirs=["native"], extra_compile_args=FLAGS)
        for name, source in (
            ("engine._send", "native/send.c"),
            ("engine._records", "native/records.c"),
        )
    ],
)
