"""swarmmesh: a distributed, fault-tolerant binary-package build system for Gentoo."""

__version__ = "0.1.0"
