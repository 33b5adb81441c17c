"""What the project's command-line tools share: the help layout, the logging set-up, and the one place where
third-party warnings a user cannot act on are silenced.

Each silenced entry names what it hides and why it is safe to hide. Everything else (this project's own
warnings, and any other library warning) still shows. The tools call `configure_logging()` first; `libero_sim`
calls `quiet_third_party_warnings()` before robosuite is imported.
"""

import argparse
import logging
import warnings
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` with every default shown and the module docstring kept as written."""

    def _get_help_string(self, action):
        # A help text that already states its default, and an option without one, get no "(default: ...)".
        help_text = action.help or ""
        if action.default is None or "default" in help_text.lower():
            return help_text
        return super()._get_help_string(action)

# (category, message regex): deprecations raised inside transformers/peft/accelerate by their own calls.
IGNORED_WARNINGS = (
    # peft and the Trainer call PreTrainedModel.is_gradient_checkpointing (renamed in transformers 5).
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)
# robosuite's advice, at every import, to create a private copy of its macros: the project runs on robosuite's
# default macros (the "opengl" image convention its demos record), which that copy would only duplicate.
ROBOSUITE_MACRO_ADVICE = ("No private macro file found", "It is recommended to use a private macro file", "setup_macros.py")


class _DropMessages(logging.Filter):
    def __init__(self, fragments):
        super().__init__()
        self.fragments = fragments

    def filter(self, record):
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_third_party_warnings():
    """Installs the filters above (idempotent)."""
    for category, message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # PyOpenGL says at INFO, on every import, that its optional C accelerator is not installed.
    logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)
    robosuite_logger = logging.getLogger("robosuite_logs")
    if not any(isinstance(existing, _DropMessages) for existing in robosuite_logger.filters):
        robosuite_logger.addFilter(_DropMessages(ROBOSUITE_MACRO_ADVICE))


def configure_logging(level=logging.INFO):
    """What every command-line tool of the project starts with: timestamped log lines, the filters above."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_third_party_warnings()


def labelled_file(written_by):
    """An argparse type for LABEL=FILE arguments (plots that compare runs): (label, Path) of an existing file."""

    def parse(text):
        label, separator, path = text.partition("=")
        if not separator or not label or not Path(path).is_file():
            raise argparse.ArgumentTypeError(f"LABEL=FILE with an existing {written_by} output, got {text!r}")
        return label, Path(path)

    return parse
