"""swarmmesh packaging: `pip install .` gives the `swarmmesh` and `swarm-coordinator` commands."""

from setuptools import find_packages, setup

setup(
    name="swarmmesh",
    version="0.1.0",
    description="Distributed, fault-tolerant binary-package builds for Gentoo, served as a binhost",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["swarmmesh", "swarmmesh.*"]),
    package_data={"swarmmesh": ["data/*.txt"]},
    install_requires=[
        "pyzmq>=26.0",
        "msgpack>=1.0.5",
        "pysyncobj>=0.3.17",
        "cryptography>=41.0",
        "watchdog>=4.0",
        "click>=8.1",
        "portage>=3.0.63",
        "aiohttp>=3.9",
        "pysequoia>=0.1.35",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-timeout>=2.3", "hypothesis>=6.100", "ruff>=0.6", "mypy>=2.4"],
    },
    entry_points={
        "console_scripts": [
            "swarmmesh=swarmmesh.cli:main",
            "swarm-coordinator=swarmmesh.cli:coordinator_main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Software Distribution",
    ],
)
