"""The plugin's commands, reached through the `pygds` command: `pygds cache ...` and `pygds demo`.

pygds knows nothing of this package: the plugin registers each command module in the
`pygds.commands` entry-point group (pyproject.toml), and `pygds` adds every module found there
through its `add_parser(subparsers)`. The `pygds.config` group names `check_config.check`, which
`pygds info --config` calls to read and check an LMCache configuration. A `pip install` (or
`pip install -e .`) writes the entry points; without them `pygds` runs without these commands.
"""
