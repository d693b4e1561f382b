"""errors.exit_code_for: the one exception -> exit-code map (used by cli._run and api.apply_file)."""

import errno

from ckptfix import api
from ckptfix.errors import (EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, EXIT_DOES_NOT_FIT, EXIT_INTERRUPTED, DoesNotFit,
                            InputError, exit_code_for)


def test_exit_code_for_maps_each_kind():
    assert exit_code_for(DoesNotFit("x")) == EXIT_DOES_NOT_FIT == 1
    assert exit_code_for(InputError("a.pt", "corrupt")) == EXIT_BAD_INPUT == 2
    assert exit_code_for(KeyboardInterrupt()) == EXIT_INTERRUPTED == 130
    assert exit_code_for(BrokenPipeError(errno.EPIPE, "pipe")) == EXIT_BROKEN_PIPE == 141
    assert exit_code_for(OSError(errno.EPIPE, "raw")) == 141
    assert exit_code_for(ValueError("bug")) == 2


def test_apply_file_reports_the_mapped_code(tmp_path):
    res = api.apply_file(tmp_path / "missing.pt", [], None, dry_run=True)
    assert not res.ok and res.exit_code == 2 and "missing.pt" in res.error
