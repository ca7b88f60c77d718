"""The operator's evaluation settings reach the job: wall clock, memory and CPU threads."""

from __future__ import annotations

import os

from evaluator.sandbox.environment import child_env
from submissions.tasks import evaluation_limits


def test_the_thread_setting_reaches_the_jobs_environment(settings):
    settings.ARENA_EVAL_THREADS = 1
    settings.ARENA_EVAL_WALL_SECONDS = 120.0
    settings.ARENA_EVAL_MEMORY_BYTES = 2 * 1024**3
    limits = evaluation_limits()
    assert (limits.threads, limits.wall_seconds, limits.memory_bytes) == (1, 120.0, 2 * 1024**3)
    env = child_env(limits, "/code")
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"


def test_zero_threads_means_every_core(settings):
    settings.ARENA_EVAL_THREADS = 0
    assert evaluation_limits().threads == max(1, os.cpu_count() or 1)


def test_the_cpu_priority_setting_reaches_the_limits_within_nice_s_range(settings):
    for given, nice in ((10, 10), (0, 0), (40, 19), (-5, 0)):
        settings.ARENA_EVAL_NICE = given
        assert evaluation_limits().nice == nice
