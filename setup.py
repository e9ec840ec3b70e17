"""Build the optional Cython extensions in native/.

Every extension has a pure-Python twin, so the build never fails for lack of a compiler:
with WATTSPAN_PURE_PYTHON=1, on PyPy, without Cython, or when compilation fails, the
extension is skipped with one log line and the twin is used at run time.
"""

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE_MODULES = ["_series_c"]


def _skip_reason():
    if os.environ.get("WATTSPAN_PURE_PYTHON") == "1":
        return "WATTSPAN_PURE_PYTHON=1"
    if platform.python_implementation() != "CPython":
        return f"{platform.python_implementation()} is not CPython"
    try:
        import Cython  # noqa: F401
    except ImportError:
        return "Cython is not installed"
    return None


class OptionalBuildExt(build_ext):
    """build_ext that degrades to the pure-Python twin instead of failing the install."""

    def run(self):
        try:
            super().run()
        except Exception as err:  # compiler missing, headers missing, ...
            self._announce_fallback(err)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as err:
            self._announce_fallback(err)

    @staticmethod
    def _announce_fallback(err):
        print(
            f"wattspan: native extension not built ({err}); using the pure-Python twin",
            file=sys.stderr,
        )


def _extensions():
    reason = _skip_reason()
    if reason:
        print(f"wattspan: native extension skipped ({reason}); using the pure-Python twin",
              file=sys.stderr)
        return []
    from Cython.Build import cythonize

    exts = [
        Extension(f"wattspan.native.{name}", [f"native/{name}.pyx"], extra_compile_args=["-O2"])
        for name in NATIVE_MODULES
        if os.path.exists(f"native/{name}.pyx")
    ]
    return cythonize(exts, language_level=3, compiler_directives={"boundscheck": False,
                                                                   "wraparound": False,
                                                                   "cdivision": True})


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
