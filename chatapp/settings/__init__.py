"""The settings: one frozen, typed value (value.py), its parsers (parse.py)
and the checks across settings (resolve.py). The table of names, variables
and defaults is chatapp/config.py's."""

from chatapp.settings.value import Settings

__all__ = ["Settings"]
