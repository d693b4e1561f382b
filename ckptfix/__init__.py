"""ckptfix: make checkpoints fit their models, with declared, validated rules."""

__version__ = "0.1.0"

from .api import Options, Result, apply_file, check_file, compose_rules, diff, inspect, plan_file  # noqa: E402
from .errors import (CkptfixError, DoesNotFit, InputError, RulesError, TargetError, UnsafePickleError,  # noqa: E402
                     UsageError, exit_code_for)

__all__ = ["Options", "Result", "apply_file", "check_file", "compose_rules", "diff", "inspect", "plan_file",
           "CkptfixError", "DoesNotFit", "InputError", "RulesError", "TargetError", "UnsafePickleError",
           "UsageError", "exit_code_for", "__version__"]
