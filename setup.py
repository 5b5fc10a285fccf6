"""Builds the optional C hot path (heimdall/_hotpath.c, with heimdall/hpack.c); everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and Heimdall
serves from its Python hot path (HEIMDALL_HOT_PATH=auto falls back, =c refuses).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("heimdall._hotpath", ["heimdall/_hotpath.c", "heimdall/hpack.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers"])])
