#!/bin/sh
# Put hsmproxy between lightningd and its signer:
#   lightningd --subdaemon=hsmd:/path/to/hsmd-wrapper.sh ...
# lightningd runs this script exactly as it runs lightning_hsmd (fd 0 status socket, fd 3 request
# socket, its cwd and environment, --developer/--log-io/--version); hsmproxy runs the real signer
# the same way behind it. Adjust the two paths; add relay options (e.g. --trace FILE) before `--`.
exec hsmproxy wrap --signer /usr/local/libexec/c-lightning/lightning_hsmd -- "$@"
