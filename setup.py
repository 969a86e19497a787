"""Only the optional C extension lives here; everything else is in pyproject.toml.

matcher/crypto/_h2c_native.c is the Elligator 2 map of RFC 9380 hashing (the merchant's and the
importer's hot loop). It is optional: without a C compiler the build goes on and matcher uses the
pure-Python map, which gives the same bytes (tests compare the two).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("matcher.crypto._h2c_native", ["matcher/crypto/_h2c_native.c"],
                             extra_compile_args=["-O2"], optional=True)])
