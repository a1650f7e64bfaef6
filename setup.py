"""Build of the optional C kernels (adamdiag/analysis/_moments_kernel.c: checkpoint statistics;
adamdiag/monitor/_monitor_kernel.c: the live monitor's per-tensor statistics;
adamdiag/io/checkpoints/_crc32_kernel.c: the zip CRC-32 check); everything else is in
pyproject.toml. ``optional=True``: without a C compiler the install succeeds and adamdiag uses its
torch/numpy path for the same statistics."""

import sys

from setuptools import Extension, setup

args = [] if sys.platform == "win32" else ["-O3", "-fno-math-errno", "-std=c99"]
setup(
    ext_modules=[
        Extension(
            "adamdiag.analysis._moments_kernel",
            ["adamdiag/analysis/_moments_kernel.c"],
            extra_compile_args=args,
            optional=True,
        ),
        Extension(
            "adamdiag.monitor._monitor_kernel",
            ["adamdiag/monitor/_monitor_kernel.c"],
            extra_compile_args=args,
            optional=True,
        ),
        Extension(
            "adamdiag.io.checkpoints._crc32_kernel",
            ["adamdiag/io/checkpoints/_crc32_kernel.c"],
            extra_compile_args=args,
            optional=True,
        ),
    ]
)
