"""Imported by the scoring pool's forkserver (``local.forkserver_preload``) and nothing else: importing it compiles
the scoring job's numba kernels once in the server, so that every worker it forks has them compiled."""

from scoring_job import _kernels

_kernels.warm()
