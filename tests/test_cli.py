"""worldvla_cli: the third-party warnings it lists are silenced, every other warning still shows; --help states each default once."""
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_listed_warnings_are_silenced_and_others_kept():
    # In a subprocess: warning filters are process-wide and pytest's own must stay untouched.
    code = """
import logging, warnings
from worldvla_cli import configure_logging
configure_logging()
warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
warnings.warn("`other_option` is deprecated", FutureWarning)
robosuite = logging.getLogger("robosuite_logs")
robosuite.warning("No private macro file found!")
robosuite.warning("To setup, run: python robosuite/scripts/setup_macros.py")
robosuite.warning("the gripper failed to load")
logging.getLogger("OpenGL.acceleratesupport").info("No OpenGL_accelerate module loaded")
logging.getLogger("eval_libero").info("our own message")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "`other_option` is deprecated" in result.stderr and "the gripper failed to load" in result.stderr
    assert "our own message" in result.stderr
    for hidden in ("is_gradient_checkpointing", "private macro", "setup_macros", "OpenGL_accelerate"):
        assert hidden not in result.stderr


def test_help_shows_each_default_once_and_no_none():
    import argparse

    from worldvla_cli import HelpFormatter

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=700, help="steps between evaluations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--data-dir", required=True, help="demo folder")
    help_text = " ".join(parser.format_help().split())
    assert "steps between evaluations (default: 700)" in help_text
    assert "torch threads (default: torch's choice) --data-dir" in help_text
    assert "None" not in help_text
