"""The application: the ``hsmproxy`` command, its options and config file, and the assembly of
hooks for a run. The only package that may import every other one."""
