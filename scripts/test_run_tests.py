#!/usr/bin/env python3
"""Tests of scripts/run_tests.py (`just test`), on a throwaway Cargo package whose tests pass,
fail on demand, print a skip and check their environment. CI's verdict rests on the runner:
a runner that lost a binary or a failure would pass a broken suite.

    python3 scripts/test_run_tests.py        (`just test-runner`; .ci/run runs it)
"""

import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

RUNNER = Path(__file__).resolve().parent / "run_tests.py"

FILES = {
    "Cargo.toml": """
        [package]
        name = "runner-fixture"
        version = "0.1.0"
        edition = "2021"
        """,
    ".cargo/config.toml": """
        [env]
        FROM_CONFIG = "yes"
        """,
    "src/lib.rs": """
        /// ```
        /// assert_eq!(runner_fixture::two(), 2);
        /// ```
        pub fn two() -> u32 { 2 }

        #[test]
        fn unit_passes() {}
        """,
    "tests/passes.rs": """
        /// As test-support writes a skip: past libtest's capture of `eprintln!`.
        #[test]
        fn passes_and_skips() {
            use std::io::Write;
            let line = b"SKIPPED: passes::passes_and_skips: a reason\n";
            std::io::stderr().lock().write_all(line).unwrap();
        }

        #[test]
        fn another() {}
        """,
    "tests/fails.rs": """
        #[test]
        fn fails_when_asked() {
            assert!(std::env::var_os("FIXTURE_FAIL").is_none(), "asked to fail");
        }
        """,
    "tests/environment.rs": """
        #[test]
        fn runs_as_cargo_runs_it() {
            assert_eq!(std::env::var("FROM_CONFIG").as_deref(), Ok("yes"));
            let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
            assert_eq!(std::env::current_dir().unwrap(), std::path::PathBuf::from(dir));
        }
        """,
}


class RunnerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls.tmp.name) / "fixture"
        for name, text in FILES.items():
            path = cls.dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_runner(self, *args, fail=False):
        env = {k: v for k, v in os.environ.items() if k not in ("FIXTURE_FAIL", "FROM_CONFIG")}
        env["CARGO_TARGET_DIR"] = str(Path(self.tmp.name) / "target")
        if fail:
            env["FIXTURE_FAIL"] = "1"
        out = subprocess.run(
            [sys.executable, str(RUNNER), *args],
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
        )
        return out.returncode, out.stdout

    def test_every_binary_runs_and_the_counts_add_up(self):
        code, out = self.run_runner()
        self.assertEqual(code, 0, out)
        for name in (
            "Running unittests src/lib.rs",
            "Running tests/passes.rs",
            "Running tests/fails.rs",
            "Running tests/environment.rs",
            "Doc-tests",
        ):
            self.assertIn(name, out)
        # 1 unit + 2 + 1 + 1 integration tests + 1 doc test.
        self.assertIn("5 test jobs, ", out)
        self.assertIn(": 6 passed, 0 failed, 0 ignored", out)
        self.assertIn("1 skipped", out)
        self.assertIn("  SKIPPED: passes::passes_and_skips: a reason", out)

    def test_a_failure_is_listed_and_exits_101_while_the_rest_still_run(self):
        code, out = self.run_runner(fail=True)
        self.assertEqual(code, 101, out)
        self.assertIn("asked to fail", out)
        failed = out[out.index("\nFAILED:") :]
        self.assertIn("tests/fails.rs", failed)
        self.assertNotIn("tests/passes.rs", failed)
        self.assertIn(": 5 passed, 1 failed", out)

    def test_arguments_reach_cargo_and_the_binaries(self):
        code, out = self.run_runner("--test", "passes", "--", "another")
        self.assertEqual(code, 0, out)
        # One binary, no doc tests (cargo cannot mix --doc with --test), one test chosen.
        self.assertIn("1 test jobs, ", out)
        self.assertIn(": 1 passed, 0 failed", out)
        self.assertNotIn("Doc-tests", out)

    def test_a_build_error_stops_before_any_test(self):
        broken = self.dir / "tests" / "broken.rs"
        broken.write_text("fn main() { this is not rust }\n")
        try:
            code, out = self.run_runner()
        finally:
            broken.unlink()
        self.assertNotEqual(code, 0, out)
        self.assertNotIn("test jobs", out)


if __name__ == "__main__":
    unittest.main()
