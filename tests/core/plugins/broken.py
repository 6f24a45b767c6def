"""A module whose import fails, as with a missing dependency."""

import a_dependency_that_is_not_installed  # noqa: F401
