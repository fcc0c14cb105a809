"""Unit tests of how the add-on folds a job's events into progress."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from kiln_blender.progress import JobProgress  # noqa: E402


def job(state, total, succeeded=0, failed=0, message=""):
    return {"jobChanged": {"name": "shot", "state": state, "tasksTotal": total,
                           "tasksSucceeded": succeeded, "tasksFailed": failed, "message": message}}


class ProgressTests(unittest.TestCase):
    def test_counts_fractions_and_lines(self):
        progress = JobProgress("j")
        self.assertTrue(progress.apply("job_changed", job("JOB_STATE_RUNNING", 4)))
        progress.apply("task_state_changed", {"taskStateChanged": {"taskId": "a", "state": "TASK_STATE_RUNNING"}})
        self.assertFalse(progress.apply("task_progress", {"taskProgress": {"taskId": "a", "fraction": 0.5, "frame": "3"}}, "7"))
        self.assertEqual(progress.last_seq, "7")
        self.assertAlmostEqual(progress.fraction, 0.125)
        self.assertIn("frame 3", progress.line())
        self.assertTrue(progress.apply("task_state_changed", {"taskStateChanged": {"taskId": "a", "state": "TASK_STATE_SUCCEEDED"}}))
        self.assertEqual(progress.line(), "job shot rendering: 1/4 tasks, 25% (frame 3)")

    def test_a_trailing_record_does_not_move_progress_back(self):
        progress = JobProgress("j")
        progress.apply("job_changed", job("JOB_STATE_RUNNING", 2))
        progress.apply("task_state_changed", {"taskStateChanged": {"taskId": "a", "state": "TASK_STATE_SUCCEEDED"}})
        progress.apply("job_changed", job("JOB_STATE_RUNNING", 2, succeeded=0))
        self.assertEqual(progress.succeeded, 1)

    def test_final_states(self):
        progress = JobProgress("j")
        progress.apply("job_changed", job("JOB_STATE_FAILED", 2, 1, 1, "frame 2 failed"))
        self.assertTrue(progress.finished)
        self.assertIn("failed: 1/2 tasks", progress.line())
        self.assertIn("frame 2 failed", progress.line())
        done = JobProgress("k")
        done.apply("job_changed", job("JOB_STATE_SUCCEEDED", 2, 2))
        self.assertEqual(done.fraction, 1.0)


if __name__ == "__main__":
    unittest.main()
